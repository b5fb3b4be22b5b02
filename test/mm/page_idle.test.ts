/**
 * Idle page tracking (src/mm/page_idle.ts; mm.md 2.4, scenarios 24-29):
 * the bitmap's read and write rules, its clear_young calls into KVM, and
 * the hand-off of PG_young to folio_referenced.
 */
import { describe, expect, test } from 'vitest';
import { runProgram } from '../../src/hw/sched.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { LruList, PG_anon, PG_idle, PG_locked, PG_lru, PG_referenced, PG_young } from '../../src/mm/folio.js';
import { Lruvec } from '../../src/mm/mglru.js';
import { EINVAL } from '../../src/mm/mmu_notifier.js';
import { ENXIO, PageIdle } from '../../src/mm/page_idle.js';
import { HostRmap } from '../../src/mm/rmap.js';
import { captureEvents, guestAccess, hvaOf, makeVm, spteOf, steerNextPfn, type KindName } from '../support/kvm_setup.js';

const PAGE = 4096;
const PTE_A = 0x20n;
const SPTE_A = 0x100n; // EPT accessed flag (A/D enabled)

function clearYoungCalls(kvm: Kvm): number {
  return kvm.mm.notifiers.calls.get('clear_young') ?? 0;
}
function flags(kvm: Kvm, pfn: number, mask: number): number {
  return kvm.mm.folios.flags[kvm.mm.folios.idx(pfn)] & mask;
}
/** A guest access that misses the guest TLB (clear_young does not flush, so a cached translation would hide it). */
function touch(kvm: Kvm, gpa: number, kind: KindName = 'read'): void {
  kvm.flushRemoteTlbs();
  guestAccess(kvm, gpa, kind);
}
function word(pi: PageIdle, pfn: number): bigint {
  const w = runProgram(pi.readChunk(pfn));
  if (typeof w === 'number') throw new Error(`read failed: ${w}`);
  return w;
}
function bytesOf(...words: bigint[]): Uint8Array {
  const b = new Uint8Array(words.length * 8);
  const v = new DataView(b.buffer);
  words.forEach((w, i) => v.setBigUint64(i * 8, w, true));
  return b;
}
function wordsOf(b: Uint8Array): bigint[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: bigint[] = [];
  for (let o = 0; o + 8 <= b.length; o += 8) out.push(v.getBigUint64(o, true));
  return out;
}
/**
 * A VM whose guest pages 0..63 are the 64 pfns of chunk 0x41 (pfns
 * 0x1040..0x107f): KVM's tables for gfns 0..511 come first, with gfn 511.
 */
function chunkVm(): { kvm: Kvm; pi: PageIdle } {
  const kvm = makeVm();
  guestAccess(kvm, 0x1ff000, 'write');
  steerNextPfn(kvm, 0x1040);
  for (let i = 0; i < 64; i++) guestAccess(kvm, i * PAGE, 'write');
  for (let i = 0; i < 64; i++) expect(kvm.mm.lookup(hvaOf(i * PAGE))).toBe(0x1040 + i);
  return { kvm, pi: new PageIdle(kvm.pages) };
}

