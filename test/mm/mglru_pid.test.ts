/**
 * MGLRU's PID controller (mm.md section 3.4, mm/vmscan.c of 6.17):
 * read_ctrl_pos, reset_ctrl_pos, positive_ctrl_err, get_tier_idx,
 * get_type_to_scan, and how sort_folio, inc_min_seq and
 * try_to_inc_min_seq use them.
 */
import { describe, expect, it } from 'vitest';
import { runProgram } from '../../src/hw/sched.js';
import { PG_referenced, PG_workingset, lruGenList } from '../../src/mm/folio.js';
import {
  LRU_GEN_ANON, LRU_GEN_FILE, Lruvec, MAX_NR_TIERS, SWAPPINESS_ANON_ONLY, evictableTypes, positiveCtrlErr,
} from '../../src/mm/mglru.js';
import { MglruReclaimer } from '../../src/mm/mglru_evict.js';
import { SecondaryPolicy } from '../../src/mm/secondary_policy.js';
import { guestAccess, hvaOf, makeVm } from '../support/kvm_setup.js';

const P = 4096;

function setUp(pages = 8) {
  const kvm = makeVm({ memory: pages * P, tlb: false });
  const lruvec = new Lruvec(kvm.pages.folios, { version: 'v614+' });
  const r = new MglruReclaimer(lruvec, new SecondaryPolicy('eviction-only'));
  r.attach(kvm.mm);
  for (let g = 0; g < pages; g++) guestAccess(kvm, g * P, 'write');
  const pfn = (g: number) => kvm.mm.lookup(hvaOf(g * P))!;
  return { kvm, lruvec, r, pfn, f: kvm.pages.folios };
}

