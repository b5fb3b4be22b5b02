/**
 * MGLRU's lruvec (mm.md section 3.1-3.2): generations per type (anon, file)
 * indexed by seq % MAX_NR_GENS, the gen+1 kept in the folio's LRU_GEN bits,
 * tiers from refs (LRU_REFS + PG_referenced, PG_workingset), placement of new
 * and put-back folios, inc_min_seq / inc_max_seq, and the Bloom filters the
 * aging walk and look-around share. One node, one zone, one memcg.
 *
 * List membership follows the kernel's laziness: the aging walk changes only
 * the gen bits (folio_update_gen); the folio moves to its generation's list
 * when eviction scanning meets it (sort_folio). So `nrPages` counts by gen
 * bits while FolioTable lists hold what was last moved.
 */
import {
  LRU_REFS_MASK, PG_active, PG_dirty, PG_referenced, PG_reclaim, PG_swapbacked, PG_swapcache, PG_unevictable, PG_workingset,
  lruGenList, type FolioTable,
} from './folio.js';

export const MIN_NR_GENS = 2;
export const MAX_NR_GENS = 4;
export const MAX_NR_TIERS = 4;
export const MIN_LRU_BATCH = 64;
export const MAX_LRU_BATCH = MIN_LRU_BATCH * 64;
export const LRU_REFS_WIDTH = 2;
export const MAX_SWAPPINESS = 200;
/** Swappiness beyond the sysctl range that the proactive-reclaim interface uses for "anon only". */
export const SWAPPINESS_ANON_ONLY = MAX_SWAPPINESS + 1;
export const DEF_PRIORITY = 12;
export const LRU_GEN_ANON = 0;
export const LRU_GEN_FILE = 1;
/** /sys/kernel/mm/lru_gen/enabled bits. */
export const LRU_GEN_CORE = 0x1;
export const LRU_GEN_MM_WALK = 0x2;
export const LRU_GEN_NONLEAF_YOUNG = 0x4;

/**
 * Which MGLRU the run models: pre613 (page-table accesses promote at the
 * first young observation, notifiers only at eviction), v613 (secondary
 * MMUs in walks, same promotion), v614+ (second chance on folio flags).
 */
export type MglruVersion = 'pre613' | 'v613' | 'v614+';

/** lru_gen_from_seq. */
export function lruGenFromSeq(seq: number): number {
  return seq % MAX_NR_GENS;
}

/** Number of bits of a Bloom filter (BLOOM_FILTER_SHIFT 15). */
const BLOOM_BITS = 1 << 15;

/**
 * One Bloom filter of PMD entries (keys: the hpa of the non-leaf PMD
 * entry). Two keys from one 30-bit hash of the "pointer", as
 * get_item_key does with hash_ptr.
 */
export class BloomFilter {
  readonly bits = new Uint32Array(BLOOM_BITS / 32);
  /** Allocated yet: an unallocated filter passes every test (test_bloom_filter on NULL). */
  active = false;

  private static keys(item: number): [number, number] {
    // hash_32 (golden ratio multiply) of the pointer's low and high words, folded to 30 bits.
    const h = (Math.imul((item >>> 0) ^ Math.floor(item / 4294967296), 0x61c88647) >>> 2) & 0x3fffffff;
    return [h & (BLOOM_BITS - 1), h >>> 15];
  }

  /** reset_bloom_filter. */
  reset(): void {
    this.bits.fill(0);
    this.active = true;
  }

  /** update_bloom_filter. */
  add(item: number): void {
    if (!this.active) return;
    for (const k of BloomFilter.keys(item)) this.bits[k >>> 5] |= 1 << (k & 31);
  }

  /** test_bloom_filter. */
  test(item: number): boolean {
    if (!this.active) return true;
    for (const k of BloomFilter.keys(item)) if ((this.bits[k >>> 5] & (1 << (k & 31))) === 0) return false;
    return true;
  }
}

/** for_each_evictable_type's bounds: swappiness 0 is file only, SWAPPINESS_ANON_ONLY anon only. */
export function evictableTypes(swappiness: number): number[] {
  const lo = swappiness === 0 ? LRU_GEN_FILE : LRU_GEN_ANON;
  const hi = swappiness < SWAPPINESS_ANON_ONLY ? LRU_GEN_FILE : LRU_GEN_ANON;
  const out: number[] = [];
  for (let t = lo; t <= hi; t++) out.push(t);
  return out;
}

