/**
 * Issue 3 item 6, by interleaving with the seeded scheduler (src/hw/sched.ts):
 * (b) lockless aging racing guest writes never loses D (EPT A/D on), and with
 *     A/D off its single cmpxchg may lose to a concurrent fast page fault and
 *     still reports young without retrying (S9), never corrupting the SPTE;
 * (c) a fault racing an invalidation (madvise(MADV_DONTNEED)) retries through
 *     mmu_invalidate_seq / in_progress and never installs a stale pfn;
 * and page tables removed by handle_removed_pt are poisoned only after the
 * RCU grace period.
 * Each race runs over many seeds, picks out the interesting interleaving, and
 * checks that its seed replays the same log and result.
 */
import { describe, expect, it } from 'vitest';
import { MemOp } from '../../src/hw/phys_mem.js';
import { AccessKind, Outcome } from '../../src/hw/result.js';
import { Scheduler, runProgram } from '../../src/hw/sched.js';
import { testPageDirty } from '../../src/kvm/memslots.js';
import { EPT_NOAD, FROZEN_SPTE, checkSpteWritableInvariants, isShadowPresentPte, spteToPfn } from '../../src/kvm/spte.js';
import { PT_POISON } from '../../src/kvm/tdp_mmu.js';
import type { Kvm } from '../../src/kvm/vm.js';
import {
  PAGE, accessProgram, captureEvents, guestAccess, hookOps, hvaOf, makeVm, read64, slot0, sptepOf, write64, type AccessOutcome,
} from '../support/kvm_setup.js';

const GPA = 0x5000;
const GFN = 5;
const HVA = hvaOf(GPA);
const A = 0x100n;
const D = 0x200n;
const W = 0x2n;
const SEEDS = 400;

/** kvm.notifier.clearYoung as a program that reports its return value. */
function* clearYoung(kvm: Kvm, start: number, end: number, done: (young: number) => void): Generator<unknown, void, undefined> {
  done(yield* kvm.notifier.clearYoung(start, end));
}

// ---------------------------------------------------------------------------
// (b) lockless aging vs guest writes

/** EPT A/D on: a mapped page whose SPTE is writable with D clear; aging runs while the CPU writes the page. */
function agingVsHardwareWrite(seed: number) {
  const kvm = makeVm({ tlb: false }); // every access walks the EPT in memory
  guestAccess(kvm, GPA, 'write');
  const sptep = sptepOf(kvm, GFN, 1);
  const before = read64(kvm.mem, sptep) & ~D; // as after a D harvest
  write64(kvm.mem, sptep, before);
  const sched = new Scheduler(kvm.mem, seed, 0.3);
  let young = -1;
  sched.spawn('age', clearYoung(kvm, HVA, HVA + PAGE, (y) => (young = y)));
  const hw = sched.run(() => {
    const r = kvm.machine.access(0, 0, GPA, AccessKind.Write, 1, false);
    return { outcome: r.outcome, gpa: r.gpa };
  });
  sched.finish();
  const tag = `hw:cmpxchg@0x${sptep.toString(16)}`;
  const log = sched.log.join(' ');
  return { hw, young, before, sptep, after: read64(kvm.mem, sptep), log, cpuCmpxchgs: sched.log.filter((s) => s === tag).length };
}

