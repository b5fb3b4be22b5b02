/**
 * Issue 4 item 4 under contention: the four secondary-MMU policies on 6.14
 * (KVM ages under mmu_lock held for write) and 6.17 (lockless aging), with a
 * vCPU whose exits take mmu_lock for read running beside the MGLRU
 * aging+eviction program, under the round-robin scheduler (every figure can
 * be counted by hand; steps alternate between the two programs).
 *
 * - 16 guest pages written first (SPTE A set, all in one window), then
 * - "aging": 4 rounds of an aging pass (force_scan) and evict_folios(64);
 * - "vcpu": 16 reads of fresh MMIO gfns at 1 GiB (no memslot: each exits,
 *   kvm_tdp_mmu_page_fault maps a cached MMIO SPTE under the read lock,
 *   then emulation; the host mm never sees them, so aging's work does not
 *   depend on timing), then until aging ends: a guest step and a read of one
 *   of the 4 hot pages (gfns 0-3; no exit, the walk sets the SPTE A bit).
 *
 * Hold times in steps, round-robin with both programs alive: each step the
 * holder makes inside the lock is followed by one of the other program, so
 * hold = 2 x the holder's own yields inside. One 4K SPTE aged under the
 * lock (kvm_age_gfn -> kvm_tdp_mmu_age_gfn_range): 5 own yields (the root,
 * then one per level of the 4-level walk) plus 1 to clear a young SPTE's A
 * bit: 10 or 12. A CLEAR start zapping one SPTE holds it 12 (6 yields); its
 * end only bumps the sequence: 0. An MMIO fault's map: 10, 14 for the first
 * one (it allocates the PD and PT under 1 GiB: 2 more yields).
 */
import { describe, expect, it } from 'vitest';
import { Scheduler } from '../../src/hw/sched.js';
import { kvmAgingCaps } from '../../src/kvm/aging_caps.js';
import { Lruvec } from '../../src/mm/mglru.js';
import { MglruReclaimer } from '../../src/mm/mglru_evict.js';
import { SecondaryPolicy, type SecondaryPolicyName } from '../../src/mm/secondary_policy.js';
import { accessProgram, guestAccess, hvaOf, makeVm } from '../support/kvm_setup.js';

const P = 4096;
const OLD = 16;
const MMIO = 16;
const MMIO_GPA = 0x4000_0000;
const HOT = 4;

function run(name: SecondaryPolicyName, kernel: number) {
  const kvm = makeVm({ memory: OLD * P, tlb: false, kernel });
  const lruvec = new Lruvec(kvm.pages.folios, { version: 'v613' });
  const pol = new SecondaryPolicy(name, kvmAgingCaps(kvm));
  const r = new MglruReclaimer(lruvec, pol);
  r.attach(kvm.mm);
  r.hot = (_mm, hva) => hva < hvaOf(HOT * P);
  for (let g = 0; g < OLD; g++) kvm.mm.recordWrite(guestAccess(kvm, g * P, 'write').hpa);
  kvm.mm.notifiers.resetCounters();
  kvm.mmuLock.stats.reset();
  const aged0 = kvm.tdpMmu.stats.aged;
  const sched = new Scheduler(kvm.mem, 1, 0.5, 'round-robin');
  let done = false;
  let reads = 0;
  sched.spawn('vcpu', (function* () {
    for (let i = 0; i < MMIO; i++) {
      const o = yield* accessProgram(kvm, MMIO_GPA + i * P, 'read');
      if (o.userExit !== 'mmio') throw new Error(`MMIO read ${i} ended ${o.userExit}`);
    }
    while (!done) {
      if (kvm.mem.yields) yield; // a guest step: the hot reads themselves never exit, so never yield
      yield* accessProgram(kvm, (reads++ % HOT) * P, 'read');
    }
  })());
  sched.spawn('aging', (function* () {
    for (let round = 0; round < 4; round++) {
      yield* r.age(true);
      yield* r.evictFolios(64);
    }
    done = true;
  })());
  sched.finish();
  const st = kvm.mmuLock.stats;
  const out = {
    aged: kvm.tdpMmu.stats.aged - aged0,
    calls: Object.fromEntries(pol.stats.calls), asked: pol.stats.pagesAsked,
    writeLocks: { ...st.writeLocks }, readLocks: { ...st.readLocks }, writeHeld: { ...st.writeHeld }, readHeld: st.readHeld,
    waitSteps: { ...st.waitSteps }, waitBehind: Object.fromEntries(st.waitBehind),
    evicted: pol.stats.evicted, evictedHot: pol.stats.evictedHot,
  };
  for (let g = 0; g < OLD; g++) guestAccess(kvm, g * P, 'read');
  expect(kvm.mm.checkIntegrity()).toEqual({ pages: OLD, mismatches: [] });
  return { ...out, refaults: pol.stats.refaults };
}

const ALL = { fault: 0, aging: 0, invalidate: 0, other: 0 };

