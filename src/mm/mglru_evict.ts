/**
 * MGLRU eviction and its drivers (mm.md sections 3.3-3.4, 3.7, 3.8):
 * should_run_aging, evict_folios (scan_folios -> sort_folio / isolate_folio,
 * shrink with folio_referenced + look-around, put back), the kswapd age
 * step's min_ttl check, and the /sys/kernel/debug/lru_gen text.
 *
 * Pageout is the kernel's: evict_folios hands the isolated folios to
 * shrink_folio_list (vmscan.ts, the one the classic LRU uses), with an
 * isolation reference each. There folio_check_references takes its MGLRU
 * branch, folio_referenced_one enters look-around (the rmap hook), and a
 * folio to reclaim goes add_to_swap -> try_to_unmap (CLEAR invalidation,
 * swap entry) -> write-out -> __remove_mapping, whose shadow comes from
 * lru_gen_eviction (the workingset hook, packed into the swap cache's
 * shadow entry). A swap-in finding that shadow runs lru_gen_refault.
 * Anonymous memory only, so nothing is ever discarded: the kernel drops
 * without write-out only clean file pages, which this model does not have.
 *
 * An explicit `evict` hook (the old injectable pageout) is still accepted
 * for callers that want their own pageout; shadows then stay in
 * Lruvec.shadows.
 */
import { PG_active, PG_referenced, PG_reclaim, PG_unevictable, PG_workingset, lruGenList } from './folio.js';
import { PAGE_SIZE, folioVma, vmaAddress, type MmStruct, type VmArea } from './mm.js';
import {
  DEF_PRIORITY, LRU_REFS_WIDTH, MAX_LRU_BATCH, MAX_NR_GENS, MAX_NR_TIERS, MAX_SWAPPINESS, MIN_LRU_BATCH, MIN_NR_GENS, evictableTypes, lruGenFromSeq, packLruGenShadow,
  unpackLruGenShadow, type Lruvec,
} from './mglru.js';
import { lookAround, tryToIncMaxSeq } from './mglru_walk.js';
import type { Program } from './mmu_notifier.js';
import { _PAGE_ACCESSED, _PAGE_PRESENT } from './pgtable.js';
import type { SecondaryPolicy } from './secondary_policy.js';
import type { HostRmap } from './rmap.js';
import type { SwapDevice } from './swap.js';
import { setUpReclaim, type Reclaimer } from './vmscan.js';
import type { Workingset } from './workingset.js';

/** The classic reclaim stack MGLRU shares (setUpReclaim's result). */
export interface SwapStack {
  swap: SwapDevice;
  workingset: Workingset;
  rmap: HostRmap;
  reclaim: Reclaimer;
}

const PAGE = 4096;

/** The pageout hook: unmap and free the folio (its last reference goes). */
export type EvictFn = (vma: VmArea, hva: number, pfn: number) => Program<void>;

/**
 * Not a kernel pageout: drops the page (zap with a CLEAR invalidation), so
 * its data is lost. Only for callers that pass it explicitly as `evict`;
 * the default is eviction through swap.
 */
export function* discardEvict(vma: VmArea, hva: number): Program<void> {
  yield* vma.mm.madviseDontneed(hva, PAGE);
}

/** should_run_aging / get_nr_to_scan's decision for a lruvec. */
export function shouldRunAging(lruvec: Lruvec, priority: number, swappiness = lruvec.swappiness): { aging: boolean; required: boolean } {
  const g = lruvec.maxSeq - lruvec.evictableMinSeq(swappiness) + 1;
  if (g <= MIN_NR_GENS) return { aging: true, required: true };
  if (g === MIN_NR_GENS + 1) return { aging: priority < DEF_PRIORITY, required: false };
  return { aging: false, required: false };
}

/**
 * The kswapd age step (lru_gen_age_node's min_ttl part): a lruvec is
 * reclaimable when its oldest evictable generation was born more than
 * min_ttl ago; none reclaimable and min_ttl set -> OOM.
 */