/** EPT A/D off: a dirty-log write-protected SPTE (W=0, MMU-writable); aging races the vCPU's write, which the fast path fixes. */
function agingVsFastPf(seed: number) {
  const kvm = makeVm({ eptAd: false, tlb: false });
  guestAccess(kvm, GPA, 'write');
  runProgram(kvm.enableDirtyLogging(0));
  const sptep = sptepOf(kvm, GFN, 1);
  const before = read64(kvm.mem, sptep);
  const ev = captureEvents(kvm, ['kvm_tdp_mmu_spte_changed', 'fast_page_fault']);
  const sched = new Scheduler(kvm.mem, seed, 0.5);
  let young = -1;
  let access: AccessOutcome | null = null;
  sched.spawn('vcpu', accessProgram(kvm, GPA, 'write', 0, (o) => (access = o)));
  sched.spawn('age', clearYoung(kvm, HVA, HVA + PAGE, (y) => (young = y)));
  sched.finish();
  return {
    before, after: read64(kvm.mem, sptep), young, access: access as AccessOutcome | null, log: sched.log.join(' '),
    ageLost: kvm.tdpMmu.stats.ageLost, aged: kvm.tdpMmu.stats.aged, pfFast: kvm.stats.pfFast,
    events: ev.map((e) => `${e.name}:${String(e.fields.old_spte)}->${String(e.fields.new_spte)}`),
    dirty: testPageDirty(slot0(kvm), GFN),
  };
}

describe('(b) lockless aging racing guest writes', () => {
  it('EPT A/D on: across seeds D is never lost; some seed makes the CPU lose its cmpxchg to aging and redo it; replayable', () => {
    const finals = new Set<bigint>();
    const cpuRetried: number[] = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      const r = agingVsHardwareWrite(seed);
      expect(r.hw).toEqual({ outcome: Outcome.Ok, gpa: GPA });
      expect(r.young).toBe(1); // A was set when aging looked, whatever the order
      expect(r.after & D).toBe(D); // the write happened, so the SPTE says dirty
      expect(r.after | A).toBe(r.before | D); // nothing but A and D ever moved
      finals.add(r.after);
      if (r.cpuCmpxchgs > 1) cpuRetried.push(seed);
    }
    const before = agingVsHardwareWrite(1).before;
    // Aging before the CPU's A/D write-back (A set again) or after it (A clear): both happen.
    expect([...finals].sort()).toEqual([(before | D) & ~A, before | D].sort());
    // The interesting one: aging's fetch-and lands between the CPU's read of the leaf and its cmpxchg.
    expect(cpuRetried.length).toBeGreaterThan(0);
    const seed = cpuRetried[0];
    const r = agingVsHardwareWrite(seed);
    expect(r.after).toBe(before | D); // the CPU's second try set A and D
    const ops = r.log.split(' ');
    const tag = `hw:cmpxchg@0x${r.sptep.toString(16)}`;
    const first = ops.indexOf(tag);
    const second = ops.indexOf(tag, first + 1);
    expect(first).toBeGreaterThan(0);
    expect(ops.slice(first + 1, second)).toContain(`hw:load@0x${r.sptep.toString(16)}`); // the CPU re-read the leaf before retrying
    expect(agingVsHardwareWrite(seed)).toEqual(r); // same seed, same interleaving, same result
  });

  it('EPT A/D off: aging may lose its one cmpxchg to the fast page fault, reports young without retry, never corrupts the SPTE; replayable', () => {
    const lost: number[] = [];
    const won: number[] = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      const r = agingVsFastPf(seed);
      const writable = r.before | W; // what the fast path restores: W back on the write-protected SPTE
      const tracked = (writable & ~(0x7n | A)) | (0x5n << 54n); // what aging makes of it (S8's transformation)
      expect(r.before & W).toBe(0n);
      expect(r.access).toMatchObject({ outcome: Outcome.Ok, userExit: null });
      expect(r.young).toBe(1);
      expect(r.dirty).toBe(true); // the write went through the fast path's W 0 -> 1, which logs the gfn
      expect([writable, tracked]).toContain(r.after);
      expect(spteToPfn(r.after)).toBe(spteToPfn(r.before));
      expect(checkSpteWritableInvariants(EPT_NOAD, r.after)).toBe(null);
      expect(r.ageLost + r.aged).toBe(1); // exactly one attempt, never a retry
      if (r.ageLost === 1) lost.push(seed);
      else won.push(seed);
    }
    expect(lost.length).toBeGreaterThan(0);
    expect(won.length).toBeGreaterThan(0);
    const seed = lost[0];
    const r = agingVsFastPf(seed);
    // The fast path's cmpxchg got in between aging's read and its cmpxchg: the SPTE keeps the fast path's value,
    // aging still said young, and aging traced nothing.
    expect(r.after).toBe(r.before | W);
    expect(r.young).toBe(1);
    expect(r.events.filter((e) => e.startsWith('kvm_tdp_mmu_spte_changed'))).toEqual([]);
    expect(r.events.filter((e) => e.startsWith('fast_page_fault'))).toHaveLength(1);
    expect(agingVsFastPf(seed)).toEqual(r);
  });
});

