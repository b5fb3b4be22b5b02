/**
 * The remaining mm operations of mm.md section 6 against a real KVM:
 * mremap moving an area (UNMAP), madvise(MADV_FREE) (CLEAR) and lazyfree
 * reclaim, migration of one folio (CLEAR, migration entry), clear_refs
 * soft-dirty (SOFT_DIRTY). Per operation: the event, range and flags, the
 * order (what the PTE and the host TLB flush count look like inside start
 * and end), the exact PTEs after, KVM's SPTEs zapped, and the data tokens.
 * Then munmap, mprotect, madvise DONTNEED/FREE and mremap (shrink, grow in
 * place, MREMAP_MAYMOVE, MREMAP_FIXED) on part of an area: the exact VMA
 * list after (split, merged back), the events over exactly the range, the
 * SPTEs outside it kept, and the errno of bad arguments, which change
 * nothing.
 */
import { describe, expect, it } from 'vitest';
import { Outcome } from '../../src/hw/result.js';
import { runProgram } from '../../src/hw/sched.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { LruList, PG_dirty, PG_swapbacked } from '../../src/mm/folio.js';
import { madviseFree } from '../../src/mm/madvise_free.js';
import { SWP_MIGRATION_WRITE, decodeMigrationEntry, migrateFolio } from '../../src/mm/migrate.js';
import { MMU_NOTIFIER_EVENT_NAMES, MMU_NOTIFIER_RANGE_BLOCKABLE, ULONG_MAX } from '../../src/mm/mmu_notifier.js';
import { MMAP_BASE, MmError, type MmStruct } from '../../src/mm/mm.js';
import { mremap, mremapMove } from '../../src/mm/mremap.js';
import { clearSoftDirty } from '../../src/mm/soft_dirty.js';
import { setUpReclaim } from '../../src/mm/vmscan.js';
import { GUEST_HVA_BASE, guestAccess, makeVm, sptePresent, watchInvalidations } from '../support/kvm_setup.js';

const K4 = 4096;
const hva = (gpa: number): number => GUEST_HVA_BASE + gpa;

interface Rec {
  op: 'start' | 'end';
  event: string;
  start: number;
  end: number;
  flags: number;
  /** The watched PTEs when the callback ran. */
  ptes: bigint[];
  /** Host TLB flushes so far. */
  flushes: number;
}

/** A VM with paging off and a recorder registered after KVM (so it is called first: the SPTEs are still there at its start). */
function setup(memory = 64 * K4): { kvm: Kvm; log: Rec[]; watch: number[]; flushes: () => number } {
  const kvm = makeVm({ memory });
  const log: Rec[] = [];
  const watch: number[] = [];
  let flushes = 0;
  const cpu = kvm.mm.cpu;
  const flushAll = cpu.flushAll.bind(cpu);
  cpu.flushAll = () => {
    flushes++;
    flushAll();
  };
  watchInvalidations(kvm, (op, r) => {
    log.push({ op, event: MMU_NOTIFIER_EVENT_NAMES[r.event], start: r.start, end: r.end, flags: r.flags, ptes: watch.map((a) => kvm.mm.pte(a)), flushes });
  });
  return { kvm, log, watch, flushes: () => flushes };
}

/** A guest write that stores a new data token, as the trace layer does. */
function guestWrite(kvm: Kvm, gpa: number): number {
  const o = guestAccess(kvm, gpa, 'write');
  expect(o.outcome).toBe(Outcome.Ok);
  return kvm.mm.recordWrite(o.hpa);
}

