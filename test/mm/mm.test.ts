/**
 * The host mm's address space: page tables in x86 format (exact entry
 * values), GUP and host-CPU faults, A/D bits, huge mappings, zapping with
 * folios and tables going back to the allocator, folio fields.
 */
import { describe, expect, it } from 'vitest';
import { PhysMem } from '../../src/hw/phys_mem.js';
import { runProgram } from '../../src/hw/sched.js';
import { LruList, PG_anon, PG_dirty, PG_lru, PG_referenced, PG_swapbacked, PG_uptodate } from '../../src/mm/folio.js';
import { MmStruct, type AnonVma } from '../../src/mm/mm.js';
import type { MmuNotifierOps, MmuNotifierRange } from '../../src/mm/mmu_notifier.js';
import { PageAllocator } from '../../src/mm/page_alloc.js';
import { GUEST_HVA_BASE, guestAccess, hvaOf, makeVm } from '../support/kvm_setup.js';

const K4 = 4096;
const M2 = 2 << 20;
const G1 = 2 ** 30;
/** Pool [0x100_0000, 0x1100_0000): data frames from pfn 0x1000 up, page tables from 0x10fff000 down. */
const POOL_TOP = 0x1100_0000;

function mmOnly(poolSize = 0x1000_0000): MmStruct {
  const mem = new PhysMem(40);
  return new MmStruct(mem, new PageAllocator(mem, 0x100_0000, poolSize));
}

function entry(mm: MmStruct, hpa: number): bigint {
  mm.mem.load64(hpa);
  return (BigInt(mm.mem.hi >>> 0) << 32n) | BigInt(mm.mem.lo >>> 0);
}

describe('host page tables after a first touch', () => {
  it('GUP installs P|RW|U|A|D|soft-dirty|NX for a writable area, even on a read; upper tables are _PAGE_TABLE (0x67)', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    expect(mm.pt.pgd).toBe(POOL_TOP - K4);
    expect(mm.hvaToPfn(0x40_0000, false)).toEqual({ ok: true, pfn: 0x1000, writable: true });
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0867n);
    // pgd[0] -> pud at 0x10ffe000, pud[0] -> pmd at 0x10ffd000, pmd[2] -> pte table at 0x10ffc000.
    expect(entry(mm, mm.pt.pgd)).toBe(0x10ff_e067n);
    expect(entry(mm, 0x10ff_e000)).toBe(0x10ff_d067n);
    expect(entry(mm, 0x10ff_d000 + 2 * 8)).toBe(0x10ff_c067n);
    expect(entry(mm, 0x10ff_c000)).toBe(0x8000_0000_0100_0867n);
    expect(mm.faults).toBe(1);
    expect(mm.pages.tablePages).toBe(4);
    expect(mm.pages.inUse).toBe(5);
    // The next page reuses the tables.
    expect(mm.hvaToPfn(0x40_1000, true)).toEqual({ ok: true, pfn: 0x1001, writable: true });
    expect(mm.pte(0x40_1000)).toBe(0x8000_0000_0100_1867n);
    expect([mm.faults, mm.pages.tablePages]).toEqual([2, 4]);
  });

  it('a read-only area maps P|U|A|NX; a GUP write is EFAULT without a fault', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4, { writable: false });
    expect(mm.hvaToPfn(0x40_0000, true)).toEqual({ ok: false, error: 'EFAULT' });
    expect(mm.faults).toBe(0);
    expect(mm.hvaToPfn(0x40_0000, false)).toEqual({ ok: true, pfn: 0x1000, writable: false });
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0025n);
    expect(mm.hvaToPfn(0x40_0000, true)).toEqual({ ok: false, error: 'EFAULT' });
    expect(mm.faults).toBe(1);
  });

  it('fault counts: one per first touch, none for pages already mapped; no area is EFAULT', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 8 * K4);
    for (let i = 0; i < 3; i++) mm.hvaToPfn(0x40_0000 + i * K4, i % 2 === 0);
    for (let i = 0; i < 3; i++) mm.hvaToPfn(0x40_0000 + i * K4 + 0x123, true);
    expect(mm.faults).toBe(3);
    expect(mm.hvaToPfn(0x80_0000, false)).toEqual({ ok: false, error: 'EFAULT' });
    expect(mm.lookup(0x40_3000)).toBe(null);
    expect(mm.lookup(0x40_2fff)).toBe(0x1002);
  });
});