// ---------------------------------------------------------------------------
// (c) a fault racing an invalidation

interface RetryCheck {
  mmuSeq: number;
  seq: number;
  inProgress: number;
  locked: boolean;
  retry: boolean;
}

function faultVsInvalidate(seed: number) {
  const kvm = makeVm();
  const got = kvm.mm.hvaToPfn(HVA, true); // the VMM touched the page: host pfn P
  if (!got.ok) throw new Error('hva_to_pfn failed');
  const oldPfn = got.pfn;
  // Every check of mmu_invalidate_retry_gfn, with whether mmu_lock was held (is_page_fault_stale) or not (the unsafe pre-checks).
  const checks: RetryCheck[] = [];
  const inv = kvm.invalidate;
  const orig = inv.retryGfn.bind(inv);
  inv.retryGfn = (mmuSeq: number, gfn: number) => {
    const retry = orig(mmuSeq, gfn);
    checks.push({ mmuSeq, seq: inv.seq, inProgress: inv.inProgress, locked: kvm.mmuLock.readers > 0, retry });
    return retry;
  };
  // The pfns the fault path's hva_to_pfn resolved.
  const lookups: number[] = [];
  const hvaToPfn = kvm.mm.hvaToPfn.bind(kvm.mm);
  kvm.mm.hvaToPfn = (hva: number, write: boolean) => {
    const g = hvaToPfn(hva, write);
    if (g.ok) lookups.push(g.pfn);
    return g;
  };
  // At every leaf install, the pfn must be what the host maps at that hva right then.
  const installs: { pfn: bigint; host: number | null }[] = [];
  kvm.events.enable(['kvm_mmu_set_spte'], (_n, f) => installs.push({ pfn: spteToPfn(f.spte as bigint), host: kvm.mm.lookup(HVA) }));
  const sched = new Scheduler(kvm.mem, seed, 0.5);
  let access: AccessOutcome | null = null;
  let reused = -1;
  sched.spawn('vcpu', accessProgram(kvm, GPA, 'read', 0, (o) => (access = o)));
  sched.spawn('madvise', (function* () {
    yield* kvm.mm.madviseDontneed(HVA, PAGE);
    reused = kvm.pages.allocPage() / PAGE; // someone else gets the freed frame at once
  })());
  sched.finish();
  const l = kvm.tdpMmu.lookup(GFN, 1);
  const spte = l === null ? null : l.spte;
  return {
    oldPfn, reused, access: access as AccessOutcome | null, spte, host: kvm.mm.lookup(HVA), installs, checks, lookups,
    pfRetry: kvm.stats.pfRetry, seq: inv.seq, inProgress: inv.inProgress, log: sched.log.join(' '),
  };
}