describe('mremap moving a whole area', () => {
  it('UNMAP over the old range around the PTE move (flush inside), then the old area unmapped with a second UNMAP; tokens kept; KVM zapped, guest EFAULT', () => {
    const { kvm, log, watch } = setup(16 * K4);
    const t0 = guestWrite(kvm, 0);
    const t1 = guestWrite(kvm, K4);
    const oldStart = hva(0);
    const newStart = hva(0x100_0000);
    const pte0 = kvm.mm.pte(oldStart);
    expect(pte0 & 0xfffn).toBe(0x867n);
    expect(sptePresent(kvm, 0)).toBe(true);
    watch.push(oldStart, newStart);
    const r = runProgram(mremapMove(kvm.mm, oldStart, 16 * K4, newStart));
    expect(r.moved).toBe(2);
    expect(r.flushes).toBe(1);
    const B = MMU_NOTIFIER_RANGE_BLOCKABLE;
    expect(log.map((l) => [l.op, l.event, l.start, l.end, l.flags])).toEqual([
      ['start', 'MMU_NOTIFY_UNMAP', oldStart, oldStart + 16 * K4, B],
      ['end', 'MMU_NOTIFY_UNMAP', oldStart, oldStart + 16 * K4, B],
      ['start', 'MMU_NOTIFY_UNMAP', oldStart, oldStart + 16 * K4, B],
      ['end', 'MMU_NOTIFY_UNMAP', oldStart, oldStart + 16 * K4, B],
    ]);
    // At the first start nothing has moved; at its end the PTE is at the new address and the TLB was flushed.
    expect(log[0].ptes).toEqual([pte0, 0n]);
    expect(log[1].ptes).toEqual([0n, pte0]);
    expect(log[1].flushes).toBe(log[0].flushes + 1);
    // The moved entry is the same (it was already soft-dirty).
    expect(kvm.mm.pte(newStart)).toBe(pte0);
    expect(kvm.mm.findVma(oldStart)).toBeNull();
    expect(kvm.mm.findVma(newStart)!.end).toBe(newStart + 16 * K4);
    expect(kvm.mm.tokenAt(newStart)).toBe(t0);
    expect(kvm.mm.tokenAt(newStart + K4)).toBe(t1);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
    expect(sptePresent(kvm, 0)).toBe(false);
    expect(sptePresent(kvm, 1)).toBe(false);
    // The memslot still names the old hva: the guest's access exits with EFAULT.
    expect(guestAccess(kvm, 0, 'read').userExit).not.toBeNull();
    // Four pairs: callsByEvent counts each start and each end once.
    expect(kvm.mm.notifiers.callsByEvent.get('MMU_NOTIFY_UNMAP')).toBe(8);
  });
});

describe('madvise(MADV_FREE)', () => {
  it('one CLEAR pair; PTEs old and clean inside it (flush before end); folio lazyfree; a clean one is discarded at reclaim, a rewritten one kept', () => {
    const { kvm, log, watch, flushes } = setup(16 * K4);
    const { reclaim } = setUpReclaim(kvm.mm, { swapSlots: 16 });
    guestWrite(kvm, 0);
    const t1 = guestWrite(kvm, K4);
    const a0 = hva(0);
    const a1 = hva(K4);
    const p0 = kvm.mm.pte(a0);
    const p1 = kvm.mm.pte(a1);
    watch.push(a0, a1);
    const r = runProgram(madviseFree(kvm.mm, a0, 2 * K4));
    expect(r).toEqual({ cleaned: 2, lazyfree: 2, swapFreed: 0, flushes: 1 });
    expect(log.map((l) => [l.op, l.event, l.start, l.end, l.flags])).toEqual([
      ['start', 'MMU_NOTIFY_CLEAR', a0, a0 + 2 * K4, MMU_NOTIFIER_RANGE_BLOCKABLE],
      ['end', 'MMU_NOTIFY_CLEAR', a0, a0 + 2 * K4, MMU_NOTIFIER_RANGE_BLOCKABLE],
    ]);
    expect(log[0].ptes).toEqual([p0, p1]);
    expect(log[1].ptes).toEqual([p0 & ~0x60n, p1 & ~0x60n]);
    expect(log[1].flushes).toBe(log[0].flushes + 1);
    expect(kvm.mm.pte(a0)).toBe(p0 & ~0x60n); // P|RW|U|soft-dirty|NX: 0x...807
    expect(kvm.mm.pte(a0) & 0xfffn).toBe(0x807n);
    expect(sptePresent(kvm, 0)).toBe(false);
    const f = kvm.mm.folios;
    const h0 = kvm.mm.lookup(a0)!;
    expect(f.test(h0, PG_swapbacked)).toBe(false);
    expect(f.test(h0, PG_dirty)).toBe(false);
    expect(f.nrPages[LruList.InactiveFile]).toBe(2);
    // The guest writes page 1 again (KVM dirties the folio); page 0 is only read.
    expect(guestAccess(kvm, 0, 'read').outcome).toBe(Outcome.Ok);
    const t1b = guestWrite(kvm, K4);
    expect(t1b).not.toBe(t1);
    // First look: both were referenced by the guest (KVM's young SPTEs): kept, PG_referenced set.
    runProgram(reclaim.shrinkLruvec(2, 12));
    expect(reclaim.lazyfree).toEqual({ freed: 0, redirtied: 0 });
    expect(reclaim.stats.verdicts).toEqual([0, 0, 2, 0]);
    // Second look: not young again, so try_to_unmap; the clean one goes, the written one stays.
    log.length = 0;
    const before = flushes();
    runProgram(reclaim.shrinkLruvec(2, 12));
    expect(reclaim.lazyfree).toEqual({ freed: 1, redirtied: 1 });
    // Each lazyfree unmap is a CLEAR pair over its page.
    expect(log.filter((l) => l.op === 'start').map((l) => [l.event, l.start, l.end])).toEqual([
      ['MMU_NOTIFY_CLEAR', a0, a0 + K4],
      ['MMU_NOTIFY_CLEAR', a1, a1 + K4],
    ]);
    expect(flushes()).toBeGreaterThan(before);
    expect(kvm.mm.pte(a0)).toBe(0n); // discarded: reads as zeroes
    expect(kvm.mm.tokenAt(a0)).toBe(0);
    expect(kvm.mm.tokenAt(a1)).toBe(t1b); // kept, swap-backed again
    expect(f.test(kvm.mm.lookup(a1)!, PG_swapbacked)).toBe(true);
    // Activated, then deactivated by the rebalancing shrink_active_list (inactive list low): an anon folio again.
    expect(f.lruListOf(kvm.mm.lookup(a1)!)).toBe(LruList.InactiveAnon);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });
});