describe('page_idle scenarios (mm.md 7)', () => {
  test('Scenario 24: Mark/read cycle', () => {
    const kvm = makeVm();
    guestAccess(kvm, 0x3000, 'write');
    const mm = kvm.mm;
    const hva = hvaOf(0x3000);
    const pfn = mm.lookup(hva)!;
    expect(pfn).toBe(0x1001);
    expect(flags(kvm, pfn, PG_lru)).toBe(PG_lru);
    expect(mm.pte(hva)).toBe(0x8000_0000_0100_1867n); // A and D set by the fault
    expect(spteOf(kvm, 3)).toBe(0x8600_0000_0100_1b77n); // A set: the fault was not a prefetch
    const pi = new PageIdle(kvm.pages);
    const ages = captureEvents(kvm, ['kvm_age_hva']);
    mm.notifiers.resetCounters();

    // Write the bit: one clear_young over one page; both A bits were set, so young, then idle.
    expect(runProgram(pi.markIdle(pfn))).toBe(8);
    expect(clearYoungCalls(kvm)).toBe(1);
    expect(ages).toEqual([{ name: 'kvm_age_hva', fields: { start: hva, end: hva + PAGE } }]);
    expect(mm.pte(hva) & PTE_A).toBe(0n);
    expect(spteOf(kvm, 3)).toBe(0x8600_0000_0100_1a77n);
    expect(flags(kvm, pfn, PG_young | PG_idle)).toBe(PG_young | PG_idle);
    expect(pi.stats).toMatchObject({ writes: 1, clearPteRefs: 1, ptes: 1, clearYoung: 1, young: 1 });

    // Read with no access in between: still idle; the read itself asked KVM once more.
    expect(word(pi, pfn)).toBe(1n << 1n); // pfn 0x1001 is bit 1 of chunk 0x40
    expect(clearYoungCalls(kvm)).toBe(2);
    expect(flags(kvm, pfn, PG_young | PG_idle)).toBe(PG_young | PG_idle);

    // The guest touches the page (S.A = 1), the read finds it young: idle cleared, 0.
    touch(kvm, 0x3000);
    expect(spteOf(kvm, 3) & SPTE_A).toBe(SPTE_A);
    expect(mm.pte(hva) & PTE_A).toBe(0n); // guest accesses never touch the host PTE
    expect(word(pi, pfn)).toBe(0n);
    expect(clearYoungCalls(kvm)).toBe(3);
    expect(spteOf(kvm, 3) & SPTE_A).toBe(0n);
    expect(flags(kvm, pfn, PG_young | PG_idle)).toBe(PG_young);
    // Not idle any more: the next read does not even ask.
    expect(word(pi, pfn)).toBe(0n);
    expect(clearYoungCalls(kvm)).toBe(3);
    expect(mm.notifiers.calls.get('test_young') ?? 0).toBe(0);
    expect(mm.notifiers.calls.get('clear_flush_young') ?? 0).toBe(0);
  });

  test('Scenario 25: Non-LRU and chunk effects', () => {
    const { kvm, pi } = chunkVm();
    const f = kvm.mm.folios;
    const pos = 0x41 * 8;
    kvm.mm.notifiers.resetCounters();

    // A folio not on the LRU (as in a per-CPU add batch, or isolated: PG_lru clear) is ignored.
    const list = f.lruDel(0x1045);
    expect(list).toBe(LruList.InactiveAnon);
    expect(runProgram(pi.write(bytesOf(1n << 5n), pos))).toBe(8);
    expect(clearYoungCalls(kvm)).toBe(0);
    expect(flags(kvm, 0x1045, PG_idle | PG_young)).toBe(0);
    f.set(0x1045, PG_idle); // even an idle flag set behind page_idle's back reads 0 off the LRU
    expect(word(pi, 0x1045)).toBe(0n);
    expect(clearYoungCalls(kvm)).toBe(0);
    f.clear(0x1045, PG_idle);
    f.lruAdd(0x1045, list);

    // One 8-byte write marks all 64: one clear_young each.
    expect(runProgram(pi.write(bytesOf(0xffff_ffff_ffff_ffffn), pos))).toBe(8);
    expect(clearYoungCalls(kvm)).toBe(64);
    // One 8-byte read of the chunk: clear_young for all 64 idle folios.
    expect(word(pi, 0x1040)).toBe(0xffff_ffff_ffff_ffffn);
    expect(clearYoungCalls(kvm)).toBe(128);
    // Three guest touches: those bits read 0, still 64 calls.
    for (const g of [0, 7, 63]) touch(kvm, g * PAGE);
    expect(word(pi, 0x1040)).toBe(0xffff_ffff_ffff_ffffn & ~(1n | (1n << 7n) | (1n << 63n)));
    expect(clearYoungCalls(kvm)).toBe(192);
    // Then only the 61 still idle are asked.
    expect(word(pi, 0x1040)).toBe(0x7fff_ffff_ffff_ff7en);
    expect(clearYoungCalls(kvm)).toBe(253);
  });

  test('Scenario 26: Young flag hand-off', () => {
    const kvm = makeVm();
    guestAccess(kvm, 0x3000, 'write');
    const pfn = kvm.mm.lookup(hvaOf(0x3000))!;
    const pi = new PageIdle(kvm.pages);
    runProgram(pi.markIdle(pfn)); // cleared P.A and S.A, set young and idle
    expect(flags(kvm, pfn, PG_young | PG_idle)).toBe(PG_young | PG_idle);
    expect(kvm.mm.pte(hvaOf(0x3000)) & PTE_A).toBe(0n);
    expect(spteOf(kvm, 3) & SPTE_A).toBe(0n);
    kvm.mm.notifiers.resetCounters();

    // Classic reclaim's folio_referenced: nothing young in any MMU, but the young flag counts once.
    const rmap = new HostRmap(kvm.mm.folios, null);
    expect(runProgram(rmap.folioReferenced(pfn)).referenced).toBe(1);
    expect(kvm.mm.notifiers.calls.get('clear_flush_young')).toBe(1);
    expect(flags(kvm, pfn, PG_young | PG_idle)).toBe(PG_idle); // young consumed
    // Consumed: the next reclaim pass sees no reference...
    expect(runProgram(rmap.folioReferenced(pfn)).referenced).toBe(0);
    // ...until the guest touches it; then a reference, and idle is cleared.
    touch(kvm, 0x3000);
    expect(runProgram(rmap.folioReferenced(pfn)).referenced).toBe(1);
    expect(flags(kvm, pfn, PG_young | PG_idle)).toBe(0);
    expect(spteOf(kvm, 3) & SPTE_A).toBe(0n);
    expect(word(pi, pfn)).toBe(0n);
  });

  test('Scenario 27: MGLRU idle bug', () => {
    for (const mode of ['classic', 'mglru'] as const) {
      const kvm = makeVm();
      if (mode === 'mglru') new Lruvec(kvm.mm.folios); // folio_mark_accessed becomes lru_gen_inc_refs
      guestAccess(kvm, 0x3000, 'write');
      const pfn = kvm.mm.lookup(hvaOf(0x3000))!;
      const pi = new PageIdle(kvm.pages);
      runProgram(pi.markIdle(pfn));
      kvm.mm.folios.markAccessed(pfn); // a read(2) of the page: folio_mark_accessed
      expect(flags(kvm, pfn, PG_referenced)).toBe(PG_referenced);
      if (mode === 'classic') {
        expect(flags(kvm, pfn, PG_idle)).toBe(0);
        expect(word(pi, pfn)).toBe(0n);
      } else {
        expect(flags(kvm, pfn, PG_idle)).toBe(PG_idle); // still idle: the access is lost to page_idle
        expect(word(pi, pfn)).toBe(1n << 1n);
      }
    }
  });

  test('Scenario 28: NUMA-balancing loss', () => {
    const run = (numaHint: boolean): { stillIdle: number; zapped: number } => {
      const kvm = makeVm();
      const pages = 10;
      for (let i = 0; i < pages; i++) guestAccess(kvm, i * PAGE, 'write');
      const pi = new PageIdle(kvm.pages);
      const pfns = Array.from({ length: pages }, (_, i) => kvm.mm.lookup(hvaOf(i * PAGE))!);
      for (const p of pfns) runProgram(pi.markIdle(p));
      for (let i = 0; i < pages; i++) touch(kvm, i * PAGE);
      for (let i = 0; i < pages; i++) expect(spteOf(kvm, i) & SPTE_A).toBe(SPTE_A);
      kvm.mm.notifiers.resetCounters();
      if (numaHint) {
        // change_prot_numa's change_protection: a PROTECTION_VMA invalidation; KVM zaps without moving A to the folio.
        runProgram(kvm.mm.mprotect(hvaOf(0), kvm.memslots.gfnToMemslot(0)!.npages * PAGE, { writable: false }));
        expect(kvm.mm.notifiers.rangesByEvent.get('MMU_NOTIFY_PROTECTION_VMA')).toBe(1);
      }
      const zapped = pfns.filter((_, i) => kvm.tdpMmu.lookup(i) === null || (spteOf(kvm, i) & 0x7n) === 0n).length;
      let stillIdle = 0;
      for (const p of pfns) if (runProgram(pi.isIdle(p))) stillIdle++;
      for (let i = 0; i < pages; i++) expect(kvm.mm.pte(hvaOf(i * PAGE)) & PTE_A).toBe(0n);
      // Each isIdle reads the whole chunk (all 10 pfns share it): asking for every folio still idle.
      expect(clearYoungCalls(kvm)).toBe(numaHint ? pages * pages : pages);
      return { stillIdle, zapped };
    };
    expect(run(false)).toEqual({ stillIdle: 0, zapped: 0 });
    const lost = run(true);
    expect(lost).toEqual({ stillIdle: 10, zapped: 10 });
    expect(lost.stillIdle >= 10 / 10).toBe(true); // access_tracking_perf_test: "Too many pages still idle"
  });

  test('Scenario 29: access_tracking_perf_test, page_idle mode (reduced: 1 vCPU, 16 MiB)', () => {
    const bytes = 16 << 20;
    const pages = bytes / PAGE;
    const kvm = makeVm({ memory: bytes });
    const pi = new PageIdle(kvm.pages);
    const sweep = (kind: KindName): void => {
      for (let g = 0; g < pages; g++) guestAccess(kvm, g * PAGE, kind);
    };
    /** mark_vcpu_memory_idle: pagemap lookup, read the chunk, write the single bit unless already idle. */
    const mark = (): { noPfn: number; stillIdle: number; clearYoung: number; writes: number } => {
      kvm.mm.notifiers.resetCounters();
      let noPfn = 0;
      let stillIdle = 0;
      let writes = 0;
      for (let g = 0; g < pages; g++) {
        const pfn = kvm.mm.lookup(hvaOf(g * PAGE));
        if (pfn === null) {
          noPfn++;
          continue;
        }
        if (runProgram(pi.isIdle(pfn))) {
          stillIdle++;
          continue;
        }
        expect(runProgram(pi.markIdle(pfn))).toBe(8);
        writes++;
      }
      expect(noPfn).toBeLessThan(pages / 100);
      expect(stillIdle).toBeLessThan(pages / 10);
      return { noPfn, stillIdle, clearYoung: clearYoungCalls(kvm), writes };
    };
    sweep('write'); // Populating memory
    sweep('write'); // Writing to populated memory
    sweep('read'); // Reading from populated memory
    // Guest pfns per bitmap chunk fix the chunk-read cost: n folios in a chunk cost n writes plus 0+1+...+(n-1) reads.
    const perChunk = new Map<number, number>();
    for (let g = 0; g < pages; g++) {
      const c = Math.floor(kvm.mm.lookup(hvaOf(g * PAGE))! / 64);
      perChunk.set(c, (perChunk.get(c) ?? 0) + 1);
    }
    const tri = [...perChunk.values()].reduce((s, n) => s + (n * (n - 1)) / 2, 0);
    const m1 = mark();
    expect(m1).toEqual({ noPfn: 0, stillIdle: 0, clearYoung: pages + tri, writes: pages });
    sweep('write'); // Writing to idle memory
    const m2 = mark();
    // Each chunk's first read finds all its folios idle and young (n calls); then as in the first mark.
    expect(m2).toEqual({ noPfn: 0, stillIdle: 0, clearYoung: 2 * pages + tri, writes: pages });
    sweep('read'); // Reading from idle memory
    // The layout (KVM's table pages interleave with guest folios) makes these exact.
    expect(tri).toBe(128392);
    expect([m1.clearYoung, m2.clearYoung]).toEqual([132488, 136584]);
  });
});