/** struct ctrl_pos: one side of the PID controller's comparison. */
export interface CtrlPos {
  refaulted: number;
  total: number;
  gain: number;
}

/**
 * positive_ctrl_err: true when the process variable has too few refaults
 * to judge, or a refault rate no higher than the setpoint's (cross
 * multiplied, gains weighting each side).
 */
export function positiveCtrlErr(sp: CtrlPos, pv: CtrlPos): boolean {
  return pv.refaulted < MIN_LRU_BATCH || pv.refaulted * (sp.total + MIN_LRU_BATCH) * sp.gain <= (sp.refaulted + 1) * pv.total * pv.gain;
}

/** A shadow entry left by eviction (workingset_eviction under MGLRU: lru_gen_eviction). */
export interface LruGenShadow {
  /** min_seq[type] at eviction. */
  seq: number;
  /** max(refs - 1, 0). */
  refs: number;
  workingset: boolean;
  type: number;
}

/**
 * The shadow as the swap cache stores it (lru_gen_eviction's pack_shadow
 * of token = min_seq << LRU_REFS_WIDTH | refs, plus the workingset bit;
 * the type rides along since one lruvec serves both). Never 0. The seq is
 * kept whole (no EVICTION_MASK truncation: a run never wraps it).
 */
export function packLruGenShadow(s: LruGenShadow): number {
  const token = s.seq * (1 << LRU_REFS_WIDTH) + s.refs;
  return ((token * 2 + (s.workingset ? 1 : 0)) * 2 + s.type) * 2 + 1;
}

/** The inverse of packLruGenShadow. */
export function unpackLruGenShadow(v: number): LruGenShadow {
  let x = (v - 1) / 2;
  const type = x % 2;
  x = (x - type) / 2;
  const workingset = x % 2 === 1;
  const token = (x - (workingset ? 1 : 0)) / 2;
  const refs = token % (1 << LRU_REFS_WIDTH);
  return { seq: (token - refs) / (1 << LRU_REFS_WIDTH), refs, workingset, type };
}

export interface LruvecOptions {
  version?: MglruVersion;
  /** Wall clock in ms at creation (the generations' birth time). */
  now?: number;
  /** /sys/kernel/mm/lru_gen/enabled (0x7 = y on x86). */
  caps?: number;
  swappiness?: number;
}

/** struct lruvec's lrugen part (struct lru_gen_folio) plus its mm-walk state (struct lru_gen_mm_state). */
export class Lruvec {
  maxSeq = MIN_NR_GENS + 1;
  readonly minSeq = [0, 0];
  readonly timestamps: number[];
  /** nr_pages[gen][type], by the folios' gen bits. */
  readonly nrPages: number[][] = [[0, 0], [0, 0], [0, 0], [0, 0]];
  /** PID-controller history, [type][tier] (NR_HIST_GENS = 1): the generation being evicted (the P term)... */
  readonly evicted = [[0, 0, 0, 0], [0, 0, 0, 0]];
  readonly refaulted = [[0, 0, 0, 0], [0, 0, 0, 0]];
  readonly protected = [[0, 0, 0, 0], [0, 0, 0, 0]];
  /** ...and the moving averages over the generations evicted before (the I term, smoothing 1/2). */
  readonly avgRefaulted = [[0, 0, 0, 0], [0, 0, 0, 0]];
  readonly avgTotal = [[0, 0, 0, 0], [0, 0, 0, 0]];
  readonly version: MglruVersion;
  caps: number;
  swappiness: number;
  /** /sys/kernel/mm/lru_gen/min_ttl_ms (0 = off). */
  minTtlMs = 0;
  /** The model's wall clock in ms; the caller advances it. */
  now: number;
  /** debugfs identity: memcg id and path, node id. */
  memcgId = 0;
  memcgPath = '/';
  nodeId = 0;
  /** mm_state->seq: the last max_seq an mm-list iteration completed for. */
  walkSeq = MIN_NR_GENS;
  /** mm_state->filters[NR_BLOOM_FILTERS], indexed by seq % 2. */
  readonly bloom = [new BloomFilter(), new BloomFilter()];
  /**
   * mm_state->stats (NR_HIST_GENS == 1, so cumulative): MM_LEAF_TOTAL,
   * MM_LEAF_YOUNG, MM_NONLEAF_FOUND, MM_NONLEAF_ADDED of the aging walks,
   * the "TYFA" row of lru_gen_full.
   */
  readonly mmStats = [0, 0, 0, 0];
  /** Walk and look-around counters of this model (look-around included). */
  readonly stats = { ptesScanned: 0, young: 0, tablesWalked: 0, tablesSkippedNonleaf: 0, tablesSkippedBloom: 0, bloomAdded: 0, lookArounds: 0, lookAroundPtes: 0, refaultActivations: 0 };
  /**
   * Shadow entries of pages evicted through an explicit `evict` hook (MglruReclaimer's non-swap path), per mm
   * and hva. Eviction through swap keeps them in the swap cache instead (packLruGenShadow).
   */
  readonly shadows = new Map<unknown, Map<number, LruGenShadow>>();