describe('migrate_pages of one folio', () => {
  it('CLEAR over the page: migration entry inside it, then the new folio mapped with the same token; old frame freed; KVM refaults the new pfn', () => {
    const { kvm, log, watch } = setup(16 * K4);
    const t = guestWrite(kvm, 0);
    const a = hva(0);
    const before = kvm.mm.pte(a);
    const oldPfn = kvm.mm.lookup(a)!;
    watch.push(a);
    const inUse = kvm.pages.inUse;
    const r = runProgram(migrateFolio(kvm.mm, a))!;
    expect(r.oldPfn).toBe(oldPfn);
    expect(log.map((l) => [l.op, l.event, l.start, l.end, l.flags])).toEqual([
      ['start', 'MMU_NOTIFY_CLEAR', a, a + K4, MMU_NOTIFIER_RANGE_BLOCKABLE],
      ['end', 'MMU_NOTIFY_CLEAR', a, a + K4, MMU_NOTIFIER_RANGE_BLOCKABLE],
    ]);
    expect(log[0].ptes).toEqual([before]);
    expect(log[1].ptes).toEqual([r.migrationEntry]);
    expect(log[1].flushes).toBe(log[0].flushes + 1);
    const m = decodeMigrationEntry(Number(r.migrationEntry & 0xffffffffn), Number(r.migrationEntry >> 32n) | 0)!;
    expect(m).toEqual({ type: SWP_MIGRATION_WRITE, pfn: oldPfn, young: true, dirty: true, softDirty: true });
    // The new PTE: same flags (P|RW|U|A|D|soft-dirty|NX), new pfn.
    expect(kvm.mm.pte(a)).toBe(0x8000_0000_0000_0867n | BigInt(r.newPfn * K4));
    expect(r.newPfn).not.toBe(oldPfn);
    expect(kvm.mm.tokenAt(a)).toBe(t);
    expect(kvm.pages.inUse).toBe(inUse); // one frame in, one out
    const f = kvm.mm.folios;
    expect([f.refcount[f.idx(r.newPfn)], f.mapcount[f.idx(r.newPfn)]]).toEqual([1, 1]);
    expect(f.lruListOf(r.newPfn)).toBe(LruList.InactiveAnon);
    expect(sptePresent(kvm, 0)).toBe(false);
    const o = guestAccess(kvm, 0, 'read');
    expect(Math.floor(o.hpa / K4)).toBe(r.newPfn);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });
});

