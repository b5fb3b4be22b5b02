/**
 * MGLRU eviction through swap (mm.md 3.4, 7 scenario 23's MGLRU half):
 * evict_folios -> shrink_folio_list (add_to_swap, try_to_unmap with its
 * CLEAR invalidation and swap entry, write-out, swap-cache deletion with a
 * lru_gen_eviction shadow), lru_gen_refault on swap-in, and an over-committed
 * guest whose data all survives.
 */
import { describe, expect, it } from 'vitest';
import { runProgram } from '../../src/hw/sched.js';
import { kvmAgingCaps } from '../../src/kvm/aging_caps.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { PG_referenced, PG_swapcache, PG_workingset } from '../../src/mm/folio.js';
import { Lruvec, unpackLruGenShadow } from '../../src/mm/mglru.js';
import { MglruReclaimer } from '../../src/mm/mglru_evict.js';
import { MmuNotifierEvent } from '../../src/mm/mmu_notifier.js';
import { _PAGE_ACCESSED, _PAGE_PRESENT } from '../../src/mm/pgtable.js';
import { SecondaryPolicy } from '../../src/mm/secondary_policy.js';
import { setUpReclaim } from '../../src/mm/vmscan.js';
import { guestAccess, hvaOf, makeVm } from '../support/kvm_setup.js';

const P = 4096;

function setUp(pages: number, swapSlots: number) {
  const kvm = makeVm({ memory: pages * P, tlb: false });
  const lruvec = new Lruvec(kvm.pages.folios, { version: 'v614+' });
  const policy = new SecondaryPolicy('current', kvmAgingCaps(kvm));
  const r = new MglruReclaimer(lruvec, policy);
  const stack = setUpReclaim(kvm.mm, { swapSlots });
  r.useSwap(stack);
  r.attach(kvm.mm);
  return { kvm, lruvec, policy, r, ...stack };
}
const guestWrite = (kvm: Kvm, gfn: number) => kvm.mm.recordWrite(guestAccess(kvm, gfn * P, 'write').hpa);
/** Old everywhere: host PTE A bit and SPTE A bit cleared. */
function makeOld(kvm: Kvm, gfn: number) {
  kvm.mm.pt.walk(hvaOf(gfn * P));
  if (kvm.mm.pt.present) kvm.mem.and64(kvm.mm.pt.entry, ~_PAGE_ACCESSED, -1);
  runProgram(kvm.notifier.clearYoung(hvaOf(gfn * P), hvaOf((gfn + 1) * P)));
}

describe('MGLRU eviction through swap', () => {
  it('Scenario 23 (MGLRU half): refs 3 at min_seq s -> shadow (s, 2); a recent refault credits tier 2 and restores refs; a late one does not', () => {
    for (const late of [false, true]) {
      const { kvm, lruvec, r, swap, policy } = setUp(64, 64);
      const f = kvm.pages.folios;
      const token = guestWrite(kvm, 0);
      const a = kvm.mm.lookup(hvaOf(0))!;
      // refs = 3: PG_referenced plus an LRU_REFS counter of 2 (two folio_mark_accessed after the first).
      lruvec.incRefs(a);
      lruvec.incRefs(a);
      lruvec.incRefs(a);
      expect(lruvec.refs(a)).toBe(3);
      expect(lruvec.tier(a)).toBe(2);
      makeOld(kvm, 0);
      lruvec.delFolio(a);
      lruvec.addFolio(a, true); // the oldest generation
      kvm.mm.notifiers.resetCounters();
      const events: MmuNotifierEvent[] = [];
      const ops = kvm.mm.notifiers;
      const start0 = ops.invalidateRangeStart.bind(ops);
      ops.invalidateRangeStart = function* (range) {
        events.push(range.event);
        return yield* start0(range);
      };
      expect(runProgram(r.evictFolios(64))).toBe(1);
      ops.invalidateRangeStart = start0;
      // lru_gen_eviction reads min_seq at eviction: try_to_inc_min_seq has skipped the empty generations below a's.
      const s = lruvec.minSeq[0];
      expect(s).toBe(2);
      // add_to_swap -> try_to_unmap (one CLEAR range, start and end) -> write-out -> shadow in the swap cache.
      expect(events).toEqual([MmuNotifierEvent.Clear]);
      expect([ops.calls.get('invalidate_range_start'), ops.calls.get('invalidate_range_end')]).toEqual([1, 1]);
      expect(swap.stats.pswpout).toBe(1);
      expect(f.test(a, PG_swapcache)).toBe(false);
      kvm.mm.pt.walk(hvaOf(0));
      expect(kvm.mm.pt.lo & _PAGE_PRESENT).toBe(0); // a swap entry
      expect([...swap.shadows.values()].map(unpackLruGenShadow)).toEqual([{ seq: s, refs: 2, workingset: false, type: 0 }]);
      expect(lruvec.evicted[0][2]).toBe(1);
      expect(policy.stats.evicted).toBe(1);
      if (late) while (lruvec.maxSeq - s < 4) runProgram(r.age(true));
      else expect(lruvec.maxSeq - s).toBeLessThan(4);
      const b = Math.floor(guestAccess(kvm, 0, 'read').hpa / P);
      expect(f.token[f.idx(b)]).toBe(token);
      expect(policy.stats.refaults).toBe(1);
      if (!late) {
        expect([lruvec.refaulted[0][2], lruvec.stats.refaultActivations]).toEqual([1, 1]);
        expect([f.test(b, PG_referenced), f.lruRefs(b), lruvec.refs(b)]).toEqual([true, 2, 3]);
      } else {
        expect([lruvec.refaulted[0], lruvec.stats.refaultActivations]).toEqual([[0, 0, 0, 0], 0]);
        expect([f.test(b, PG_referenced), f.test(b, PG_workingset)]).toEqual([false, false]);
      }
      expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
    }
  });

  it('MGLRU over-commit 2x: reclaim keeps the lists within budget through swap, every page reads back its last write', () => {
    const PAGES = 512;
    const LIMIT = 256;
    const { kvm, r, reclaim, swap, policy } = setUp(PAGES, 2 * PAGES);
    const expected = new Uint32Array(PAGES);
    const budget = () => {
      if (r.lruPages > LIMIT - 16) runProgram(reclaim.tryToFreePages(r.lruPages - (LIMIT - 32)));
      expect(r.lruPages).toBeLessThanOrEqual(LIMIT);
    };
    for (let round = 0; round < 2; round++) {
      for (let g = 0; g < PAGES; g++) {
        expected[g] = guestWrite(kvm, g);
        budget();
      }
    }
    expect(policy.stats.evicted).toBeGreaterThan(PAGES);
    expect(swap.stats.pswpin).toBeGreaterThan(0);
    expect(policy.stats.refaults).toBeGreaterThan(0);
    for (let g = 0; g < PAGES; g++) {
      const a = guestAccess(kvm, g * P, 'read');
      const f = kvm.mm.folios;
      expect(f.token[f.idx(Math.floor(a.hpa / P))]).toBe(expected[g]);
      budget();
    }
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: PAGES, mismatches: [] });
  });
});
