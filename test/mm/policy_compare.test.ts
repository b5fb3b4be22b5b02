/**
 * Issue 4's policy comparison: the four secondary-MMU participation
 * policies (src/mm/secondary_policy.ts) on one small fixed workload, with
 * exact cost and benefit counters.
 *
 * Workload: a 16-page guest (one host PTE table, one 64-page look-around
 * window) writes every page once (host PTE A+D, SPTE A, all folios in seq 2
 * of max_seq 3). Then 4 rounds of: the guest reads the hot set (gfns 0-3;
 * no TLB, so each read walks and sets the SPTE A bit; guest accesses never
 * set host PTE A bits), an aging pass (force_scan, as the lru_gen debugfs
 * write does), and an eviction pass (evict_folios, up to 64). Finally the
 * guest reads all 16 pages back (refaults) and every page's data is
 * checked. MGLRU version v613 (promotion at the first young sighting).
 */
import { describe, expect, it } from 'vitest';
import { runProgram } from '../../src/hw/sched.js';
import { kvmAgingCaps } from '../../src/kvm/aging_caps.js';
import { Lruvec } from '../../src/mm/mglru.js';
import { MglruReclaimer } from '../../src/mm/mglru_evict.js';
import { SecondaryPolicy, type SecondaryPolicyName } from '../../src/mm/secondary_policy.js';
import { guestAccess, hvaOf, makeVm } from '../support/kvm_setup.js';

const P = 4096;
const PAGES = 16;
const HOT = 4;

function run(name: SecondaryPolicyName, kernel: number) {
  const kvm = makeVm({ memory: PAGES * P, tlb: false, kernel });
  const lruvec = new Lruvec(kvm.pages.folios, { version: 'v613' });
  const pol = new SecondaryPolicy(name, kvmAgingCaps(kvm));
  const r = new MglruReclaimer(lruvec, pol);
  r.attach(kvm.mm);
  r.hot = (_mm, hva) => hva < hvaOf(HOT * P);
  for (let g = 0; g < PAGES; g++) kvm.mm.recordWrite(guestAccess(kvm, g * P, 'write').hpa);
  kvm.mm.notifiers.resetCounters();
  const aged0 = kvm.tdpMmu.stats.aged;
  // mmu_lock write acquisitions made by aging from here on (a spy on the instance).
  let writeLocks = 0;
  const lock = kvm.mmuLock;
  const wl = lock.writeLock.bind(lock);
  lock.writeLock = function* () {
    writeLocks++;
    yield* wl();
  };
  const evictedByRound: number[] = [];
  for (let round = 0; round < 4; round++) {
    for (let g = 0; g < HOT; g++) guestAccess(kvm, g * P, 'read');
    runProgram(r.age(true));
    runProgram(r.evictFolios(64));
    evictedByRound.push(pol.stats.evicted);
  }
  const agingLocks = writeLocks;
  for (let g = 0; g < PAGES; g++) guestAccess(kvm, g * P, 'read');
  expect(kvm.mm.checkIntegrity()).toEqual({ pages: PAGES, mismatches: [] });
  const core = Object.fromEntries([...kvm.mm.notifiers.calls].filter(([, v]) => v !== 0));
  return {
    policyCalls: Object.fromEntries(pol.stats.calls),
    core,
    sptesScanned: pol.stats.pagesAsked,
    sptesAged: kvm.tdpMmu.stats.aged - aged0,
    mmuLockWrites: agingLocks,
    evictedByRound,
    refaults: pol.stats.refaults,
    refaultedTiers: lruvec.refaulted[0],
    evictedHot: pol.stats.evictedHot,
  };
}

const CLEAR = { invalidate_range_start: 12, invalidate_range_end: 12 };
/** Every run ends the same way: 12 cold pages evicted, read back as 12 recent tier-0 refaults, no hot page evicted. */
const BENEFIT = { refaults: 12, refaultedTiers: [12, 0, 0, 0], evictedHot: 0 };