describe('clear_refs soft-dirty (type 4)', () => {
  it('one SOFT_DIRTY pair over 0..ULONG_MAX; PTEs write-protected and clean of soft-dirty at end; flush after end; the next write sets soft-dirty again', () => {
    const { kvm, log, watch } = setup(16 * K4);
    const t0 = guestWrite(kvm, 0);
    guestAccess(kvm, K4, 'read');
    const a0 = hva(0);
    const a1 = hva(K4);
    const p0 = kvm.mm.pte(a0);
    const p1 = kvm.mm.pte(a1);
    watch.push(a0, a1);
    const r = runProgram(clearSoftDirty(kvm.mm));
    expect(r.ptes).toBe(2);
    expect(log.map((l) => [l.op, l.event, l.start, l.end, l.flags])).toEqual([
      ['start', 'MMU_NOTIFY_SOFT_DIRTY', 0, ULONG_MAX, MMU_NOTIFIER_RANGE_BLOCKABLE],
      ['end', 'MMU_NOTIFY_SOFT_DIRTY', 0, ULONG_MAX, MMU_NOTIFIER_RANGE_BLOCKABLE],
    ]);
    expect(log[0].ptes).toEqual([p0, p1]);
    expect(log[1].ptes).toEqual([p0 & ~0x802n, p1 & ~0x802n]);
    // clear_refs_write: end, then flush_tlb_mm.
    expect(log[1].flushes).toBe(log[0].flushes);
    expect(kvm.mm.pte(a0) & 0xfffn).toBe(0x065n); // P|U|A|D
    expect(sptePresent(kvm, 0)).toBe(false);
    // A guest read maps read-only, a write faults through the host and is soft-dirty again.
    expect(guestAccess(kvm, K4, 'read').outcome).toBe(Outcome.Ok);
    expect(kvm.mm.pte(a1) & 0x802n).toBe(0n);
    const t1 = guestWrite(kvm, K4);
    expect(kvm.mm.pte(a1) & 0xfffn).toBe(0x867n);
    expect(kvm.mm.tokenAt(a0)).toBe(t0);
    expect(kvm.mm.tokenAt(a1)).toBe(t1);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });
});

// ---------------------------------------------------------------- partial ranges

const B = GUEST_HVA_BASE;
const P = (n: number): number => B + n * K4;

/** The VMA list as [first page, end page (relative to guest memory's hva), vm_pgoff, rw|ro]. */
function layout(mm: MmStruct): [number, number, number, string][] {
  return mm.areas.map((v) => [(v.start - B) / K4, (v.end - B) / K4, v.pgoff, v.writable ? 'rw' : 'ro']);
}

/** The notifier log as [op, event name without MMU_NOTIFY_, first page, end page]. */
function events(log: Rec[]): [string, string, number, number][] {
  return log.map((l) => [l.op, l.event.slice(11), (l.start - B) / K4, (l.end - B) / K4]);
}

/** A 16-page VM with pages 0..15 written by the guest; their tokens. */
function written(): { kvm: Kvm; log: Rec[]; watch: number[]; tokens: number[] } {
  const { kvm, log, watch } = setup(16 * K4);
  const tokens: number[] = [];
  for (let g = 0; g < 16; g++) tokens.push(guestWrite(kvm, g * K4));
  return { kvm, log, watch, tokens };
}

function presentGfns(kvm: Kvm): number[] {
  const out: number[] = [];
  for (let g = 0; g < 16; g++) if (sptePresent(kvm, g)) out.push(g);
  return out;
}

const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);