describe('(c) a fault racing an invalidation', () => {
  it('across seeds: installs only the pfn the host maps, retries through mmu_invalidate_seq when needed, never leaves the freed pfn; replayable', () => {
    const bySeq: number[] = [];
    const byRange: number[] = [];
    const noRetry: number[] = [];
    const installedAfter: number[] = [];
    for (let seed = 1; seed <= SEEDS; seed++) {
      const r = faultVsInvalidate(seed);
      expect(r.access).toMatchObject({ outcome: Outcome.Ok, userExit: null });
      expect(r.reused).toBe(r.oldPfn); // the freed frame went to someone else
      expect(r.seq).toBe(1);
      expect(r.inProgress).toBe(0);
      for (const i of r.installs) expect(i.host).toBe(Number(i.pfn)); // never a stale pfn at install time
      if (r.spte !== null && isShadowPresentPte(r.spte)) {
        // Present at the end: it maps the page the host maps now, never the freed one.
        expect(Number(spteToPfn(r.spte))).toBe(r.host);
        expect(Number(spteToPfn(r.spte))).not.toBe(r.oldPfn);
        installedAfter.push(seed);
      } else {
        // Not present: the fault installed P before the invalidation began, which zapped it.
        expect(r.installs).toEqual([{ pfn: BigInt(r.oldPfn), host: r.oldPfn }]);
        expect(r.pfRetry).toBe(0);
      }
      const retries = r.checks.filter((c) => c.retry);
      expect(retries.length).toBe(r.pfRetry);
      if (retries.length === 0) noRetry.push(seed);
      // is_page_fault_stale (under mmu_lock) retrying on the sequence alone: the invalidation came and went.
      if (retries.some((c) => c.locked && c.inProgress === 0 && c.seq !== c.mmuSeq)) bySeq.push(seed);
      if (retries.some((c) => c.inProgress !== 0)) byRange.push(seed);
    }
    expect(noRetry.length).toBeGreaterThan(0);
    expect(bySeq.length).toBeGreaterThan(0);
    expect(byRange.length).toBeGreaterThan(0);
    expect(installedAfter.length).toBeGreaterThan(0);

    // A seed where the sequence alone forced the retry: the fault resolved P before the invalidation,
    // the whole invalidation ran (P freed, in_progress back to 0), and is_page_fault_stale saw seq 1 != snapshot 0.
    // Without that check the fault would have installed the freed P.
    const seed = bySeq[0];
    const r = faultVsInvalidate(seed);
    const c = r.checks.find((x) => x.retry)!;
    expect(c).toMatchObject({ mmuSeq: 0, seq: 1, inProgress: 0, locked: true, retry: true });
    expect(r.lookups[0]).toBe(r.oldPfn);
    expect(r.pfRetry).toBe(1);
    expect(r.installs).toEqual([{ pfn: BigInt(r.host!), host: r.host }]);
    expect(Number(spteToPfn(r.spte!))).toBe(r.host);
    expect(faultVsInvalidate(seed)).toEqual(r);
    // And one without any retry replays too.
    expect(faultVsInvalidate(noRetry[0])).toEqual(faultVsInvalidate(noRetry[0]));
  });
});

// ---------------------------------------------------------------------------
// RCU-deferred freeing of removed page tables

/** A 2M-backed VM with gfn 0x200 mapped 4K under a level-1 table, then dirty logging turned off again. */
function tableReadyForHugeFault(): { kvm: Kvm; tablePa: number } {
  const kvm = makeVm({ hostLevel: 2 });
  runProgram(kvm.enableDirtyLogging(0));
  guestAccess(kvm, 0x20_0000, 'write');
  const nonleaf = kvm.tdpMmu.lookup(0x200, 2)!.spte;
  const tablePa = Number((nonleaf >> 12n) & 0xff_ffff_ffffn) * PAGE;
  const s = slot0(kvm);
  kvm.memslots.setMemoryRegion({ slot: 0, flags: 0, guest_phys_addr: 0, memory_size: s.npages * PAGE, userspace_addr: s.userspace_addr });
  return { kvm, tablePa };
}

