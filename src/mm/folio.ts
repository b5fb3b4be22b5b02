/**
 * struct page / struct folio for every data frame of the host (mem_map), as
 * typed arrays indexed by frame (pfn - first pfn of the pool): no JS object
 * per page, 33 bytes per 4K frame.
 *
 * A large folio (order > 0) keeps its state in its head frame; tail frames
 * record only their order and PG_tail, so folioOf finds the head by
 * alignment (compound_head). Content tokens (issue 4 item 7) are per frame,
 * since content lives in the frame.
 */

/** Page flags (include/linux/page-flags.h names; bit numbers are the model's). */
export const PG_locked = 1 << 0;
export const PG_referenced = 1 << 1;
export const PG_uptodate = 1 << 2;
export const PG_dirty = 1 << 3;
export const PG_lru = 1 << 4;
export const PG_head = 1 << 5;
export const PG_active = 1 << 6;
export const PG_workingset = 1 << 7;
/** PG_owner_priv_1 as PG_swapcache for swap-backed folios. */
export const PG_swapcache = 1 << 8;
export const PG_reclaim = 1 << 9;
export const PG_swapbacked = 1 << 10;
export const PG_unevictable = 1 << 11;
export const PG_mlocked = 1 << 12;
/** page_idle's two flags (page_ext on 32-bit, page flags on 64-bit). */
export const PG_young = 1 << 13;
export const PG_idle = 1 << 14;
/** folio->mapping has PAGE_MAPPING_ANON: `mapping` names an anon_vma. */
export const PG_anon = 1 << 15;
/** A tail frame of a large folio (PageTail). */
export const PG_tail = 1 << 16;
/**
 * folio->mapping has PAGE_MAPPING_KSM (folio_test_ksm): a KSM page whose
 * `mapping` names a KsmStableNode (src/mm/ksm.ts), not an anon_vma. PG_anon
 * stays set, as folio_test_anon is true for KSM folios. Bit 27: above the
 * order field.
 */
export const PG_ksm = 1 << 27;

/** MGLRU: LRU_GEN_MASK holds gen+1 while on an MGLRU list, else 0 (3 bits: order_base_2(MAX_NR_GENS + 1)). */
export const LRU_GEN_PGOFF = 17;
export const LRU_GEN_MASK = 7 << LRU_GEN_PGOFF;
/** MGLRU: LRU_REFS_MASK, the refs counter beyond PG_referenced (LRU_REFS_WIDTH = 2). */
export const LRU_REFS_PGOFF = 20;
export const LRU_REFS_MASK = 3 << LRU_REFS_PGOFF;
/** folio_order, in head and tail frames alike (5 bits: up to order 18, 1G). */
const ORDER_PGOFF = 22;
const ORDER_MASK = 31 << ORDER_PGOFF;

/** enum lru_list: the classic lists, then MGLRU's lists[gen][type] (one zone, one node, one memcg). */
export const enum LruList {
  InactiveAnon = 0,
  ActiveAnon = 1,
  InactiveFile = 2,
  ActiveFile = 3,
  Unevictable = 4,
}
/** MGLRU list of generation gen (0..3) and type (0 anon, 1 file). */
export function lruGenList(gen: number, type: number): number {
  return 5 + gen * 2 + type;
}
export const NR_LISTS = 13;

const NIL = -1;

/**
 * The per-frame arrays, plus one lruvec's list heads. Links are frame
 * indices; a folio is on at most one list (`list` holds its id + 1).
 */
export class FolioTable {
  /** Frames covered (struct page exists); grows with the allocator's bump pointer, the arrays may be longer. */
  capacity = 0;
  flags = new Uint32Array(0);
  /** folio_ref_count. */
  refcount = new Int32Array(0);
  /** folio_mapcount: mappings by page tables (the kernel stores this minus one). */
  mapcount = new Int32Array(0);
  /** LRU links (index of the neighbour; -1 none; only valid while `list` is non-zero). */
  lruPrev = new Int32Array(0);
  lruNext = new Int32Array(0);
  /** List id + 1, 0 when on no list. */
  list = new Uint8Array(0);
  /** folio->mapping: an anon_vma id (PG_anon) or a KSM stable node (PG_ksm) registered in `mappings`, 0 for none. */
  mapping = new Int32Array(0);
  /** folio->index: page offset of the folio within its anon_vma's area. */
  index = new Uint32Array(0);
  /** Content token of the frame: 0 for a zeroed frame, else the data-token counter at its last write. */
  token = new Uint32Array(0);

  /** lruvec: head (newest, list_add) and tail (oldest, where reclaim scans) of each list, and sizes. */
  readonly head = new Int32Array(NR_LISTS).fill(NIL);
  readonly tail = new Int32Array(NR_LISTS).fill(NIL);
  readonly nrPages = new Float64Array(NR_LISTS);