  constructor(readonly folios: FolioTable, opts: LruvecOptions = {}) {
    this.version = opts.version ?? 'v614+';
    this.caps = opts.caps ?? (LRU_GEN_CORE | LRU_GEN_MM_WALK | LRU_GEN_NONLEAF_YOUNG);
    this.swappiness = opts.swappiness ?? 60;
    this.now = opts.now ?? 0;
    this.timestamps = [this.now, this.now, this.now, this.now];
    folios.mglru = this;
  }

  /** folio_is_file_lru: 0 anon (swap-backed), 1 file. */
  folioType(pfn: number): number {
    return this.folios.test(pfn, PG_swapbacked) ? LRU_GEN_ANON : LRU_GEN_FILE;
  }

  /** get_nr_gens. */
  nrGens(type: number): number {
    return this.maxSeq - this.minSeq[type] + 1;
  }

  /** Pages in the generation of seq for a type. */
  size(seq: number, type: number): number {
    return this.nrPages[lruGenFromSeq(seq)][type];
  }

  /** lru_gen_folio_seq: where a folio added to the LRU lands. */
  folioSeq(pfn: number, reclaiming: boolean): number {
    const f = this.folios;
    const type = this.folioType(pfn);
    const ws = f.test(pfn, PG_workingset) ? 1 : 0;
    let seq: number;
    if (f.test(pfn, PG_active)) seq = this.maxSeq - (MIN_NR_GENS - ws) + 1;
    else if (reclaiming) seq = this.maxSeq - MAX_NR_GENS + 1;
    else if ((type === LRU_GEN_ANON && !f.test(pfn, PG_swapcache)) || (f.test(pfn, PG_reclaim) && f.test(pfn, PG_dirty))) seq = this.maxSeq - 1;
    else seq = this.maxSeq - MAX_NR_GENS + 1 + ws;
    return Math.max(seq, this.minSeq[type]);
  }

  /** lru_gen_add_folio: sets the gen bits (PG_active is consumed), head of the list, or tail when reclaiming. */
  addFolio(pfn: number, reclaiming = false): number {
    const f = this.folios;
    const type = this.folioType(pfn);
    const gen = lruGenFromSeq(this.folioSeq(pfn, reclaiming));
    f.clear(pfn, PG_active);
    f.setLruGen(pfn, gen);
    this.nrPages[gen][type] += 2 ** f.order(pfn);
    if (reclaiming) f.lruAddTail(pfn, lruGenList(gen, type));
    else f.lruAdd(pfn, lruGenList(gen, type));
    return gen;
  }

  /** lru_gen_del_folio: off its list, gen bits cleared (isolated). */
  delFolio(pfn: number): void {
    const f = this.folios;
    const gen = f.lruGen(pfn);
    if (gen < 0) throw new Error(`assertion: folio 0x${pfn.toString(16)} is not on an MGLRU list`);
    this.nrPages[gen][this.folioType(pfn)] -= 2 ** f.order(pfn);
    f.setLruGen(pfn, -1);
    f.lruDel(pfn);
  }

