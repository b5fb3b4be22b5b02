/**
 * MGLRU (mm.md section 3) and secondary-MMU participation (section 4):
 * scenarios 12-22 of section 7 (the policy comparison is in policy_compare.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { runProgram } from '../../src/hw/sched.js';
import { kvmAgingCaps } from '../../src/kvm/aging_caps.js';
import { PG_referenced, PG_workingset, PG_swapbacked, lruGenList } from '../../src/mm/folio.js';
import { Lruvec, type MglruVersion } from '../../src/mm/mglru.js';
import { MglruReclaimer, lruGenAgeNode, lruGenDebugfs, shouldRunAging } from '../../src/mm/mglru_evict.js';
import { lookAroundWindow, pmdEntryOf, VM_SPECIAL, lookAround } from '../../src/mm/mglru_walk.js';
import { SecondaryPolicy, type SecondaryPolicyName } from '../../src/mm/secondary_policy.js';
import { _PAGE_ACCESSED } from '../../src/mm/pgtable.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { guestAccess, hvaOf, makeVm } from '../support/kvm_setup.js';

const P = 4096;

function setUp(policy: SecondaryPolicyName, opts: { version?: MglruVersion; kernel?: number; pages?: number } = {}) {
  const kvm = makeVm({ memory: (opts.pages ?? 512) * P, ...(opts.kernel !== undefined ? { kernel: opts.kernel } : {}) });
  const lruvec = new Lruvec(kvm.pages.folios, { version: opts.version ?? 'v614+' });
  const pol = new SecondaryPolicy(policy, kvmAgingCaps(kvm));
  const r = new MglruReclaimer(lruvec, pol);
  r.attach(kvm.mm);
  return { kvm, lruvec, pol, r, mm: kvm.mm };
}
const pfnOf = (kvm: Kvm, gpa: number) => kvm.mm.lookup(hvaOf(gpa))!;
/** Clears every host PTE A bit of guest memory (P.young = 0) without aging anything. */
function clearHostA(kvm: Kvm, pages: number) {
  for (let i = 0; i < pages; i++) {
    kvm.mm.pt.walk(hvaOf(i * P));
    if (kvm.mm.pt.present) kvm.mem.and64(kvm.mm.pt.entry, ~_PAGE_ACCESSED, -1);
  }
}
function spteYoung(kvm: Kvm, gpa: number): boolean {
  // A test_young through the notifier would count as a call; read the TDP MMU directly instead.
  const slot = kvm.memslots.gfnToMemslot(gpa / P)!;
  return runProgram(kvm.tdpMmu.ageGfnRange({ slot, start: gpa / P, end: gpa / P + 1 }, true));
}