export function lruGenAgeNode(lruvecs: readonly Lruvec[], minTtlMs: number, now: number): { reclaimable: boolean; oom: boolean } {
  if (minTtlMs === 0) return { reclaimable: true, oom: false };
  for (const l of lruvecs) {
    const birth = l.timestamps[lruGenFromSeq(l.evictableMinSeq(l.swappiness))];
    if (birth + minTtlMs < now) return { reclaimable: true, oom: false };
  }
  return { reclaimable: false, oom: true };
}

/**
 * /sys/kernel/debug/lru_gen (lru_gen_seq_show), or with `full`
 * lru_gen_full: every generation of the window, an 'x' by the sizes of a
 * type's generations below its min_seq, and per generation its tiers
 * (max_seq: avg_refaulted R and avg_total T; a type's min_seq: refaulted
 * r, evicted e, protected p; others: x) and the walk's TYFA row on max_seq.
 */
export function lruGenDebugfs(lruvecs: readonly Lruvec[], now: number, full = false): string {
  const n10 = (v: number) => String(v).padStart(10);
  let out = '';
  for (const l of lruvecs) {
    out += `memcg ${String(l.memcgId).padStart(5)} ${l.memcgPath}\n`;
    out += ` node ${String(l.nodeId).padStart(5)}\n`;
    const first = !full ? l.evictableMinSeq(MAX_SWAPPINESS / 2) : Math.max(l.maxSeq - MAX_NR_GENS + 1, 0);
    for (let seq = first; seq <= l.maxSeq; seq++) {
      const gen = lruGenFromSeq(seq);
      out += ` ${n10(seq)} ${n10(now - l.timestamps[gen])}`;
      for (let type = 0; type < 2; type++) out += ` ${n10(Math.max(l.nrPages[gen][type], 0))}${full && seq < l.minSeq[type] ? 'x' : ' '}`;
      out += '\n';
      if (!full) continue;
      for (let tier = 0; tier < MAX_NR_TIERS; tier++) {
        out += `            ${n10(tier)}`;
        for (let type = 0; type < 2; type++) {
          let s = 'xxx';
          let n = [0, 0, 0];
          if (seq === l.maxSeq) {
            s = 'RTx';
            n = [l.avgRefaulted[type][tier], l.avgTotal[type][tier], 0];
          } else if (seq === l.minSeq[type]) {
            s = 'rep';
            n = [l.refaulted[type][tier], l.evicted[type][tier], l.protected[type][tier]];
          }
          for (let i = 0; i < 3; i++) out += ` ${n10(n[i])}${s[i]}`;
        }
        out += '\n';
      }
      out += '                      ';
      for (let i = 0; i < 4; i++) out += ` ${n10(seq === l.maxSeq ? l.mmStats[i] : 0)}${(seq === l.maxSeq ? 'TYFA' : 'xxxx')[i]}`;
      out += '\n';
    }
  }
  return out;
}

/** The VMA and hva mapping a folio (its rmap: anon_vma + index). */
function rmapOf(lruvec: Lruvec, pfn: number): { vma: VmArea; hva: number } | null {
  const f = lruvec.folios;
  const i = f.idx(pfn);
  const vma = folioVma(f, pfn);
  if (vma === null || f.mapcount[i] <= 0) return null;
  return { vma, hva: vmaAddress(vma, f.index[i]) };
}

/** The VMA and hva a folio belongs to (folio->mapping + index), mapped or not. */
function ownerOf(lruvec: Lruvec, pfn: number): { vma: VmArea; hva: number } | null {
  const f = lruvec.folios;
  const i = f.idx(pfn);
  const vma = folioVma(f, pfn);
  if (vma === null) return null;
  return { vma, hva: vmaAddress(vma, f.index[i]) };
}