describe('accessed and dirty bits', () => {
  it('GUP-fast touches no bit: after clear_flush_young the PTE stays old through a KVM-style lookup', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    mm.hvaToPfn(0x40_0000, true);
    expect(runProgram(mm.clearFlushYoungNotify(0x40_0000))).toBe(true);
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0847n);
    expect(runProgram(mm.clearFlushYoungNotify(0x40_0000))).toBe(false);
    expect(mm.hvaToPfn(0x40_0000, true)).toEqual({ ok: true, pfn: 0x1000, writable: true });
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0847n);
    expect(mm.faults).toBe(1);
  });

  it('the host CPU walk sets A on a load and D on a store (no soft-dirty: that is software\'s)', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    expect(mm.access(0x40_0abc, false)).toBe(0x100_0abc); // first touch: #PF, handle_mm_fault, retry
    expect([mm.cpuFaults, mm.faults]).toEqual([1, 1]);
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0867n);
    // Make the PTE old and clean (as writeback and aging would) and drop the cached translation.
    mm.mem.and64(mm.pt.entry, ~0x860, -1);
    mm.cpu.flushAll();
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0007n);
    mm.access(0x40_0000, false);
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0027n);
    mm.access(0x40_0008, true); // the TLB entry is not dirty: the CPU walks again and sets D
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0067n);
    expect([mm.cpuFaults, mm.faults]).toEqual([1, 1]);
  });

  it('clear_flush_young does not flush the host TLB on x86: a load through the cached translation leaves A clear', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    mm.access(0x40_0000, true);
    expect(runProgram(mm.clearFlushYoungNotify(0x40_0000))).toBe(true);
    mm.access(0x40_0000, false);
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0847n);
    mm.cpu.flushAll();
    mm.access(0x40_0000, false);
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0867n);
  });

  it('mprotect keeps A/D and toggles RW; GUP of an old read-only PTE marks the folio accessed instead of the PTE', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    mm.hvaToPfn(0x40_0000, true);
    runProgram(mm.mprotect(0x40_0000, 4 * K4, { writable: false }));
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0865n);
    runProgram(mm.clearFlushYoungNotify(0x40_0000));
    expect(mm.folios.test(0x1000, PG_referenced)).toBe(false);
    expect(mm.hvaToPfn(0x40_0000, false)).toEqual({ ok: true, pfn: 0x1000, writable: false });
    expect(mm.folios.test(0x1000, PG_referenced)).toBe(true);
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0845n);
    runProgram(mm.mprotect(0x40_0000, 4 * K4, { writable: true }));
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0847n);
    expect(mm.hvaToPfn(0x40_0000, true)).toEqual({ ok: true, pfn: 0x1000, writable: true });
    expect(mm.faults).toBe(1);
  });

  it('a write to a read-only PTE of a writable area is a write-protect fault that reuses the folio and sets A|D', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    mm.hvaToPfn(0x40_0000, false);
    mm.mem.and64(mm.pt.entry, ~0x862, -1); // as if write-protected and cleaned (page_mkclean)
    expect(mm.hvaToPfn(0x40_0000, false)).toEqual({ ok: true, pfn: 0x1000, writable: false });
    expect(mm.hvaToPfn(0x40_0000, true)).toEqual({ ok: true, pfn: 0x1000, writable: true });
    expect(mm.pte(0x40_0000)).toBe(0x8000_0000_0100_0867n);
    expect(mm.faults).toBe(2);
  });
});

