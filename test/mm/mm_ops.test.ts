/**
 * The remaining mm operations of mm.md section 6 against a real KVM:
 * mremap moving an area (UNMAP), madvise(MADV_FREE) (CLEAR) and lazyfree
 * reclaim, migration of one folio (CLEAR, migration entry), clear_refs
 * soft-dirty (SOFT_DIRTY). Per operation: the event, range and flags, the
 * order (what the PTE and the host TLB flush count look like inside start
 * and end), the exact PTEs after, KVM's SPTEs zapped, and the data tokens.
 */
import { describe, expect, it } from 'vitest';
import { Outcome } from '../../src/hw/result.js';
import { runProgram } from '../../src/hw/sched.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { LruList, PG_dirty, PG_swapbacked } from '../../src/mm/folio.js';
import { madviseFree } from '../../src/mm/madvise_free.js';
import { SWP_MIGRATION_WRITE, decodeMigrationEntry, migrateFolio } from '../../src/mm/migrate.js';
import { MMU_NOTIFIER_EVENT_NAMES, MMU_NOTIFIER_RANGE_BLOCKABLE, ULONG_MAX, type MmuNotifierOps } from '../../src/mm/mmu_notifier.js';
import { mremapMove } from '../../src/mm/mremap.js';
import { clearSoftDirty } from '../../src/mm/soft_dirty.js';
import { setUpReclaim } from '../../src/mm/vmscan.js';
import { GUEST_HVA_BASE, guestAccess, makeVm } from '../support/kvm_setup.js';

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
  const rec = (op: Rec['op']) => function* (r: { start: number; end: number; event: number; flags: number }): Generator<unknown, number, undefined> {
    log.push({ op, event: MMU_NOTIFIER_EVENT_NAMES[r.event], start: r.start, end: r.end, flags: r.flags, ptes: watch.map((a) => kvm.mm.pte(a)), flushes });
    return 0;
  };
  const sub: MmuNotifierOps = {
    invalidateRangeStart: rec('start'),
    invalidateRangeEnd: function* (r) {
      yield* rec('end')(r);
    },
  };
  expect(kvm.mm.notifiers.register(sub)).toBe(0);
  return { kvm, log, watch, flushes: () => flushes };
}

/** A guest write that stores a new data token, as the trace layer does. */
function guestWrite(kvm: Kvm, gpa: number): number {
  const o = guestAccess(kvm, gpa, 'write');
  expect(o.outcome).toBe(Outcome.Ok);
  return kvm.mm.recordWrite(o.hpa);
}

function sptePresent(kvm: Kvm, gfn: number): boolean {
  const l = kvm.tdpMmu.lookup(gfn);
  return l !== null && (l.spte & 7n) !== 0n;
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