  /** Moves a folio to the head (or tail) of the list of its gen bits (list_move / list_move_tail). */
  moveToGenList(pfn: number, tail: boolean): void {
    const f = this.folios;
    const list = lruGenList(f.lruGen(pfn), this.folioType(pfn));
    f.lruDel(pfn);
    if (tail) f.lruAddTail(pfn, list);
    else f.lruAdd(pfn, list);
  }

  private changeGen(pfn: number, oldGen: number, newGen: number): void {
    const type = this.folioType(pfn);
    const n = 2 ** this.folios.order(pfn);
    this.nrPages[oldGen][type] -= n;
    this.nrPages[newGen][type] += n;
    this.folios.setLruGen(pfn, newGen);
  }

  /**
   * folio_update_gen (aging walk, look-around with a walk context): v614+
   * gives a second chance: no refs flags -> set PG_referenced only;
   * otherwise move to gen, clear the refs flags, set PG_workingset. Older
   * versions promote at once and clear refs. An isolated folio (no gen bits)
   * is left for shrink_folio_list. Returns the old gen, or -1.
   */
  folioUpdateGen(pfn: number, gen: number): number {
    const f = this.folios;
    const i = f.idx(pfn);
    if (this.version === 'v614+') {
      if ((f.flags[i] & (PG_referenced | PG_workingset)) === 0) {
        f.flags[i] = (f.flags[i] & ~LRU_REFS_MASK) | PG_referenced;
        return -1;
      }
      const old = f.lruGen(pfn);
      if (old < 0) return -1;
      f.flags[i] = (f.flags[i] & ~(LRU_REFS_MASK | PG_referenced)) | PG_workingset;
      this.changeGen(pfn, old, gen);
      return old;
    }
    const old = f.lruGen(pfn);
    if (old < 0) {
      f.flags[i] |= PG_referenced; // for shrink_folio_list
      return -1;
    }
    f.flags[i] &= ~(LRU_REFS_MASK | PG_referenced | PG_workingset);
    this.changeGen(pfn, old, gen);
    return old;
  }

  /**
   * folio_inc_gen: a folio of the oldest generation moves one up (a
   * promoted one keeps its newer gen); refs flags cleared; PG_reclaim when
   * reclaiming. Returns the new gen; the caller moves it on the lists.
   */
  folioIncGen(pfn: number, reclaiming: boolean): number {
    const f = this.folios;
    const type = this.folioType(pfn);
    const oldGen = lruGenFromSeq(this.minSeq[type]);
    const cur = f.lruGen(pfn);
    if (cur >= 0 && cur !== oldGen) return cur;
    const newGen = (oldGen + 1) % MAX_NR_GENS;
    const i = f.idx(pfn);
    f.flags[i] &= ~(LRU_REFS_MASK | PG_referenced | PG_workingset);
    if (reclaiming) f.flags[i] |= PG_reclaim;
    this.changeGen(pfn, oldGen, newGen);
    return newGen;
  }

  /** lru_gen_set_refs (rmap path, 6.14+): first sighting sets PG_referenced; later ones set PG_workingset and say "activate". */
  setRefs(pfn: number): boolean {
    const f = this.folios;
    const i = f.idx(pfn);
    if ((f.flags[i] & (PG_referenced | PG_workingset)) === 0) {
      f.flags[i] = (f.flags[i] & ~LRU_REFS_MASK) | PG_referenced;
      return false;
    }
    f.flags[i] = (f.flags[i] & ~(LRU_REFS_MASK | PG_referenced)) | PG_workingset;
    return true;
  }

  /** lru_gen_inc_refs (folio_mark_accessed): referenced, then count refs, then workingset at saturation. */
  incRefs(pfn: number): void {
    const f = this.folios;
    if (f.test(pfn, PG_unevictable)) return;
    if (!f.test(pfn, PG_referenced)) {
      f.set(pfn, PG_referenced);
      return;
    }
    const refs = f.lruRefs(pfn);
    if (refs === (1 << LRU_REFS_WIDTH) - 1) f.set(pfn, PG_workingset);
    else f.setLruRefs(pfn, refs + 1);
  }

  /** folio_lru_refs + 1 when referenced: refs as the tier math sees them. */
  refs(pfn: number): number {
    return this.folios.test(pfn, PG_referenced) ? this.folios.lruRefs(pfn) + 1 : 0;
  }