/**
 * The MGLRU reclaimer of one lruvec over the mms charged to it, with a
 * secondary-MMU policy and a pageout hook. Attaching an mm makes its new
 * anon folios MGLRU folios and records refaults.
 */
export class MglruReclaimer {
  readonly mms: MmStruct[] = [];
  /** Oracle for "evicted while hot": the workload says whether it still uses the page. */
  hot: ((mm: MmStruct, hva: number) => boolean) | null = null;

  /** The swap stack pageout goes through (null only while an explicit `evict` hook is used and no mm is attached). */
  stack: SwapStack | null = null;
  /** Slots of the swap device made by the first attach when none was given (useSwap). */
  swapSlots = 1 << 16;

  /** `evict`: an explicit pageout hook instead of shrink_folio_list (not the kernel's; see discardEvict). */
  constructor(readonly lruvec: Lruvec, readonly policy: SecondaryPolicy, readonly evict: EvictFn | null = null) {}

  /**
   * Makes MGLRU the reclaim of a classic stack (lru_gen_enabled()):
   * shrink_lruvec, workingset eviction/refault and folio_referenced_one's
   * look-around all go to this reclaimer. Call before attach to choose the
   * swap device; otherwise the first attach builds one of swapSlots slots.
   */
  useSwap(stack: SwapStack): void {
    this.stack = stack;
    stack.reclaim.lruGen = { shrinkLruvec: (nr, priority) => this.shrink(nr, priority) };
    stack.workingset.lruGen = {
      eviction: (head) => {
        const o = ownerOf(this.lruvec, head);
        this.policy.stats.evicted++;
        if (o !== null && this.hot?.(o.vma.mm, o.hva) === true) this.policy.stats.evictedHot++;
        return packLruGenShadow(this.lruvec.evictionShadow(head));
      },
      refault: (head, shadow) => {
        this.policy.stats.refaults++;
        // lru_gen_refault from do_swap_page: a recent refault inside a fault counts an activation (WORKINGSET_ACTIVATE).
        if (this.lruvec.refault(head, unpackLruGenShadow(shadow))) this.lruvec.stats.refaultActivations++;
      },
    };
    stack.rmap.lookAround = (vma, hva) => this.lookAroundTarget(vma, hva);
    for (const mm of this.mms) stack.swap.attach(mm);
  }

  /** Charges an mm to the lruvec: folio_add_lru under MGLRU, in a fault (PG_active: recency-tracking fault), plus refault accounting. */
  attach(mm: MmStruct): void {
    this.mms.push(mm);
    if (this.evict === null) {
      if (this.stack === null) this.useSwap(setUpReclaim(mm, { swapSlots: this.swapSlots }));
      else this.stack.swap.attach(mm);
    }
    mm.lruAddNew = (pfn, vma, addr) => {
      const f = this.lruvec.folios;
      const sh = this.lruvec.shadows.get(mm);
      const s = sh?.get(addr);
      if (s !== undefined) {
        sh!.delete(addr);
        this.policy.stats.refaults++;
        this.lruvec.refault(pfn, s);
      }
      void vma;
      f.set(pfn, PG_active);
      this.lruvec.addFolio(pfn, false);
    };
  }

  /** Pages on the MGLRU lists (by gen bits), both types: what a reclaim budget counts. */
  get lruPages(): number {
    let n = 0;
    for (const g of this.lruvec.nrPages) n += g[0] + g[1];
    return n;
  }

  /** Aging as /sys/kernel/debug/lru_gen "+ memcg node seq" does: try_to_inc_max_seq(max_seq, force_scan). */
  *age(forceScan = true): Program<boolean> {
    return yield* tryToIncMaxSeq(this.lruvec, this.mms, this.policy, this.lruvec.maxSeq, forceScan);
  }