describe('policy comparison (issue 4)', () => {
  it('current (6.13+): clear_young on every present PTE during aging; cold pages go in round 3', () => {
    // Round 1 aging (max 3): all 16 host PTEs young (fault), and the walk asks KVM about all 16: 16 clear_young,
    //   16 SPTEs aged (A from the writes). All promoted to seq 3; max 4, min 1; eviction finds seq 1 empty.
    // Round 2 aging: 16 more clear_young; only the 4 hot SPTEs are young (aged 20): hot -> seq 4.
    //   Eviction at min 2 only sorts (lazy moves to seqs 3 and 4).
    // Round 3 aging: 16 more (48), 4 aged (24). Eviction at min 3 isolates the 12 cold: look-around's target
    //   clear_young on each (60) says old, so each is swapped out: add_to_swap, try_to_unmap (12 CLEAR ranges).
    // Round 4: only the 4 hot PTEs are present: 4 clear_young (64), 4 aged (28).
    // mmu_lock: aging is lockless on 6.17; the 24 write acquisitions are the 12 CLEAR start/end pairs.
    // End: the shadows hold min_seq 4 (seqs 3 emptied by the isolation) with max_seq 7: recent, refs 0 -> tier 0.
    expect(run('current', 617)).toEqual({
      policyCalls: { clear_young: 64 }, core: { clear_young: 64, ...CLEAR }, sptesScanned: 64, sptesAged: 28, mmuLockWrites: 24,
      evictedByRound: [0, 0, 12, 12], ...BENEFIT,
    });
  });

  it('eviction-only (before 6.13): KVM asked only at eviction; stale S.young costs a round', () => {
    // Round 1 aging: primary-only, all 16 host PTEs young -> seq 3; no notifier call. Guest reads never set host
    // A bits, so rounds 2 and 3 find nothing young and promote nothing; sorting and try_to_inc_min_seq leave all
    // 16 in seq 3 = min_seq at round 3's eviction. There clear_flush_young (16 calls) finds all 16 SPTEs young:
    // the hot ones from their reads, the cold ones still from the writes (never aged): all 16 aged, all kept
    // (PG_referenced, no look-around: the primary was old), put back into seq 5, the (new) oldest, with
    // PG_referenced traded for PG_active by the "not into the oldest generation" rule.
    // Round 4: eviction at min 5 asks again (32): only the 4 hot SPTEs are young (aged 20): the 12 cold go.
    expect(run('eviction-only', 617)).toEqual({
      policyCalls: { clear_flush_young: 32 }, core: { clear_flush_young: 32, ...CLEAR }, sptesScanned: 32, sptesAged: 20, mmuLockWrites: 24,
      evictedByRound: [0, 0, 0, 12], ...BENEFIT,
    });
  });

  it('v3-bitmap: one bitmap call per 64-page window in aging; the target asked page by page at eviction', () => {
    // Same verdicts as current (the same SPTEs are aged at the same times), but each aging pass makes one
    // clear_young_bitmap over the 16-page window (4 calls, 16+16+16+4 = 52 pages), the eviction targets one
    // clear_young each (12). The proposed op is not in the notifier core, so the core counts only the CLEARs.
    // On 6.14 KVM takes mmu_lock for write once per bitmap call and per target call: 4 + 12 + 24 = 40.
    const cost = { policyCalls: { clear_young_bitmap: 4, clear_young: 12 }, core: CLEAR, sptesScanned: 64, sptesAged: 28 };
    expect(run('v3-bitmap', 614)).toEqual({ ...cost, mmuLockWrites: 40, evictedByRound: [0, 0, 12, 12], ...BENEFIT });
    // 6.17 ages locklessly: only the invalidations lock.
    expect(run('v3-bitmap', 617)).toEqual({ ...cost, mmuLockWrites: 24, evictedByRound: [0, 0, 12, 12], ...BENEFIT });
  });

  it('fast-only: a 6.14 KVM (aging under mmu_lock) is skipped by aging; a 6.17 KVM (lockless) is walked', () => {
    // 6.14: not fast, so aging never asks it: exactly eviction-only's run, but each of the 32 clear_flush_young
    // takes mmu_lock for write (32 + 24 = 56).
    expect(run('fast-only', 614)).toEqual({
      policyCalls: { clear_flush_young: 32 }, core: { clear_flush_young: 32, ...CLEAR }, sptesScanned: 32, sptesAged: 20, mmuLockWrites: 56,
      evictedByRound: [0, 0, 0, 12], ...BENEFIT,
    });
    // 6.17: fast, so aging asks it about every present PTE (16+16+16+4 = 52 clear_young_fast_only, outside the
    // core), and eviction's folio_referenced_one asks everyone once per target (12 clear_flush_young): current's
    // verdicts, with the eviction call flushing.
    expect(run('fast-only', 617)).toEqual({
      policyCalls: { clear_young: 52, clear_flush_young: 12 }, core: { clear_flush_young: 12, ...CLEAR }, sptesScanned: 64, sptesAged: 28,
      mmuLockWrites: 24, evictedByRound: [0, 0, 12, 12], ...BENEFIT,
    });
  });
});