  /** The data-token counter: the last token handed out (tokens are never 0). */
  tokenSeq = 0;

  /** MGLRU, when enabled (src/mm/mglru.ts): folio_mark_accessed becomes lru_gen_inc_refs. */
  mglru: { incRefs(head: number): void } | null = null;

  /** anon_vma registry: mapping id -> owner (an mm's VMA); id 0 is "none". */
  readonly mappings: unknown[] = [null];

  constructor(readonly basePfn: number) {}

  /** Makes room for frames below endPfn (memmap_init as the pool grows). */
  ensure(endPfn: number): void {
    const need = endPfn - this.basePfn;
    if (need <= this.capacity) return;
    const cap = Math.max(need, Math.min(this.capacity * 2, this.capacity + (1 << 22)), 4096);
    const len = this.flags.length;
    if (cap > len) {
      // The arrays grow ahead of `capacity`, fourfold, so a growing pool copies and zeroes less; entries beyond capacity stay 0.
      const n = Math.max(cap, Math.min(len * 4, len + (1 << 22)));
      this.flags = grow(this.flags, new Uint32Array(n));
      this.refcount = grow(this.refcount, new Int32Array(n));
      this.mapcount = grow(this.mapcount, new Int32Array(n));
      this.lruPrev = grow(this.lruPrev, new Int32Array(n));
      this.lruNext = grow(this.lruNext, new Int32Array(n));
      this.list = grow(this.list, new Uint8Array(n));
      this.mapping = grow(this.mapping, new Int32Array(n));
      this.index = grow(this.index, new Uint32Array(n));
      this.token = grow(this.token, new Uint32Array(n));
    }
    this.capacity = cap;
  }

  /** Frame index of a pfn, checked. */
  idx(pfn: number): number {
    const i = pfn - this.basePfn;
    if (!(i >= 0 && i < this.capacity)) throw new Error(`assertion: pfn 0x${pfn.toString(16)} has no struct page`);
    return i;
  }

  /** compound_head: the pfn of the folio holding pfn. */
  folioOf(pfn: number): number {
    const f = this.flags[this.idx(pfn)];
    if ((f & PG_tail) === 0) return pfn;
    const n = 2 ** ((f & ORDER_MASK) >>> ORDER_PGOFF);
    return pfn - ((pfn - this.basePfn) % n);
  }

  order(pfn: number): number {
    return (this.flags[this.idx(pfn)] & ORDER_MASK) >>> ORDER_PGOFF;
  }

  /** prep_new_page / prep_compound_page: refcount 1, no mapping, zero content. */
  prepNewPage(pfn: number, order: number): void {
    const i = this.idx(pfn);
    const n = 1 << order; // orders stay below 31
    const o = order << ORDER_PGOFF;
    this.flags[i] = order === 0 ? 0 : PG_head | o;
    this.refcount[i] = 1;
    this.mapcount[i] = 0;
    this.mapping[i] = 0;
    this.index[i] = 0;
    this.token[i] = 0;
    for (let k = 1; k < n; k++) {
      this.flags[i + k] = PG_tail | o;
      this.token[i + k] = 0;
    }
  }

  /** Frame back to the allocator: it must be off every list and unreferenced. */
  freePage(pfn: number): void {
    const i = this.idx(pfn);
    if (this.list[i] !== 0) throw new Error(`assertion: freeing pfn 0x${pfn.toString(16)} still on an LRU list`);
    this.flags[i] = 0;
    this.refcount[i] = 0;
    this.mapcount[i] = 0;
    this.mapping[i] = 0;
    this.index[i] = 0;
  }

  test(pfn: number, flag: number): boolean {
    return (this.flags[this.idx(pfn)] & flag) !== 0;
  }
  set(pfn: number, flag: number): void {
    this.flags[this.idx(pfn)] |= flag;
  }
  clear(pfn: number, flag: number): void {
    this.flags[this.idx(pfn)] &= ~flag;
  }
  /** Test-and-clear (folio_test_clear_*); returns whether it was set. */
  testClear(pfn: number, flag: number): boolean {
    const i = this.idx(pfn);
    const was = (this.flags[i] & flag) !== 0;
    this.flags[i] &= ~flag;
    return was;
  }

  /** MGLRU generation (0..3) of a folio on an MGLRU list, -1 otherwise (folio_lru_gen). */
  lruGen(pfn: number): number {
    return ((this.flags[this.idx(pfn)] & LRU_GEN_MASK) >>> LRU_GEN_PGOFF) - 1;
  }
  setLruGen(pfn: number, gen: number): void {
    const i = this.idx(pfn);
    this.flags[i] = (this.flags[i] & ~LRU_GEN_MASK) | ((gen + 1) << LRU_GEN_PGOFF);
  }
  /** The LRU_REFS counter (0..3). */
  lruRefs(pfn: number): number {
    return (this.flags[this.idx(pfn)] & LRU_REFS_MASK) >>> LRU_REFS_PGOFF;
  }
  setLruRefs(pfn: number, refs: number): void {
    const i = this.idx(pfn);
    this.flags[i] = (this.flags[i] & ~LRU_REFS_MASK) | ((refs & 3) << LRU_REFS_PGOFF);
  }