describe('munmap of part of an area', () => {
  it('splits the area around the hole; one UNMAP pair over exactly the range (PTEs present at start, gone at end, flushed in between); only those SPTEs zapped', () => {
    const { kvm, log, watch, tokens } = written();
    watch.push(P(3), P(4), P(7), P(8));
    const before = watch.map((a) => kvm.mm.pte(a));
    runProgram(kvm.mm.munmap(P(4), 4 * K4));
    expect(layout(kvm.mm)).toEqual([[0, 4, 0, 'rw'], [8, 16, 8, 'rw']]);
    expect(events(log)).toEqual([['start', 'UNMAP', 4, 8], ['end', 'UNMAP', 4, 8]]);
    expect(log[0].ptes).toEqual(before);
    expect(log[1].ptes).toEqual([before[0], 0n, 0n, before[3]]);
    expect(log[1].flushes).toBe(log[0].flushes + 1);
    expect(presentGfns(kvm)).toEqual([...range(0, 4), ...range(8, 16)]);
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 12, mismatches: [] });
    expect(kvm.mm.tokenAt(P(8))).toBe(tokens[8]);
    // The hole exits to userspace; the upper piece still works and takes new writes (the rmap finds it by vm_pgoff).
    expect(guestAccess(kvm, 5 * K4, 'read').userExit).not.toBeNull();
    const t9 = guestWrite(kvm, 9 * K4);
    expect(kvm.mm.findVma(P(9))!.tokens![1]).toBe(t9);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });

  it('a range over a hole and part of an area: one UNMAP pair over the whole range; nothing mapped there: no event', () => {
    const { kvm, log } = written();
    runProgram(kvm.mm.munmap(P(4), 4 * K4));
    log.length = 0;
    runProgram(kvm.mm.munmap(P(2), 4 * K4));
    expect(layout(kvm.mm)).toEqual([[0, 2, 0, 'rw'], [8, 16, 8, 'rw']]);
    expect(events(log)).toEqual([['start', 'UNMAP', 2, 6], ['end', 'UNMAP', 2, 6]]);
    log.length = 0;
    runProgram(kvm.mm.munmap(P(3), 5 * K4));
    expect(log).toEqual([]);
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 10, mismatches: [] });
  });
});

describe('mprotect of part of an area', () => {
  it('RO splits into three areas with one PROTECTION_VMA pair over the piece; RW again merges them back; only the piece\'s SPTEs zapped each time', () => {
    const { kvm, log, watch, tokens } = written();
    watch.push(P(3), P(4));
    const p3 = kvm.mm.pte(P(3));
    const p4 = kvm.mm.pte(P(4));
    runProgram(kvm.mm.mprotect(P(4), 4 * K4, { writable: false }));
    expect(layout(kvm.mm)).toEqual([[0, 4, 0, 'rw'], [4, 8, 4, 'ro'], [8, 16, 8, 'rw']]);
    expect(events(log)).toEqual([['start', 'PROTECTION_VMA', 4, 8], ['end', 'PROTECTION_VMA', 4, 8]]);
    expect(log[0].ptes).toEqual([p3, p4]);
    expect(log[1].ptes).toEqual([p3, p4 & ~2n]); // RW cleared inside start..end, flushed before end
    expect(log[1].flushes).toBe(log[0].flushes + 1);
    expect(presentGfns(kvm)).toEqual([...range(0, 4), ...range(8, 16)]);
    // A guest write to the read-only piece exits with EFAULT; a read maps it read-only.
    expect(guestAccess(kvm, 5 * K4, 'write').userExit).not.toBeNull();
    expect(guestAccess(kvm, 5 * K4, 'read').outcome).toBe(Outcome.Ok);
    // Already read-only: nothing to do, no event (mprotect_fixup's newflags == oldflags).
    log.length = 0;
    runProgram(kvm.mm.mprotect(P(5), K4, { writable: false }));
    expect(log).toEqual([]);
    runProgram(kvm.mm.mprotect(P(4), 4 * K4, { writable: true }));
    expect(layout(kvm.mm)).toEqual([[0, 16, 0, 'rw']]);
    expect(events(log)).toEqual([['start', 'PROTECTION_VMA', 4, 8], ['end', 'PROTECTION_VMA', 4, 8]]);
    expect(kvm.mm.pte(P(4))).toBe(p4);
    expect(kvm.mm.findVma(P(0))!.tokens).toEqual(Uint32Array.from(tokens));
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 16, mismatches: [] });
  });

  it('a range over two areas of different flags: one pair per area changed, over its part only', () => {
    const { kvm, log } = written();
    runProgram(kvm.mm.mprotect(P(8), 8 * K4, { writable: false }));
    log.length = 0;
    runProgram(kvm.mm.mprotect(P(6), 4 * K4, { writable: false }));
    expect(layout(kvm.mm)).toEqual([[0, 6, 0, 'rw'], [6, 16, 6, 'ro']]);
    expect(events(log)).toEqual([['start', 'PROTECTION_VMA', 6, 8], ['end', 'PROTECTION_VMA', 6, 8]]);
  });
});