  /** lru_tier_from_refs: order_base_2(refs), or the top tier for workingset folios. */
  tier(pfn: number): number {
    if (this.folios.test(pfn, PG_workingset)) return MAX_NR_TIERS - 1;
    const r = this.refs(pfn);
    return r <= 1 ? 0 : Math.ceil(Math.log2(r));
  }

  /**
   * inc_min_seq: move every folio of the oldest generation up one
   * (folio_inc_gen, at the tail of the next list), counting as protected
   * all but the saturated workingset (being lazily promoted), then fold
   * the PID history and min_seq++. A type that cannot be evicted at this
   * swappiness is not sorted. MAX_LRU_BATCH per pass in the kernel; all at
   * once here.
   */
  incMinSeq(type: number, swappiness: number): void {
    const f = this.folios;
    const skip = (type === LRU_GEN_FILE && swappiness === SWAPPINESS_ANON_ONLY) || (type === LRU_GEN_ANON && swappiness === 0);
    if (!skip) {
      const oldGen = lruGenFromSeq(this.minSeq[type]);
      const list = lruGenList(oldGen, type);
      // lru_to_folio: always the tail (oldest), as each one leaves the list.
      for (let idx = f.tail[list]; idx !== -1; idx = f.tail[list]) {
        const pfn = idx + f.basePfn;
        const refs = this.refs(pfn);
        const ws = f.test(pfn, PG_workingset) ? 1 : 0;
        const tier = this.tier(pfn);
        const newGen = this.folioIncGen(pfn, false);
        if (refs + ws !== (1 << LRU_REFS_WIDTH) + 1) this.protected[type][tier] += 2 ** f.order(pfn);
        f.lruDel(pfn);
        f.lruAddTail(pfn, lruGenList(newGen, type));
      }
    }
    this.resetCtrlPos(type, true);
    this.minSeq[type]++;
  }

  /**
   * try_to_inc_min_seq: skip empty oldest generations (keeping
   * MIN_NR_GENS) of the evictable types; with both types evictable, a type
   * may not run ahead of max_seq - MIN_NR_GENS while the other lags behind
   * it. Each type whose min_seq moves folds its PID history.
   */
  tryToIncMinSeq(swappiness: number): boolean {
    const minSeq = [this.minSeq[0], this.minSeq[1]];
    let moved = false;
    for (const type of evictableTypes(swappiness)) {
      while (minSeq[type] + MIN_NR_GENS <= this.maxSeq) {
        if (this.folios.head[lruGenList(lruGenFromSeq(minSeq[type]), type)] !== -1) break;
        minSeq[type]++;
        moved = true;
      }
    }
    if (!moved) return false;
    if (swappiness !== 0 && swappiness <= MAX_SWAPPINESS) {
      const seq = this.maxSeq - MIN_NR_GENS;
      if (minSeq[LRU_GEN_ANON] > seq && minSeq[LRU_GEN_FILE] < seq) minSeq[LRU_GEN_ANON] = seq;
      else if (minSeq[LRU_GEN_FILE] > seq && minSeq[LRU_GEN_ANON] < seq) minSeq[LRU_GEN_FILE] = seq;
    }
    let ok = false;
    for (const type of evictableTypes(swappiness)) {
      if (minSeq[type] <= this.minSeq[type]) continue;
      this.resetCtrlPos(type, true);
      this.minSeq[type] = minSeq[type];
      ok = true;
    }
    return ok;
  }

  /** inc_max_seq: make room (inc_min_seq when a type has MAX_NR_GENS), stamp and publish the new youngest generation. */
  incMaxSeq(swappiness = this.swappiness): void {
    for (let type = 0; type < 2; type++) {
      if (this.nrGens(type) !== MAX_NR_GENS) continue;
      this.incMinSeq(type, swappiness);
    }
    // reset_ctrl_pos(type, false) clears nothing with NR_HIST_GENS == 1.
    this.timestamps[lruGenFromSeq(this.maxSeq + 1)] = this.now;
    this.maxSeq++;
  }

  /** evictable_min_seq: the older of the types that can be evicted at this swappiness. */
  evictableMinSeq(swappiness: number): number {
    return Math.min(this.minSeq[swappiness === 0 ? 1 : 0], this.minSeq[swappiness <= MAX_SWAPPINESS ? 1 : 0]);
  }