describe('handle_removed_pt frees the table only after the RCU grace period', () => {
  it('an RCU reader holding its section delays the free: entries stay FROZEN, then the frame is poisoned', () => {
    const { kvm, tablePa } = tableReadyForHugeFault();
    const freed = kvm.tdpMmu.stats.ptFreed;
    const reader = kvm.rcu.readLock(); // e.g. a lockless aging walk that may still be inside the table
    expect(guestAccess(kvm, 0x20_1000, 'read')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    expect(isShadowPresentPte(kvm.tdpMmu.lookup(0x200, 2)!.spte)).toBe(true); // the 2M leaf replaced the table
    expect(kvm.tdpMmu.stats.ptFreed).toBe(freed);
    expect(kvm.rcu.pendingCallbacks).toBe(1);
    for (let i = 0; i < 512; i++) expect(read64(kvm.mem, tablePa + 8 * i)).toBe(FROZEN_SPTE);
    kvm.rcu.readUnlock(reader);
    expect(kvm.rcu.pendingCallbacks).toBe(0);
    expect(kvm.tdpMmu.stats.ptFreed).toBe(freed + 1);
    for (let i = 0; i < 512; i++) expect(read64(kvm.mem, tablePa + 8 * i)).toBe(PT_POISON);
  });

  it('interleaved with a lockless aging walk over the same range, no walker ever reads poison; some seed has aging defer the free; replayable', () => {
    const run = (seed: number) => {
      const { kvm, tablePa } = tableReadyForHugeFault();
      let poisonSeen = 0;
      let probing = false; // the test's own look at the old table is not a walker's load
      const off = hookOps(kvm.mem, (op, a) => {
        if (!probing && op === MemOp.Load && read64(kvm.mem, a) === PT_POISON) poisonSeen++;
      });
      const freed = kvm.tdpMmu.stats.ptFreed;
      const sched = new Scheduler(kvm.mem, seed, 0.5);
      let access: AccessOutcome | null = null;
      // When the fault has finished (its own RCU section long closed): freed yet? what does the old table hold?
      let atFaultEnd: { freed: number; entry0: bigint } | null = null;
      let agingDone = false;
      sched.spawn('vcpu', accessProgram(kvm, 0x20_1000, 'read', 0, (o) => {
        access = o;
        probing = true;
        atFaultEnd = { freed: kvm.tdpMmu.stats.ptFreed - freed, entry0: read64(kvm.mem, tablePa) };
        probing = false;
      }));
      sched.spawn('age', clearYoung(kvm, hvaOf(0x20_0000), hvaOf(0x40_0000), () => (agingDone = true)));
      sched.finish();
      off();
      return {
        poisonSeen, agingDone, access: access as AccessOutcome | null, atFaultEnd: atFaultEnd as { freed: number; entry0: bigint } | null,
        freed: kvm.tdpMmu.stats.ptFreed - freed, poisoned: read64(kvm.mem, tablePa) === PT_POISON, log: sched.log.join(' '),
      };
    };
    const deferredSeeds: number[] = [];
    for (let seed = 1; seed <= 150; seed++) {
      const r = run(seed);
      expect(r.access).toMatchObject({ outcome: Outcome.Ok });
      expect(r.agingDone).toBe(true);
      expect(r.poisonSeen).toBe(0);
      expect(r.freed).toBe(1);
      expect(r.poisoned).toBe(true);
      if (r.atFaultEnd!.freed === 0) {
        // The aging walker's RCU section was still open: the removed table is not yet freed or poisoned; its
        // entries are frozen. (Aging's fetch-and of A is unconditional, as in kvm_tdp_mmu_age_spte, so when the walker
        // read the 4K leaf before handle_removed_pt froze it, it clears bit 8 of FROZEN_SPTE in the dead table: harmless.)
        expect([FROZEN_SPTE, FROZEN_SPTE & ~A]).toContain(r.atFaultEnd!.entry0);
        deferredSeeds.push(seed);
      }
    }
    expect(deferredSeeds.length).toBeGreaterThan(0);
    const seed = deferredSeeds[0];
    expect(run(seed)).toEqual(run(seed));
  });
});