describe('madvise DONTNEED and FREE of part of an area', () => {
  it('DONTNEED over two areas: one CLEAR pair per area over its part; no split; the pages read zero, the rest intact', () => {
    const { kvm, log, tokens } = written();
    runProgram(kvm.mm.mprotect(P(4), 12 * K4, { writable: false }));
    for (let g = 4; g < 16; g++) guestAccess(kvm, g * K4, 'read'); // map the read-only piece again
    log.length = 0;
    runProgram(kvm.mm.madviseDontneed(P(2), 3 * K4));
    expect(layout(kvm.mm)).toEqual([[0, 4, 0, 'rw'], [4, 16, 4, 'ro']]);
    expect(events(log)).toEqual([['start', 'CLEAR', 2, 4], ['end', 'CLEAR', 2, 4], ['start', 'CLEAR', 4, 5], ['end', 'CLEAR', 4, 5]]);
    expect(presentGfns(kvm)).toEqual([0, 1, ...range(5, 16)]);
    expect([2, 3, 4].map((g) => kvm.mm.tokenAt(P(g)))).toEqual([0, 0, 0]);
    expect(kvm.mm.tokenAt(P(5))).toBe(tokens[5]);
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 16, mismatches: [] });
  });

  it('FREE over two areas: one CLEAR pair per area over its part; only those PTEs old and clean', () => {
    const { kvm, log } = written();
    runProgram(kvm.mm.munmap(P(8), 8 * K4));
    runProgram(kvm.mm.mprotect(P(4), 4 * K4, { writable: false }));
    for (let g = 4; g < 8; g++) guestAccess(kvm, g * K4, 'read');
    const p1 = kvm.mm.pte(P(1));
    log.length = 0;
    const r = runProgram(madviseFree(kvm.mm, P(2), 3 * K4));
    expect(r).toEqual({ cleaned: 3, lazyfree: 3, swapFreed: 0, flushes: 2 });
    expect(events(log)).toEqual([['start', 'CLEAR', 2, 4], ['end', 'CLEAR', 2, 4], ['start', 'CLEAR', 4, 5], ['end', 'CLEAR', 4, 5]]);
    expect(kvm.mm.pte(P(2)) & 0x60n).toBe(0n);
    expect(kvm.mm.pte(P(1))).toBe(p1);
    expect(presentGfns(kvm)).toEqual([0, 1, 5, 6, 7]);
  });
});