  /** folio_put: drops a reference; true when it was the last (the caller frees the frames). */
  put(pfn: number): boolean {
    const i = this.idx(pfn);
    if (this.refcount[i] <= 0) throw new Error(`assertion: folio 0x${pfn.toString(16)} put with refcount ${this.refcount[i]}`);
    return --this.refcount[i] === 0;
  }
  get(pfn: number): void {
    this.refcount[this.idx(pfn)]++;
  }

  /** lruvec_add_folio at the head of a list; sets PG_lru. */
  lruAdd(pfn: number, list: number): void {
    const i = this.idx(pfn);
    if (this.list[i] !== 0) throw new Error(`assertion: folio 0x${pfn.toString(16)} already on list ${this.list[i] - 1}`);
    const h = this.head[list];
    this.lruPrev[i] = NIL;
    this.lruNext[i] = h;
    if (h !== NIL) this.lruPrev[h] = i;
    else this.tail[list] = i;
    this.head[list] = i;
    this.list[i] = list + 1;
    this.nrPages[list] += 1 << ((this.flags[i] & ORDER_MASK) >>> ORDER_PGOFF); // folio_nr_pages
    this.flags[i] |= PG_lru;
  }

  /** lruvec_add_folio_tail: at the oldest end of a list; sets PG_lru. */
  lruAddTail(pfn: number, list: number): void {
    const i = this.idx(pfn);
    if (this.list[i] !== 0) throw new Error(`assertion: folio 0x${pfn.toString(16)} already on list ${this.list[i] - 1}`);
    const t = this.tail[list];
    this.lruNext[i] = NIL;
    this.lruPrev[i] = t;
    if (t !== NIL) this.lruNext[t] = i;
    else this.head[list] = i;
    this.tail[list] = i;
    this.list[i] = list + 1;
    this.nrPages[list] += 2 ** this.order(pfn);
    this.flags[i] |= PG_lru;
  }

  /** lruvec_del_folio; clears PG_lru. Returns the list it was on, -1 if none. */
  lruDel(pfn: number): number {
    const i = this.idx(pfn);
    const list = this.list[i] - 1;
    if (list < 0) return -1;
    const p = this.lruPrev[i];
    const n = this.lruNext[i];
    if (p !== NIL) this.lruNext[p] = n;
    else this.head[list] = n;
    if (n !== NIL) this.lruPrev[n] = p;
    else this.tail[list] = p;
    this.list[i] = 0;
    this.nrPages[list] -= 2 ** this.order(pfn);
    this.flags[i] &= ~PG_lru;
    return list;
  }

  /** The list a folio is on, -1 if none. */
  lruListOf(pfn: number): number {
    return this.list[this.idx(pfn)] - 1;
  }

  /** Folios of a list, oldest (tail) first: for tests and dumps. */
  lruFolios(list: number): number[] {
    const out: number[] = [];
    for (let i = this.tail[list]; i !== NIL; i = this.lruPrev[i]) out.push(i + this.basePfn);
    return out;
  }

  /**
   * folio_mark_accessed. Classic LRU: referenced on the first call,
   * activated on the next; clears idle. Under MGLRU it is lru_gen_inc_refs,
   * which returns before clearing idle (scenario 27).
   */
  markAccessed(head: number): void {
    const i = this.idx(head);
    if (this.mglru !== null) {
      this.mglru.incRefs(head);
      return;
    }
    const fl = this.flags[i];
    if ((fl & PG_referenced) === 0) this.flags[i] |= PG_referenced;
    else if ((fl & (PG_unevictable | PG_active)) === 0) {
      if (this.list[i] !== 0) {
        this.lruDel(head);
        this.flags[i] |= PG_active;
        this.lruAdd(head, (fl & PG_swapbacked) !== 0 ? LruList.ActiveAnon : LruList.ActiveFile);
      } else this.flags[i] |= PG_active;
      this.flags[i] &= ~PG_referenced;
    }
    this.flags[i] &= ~PG_idle;
  }

  /** Registers an anon_vma (its owner is the mm's VMA); returns its id. */
  registerMapping(owner: unknown): number {
    this.mappings.push(owner);
    return this.mappings.length - 1;
  }
}

function grow<T extends Uint32Array | Int32Array | Uint8Array>(old: T, neu: T): T {
  neu.set(old as never);
  return neu;
}