describe('MGLRU', () => {
  it('Scenario 12: window and aging triggers', () => {
    const { lruvec, r } = setUp('current');
    expect([lruvec.maxSeq, ...lruvec.minSeq]).toEqual([3, 0, 0]);
    expect(lruvec.nrGens(0)).toBe(4);
    expect(shouldRunAging(lruvec, 12)).toEqual({ aging: false, required: false });
    lruvec.minSeq[0] = lruvec.minSeq[1] = 1; // G = 3
    expect(shouldRunAging(lruvec, 12).aging).toBe(false);
    expect(shouldRunAging(lruvec, 11).aging).toBe(true);
    lruvec.minSeq[0] = lruvec.minSeq[1] = 2; // G = 2
    expect(shouldRunAging(lruvec, 12)).toEqual({ aging: true, required: true });
    lruvec.minSeq[0] = lruvec.minSeq[1] = 0;
    // Aging with 4 generations first advances min_seq.
    expect(runProgram(r.age(true))).toBe(true);
    expect([lruvec.maxSeq, ...lruvec.minSeq]).toEqual([4, 1, 1]);
    // A second request for the same seq finds the iteration done.
    expect(runProgram(r.age(true))).toBe(true);
    expect(lruvec.walkSeq).toBe(4);
  });

  it('Scenario 13: placement', () => {
    const { kvm, lruvec } = setUp('current');
    guestAccess(kvm, 0, 'write');
    const a = pfnOf(kvm, 0);
    expect(kvm.pages.folios.lruGen(a)).toBe(2); // max_seq - 1 = 2
    // A fault of a workingset folio lands in max_seq.
    const f = kvm.pages.folios;
    lruvec.delFolio(a);
    f.set(a, PG_workingset);
    kvm.mm.lruAddNew!(a, kvm.mm.areas[0], hvaOf(0));
    expect(f.lruGen(a)).toBe(3);
    // File read-ahead: the oldest generation, clamped to min_seq.
    const file = kvm.pages.allocPage() / P;
    expect(f.test(file, PG_swapbacked)).toBe(false);
    lruvec.minSeq[1] = 1;
    lruvec.addFolio(file);
    expect(f.lruGen(file)).toBe(1);
  });

  it('Scenario 14: second chance (v614+)', () => {
    const { kvm, r } = setUp('current');
    const f = kvm.pages.folios;
    guestAccess(kvm, 0, 'read');
    const a = pfnOf(kvm, 0);
    runProgram(r.age(true)); // max 4: young (host A set at fault) -> PG_referenced only
    expect(f.lruGen(a)).toBe(2);
    expect(f.test(a, PG_referenced)).toBe(true);
    kvm.flushRemoteTlbs(); // so the guest walk sets the SPTE A bit again
    guestAccess(kvm, 0, 'read');
    runProgram(r.age(true)); // max 5; walk at max 4 promotes to gen 0 (seq 4)
    expect(f.lruGen(a)).toBe(4 % 4);
    expect([f.test(a, PG_workingset), f.test(a, PG_referenced)]).toEqual([true, false]);
    kvm.flushRemoteTlbs();
    guestAccess(kvm, 0, 'read');
    runProgram(r.age(true)); // promoted directly to seq 5
    expect(f.lruGen(a)).toBe(5 % 4);
  });

  it('Scenario 15: secondary participation in walks (v613+ vs pre613)', () => {
    for (const [pol, calls, promoted] of [['current', 512, 512], ['eviction-only', 0, 0]] as const) {
      const { kvm, lruvec, r, pol: p } = setUp(pol, { version: 'v613' });
      for (let i = 0; i < 512; i++) guestAccess(kvm, i * P, 'read');
      clearHostA(kvm, 512);
      kvm.mm.notifiers.resetCounters();
      runProgram(r.age(true));
      expect(kvm.mm.notifiers.calls.get('clear_young') ?? 0).toBe(calls);
      expect(p.stats.notifierCalls).toBe(calls);
      expect(lruvec.nrPages[3][0]).toBe(promoted); // promoted to max_seq 3 (walk ran at max 3)
      expect(spteYoung(kvm, 0)).toBe(pol === 'eviction-only');
    }
  });

  it('Scenario 16: ChromeOS skew (pre613 vs v613)', () => {
    // Host pages H (a VMM mapping the host CPU touched: primary A set) and guest pages G (touched by
    // the guest only: S.young set, host PTE old), all at t0, then idle. Rounds: aging (force_scan), then eviction.
    const N = 32;
    const H0 = 0x4000_0000;
    const run = (pol: SecondaryPolicyName) => {
      const { kvm, r } = setUp(pol, { version: 'v613', pages: N });
      for (let i = 0; i < N; i++) guestAccess(kvm, i * P, 'read');
      clearHostA(kvm, N);
      kvm.mm.mmap(H0, N * P);
      for (let i = 0; i < N; i++) kvm.mm.access(H0 + i * P, true);
      const gone = (hva: number) => kvm.mm.lookup(hva) === null;
      const rounds: { h: number; g: number }[] = [];
      for (let round = 0; round < 4; round++) {
        runProgram(r.age(true));
        runProgram(r.evictFolios(4 * N));
        let h = 0;
        let g = 0;
        for (let i = 0; i < N; i++) {
          if (gone(H0 + i * P)) h++;
          if (gone(hvaOf(i * P))) g++;
        }
        rounds.push({ h, g });
      }
      expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
      return rounds;
    };
    // Both start in seq 2 (a fault lands in max_seq - 1; max_seq 3, min_seq 0).
    // pre613 (eviction-only): round 1's walk sees H young (primary) and moves its gen bits to seq 3; G looks
    //   old to a primary-only walk and stays in seq 2. max_seq 4, min_seq 1; eviction finds seq 1 empty (then
    //   min_seq moves to 2). Round 2 (max 5): eviction scans seq 2: H sorts lazily to seq 3, G is isolated and
    //   clear_flush_young reports the S.young it kept since t0: referenced, put back into max_seq - 1 = seq 4.
    //   Round 3 (max 6, min 3): H is evicted, G is not. Round 4 (min 4): G, old everywhere now, is evicted.
    // v613 (current): round 1's clear_young sees and clears G's S.young, so G's gen bits go to seq 3 with H's.
    //   Round 2 sorts both to seq 3; round 3 evicts both together.
    expect(run('eviction-only')).toEqual([{ h: 0, g: 0 }, { h: 0, g: 0 }, { h: N, g: 0 }, { h: N, g: N }]);
    expect(run('current')).toEqual([{ h: 0, g: 0 }, { h: 0, g: 0 }, { h: N, g: N }, { h: N, g: N }]);
  });

  it('Scenario 17: look-around window math', () => {
    const M2 = 2 << 20;
    expect(lookAroundWindow(10 * P, 0, M2).map((a) => a / P)).toEqual([0, 64]);
    expect(lookAroundWindow(500 * P, 0, M2).map((a) => a / P)).toEqual([448, 512]);
    expect(lookAroundWindow(200 * P, 0, M2).map((a) => a / P)).toEqual([168, 232]);
    expect(lookAroundWindow(7 * P, 7 * P, 8 * P).map((a) => a / P)).toEqual([7, 8]);
    const { kvm, lruvec, pol } = setUp('current');
    guestAccess(kvm, 0, 'read');
    const vma = kvm.mm.areas[0];
    vma.vmFlags = VM_SPECIAL;
    expect(runProgram(lookAround(lruvec, vma, vma.start, pol))).toBe(0);
  });

  it('Scenario 18: look-around driven by the secondary', () => {
    for (const [pol, promoted, calls] of [['current', 63, 1 + 63], ['eviction-only', 0, 1]] as const) {
      const { kvm, lruvec, r, pol: p } = setUp(pol, { version: 'v613', pages: 64 });
      for (let i = 0; i < 64; i++) guestAccess(kvm, i * P, 'read');
      clearHostA(kvm, 64);
      // Move the target into the oldest generation so eviction isolates it.
      const f = kvm.pages.folios;
      const t = pfnOf(kvm, 0);
      lruvec.delFolio(t);
      lruvec.addFolio(t, true);
      runProgram(r.evictFolios(1));
      expect(p.stats.notifierCalls).toBe(calls);
      expect(lruvec.nrPages[3][0]).toBe(promoted);
      expect(f.lruGen(t)).toBeGreaterThanOrEqual(0); // kept: referenced through the secondary
    }
  });

  it('Scenario 19: Bloom filter feedback', () => {
    const { kvm, lruvec, r } = setUp('eviction-only', { version: 'v613' });
    for (let i = 0; i < 512; i++) guestAccess(kvm, i * P, 'read');
    runProgram(r.age(true)); // all 512 host PTEs young: table suitable -> filter[(3+1)%2]
    const e = pmdEntryOf(kvm.mm, hvaOf(0));
    expect(lruvec.bloom[0].test(e)).toBe(true);
    expect(lruvec.stats.bloomAdded).toBe(1);
    // Non-force walk at seq 4 tests filter[0]: scanned. At seq 5, the filter[1] was reset and nothing added: skipped.
    kvm.mm.pt.walk(hvaOf(0));
    const before = lruvec.stats.tablesWalked;
    runProgram(r.age(false)); // seq 4: walks (PMD A set by... short-cut on: PMD A is set since the hardware walked it)
    expect(lruvec.stats.tablesWalked).toBe(before + 1);
    runProgram(r.age(false)); // seq 5: not in filter[1] (0 young)
    expect(lruvec.stats.tablesWalked).toBe(before + 1);
  });

  it('Scenario 20: non-leaf PMD short-cut', () => {
    for (const [pol, walked] of [['eviction-only', 0], ['current', 1]] as const) {
      const { kvm, lruvec, r } = setUp(pol, { version: 'v613' });
      guestAccess(kvm, 0, 'read');
      const e = pmdEntryOf(kvm.mm, hvaOf(0));
      kvm.mem.and64(e, ~_PAGE_ACCESSED, -1);
      runProgram(r.age(false));
      expect(lruvec.stats.tablesWalked).toBe(walked);
      expect(lruvec.stats.tablesSkippedNonleaf).toBe(1 - walked);
    }
  });

  it('Scenario 21: sort_folio lazy promotion', () => {
    const { kvm, lruvec, r } = setUp('current', { version: 'v613', pages: 4 });
    const f = kvm.pages.folios;
    guestAccess(kvm, 0, 'read');
    const a = pfnOf(kvm, 0);
    lruvec.delFolio(a);
    lruvec.addFolio(a, true); // oldest gen 0
    lruvec.folioUpdateGen(a, 3);
    expect(f.lruListOf(a)).toBe(lruGenList(0, 0));
    runProgram(r.evictFolios(1));
    expect(f.lruListOf(a)).toBe(lruGenList(3, 0));
    expect(r.policy.stats.evicted).toBe(0);
  });

  it('Scenario 22: min_ttl', () => {
    const { lruvec } = setUp('current');
    lruvec.now = 500;
    expect(lruGenAgeNode([lruvec], 1000, 500)).toEqual({ reclaimable: false, oom: true });
    expect(lruGenAgeNode([lruvec], 1000, 1500 + 1)).toEqual({ reclaimable: true, oom: false });
  });

  it('debugfs lru_gen layout', () => {
    const { kvm, lruvec } = setUp('current');
    guestAccess(kvm, 0, 'read');
    expect(lruGenDebugfs([lruvec], 1000)).toBe(
      'memcg     0 /\n node     0\n          0       1000          0           0 \n          1       1000          0           0 \n          2       1000          1           0 \n          3       1000          0           0 \n',
    );
  });
});