describe('mremap of part of an area', () => {
  it('shrink: the tail unmapped (one UNMAP pair over it), the area ends at the new length', () => {
    const { kvm, log } = written();
    const r = runProgram(mremap(kvm.mm, P(0), 16 * K4, 10 * K4));
    expect([r.kind, r.addr]).toEqual(['shrink', P(0)]);
    expect(layout(kvm.mm)).toEqual([[0, 10, 0, 'rw']]);
    expect(events(log)).toEqual([['start', 'UNMAP', 10, 16], ['end', 'UNMAP', 10, 16]]);
    expect(presentGfns(kvm)).toEqual(range(0, 10));
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 10, mismatches: [] });
  });

  it('grow in place: no event, the area extended, new pages read zero; blocked by a neighbour it is ENOMEM without MREMAP_MAYMOVE', () => {
    const { kvm, log, tokens } = written();
    const r = runProgram(mremap(kvm.mm, P(0), 16 * K4, 20 * K4));
    expect([r.kind, r.addr]).toEqual(['grow', P(0)]);
    expect(layout(kvm.mm)).toEqual([[0, 20, 0, 'rw']]);
    expect(log).toEqual([]);
    expect(kvm.mm.tokenAt(P(18))).toBe(0);
    expect(kvm.mm.tokenAt(P(15))).toBe(tokens[15]);
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 20, mismatches: [] });
    kvm.mm.mmap(P(24), 4 * K4);
    expect(() => runProgram(mremap(kvm.mm, P(0), 20 * K4, 28 * K4))).toThrow('mremap: ENOMEM: 0x7f0000000000+0x14000 cannot grow to 0x1c000 in place and MREMAP_MAYMOVE is not set');
    expect(layout(kvm.mm)).toEqual([[0, 20, 0, 'rw'], [24, 28, 0, 'rw']]);
    expect(log).toEqual([]);
  });

  it('grow in place up to the next piece of the same mmap: vma_expand, then merged with it (contiguous vm_pgoff); no event', () => {
    const { kvm, log, tokens } = written();
    runProgram(kvm.mm.munmap(P(8), 2 * K4));
    log.length = 0;
    const r = runProgram(mremap(kvm.mm, P(0), 8 * K4, 10 * K4));
    expect(r.kind).toBe('grow');
    expect(layout(kvm.mm)).toEqual([[0, 16, 0, 'rw']]);
    expect(log).toEqual([]);
    expect(kvm.mm.findVma(P(0))!.tokens).toEqual(Uint32Array.from(tokens.map((t, g) => (g === 8 || g === 9 ? 0 : t))));
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 16, mismatches: [] });
  });

  it('grow with MREMAP_MAYMOVE when blocked: moved whole to the top free range below mmap_base (UNMAP pairs over the old range), data along', () => {
    const { kvm, log, tokens } = written();
    kvm.mm.mmap(P(16), 4 * K4);
    const r = runProgram(mremap(kvm.mm, P(0), 16 * K4, 32 * K4, { maymove: true }));
    const to = MMAP_BASE - 32 * K4;
    expect([r.kind, r.addr, r.moved]).toEqual(['move', to, 16]);
    expect(events(log)).toEqual([['start', 'UNMAP', 0, 16], ['end', 'UNMAP', 0, 16], ['start', 'UNMAP', 0, 16], ['end', 'UNMAP', 0, 16]]);
    expect(kvm.mm.areas.map((v) => [v.start, v.end, v.pgoff])).toEqual([[to, to + 32 * K4, 0], [P(16), P(20), 0]]);
    expect(range(0, 16).map((g) => kvm.mm.tokenAt(to + g * K4))).toEqual(tokens);
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 32, mismatches: [] });
    expect(presentGfns(kvm)).toEqual([]);
  });

  it('move of the middle with MREMAP_FIXED: three areas (pgoff kept), UNMAP twice over the moved part only; the rmap finds the moved folios; moving back merges the three into one', () => {
    const { kvm, log, watch, tokens } = written();
    const X = 0x1_0000_0000;
    watch.push(P(4), X);
    const p4 = kvm.mm.pte(P(4));
    const r = runProgram(mremap(kvm.mm, P(4), 4 * K4, 4 * K4, { fixed: X }));
    expect([r.kind, r.addr, r.moved, r.flushes]).toEqual(['move', X, 4, 1]);
    expect(kvm.mm.areas.map((v) => [v.start, v.end, v.pgoff])).toEqual([[X, X + 4 * K4, 4], [P(0), P(4), 0], [P(8), P(16), 8]]);
    expect(events(log)).toEqual([['start', 'UNMAP', 4, 8], ['end', 'UNMAP', 4, 8], ['start', 'UNMAP', 4, 8], ['end', 'UNMAP', 4, 8]]);
    expect(log[0].ptes).toEqual([p4, 0n]);
    expect(log[1].ptes).toEqual([0n, p4]); // moved (already soft-dirty), flushed, before the first end
    expect(log[1].flushes).toBe(log[0].flushes + 1);
    expect(presentGfns(kvm)).toEqual([...range(0, 4), ...range(8, 16)]);
    expect(range(0, 4).map((i) => kvm.mm.tokenAt(X + i * K4))).toEqual(tokens.slice(4, 8));
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 16, mismatches: [] });
    // The rmap (anon_vma + vm_pgoff) finds a moved folio at its new address: migration works there.
    const m = runProgram(migrateFolio(kvm.mm, X + K4))!;
    expect(kvm.mm.lookup(X + K4)).toBe(m.newPfn);
    expect(kvm.mm.tokenAt(X + K4)).toBe(tokens[5]);
    // Back to where it was: copy_vma merges it with both neighbours (same anon_vma, contiguous vm_pgoff).
    log.length = 0;
    runProgram(mremap(kvm.mm, X, 4 * K4, 4 * K4, { fixed: P(4) }));
    expect(layout(kvm.mm)).toEqual([[0, 16, 0, 'rw']]);
    // Nothing was mapped at the target (no event for clearing it); then the move's two UNMAP pairs over the old range.
    expect(log.map((l) => [l.op, l.event, l.start, l.end])).toEqual([
      ['start', 'MMU_NOTIFY_UNMAP', X, X + 4 * K4], ['end', 'MMU_NOTIFY_UNMAP', X, X + 4 * K4],
      ['start', 'MMU_NOTIFY_UNMAP', X, X + 4 * K4], ['end', 'MMU_NOTIFY_UNMAP', X, X + 4 * K4],
    ]);
    expect(guestAccess(kvm, 5 * K4, 'read').outcome).toBe(Outcome.Ok);
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 16, mismatches: [] });
  });
});