  /** One reclaim pass at a priority: age if should_run_aging says so, else evict up to nrToScan. Returns folios reclaimed. */
  *shrink(nrToScan: number, priority = DEF_PRIORITY - 1): Program<number> {
    const d = shouldRunAging(this.lruvec, priority);
    if (d.aging) {
      yield* this.age(false);
      if (d.required) return 0;
    }
    return yield* this.evictFolios(nrToScan);
  }

  /**
   * sort_folio: true when the folio was moved rather than isolated:
   * unevictable; gen bits not the min gen (lazy promotion); protected:
   * a tier above the PID controller's tier_idx, or refs and workingset
   * both saturated (counted in `protected` unless saturated).
   */
  sortFolio(pfn: number, type: number, tierIdx: number): boolean {
    const l = this.lruvec;
    const f = l.folios;
    if (f.test(pfn, PG_unevictable)) return false; // no unevictable list in this model
    const gen = f.lruGen(pfn);
    if (gen !== lruGenFromSeq(l.minSeq[type])) {
      l.moveToGenList(pfn, false);
      return true;
    }
    const refs = l.refs(pfn);
    const ws = f.test(pfn, PG_workingset) ? 1 : 0;
    const tier = l.tier(pfn);
    const saturated = refs + ws === (1 << LRU_REFS_WIDTH) + 1;
    if (tier > tierIdx || saturated) {
      l.folioIncGen(pfn, false);
      l.moveToGenList(pfn, false);
      if (!saturated) l.protected[type][tier] += 2 ** f.order(pfn);
      return true;
    }
    return false;
  }

  /** scan_folios from min_seq[type]: sort, else isolate (refs wiped without PG_referenced, PG_reclaim cleared). */
  private scanFolios(type: number, tierIdx: number, nr: number): { scanned: number; isolated: number[] } {
    const l = this.lruvec;
    const f = l.folios;
    const isolated: number[] = [];
    let scanned = 0;
    let isolatedPages = 0;
    if (l.nrGens(type) === MIN_NR_GENS) return { scanned, isolated };
    const list = lruGenList(lruGenFromSeq(l.minSeq[type]), type);
    // A budget of folios, not pages; sorted folios use it up too. Isolation cannot fail here, so nothing is skipped.
    let remaining = Math.min(nr, MAX_LRU_BATCH);
    for (;;) {
      const idx = f.tail[list];
      if (idx === -1) break;
      const pfn = idx + f.basePfn;
      const n = 2 ** f.order(pfn);
      scanned += n;
      if (!this.sortFolio(pfn, type, tierIdx)) {
        l.delFolio(pfn);
        if (!f.test(pfn, PG_referenced)) f.setLruRefs(pfn, 0);
        f.clear(pfn, PG_reclaim);
        isolated.push(pfn);
        isolatedPages += n;
      }
      if (--remaining === 0 || isolatedPages >= MIN_LRU_BATCH) break;
    }
    // Nothing isolated with budget left: report nothing scanned, so the other type is tried.
    return { scanned: isolatedPages !== 0 || remaining === 0 ? scanned : 0, isolated };
  }

  /**
   * folio_referenced for an isolated anon folio under MGLRU: the primary
   * PTE test-and-cleared, the secondary per policy, look-around when
   * young; then folio_check_references' MGLRU branch: not referenced ->
   * reclaim; else lru_gen_set_refs decides activate or keep.
   */
  private *folioReferenced(pfn: number): Program<'reclaim' | 'keep' | 'activate'> {
    const r = rmapOf(this.lruvec, pfn);
    if (r === null) return 'reclaim';
    if (!(yield* this.lookAroundTarget(r.vma, r.hva))) return 'reclaim';
    return this.lruvec.setRefs(pfn) ? 'activate' : 'keep';
  }