describe('huge mappings', () => {
  it('a 2M area is mapped by PMD leaves (PSE) of order-9 folios; level 2 for KVM', () => {
    const mm = mmOnly();
    mm.mmap(0x4000_0000, 2 * M2, { level: 2 });
    expect(mm.hostMappingLevel(0x4001_2000)).toBe(1); // unmapped
    expect(mm.hvaToPfn(0x4001_2345, true)).toEqual({ ok: true, pfn: 0x1012, writable: true });
    expect(mm.pte(0x4000_0000)).toBe(0x8000_0000_0100_08e7n);
    expect(mm.pt.level).toBe(2);
    expect(mm.hostMappingLevel(0x401f_f000)).toBe(2);
    expect(mm.lookup(0x401f_f000)).toBe(0x11ff);
    expect(mm.hvaToPfn(0x4020_0000, false)).toEqual({ ok: true, pfn: 0x1200, writable: true });
    expect([mm.faults, mm.pages.tablePages, mm.pages.inUse]).toEqual([2, 3, 3 + 1024]);
    const f = mm.folios;
    expect([f.order(0x1000), f.folioOf(0x1012), f.mapcount[f.idx(0x1000)], f.refcount[f.idx(0x1000)]]).toEqual([9, 0x1000, 1, 1]);
    expect(f.nrPages[LruList.InactiveAnon]).toBe(1024);
  });

  it('a 1G area is mapped by PUD leaves of order-18 folios; level 3', () => {
    const mm = mmOnly(2 ** 39);
    mm.mmap(0x80_0000_0000, G1, { level: 3 });
    expect(mm.hvaToPfn(0x80_0123_4000, true)).toEqual({ ok: true, pfn: 0x40000 + 0x1234, writable: true });
    expect(mm.pte(0x80_0000_0000)).toBe(0x8000_0000_4000_08e7n);
    expect(mm.hostMappingLevel(0x80_3fff_f000)).toBe(3);
    expect(mm.pages.tablePages).toBe(2);
    runProgram(mm.munmap(0x80_0000_0000, G1));
    expect([mm.pages.inUse, mm.pages.tablePages]).toEqual([1, 1]);
  });

  it('zapping part of a huge page is refused (THP splitting is not modelled)', () => {
    const mm = mmOnly();
    mm.mmap(0x4000_0000, M2, { level: 2 });
    mm.hvaToPfn(0x4000_0000, true);
    expect(() => runProgram(mm.madviseDontneed(0x4000_0000, K4))).toThrow('madvise: EINVAL: 0x40000000..0x40001000 cuts a 2048K page (splitting huge pages is not modelled)');
    runProgram(mm.madviseDontneed(0x4000_0000, M2));
    expect([mm.lookup(0x4000_0000), mm.pages.inUse]).toEqual([null, 3]);
  });
});

describe('zapping frees folios and tables', () => {
  it('madvise(DONTNEED): start sees the PTE, end sees it cleared with the folio dirty and unmapped but not yet freed; then freed', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 8 * K4);
    for (let i = 0; i < 4; i++) mm.hvaToPfn(0x40_0000 + i * K4, true);
    const f = mm.folios;
    const seen: string[] = [];
    const probe = (op: string) => seen.push(`${op}: pte ${mm.lookup(0x40_1000) === null ? 'none' : 'present'}, refcount ${f.refcount[f.idx(0x1001)]}, mapcount ${f.mapcount[f.idx(0x1001)]}, dirty ${f.test(0x1001, PG_dirty)}`);
    const sub: MmuNotifierOps = {
      *invalidateRangeStart(_r: MmuNotifierRange) {
        probe('start');
        return 0;
      },
      *invalidateRangeEnd(_r: MmuNotifierRange) {
        probe('end');
      },
    };
    mm.notifiers.register(sub);
    expect([mm.pages.inUse, f.nrPages[LruList.InactiveAnon]]).toEqual([8, 4]);
    runProgram(mm.madviseDontneed(0x40_1000, 2 * K4));
    expect(seen).toEqual([
      'start: pte present, refcount 1, mapcount 1, dirty false',
      'end: pte none, refcount 1, mapcount 0, dirty true',
    ]);
    expect([mm.lookup(0x40_0000), mm.lookup(0x40_1000), mm.lookup(0x40_2000), mm.lookup(0x40_3000)]).toEqual([0x1000, null, null, 0x1003]);
    expect([mm.pages.inUse, mm.pages.tablePages, f.nrPages[LruList.InactiveAnon]]).toEqual([6, 4, 2]);
    expect([f.refcount[f.idx(0x1001)], f.flags[f.idx(0x1001)], f.lruListOf(0x1001)]).toEqual([0, 0, -1]);
    expect(f.lruFolios(LruList.InactiveAnon)).toEqual([0x1000, 0x1003]);
    // A refault gets a zeroed frame (the last freed comes back first) and faults again.
    expect(mm.hvaToPfn(0x40_1000, false)).toEqual({ ok: true, pfn: 0x1002, writable: true });
    expect(mm.faults).toBe(5);
  });

  it('munmap frees the folios and the page tables only the area used; neighbours keep theirs', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    mm.mmap(0x4000_0000, 4 * K4);
    mm.hvaToPfn(0x40_0000, true);
    mm.hvaToPfn(0x4000_0000, true);
    mm.hvaToPfn(0x4000_1000, true);
    // pgd + the first area's pud, pmd, pte table and folio; the second area's pmd, pte table and two folios.
    expect([mm.pages.inUse, mm.pages.tablePages]).toEqual([9, 6]);
    runProgram(mm.munmap(0x4000_0000, 4 * K4));
    // pud[1]'s pmd and its pte table go; the pgd, pud, pmd and pte table of the first area stay.
    expect([mm.pages.inUse, mm.pages.tablePages]).toEqual([5, 4]);
    expect(mm.findVma(0x4000_0000)).toBe(null);
    expect(mm.hvaToPfn(0x4000_0000, false)).toEqual({ ok: false, error: 'EFAULT' });
    expect(mm.lookup(0x40_0000)).toBe(0x1000);
  });

  it('exit frees every folio and every table but the pgd', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    mm.mmap(0x4000_0000, M2, { level: 2 });
    mm.hvaToPfn(0x40_0000, true);
    mm.hvaToPfn(0x4000_0000, true);
    runProgram(mm.exit());
    expect([mm.pages.inUse, mm.pages.tablePages]).toEqual([1, 1]);
    expect(mm.folios.nrPages[LruList.InactiveAnon]).toBe(0);
  });
});