describe('page_idle bitmap rules', () => {
  test('offset and count must be multiples of 8: -EINVAL, nothing done', () => {
    const { kvm, pi } = chunkVm();
    kvm.mm.notifiers.resetCounters();
    const buf = new Uint8Array(16).fill(0xff);
    expect(runProgram(pi.read(buf, 0x41 * 8 + 4, 8))).toBe(-EINVAL);
    expect(runProgram(pi.read(buf, 0x41 * 8, 12))).toBe(-EINVAL);
    expect(runProgram(pi.write(buf, 0x41 * 8 + 1, 8))).toBe(-EINVAL);
    expect(runProgram(pi.write(buf, 0x41 * 8, 4))).toBe(-EINVAL);
    expect(clearYoungCalls(kvm)).toBe(0);
    expect(flags(kvm, 0x1040, PG_idle)).toBe(0);
    expect(pi.stats.reads + pi.stats.writes).toBe(0);
  });

  test('max_pfn: reads at or past it return 0, writes -ENXIO, a straddling read ends short', () => {
    const kvm = makeVm();
    const pi0 = new PageIdle(kvm.pages);
    expect(pi0.maxPfn).toBe((kvm.pages.base + kvm.pages.size) / PAGE);
    const { kvm: k2, pi } = chunkVm();
    const small = new PageIdle(k2.pages, { maxPfn: 0x1080 }); // chunk 0x41 is the last whole chunk
    runProgram(small.write(bytesOf(0xffff_ffff_ffff_ffffn), 0x41 * 8));
    const buf = new Uint8Array(16).fill(0xaa);
    expect(runProgram(small.read(buf, 0x42 * 8))).toBe(0);
    expect(buf[0]).toBe(0xaa); // untouched
    expect(runProgram(small.write(bytesOf(1n), 0x42 * 8))).toBe(-ENXIO);
    expect(runProgram(small.read(buf, 0x41 * 8))).toBe(8); // 16 asked, one chunk exists
    expect(wordsOf(buf)).toEqual([0xffff_ffff_ffff_ffffn, 0xaaaa_aaaa_aaaa_aaaan]);
    // max_pfn inside a chunk: that chunk is filled, but not counted in the return value.
    const mid = new PageIdle(k2.pages, { maxPfn: 0x1060 });
    buf.fill(0xaa);
    expect(runProgram(mid.read(buf, 0x41 * 8))).toBe(0);
    expect(wordsOf(buf)[0]).toBe(0xffff_ffffn); // pfns 0x1040..0x105f
    expect(runProgram(mid.write(bytesOf(0n), 0x41 * 8))).toBe(0);
    void pi;
  });

  test('kernfs passes at most PAGE_SIZE bytes to one read or write', () => {
    const { pi } = chunkVm();
    const buf = new Uint8Array(2 * PAGE);
    expect(runProgram(pi.pread(buf, 0))).toBe(PAGE);
    expect(runProgram(pi.read(buf, 0))).toBe(2 * PAGE); // the handler itself has no limit
    expect(runProgram(pi.pwrite(new Uint8Array(2 * PAGE), 0))).toBe(PAGE);
  });

  test('0 bits, non-LRU frames and free frames are ignored; each chunk starts zeroed', () => {
    const { kvm, pi } = chunkVm();
    kvm.mm.notifiers.resetCounters();
    expect(runProgram(pi.write(bytesOf(0n), 0x41 * 8))).toBe(8);
    expect(clearYoungCalls(kvm)).toBe(0);
    // Chunk 0x40: pfn 0x1001 is gfn 511's folio; the others are KVM page tables, steered frames, or none.
    const before = pi.stats.skipped;
    expect(runProgram(pi.write(bytesOf(0xffff_ffff_ffff_ffffn), 0x40 * 8))).toBe(8);
    expect(pi.stats.skipped - before).toBe(63);
    expect(clearYoungCalls(kvm)).toBe(1);
    expect(word(pi, 0x1000)).toBe(1n << 1n);
    // Pfns below the pool have no struct page.
    expect(runProgram(pi.write(bytesOf(0xffff_ffff_ffff_ffffn), 0))).toBe(8);
    expect(word(pi, 0)).toBe(0n);
    const buf = new Uint8Array(8).fill(0xff);
    expect(runProgram(pi.read(buf, 0x43 * 8))).toBe(8);
    expect(wordsOf(buf)).toEqual([0n]);
  });

  test('page_idle_get_folio: tail pages skipped; a PMD-mapped THP clears the PMD A bit and asks over PMD_SIZE', () => {
    const kvm = makeVm({ hostLevel: 2 });
    guestAccess(kvm, 0x20_3000, 'write');
    const hva = hvaOf(0x20_0000);
    const head = kvm.mm.lookup(hva)!;
    expect(head).toBe(0x1200);
    expect(kvm.mm.pte(hva)).toBe(0x8000_0000_0120_08e7n);
    const pi = new PageIdle(kvm.pages);
    const ages = captureEvents(kvm, ['kvm_age_hva']);
    kvm.mm.notifiers.resetCounters();
    expect(runProgram(pi.markIdle(head + 3))).toBe(8); // a tail page: ignored
    expect(clearYoungCalls(kvm)).toBe(0);
    expect(runProgram(pi.markIdle(head))).toBe(8);
    expect(clearYoungCalls(kvm)).toBe(1);
    expect(ages).toEqual([{ name: 'kvm_age_hva', fields: { start: hva, end: hva + 0x20_0000 } }]);
    expect(pi.stats).toMatchObject({ pmds: 1, ptes: 0, young: 1 });
    expect(kvm.mm.pte(hva)).toBe(0x8000_0000_0120_08c7n); // PMD A cleared
    expect(spteOf(kvm, 0x203) & SPTE_A).toBe(0n);
    expect(flags(kvm, head, PG_idle | PG_young)).toBe(PG_idle | PG_young);
    expect(word(pi, head)).toBe(1n); // only the head's bit: tails never read idle
  });

  test('page_idle_clear_pte_refs: unmapped folios and failed folio try-lock skip the rmap walk', () => {
    const { kvm, pi } = chunkVm();
    const f = kvm.mm.folios;
    kvm.mm.notifiers.resetCounters();
    f.mapcount[f.idx(0x1040)] = 0; // as a folio only in the swap cache
    runProgram(pi.markIdle(0x1040));
    expect(flags(kvm, 0x1040, PG_idle | PG_young)).toBe(PG_idle);
    expect(clearYoungCalls(kvm)).toBe(0);
    f.mapcount[f.idx(0x1040)] = 1;
    // A non-anon folio needs the folio lock; locked elsewhere, the walk is skipped but idle is still set.
    f.clear(0x1041, PG_anon);
    f.set(0x1041, PG_locked);
    runProgram(pi.markIdle(0x1041));
    expect(flags(kvm, 0x1041, PG_idle | PG_young | PG_locked)).toBe(PG_idle | PG_locked);
    expect(clearYoungCalls(kvm)).toBe(0);
    f.clear(0x1041, PG_locked);
    runProgram(pi.markIdle(0x1041));
    expect(flags(kvm, 0x1041, PG_idle | PG_young | PG_locked)).toBe(PG_idle | PG_young);
    expect(clearYoungCalls(kvm)).toBe(1);
    expect(pi.stats).toMatchObject({ clearPteRefs: 3, rmapWalks: 1 });
    // get/put leave refcounts as they were.
    expect(f.refcount[f.idx(0x1041)]).toBe(1);
  });

  test('clear_young does not flush: a guest access through a cached translation leaves the page idle', () => {
    const kvm = makeVm();
    guestAccess(kvm, 0x3000, 'write');
    const pfn = kvm.mm.lookup(hvaOf(0x3000))!;
    const pi = new PageIdle(kvm.pages);
    runProgram(pi.markIdle(pfn));
    guestAccess(kvm, 0x3000, 'read'); // guest TLB hit: no walk, S.A stays 0
    expect(spteOf(kvm, 3) & SPTE_A).toBe(0n);
    expect(word(pi, pfn)).toBe(1n << 1n);
  });

  test('a VMM access sets the host PTE A bit, which the read clears and counts', () => {
    const kvm = makeVm();
    guestAccess(kvm, 0x3000, 'write');
    const pfn = kvm.mm.lookup(hvaOf(0x3000))!;
    const pi = new PageIdle(kvm.pages);
    runProgram(pi.markIdle(pfn));
    kvm.mm.folios.clear(pfn, PG_young);
    kvm.mm.access(hvaOf(0x3000), false);
    expect(kvm.mm.pte(hvaOf(0x3000)) & PTE_A).toBe(PTE_A);
    expect(word(pi, pfn)).toBe(0n);
    expect(kvm.mm.pte(hvaOf(0x3000)) & PTE_A).toBe(0n);
    expect(flags(kvm, pfn, PG_idle | PG_young)).toBe(PG_young);
  });
});