describe('MGLRU PID controller', () => {
  it('positive_ctrl_err: a PV with fewer than MIN_LRU_BATCH refaults is never judged worse', () => {
    expect(positiveCtrlErr({ refaulted: 0, total: 1, gain: 2 }, { refaulted: 63, total: 64, gain: 3 })).toBe(true);
    // 64 refaults of 100 against 0 of 1000: 64*(1000+64)*2 = 136192 > (0+1)*100*3 = 300.
    expect(positiveCtrlErr({ refaulted: 0, total: 1000, gain: 2 }, { refaulted: 64, total: 100, gain: 3 })).toBe(false);
  });

  it('positive_ctrl_err: cross-multiplied rates with the gains, equality counts as positive', () => {
    // 64*(128+64)*1 = 12288 <= (95+1)*128*1 = 12288: equal, positive.
    expect(positiveCtrlErr({ refaulted: 95, total: 128, gain: 1 }, { refaulted: 64, total: 128, gain: 1 })).toBe(true);
    // One refault less on the SP side: 12288 > 95*128 = 12160.
    expect(positiveCtrlErr({ refaulted: 94, total: 128, gain: 1 }, { refaulted: 64, total: 128, gain: 1 })).toBe(false);
  });

  it('read_ctrl_pos: P (refaulted; evicted + protected) plus I (the averages), one tier or all', () => {
    const { lruvec: l } = setUp(1);
    l.refaulted[0] = [1, 2, 3, 4];
    l.evicted[0] = [10, 20, 30, 40];
    l.protected[0] = [100, 200, 300, 400];
    l.avgRefaulted[0] = [5, 0, 0, 0];
    l.avgTotal[0] = [7, 0, 0, 0];
    expect(l.readCtrlPos(0, 0, 2)).toEqual({ refaulted: 6, total: 117, gain: 2 });
    expect(l.readCtrlPos(0, 2, 3)).toEqual({ refaulted: 3, total: 330, gain: 3 });
    expect(l.readCtrlPos(0, MAX_NR_TIERS, 60)).toEqual({ refaulted: 15, total: 1107, gain: 60 });
  });

  it('reset_ctrl_pos with carryover halves (integer division) into the averages and clears the generation', () => {
    const { lruvec: l } = setUp(1);
    l.refaulted[1] = [3, 0, 0, 0];
    l.evicted[1] = [4, 0, 0, 0];
    l.protected[1] = [1, 0, 0, 0];
    l.avgRefaulted[1] = [2, 0, 0, 0];
    l.avgTotal[1] = [4, 0, 0, 0];
    l.resetCtrlPos(1, true);
    expect([l.avgRefaulted[1][0], l.avgTotal[1][0]]).toEqual([2, 4]); // (2+3)/2 = 2, (4+1+4)/2 = 4
    expect([l.refaulted[1][0], l.evicted[1][0], l.protected[1][0]]).toEqual([0, 0, 0]);
    // Without carryover (inc_max_seq) NR_HIST_GENS == 1 changes nothing.
    l.refaulted[1][0] = 9;
    l.resetCtrlPos(1, false);
    expect(l.refaulted[1][0]).toBe(9);
  });

  it('get_tier_idx: protection starts at the first tier refaulting more than tier 0 (gains 2:3)', () => {
    const { lruvec: l } = setUp(1);
    expect(l.getTierIdx(LRU_GEN_ANON)).toBe(3); // no refaults anywhere: nothing is protected
    l.evicted[0] = [1000, 100, 100, 100];
    l.refaulted[0] = [10, 5, 80, 0];
    // tier 1: 5 < 64 refaults, positive; tier 2: 80*(1000+64)*2 = 170240 > (10+1)*100*3 = 3300, negative -> idx 1.
    expect(l.getTierIdx(LRU_GEN_ANON)).toBe(1);
    l.refaulted[0][1] = 64; // 64*1064*2 = 136192 > 3300: tier 1 already worse
    expect(l.getTierIdx(LRU_GEN_ANON)).toBe(0);
  });

  it('get_type_to_scan: swappiness extremes, else anon against file with gains swappiness : 200 - swappiness', () => {
    const { lruvec: l } = setUp(1);
    expect(l.getTypeToScan(1)).toBe(LRU_GEN_FILE);
    expect(l.getTypeToScan(200)).toBe(LRU_GEN_ANON);
    expect(l.getTypeToScan(60)).toBe(LRU_GEN_FILE); // file has < 64 refaults: scan it
    l.evicted[LRU_GEN_FILE][0] = 100;
    l.refaulted[LRU_GEN_FILE][0] = 100;
    l.evicted[LRU_GEN_ANON][0] = 100;
    // 100*(100+64)*60 = 984000 > (0+1)*100*140 = 14000: file refaults more, scan anon.
    expect(l.getTypeToScan(60)).toBe(LRU_GEN_ANON);
  });

  it('for_each_evictable_type: swappiness 0 is file only, SWAPPINESS_ANON_ONLY anon only', () => {
    expect(evictableTypes(0)).toEqual([LRU_GEN_FILE]);
    expect(evictableTypes(60)).toEqual([LRU_GEN_ANON, LRU_GEN_FILE]);
    expect(evictableTypes(SWAPPINESS_ANON_ONLY)).toEqual([LRU_GEN_ANON]);
  });

  it('sort_folio: a tier above tier_idx is protected (one gen up, counted); at tier_idx 3 it is isolated', () => {
    const { lruvec: l, r, pfn, f } = setUp(2);
    // Both folios in the oldest anon generation, tier 1 (PG_referenced + one ref: refs 2).
    for (const g of [0, 1]) {
      l.delFolio(pfn(g));
      l.minSeq[0] = 2;
      l.addFolio(pfn(g), true);
      f.set(pfn(g), PG_referenced);
      f.setLruRefs(pfn(g), 1);
    }
    expect(f.lruGen(pfn(0))).toBe(2);
    expect(r.sortFolio(pfn(0), LRU_GEN_ANON, 0)).toBe(true);
    expect(f.lruGen(pfn(0))).toBe(3);
    expect(l.protected[LRU_GEN_ANON]).toEqual([0, 1, 0, 0]);
    expect(f.test(pfn(0), PG_referenced)).toBe(false); // folio_inc_gen clears the refs flags
    expect(r.sortFolio(pfn(1), LRU_GEN_ANON, 3)).toBe(false);
    expect(f.lruGen(pfn(1))).toBe(2);
  });

  it('sort_folio: saturated refs + workingset are protected at any tier_idx but not counted', () => {
    const { lruvec: l, r, pfn, f } = setUp(1);
    l.delFolio(pfn(0));
    l.minSeq[0] = 2;
    l.addFolio(pfn(0), true);
    f.set(pfn(0), PG_referenced | PG_workingset);
    f.setLruRefs(pfn(0), 3); // refs 4 + workingset 1 = BIT(LRU_REFS_WIDTH) + 1
    expect(r.sortFolio(pfn(0), LRU_GEN_ANON, 3)).toBe(true);
    expect(f.lruGen(pfn(0))).toBe(3);
    expect(l.protected[LRU_GEN_ANON]).toEqual([0, 0, 0, 0]);
  });

  it('inc_min_seq: counts protected for all but the saturated workingset, then folds the history', () => {
    const { lruvec: l, pfn, f } = setUp(3);
    // All three writes landed in max_seq - 1 = 2; make gen 0 hold them as the oldest.
    for (const g of [0, 1, 2]) {
      l.delFolio(pfn(g));
      f.setLruGen(pfn(g), -1);
    }
    l.maxSeq = 3;
    for (const g of [0, 1, 2]) {
      l.addFolio(pfn(g), true); // reclaiming: max_seq - MAX_NR_GENS + 1 = 0
      expect(f.lruGen(pfn(g))).toBe(0);
    }
    f.set(pfn(1), PG_referenced); // tier 0 (refs 1)
    f.set(pfn(2), PG_referenced | PG_workingset);
    f.setLruRefs(pfn(2), 3); // saturated
    l.evicted[LRU_GEN_ANON][0] = 6;
    l.incMinSeq(LRU_GEN_ANON, 60);
    expect(l.minSeq[LRU_GEN_ANON]).toBe(1);
    // protected[0] was 2 (folios 0 and 1), then folded: avg_total[0] = (0 + 2 + 6) / 2 = 4, and cleared.
    expect(l.avgTotal[LRU_GEN_ANON]).toEqual([4, 0, 0, 0]);
    expect(l.protected[LRU_GEN_ANON]).toEqual([0, 0, 0, 0]);
    expect([0, 1, 2].map((g) => f.lruGen(pfn(g)))).toEqual([1, 1, 1]);
    expect(f.lruFolios(lruGenList(0, LRU_GEN_ANON))).toEqual([]);
  });

  it('try_to_inc_min_seq: anon may not pass max_seq - MIN_NR_GENS while file lags behind it', () => {
    for (const [swappiness, want] of [[60, [1, 0]], [SWAPPINESS_ANON_ONLY, [2, 0]]] as const) {
      const { kvm, lruvec: l, pfn, f } = setUp(1);
      expect(f.lruGen(pfn(0))).toBe(2); // anon: generations 0 and 1 empty
      const file = kvm.pages.allocPage() / P; // not swap-backed: a file folio
      l.addFolio(file); // read-ahead placement: the oldest generation
      expect(f.lruGen(file)).toBe(0);
      // Anon's empty generations would take it to 2; with both types evictable it stops at max_seq - MIN_NR_GENS = 1.
      expect(l.tryToIncMinSeq(swappiness)).toBe(true);
      expect(l.minSeq).toEqual(want);
    }
  });

  it('scan_folios: nothing isolated with budget left reports 0 scanned, so evict_folios tries the other type', () => {
    const { lruvec: l, r, kvm } = setUp(4);
    // No file folios: get_type_to_scan picks file (no refaults), which has nothing; anon is then scanned.
    expect(l.getTypeToScan(60)).toBe(LRU_GEN_FILE);
    runProgram(r.age(true));
    runProgram(r.age(true));
    // The guest's writes left the SPTEs young, which eviction would ask KVM about: age them first.
    const slot = kvm.memslots.gfnToMemslot(0)!;
    runProgram(kvm.tdpMmu.ageGfnRange({ slot, start: 0, end: 4 }, false));
    const before = r.policy.stats.evicted;
    const reclaimed = runProgram(r.evictFolios(64));
    expect(reclaimed).toBe(4);
    expect(r.policy.stats.evicted - before).toBe(4);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });
});