describe('folios', () => {
  it('a faulted-in anon folio: anon, swap-backed, uptodate, on the inactive anon LRU, refcount 1, mapcount 1, rmap to its area', () => {
    const mm = mmOnly();
    const vma = mm.mmap(0x40_0000, 8 * K4);
    mm.hvaToPfn(0x40_3000, true);
    mm.hvaToPfn(0x40_1000, true);
    const f = mm.folios;
    const i = f.idx(0x1000);
    expect(f.flags[i]).toBe(PG_anon | PG_swapbacked | PG_uptodate | PG_lru);
    expect([f.refcount[i], f.mapcount[i], f.mapping[i], f.index[i], f.lruGen(0x1000), f.lruRefs(0x1000)]).toEqual([1, 1, vma.anonVma, 3, -1, 0]);
    const chain = (f.mappings[vma.anonVma] as AnonVma).vmas; // the anon_vma's chain
    expect([chain.length, chain[0] === vma]).toEqual([1, true]);
    expect(vma.pgoff).toBe(0);
    expect(f.index[f.idx(0x1001)]).toBe(1);
    expect(f.lruFolios(LruList.InactiveAnon)).toEqual([0x1000, 0x1001]); // oldest first
    // KVM's own page-table pages are frames with a struct page but no LRU state.
    const kvmPage = mm.pages.allocPage() / K4;
    expect([f.flags[f.idx(kvmPage)], f.refcount[f.idx(kvmPage)], f.lruListOf(kvmPage)]).toEqual([0, 1, -1]);
  });

  it('folio_mark_accessed: referenced, then active (moved to the active list); MGLRU gen and refs fields round-trip', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    mm.hvaToPfn(0x40_0000, true);
    const f = mm.folios;
    f.markAccessed(0x1000);
    expect([f.test(0x1000, PG_referenced), f.lruListOf(0x1000)]).toEqual([true, LruList.InactiveAnon]);
    f.markAccessed(0x1000);
    expect([f.test(0x1000, PG_referenced), f.lruListOf(0x1000), f.nrPages[LruList.ActiveAnon]]).toEqual([false, LruList.ActiveAnon, 1]);
    f.setLruGen(0x1000, 3);
    f.setLruRefs(0x1000, 2);
    expect([f.lruGen(0x1000), f.lruRefs(0x1000), f.order(0x1000)]).toEqual([3, 2, 0]);
  });
});

describe('through KVM', () => {
  it('a guest write and a guest read fault the host pages in with the same PTE bits; KVM maps what the host maps', () => {
    const kvm = makeVm();
    expect(guestAccess(kvm, 0x5000, 'write').outcome).toBe(0);
    expect(guestAccess(kvm, 0x9000, 'read').outcome).toBe(0);
    const mm = kvm.mm;
    for (const gpa of [0x5000, 0x9000]) {
      const pfn = mm.lookup(hvaOf(gpa))!;
      expect(mm.pte(hvaOf(gpa))).toBe(0x8000_0000_0000_0867n | (BigInt(pfn) << 12n));
    }
    expect(mm.pt.pgd).toBe(2 ** 46 - K4);
    expect(mm.faults).toBe(2);
    expect(mm.pages.tablePages).toBe(4);
  });

  it('a VM backed by 2M pages: the host maps a PMD leaf and KVM a 2M SPTE over the same folio', () => {
    const kvm = makeVm({ hostLevel: 2 });
    expect(guestAccess(kvm, 0x21_2345, 'read').outcome).toBe(0);
    const pfn = kvm.mm.lookup(hvaOf(0x20_0000))!;
    expect(pfn % 512).toBe(0);
    expect(kvm.mm.pte(hvaOf(0x21_2000))).toBe(0x8000_0000_0000_08e7n | (BigInt(pfn) << 12n));
    expect(kvm.mm.hostMappingLevel(GUEST_HVA_BASE + 0x21_2000)).toBe(2);
    expect(kvm.tdpMmu.lookup(0x212)!.level).toBe(2);
    expect(kvm.mm.faults).toBe(1);
  });
});