  /**
   * folio_referenced_one's MGLRU part for the PTE at hva: the primary PTE
   * test-and-cleared, the secondary asked per policy, look-around when
   * young. Returns whether the target was referenced.
   */
  *lookAroundTarget(vma: VmArea, hva: number): Program<boolean> {
    const mm = vma.mm;
    const pt = mm.pt;
    pt.walk(hva);
    let primary = false;
    if (pt.present && (pt.lo & _PAGE_ACCESSED) !== 0) {
      mm.mem.and64(pt.entry, ~_PAGE_ACCESSED, -1);
      primary = (mm.mem.lo & _PAGE_ACCESSED) !== 0 && (mm.mem.lo & _PAGE_PRESENT) !== 0;
    }
    const t = yield* this.policy.evictionTarget(mm, hva, primary);
    if (t.lookAround) yield* lookAround(this.lruvec, vma, hva, this.policy);
    return t.referenced;
  }

  /**
   * evict_folios: isolate from the oldest generation (the other type if
   * nothing), try_to_inc_min_seq, shrink (evict the unreferenced), put the
   * rest back (out of the oldest generation: PG_active). Returns reclaimed.
   */
  *evictFolios(nrToScan: number): Program<number> {
    const l = this.lruvec;
    const f = l.folios;
    // isolate_folios: the PID controller picks the type, then the other evictable type if nothing was scanned.
    let type = l.getTypeToScan(l.swappiness);
    let r: { scanned: number; isolated: number[] } = { scanned: 0, isolated: [] };
    for (let n = evictableTypes(l.swappiness).length; n > 0; n--) {
      r = this.scanFolios(type, l.getTierIdx(type), nrToScan);
      if (r.scanned !== 0) break;
      type = 1 - type;
    }
    l.tryToIncMinSeq(l.swappiness);
    let reclaimed = 0;
    let putBack: number[] = [];
    if (this.evict === null) {
      // shrink_folio_list on the isolated folios, each holding an isolation reference.
      const stack = this.stack;
      if (stack === null) throw new Error('assertion: MGLRU eviction with no swap stack (attach an mm first)');
      for (const pfn of r.isolated) f.get(pfn);
      const res = yield* stack.reclaim.shrinkFolioList(r.isolated);
      reclaimed = res.reclaimed;
      putBack = res.remaining;
    } else {
      reclaimed = yield* this.evictByHook(r.isolated, putBack);
    }
    for (const pfn of putBack) {
      // Don't add rejected folios to the oldest generation.
      if (l.folioSeq(pfn, false) === l.minSeq[l.folioType(pfn)]) {
        f.clear(pfn, PG_referenced | PG_workingset);
        f.set(pfn, PG_active);
      }
      l.addFolio(pfn, false);
      // move_folios_to_lru drops the isolation reference (the hook path took none).
      if (this.evict === null && f.put(pfn)) {
        l.delFolio(pfn);
        this.mms[0]?.pages.freePages(pfn * PAGE_SIZE, f.order(pfn));
      }
    }
    return reclaimed;
  }

  /** The explicit-hook pageout (no swap): verdict per folio, shadow in Lruvec.shadows, then `evict`. */
  private *evictByHook(isolated: number[], putBack: number[]): Program<number> {
    const l = this.lruvec;
    const f = l.folios;
    let reclaimed = 0;
    for (const pfn of isolated) {
      const verdict = yield* this.folioReferenced(pfn);
      if (verdict === 'activate') f.set(pfn, PG_active);
      if (verdict !== 'reclaim') {
        putBack.push(pfn);
        continue;
      }
      const rm = rmapOf(l, pfn);
      if (rm === null) {
        putBack.push(pfn);
        continue;
      }
      const shadow = l.evictionShadow(pfn);
      let sh = l.shadows.get(rm.vma.mm);
      if (sh === undefined) l.shadows.set(rm.vma.mm, (sh = new Map()));
      sh.set(rm.hva, shadow);
      this.policy.stats.evicted++;
      if (this.hot?.(rm.vma.mm, rm.hva) === true) this.policy.stats.evictedHot++;
      yield* this.evict!(rm.vma, rm.hva, pfn);
      reclaimed++;
    }
    return reclaimed;
  }
}