describe('bad arguments change nothing', () => {
  it('EINVAL, ENOMEM and EFAULT as the syscalls return them; the VMA list and the notifiers untouched', () => {
    const { kvm, log } = written();
    runProgram(kvm.mm.munmap(P(8), 2 * K4));
    log.length = 0;
    const err = (f: () => unknown): string => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(MmError);
        return (e as Error).message;
      }
      return 'no error';
    };
    const mm = kvm.mm;
    expect(err(() => runProgram(mm.munmap(P(1) + 8, K4)))).toBe('munmap: EINVAL: start 0x7f0000001008 is not page aligned');
    expect(err(() => runProgram(mm.munmap(P(1), 0)))).toBe('munmap: EINVAL: length 0');
    expect(err(() => runProgram(mm.mprotect(P(6), 4 * K4, { writable: false })))).toBe('mprotect: ENOMEM: 0x7f0000008000 in 0x7f0000006000..0x7f000000a000 is not mapped');
    expect(err(() => runProgram(mm.madviseDontneed(P(9), K4)))).toBe('madvise: ENOMEM: 0x7f0000009000 in 0x7f0000009000..0x7f000000a000 is not mapped');
    expect(err(() => runProgram(madviseFree(mm, P(7), 2 * K4)))).toBe('madvise: ENOMEM: 0x7f0000008000 in 0x7f0000007000..0x7f0000009000 is not mapped');
    expect(err(() => runProgram(mremap(mm, P(9), K4, K4, { fixed: 0x1_0000_0000 })))).toBe('mremap: EFAULT: no area at 0x7f0000009000');
    expect(err(() => runProgram(mremap(mm, P(6), 4 * K4, 4 * K4, { fixed: 0x1_0000_0000 })))).toBe('mremap: EFAULT: 0x7f0000006000+0x4000 runs past the area 0x7f0000000000..0x7f0000008000');
    expect(err(() => runProgram(mremap(mm, P(0), 4 * K4, 4 * K4, { fixed: P(2) })))).toBe('mremap: EINVAL: new range 0x7f0000002000+0x4000 overlaps the old range 0x7f0000000000+0x4000');
    expect(err(() => runProgram(mremap(mm, P(0), 4 * K4, 0)))).toBe('mremap: EINVAL: new length 0');
    expect(err(() => runProgram(mremap(mm, P(0), 4 * K4, 4 * K4, { fixed: 0x1_0000_0800 })))).toBe("mremap: EINVAL: new address 0x100000800 is not aligned to the area's 4K page");
    expect(err(() => runProgram(mremap(mm, P(4), 4 * K4, 7 * K4)))).toBe('mremap: ENOMEM: 0x7f0000004000+0x4000 cannot grow to 0x7000 in place and MREMAP_MAYMOVE is not set');
    expect(layout(mm)).toEqual([[0, 8, 0, 'rw'], [10, 16, 10, 'rw']]);
    expect(log).toEqual([]);
    expect(mm.checkIntegrity()).toEqual({ pages: 14, mismatches: [] });
  });
});