  /**
   * read_ctrl_pos: refaults and total (evicted + protected) of one tier,
   * or of every tier when `tier` is MAX_NR_TIERS, P plus I term.
   */
  readCtrlPos(type: number, tier: number, gain: number): CtrlPos {
    const pos: CtrlPos = { refaulted: 0, total: 0, gain };
    for (let i = tier % MAX_NR_TIERS; i <= Math.min(tier, MAX_NR_TIERS - 1); i++) {
      pos.refaulted += this.avgRefaulted[type][i] + this.refaulted[type][i];
      pos.total += this.avgTotal[type][i] + this.protected[type][i] + this.evicted[type][i];
    }
    return pos;
  }

  /**
   * reset_ctrl_pos with carryover (min_seq moved on): fold the finished
   * generation into the moving averages, halving (integer division), and
   * clear it, as NR_HIST_GENS == 1 has a single history slot.
   */
  resetCtrlPos(type: number, carryover: boolean): void {
    if (!carryover) return;
    for (let tier = 0; tier < MAX_NR_TIERS; tier++) {
      this.avgRefaulted[type][tier] = Math.floor((this.avgRefaulted[type][tier] + this.refaulted[type][tier]) / 2);
      this.avgTotal[type][tier] = Math.floor((this.avgTotal[type][tier] + this.protected[type][tier] + this.evicted[type][tier]) / 2);
      this.refaulted[type][tier] = 0;
      this.evicted[type][tier] = 0;
      this.protected[type][tier] = 0;
    }
  }

  /**
   * get_tier_idx: the highest tier whose refault rate (gain 3) is no worse
   * than tier 0's (gain 2, a margin for noise); tiers above it are
   * protected at eviction.
   */
  getTierIdx(type: number): number {
    const sp = this.readCtrlPos(type, 0, 2);
    let tier = 1;
    for (; tier < MAX_NR_TIERS; tier++) {
      if (!positiveCtrlErr(sp, this.readCtrlPos(type, tier, 3))) break;
    }
    return tier - 1;
  }

  /**
   * get_type_to_scan: file at swappiness <= 1, anon at >= 200; otherwise
   * compare all tiers of anon (gain swappiness) with all of file (gain
   * 200 - swappiness): file when anon refaults no less (1), else anon (0).
   */
  getTypeToScan(swappiness: number): number {
    if (swappiness <= 1) return LRU_GEN_FILE;
    if (swappiness >= MAX_SWAPPINESS) return LRU_GEN_ANON;
    const sp = this.readCtrlPos(LRU_GEN_ANON, MAX_NR_TIERS, swappiness);
    const pv = this.readCtrlPos(LRU_GEN_FILE, MAX_NR_TIERS, MAX_SWAPPINESS - swappiness);
    return positiveCtrlErr(sp, pv) ? LRU_GEN_FILE : LRU_GEN_ANON;
  }

  /** lru_gen_eviction: the shadow to keep for an evicted folio; counts evicted[type][tier]. */
  evictionShadow(pfn: number): LruGenShadow {
    const type = this.folioType(pfn);
    const refs = this.refs(pfn);
    this.evicted[type][this.tier(pfn)] += 2 ** this.folios.order(pfn);
    return { seq: this.minSeq[type], refs: Math.max(refs - 1, 0), workingset: this.folios.test(pfn, PG_workingset), type };
  }

  /**
   * lru_gen_refault: a recent shadow (|max_seq - seq| < MAX_NR_GENS)
   * credits refaulted[type][tier] and restores PG_workingset or the refs.
   * Returns whether it was recent.
   */
  refault(pfn: number, s: LruGenShadow): boolean {
    if (Math.abs(this.maxSeq - s.seq) >= MAX_NR_GENS) return false;
    const f = this.folios;
    const refs = s.refs + 1;
    const tier = s.workingset ? MAX_NR_TIERS - 1 : refs <= 1 ? 0 : Math.ceil(Math.log2(refs));
    this.refaulted[s.type][tier] += 2 ** f.order(pfn);
    if (s.workingset) f.set(pfn, PG_workingset);
    else if (s.refs > 0) {
      f.set(pfn, PG_referenced);
      f.setLruRefs(pfn, s.refs);
    }
    return true;
  }
}