describe('policy contention (issue 4): mmu_lock hold and vCPU wait steps', () => {
  // 6.17 rows first: the lockless designs, where aging never holds mmu_lock and the vCPU never waits behind it.
  it('6.17, current / v3-bitmap / fast-only: lockless aging, no wait at all', () => {
    for (const p of ['current', 'v3-bitmap', 'fast-only'] as const) {
      const r = run(p, 617);
      // The same verdicts as policy_compare's 6.17 runs: hot pages read every few steps stay, the 12 cold go in round 3.
      expect([r.asked, r.aged, r.evicted, r.evictedHot, r.refaults]).toEqual([64, 24, 12, 0, 12]);
      // Aging takes no lock; 12 CLEAR pairs take it 24 times for write.
      expect(r.writeLocks).toEqual({ ...ALL, invalidate: 24 });
      // 12 zaps x 12 steps; the ends hold it 0.
      expect(r.writeHeld).toEqual({ ...ALL, invalidate: 144 });
      // 16 MMIO maps x 10, +4 for the first one's two page-table pages.
      expect(r.readHeld).toBe(164);
      // The MMIO faults are over (16 x ~12 vCPU steps) before round 3's first CLEAR: nobody meets anybody.
      expect(r.waitSteps).toEqual(ALL);
    }
    // Who was asked how: current 64 clear_young in the core; v3 4 windows (16+16+16+4 pages) + 12 targets;
    // fast-only 52 fast-only ages + 12 clear_flush_young at eviction.
    expect(run('current', 617).calls).toEqual({ clear_young: 64 });
    expect(run('v3-bitmap', 617).calls).toEqual({ clear_young_bitmap: 4, clear_young: 12 });
    expect(run('fast-only', 617).calls).toEqual({ clear_young: 52, clear_flush_young: 12 });
  });

  it('6.17, eviction-only: only the invalidations lock; the vCPU still meets them', () => {
    const r = run('eviction-only', 617);
    expect(r.calls).toEqual({ clear_flush_young: 32 }); // 16 targets in each of the 2 evicting rounds (3 and 4)
    // Aging asks KVM nothing, so rounds are short and round 3 evicts while the vCPU is still on its MMIO
    // reads: hot pages 2 and 3 (not read yet) go too (14, 2 hot), and refault under the read lock (18 maps).
    expect([r.asked, r.aged, r.evicted, r.evictedHot, r.refaults]).toEqual([32, 18, 14, 2, 14]);
    expect(r.writeLocks).toEqual({ ...ALL, invalidate: 28 }); // 14 CLEAR pairs
    expect(r.writeHeld).toEqual({ ...ALL, invalidate: 168 }); // 14 x 12
    expect(r.readLocks.fault).toBe(18); // 16 MMIO + 2 refaults
    expect(r.readHeld).toBe(184); // 164 + 2 x 10
    // The CLEARs now overlap the faults: 5 vCPU spins behind zaps, 9 zap spins behind maps; none behind aging.
    expect(r.waitBehind).toEqual({ 'fault/invalidate': 5, 'invalidate/fault': 9 });
  });

  it('6.14: aging under the write lock costs hold steps, and the vCPU waits behind it', () => {
    for (const p of ['eviction-only', 'fast-only'] as const) {
      // fast-only on 6.14: KVM is not fast, so aging skips it: eviction-only's run exactly.
      const r = run(p, 614);
      expect(r.calls).toEqual({ clear_flush_young: 32 });
      expect([r.asked, r.aged, r.evicted, r.evictedHot, r.refaults]).toEqual([32, 20, 12, 0, 12]);
      // Each clear_flush_young locks once; 12 CLEAR pairs.
      expect(r.writeLocks).toEqual({ ...ALL, aging: 32, invalidate: 24 });
      // 2 x (5 x 32 + 20 young) = 360; 12 x 12 = 144.
      expect(r.writeHeld).toEqual({ ...ALL, aging: 360, invalidate: 144 });
      expect(r.readHeld).toBe(164);
      // Round 3's calls start while the vCPU is still faulting: 75 spins behind aging, 80 of aging behind the maps.
      expect(r.waitBehind).toEqual({ 'fault/aging': 75, 'aging/fault': 80 });
    }
    const c = run('current', 614);
    expect(c.calls).toEqual({ clear_young: 64 });
    expect([c.asked, c.aged, c.evicted, c.evictedHot, c.refaults]).toEqual([64, 28, 12, 0, 12]);
    expect(c.writeLocks).toEqual({ ...ALL, aging: 64, invalidate: 24 }); // one lock per clear_young
    expect(c.writeHeld).toEqual({ ...ALL, aging: 696, invalidate: 144 }); // 2 x (5 x 64 + 28)
    expect(c.readHeld).toBe(164);
    // Round 1's first calls meet the MMIO faults: the same pattern of 10-12 step holds as above.
    expect(c.waitBehind).toEqual({ 'fault/aging': 75, 'aging/fault': 82 });
  });

  it('6.14, v3-bitmap: fewer acquisitions, long holds: the vCPU waits most and hot pages are evicted', () => {
    const r = run('v3-bitmap', 614);
    expect(r.calls).toEqual({ clear_young_bitmap: 4, clear_young: 16 });
    // The vCPU, stuck behind a 16-page window (2 x (5 x 16 + young) >= 160 steps), reads no hot page before
    // round 3 evicts: all 16 go, the 4 hot ones too, and refault during the run.
    expect([r.asked, r.aged, r.evicted, r.evictedHot, r.refaults]).toEqual([68, 20, 16, 4, 16]);
    // 4 windows + 16 targets lock once each (20, against current's 64); 16 CLEAR pairs.
    expect(r.writeLocks).toEqual({ ...ALL, aging: 20, invalidate: 32 });
    // 2 x (5 x 68 + 20) = 720: batching saves acquisitions, not the per-SPTE work; 16 x 12 = 192.
    expect(r.writeHeld).toEqual({ ...ALL, aging: 720, invalidate: 192 });
    expect(r.readHeld).toBe(204); // 164 + 4 hot refaults x 10
    // 287 vCPU spins behind aging (against 75): a fault that arrives during a window waits for all of it.
    expect(r.waitBehind).toEqual({ 'fault/aging': 287, 'aging/fault': 20, 'fault/invalidate': 34, 'invalidate/fault': 80 });
  });
});
