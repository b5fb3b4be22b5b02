/**
 * One swap device (mm/swapfile.c) and its swap cache (mm/swap_state.c),
 * plus do_swap_page (mm/memory.c) as the mm's SwapHooks.
 *
 * The device is synchronous (SWP_SYNCHRONOUS_IO, as zram): a write-out
 * completes before swap_writepage returns, and a read before the fault
 * maps the folio. A slot stores the content token of the page written to
 * it. swap_map counts, per slot, the swap PTEs that name it, plus
 * SWAP_HAS_CACHE while a folio for it sits in the swap cache; a slot is
 * free when both are gone. The swap cache maps slot -> folio, and keeps a
 * shadow entry (workingset.ts) where an evicted folio was, until the slot
 * is freed. Order-0 folios only (no THP swap, no readahead, one type).
 */
import { LruList, PG_active, PG_anon, PG_dirty, PG_swapbacked, PG_swapcache, PG_uptodate, type FolioTable } from './folio.js';
import { PAGE_SIZE, type MmStruct, type SwapHooks, type VmArea } from './mm.js';
import {
  _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_NX_HI, _PAGE_PRESENT, _PAGE_RW, _PAGE_SOFT_DIRTY, _PAGE_SWP_EXCLUSIVE, _PAGE_SWP_SOFT_DIRTY, _PAGE_USER,
  pfnHi, pfnLo, swpOffset, swpType,
} from './pgtable.js';
import type { Workingset } from './workingset.js';

/** SWAP_HAS_CACHE, kept apart from the count here. */
const NONE = -1;

export class SwapDevice implements SwapHooks {
  /** swap_map: swap PTEs naming each slot. */
  readonly count: Int32Array;
  /** SWAP_HAS_CACHE per slot. */
  readonly hasCache: Uint8Array;
  /** What each slot holds: the token written there by the last write-out. */
  readonly tokens: Uint32Array;
  /** The swap cache: slot -> folio head pfn. */
  private readonly cache = new Map<number, number>();
  /** Shadow entries left in the swap cache by evicted folios, slot -> shadow. */
  readonly shadows = new Map<number, number>();
  /** folio->swap: head pfn -> slot, for folios in the swap cache. */
  private readonly slotOf = new Map<number, number>();
  /** Slots in use (count or cache), for nr_swap_pages. */
  inuse = 0;
  /** si->cluster_next: next-fit allocation cursor. */
  private cursor = 0;
  /** pswpout / pswpin (device I/O), swap cache hits on fault, slots freed. */
  readonly stats = { pswpout: 0, pswpin: 0, cacheHits: 0, swapins: 0, freed: 0, allocFailed: 0 };
  /** workingset_refault consults this; set by whoever wires reclaim up. */
  workingset: Workingset | null = null;

  constructor(
    readonly folios: FolioTable,
    /** Slots in the device (slot 0 is the header page in the kernel; here every slot is usable). */
    readonly nslots: number,
    /** The swap type in the entries (si->type). */
    readonly type = 0,
  ) {
    this.count = new Int32Array(nslots);
    this.hasCache = new Uint8Array(nslots);
    this.tokens = new Uint32Array(nslots);
  }

  /** get_nr_swap_pages. */
  get nrFree(): number {
    return this.nslots - this.inuse;
  }

  /** vm_swap_full: more than half the device used. */
  get full(): boolean {
    return this.nrFree * 2 < this.nslots;
  }

  /** The slot of a folio in the swap cache (folio->swap), or -1. */
  slotOfFolio(head: number): number {
    return this.slotOf.get(head) ?? NONE;
  }

  /** The folio cached for a slot (swap_cache_get_folio), or -1. */
  cachedFolio(slot: number): number {
    return this.cache.get(slot) ?? NONE;
  }

  /**
   * add_to_swap: a slot for an anon folio (folio_alloc_swap), the folio in
   * the swap cache (a reference per page, PG_swapcache), any shadow at the
   * slot dropped, and the folio dirtied so that it is written out even if
   * no PTE was dirty (MADV_FREE's case). False when swap is full.
   */
  addToSwap(head: number): boolean {
    const f = this.folios;
    if (f.order(head) !== 0) throw new Error('assertion: large folio swap is not modelled');
    const slot = this.allocSlot();
    if (slot < 0) {
      this.stats.allocFailed++;
      return false;
    }
    this.hasCache[slot] = 1;
    this.cache.set(slot, head);
    this.shadows.delete(slot);
    this.slotOf.set(head, slot);
    f.set(head, PG_swapcache | PG_dirty);
    f.get(head);
    return true;
  }

  private allocSlot(): number {
    for (let n = 0; n < this.nslots; n++) {
      const s = (this.cursor + n) % this.nslots;
      if (this.count[s] === 0 && this.hasCache[s] === 0) {
        this.cursor = (s + 1) % this.nslots;
        this.inuse++;
        return s;
      }
    }
    return NONE;
  }

  /** swap_duplicate for an entry fork copies (copy_nonpresent_pte): one more swap PTE names its slot. */
  duplicatePte(lo: number, hi: number): void {
    const slot = this.slotFromPte(lo, hi);
    if (this.count[slot] <= 0) throw new Error(`assertion: swap PTE names free slot ${slot}`);
    this.count[slot]++;
  }

  /** swap_duplicate: one more swap PTE names the folio's slot (try_to_unmap_one). */
  duplicate(slot: number): void {
    this.count[slot]++;
  }

  /** swap_writepage -> swap_write_folio: the folio's content goes to its slot; the folio is clean after. */
  writeOut(head: number): void {
    const slot = this.slotOfFolio(head);
    if (slot < 0) throw new Error('assertion: writing out a folio not in the swap cache');
    const f = this.folios;
    f.clear(head, PG_dirty); // folio_clear_dirty_for_io
    this.tokens[slot] = f.token[f.idx(head)];
    this.stats.pswpout++;
  }

  /**
   * __delete_from_swap_cache + put_swap_folio: the folio leaves the cache,
   * taking its references; a shadow (from reclaim's __remove_mapping) stays
   * in its place. The slot is freed when no swap PTE names it.
   */
  deleteFromSwapCache(head: number, shadow: number): void {
    const slot = this.slotOfFolio(head);
    if (slot < 0) throw new Error('assertion: folio not in the swap cache');
    const f = this.folios;
    this.cache.delete(slot);
    this.slotOf.delete(head);
    f.clear(head, PG_swapcache);
    f.refcount[f.idx(head)]--;
    this.hasCache[slot] = 0;
    if (shadow !== 0) this.shadows.set(slot, shadow);
    this.maybeFreeSlot(slot);
  }

  /** swap_range_free: the slot is usable again; its shadow goes with it (clear_shadow_from_swap_cache). */
  private maybeFreeSlot(slot: number): void {
    if (this.count[slot] !== 0 || this.hasCache[slot] !== 0) return;
    this.shadows.delete(slot);
    this.tokens[slot] = 0;
    this.inuse--;
    this.stats.freed++;
  }

  /**
   * folio_free_swap: a cached folio whose slot no swap PTE names any more
   * leaves the cache (no shadow) and is dirtied, since the slot copy is
   * gone. False when the slot is still in use.
   */
  freeSwap(head: number): boolean {
    const slot = this.slotOfFolio(head);
    if (slot < 0 || this.count[slot] !== 0) return false;
    this.deleteFromSwapCache(head, 0);
    this.folios.set(head, PG_dirty);
    return true;
  }

  // ---- SwapHooks: what mm.ts calls for swap PTEs -------------------------

  /** free_swap_and_cache: a zap dropped a swap PTE; an unmapped cached folio is reclaimed with its slot (__try_to_reclaim_swap). */
  free(lo: number, hi: number): void {
    const slot = this.slotFromPte(lo, hi);
    if (this.count[slot] <= 0) throw new Error(`assertion: swap slot ${slot} freed with count ${this.count[slot]}`);
    this.count[slot]--;
    if (this.count[slot] === 0 && this.hasCache[slot] !== 0) {
      const head = this.cache.get(slot)!;
      const f = this.folios;
      if (f.mapcount[f.idx(head)] === 0) {
        this.deleteFromSwapCache(head, 0);
        if (f.refcount[f.idx(head)] === 0) {
          f.lruDel(head);
          this.freeFolio?.(head);
        }
        return;
      }
    }
    this.maybeFreeSlot(slot);
  }

  /** The token a read through this swap PTE returns: the cached folio's if there is one, else the slot's. */
  token(lo: number, hi: number): number {
    const slot = this.slotFromPte(lo, hi);
    const head = this.cachedFolio(slot);
    const f = this.folios;
    return head >= 0 ? f.token[f.idx(head)] : this.tokens[slot];
  }

  /** Frees a folio's frames once its last reference is gone (set to the mm's allocator by attach). */
  freeFolio: ((head: number) => void) | null = null;

  /** Makes this device the mm's swap layer. */
  attach(mm: MmStruct): void {
    mm.swap = this;
    this.freeFolio = (head) => mm.pages.freePages(head * PAGE_SIZE, this.folios.order(head));
  }

  /**
   * do_swap_page: the folio from the swap cache, or a new one read from the
   * slot (swap_read_folio restores the token; its shadow goes to
   * workingset_refault, then folio_add_lru: active if that activated it).
   * An exclusive folio is mapped writable in a writable VMA (dirty on a
   * write fault); the PTE's swap reference is dropped (swap_free), and the
   * slot freed now if the fault was a write or swap is getting full
   * (should_try_to_free_swap). Returns true: a present PTE is installed.
   */
  swapIn(mm: MmStruct, vma: VmArea, hva: number, entry: number, lo: number, hi: number, write = false): boolean {
    const f = this.folios;
    const slot = this.slotFromPte(lo, hi);
    if (this.count[slot] <= 0) throw new Error(`assertion: swap PTE names free slot ${slot}`);
    this.stats.swapins++;
    let head = this.cachedFolio(slot);
    if (head >= 0) {
      this.stats.cacheHits++;
      f.get(head); // the new mapping's reference
    } else {
      head = mm.pages.allocPage() / PAGE_SIZE;
      const i = f.idx(head);
      f.flags[i] |= PG_anon | PG_swapbacked | PG_uptodate;
      // __folio_set_anon: a folio that may be shared (a non-exclusive entry, after fork) takes the root
      // anon_vma of the area's chain, the oldest, so the rmap finds every mm that maps it.
      f.mapping[i] = (lo & _PAGE_SWP_EXCLUSIVE) !== 0 ? vma.anonVma : (vma.anonChain?.[0] ?? vma.anonVma);
      f.index[i] = vma.pgoff + (Math.floor(hva / PAGE_SIZE) * PAGE_SIZE - vma.start) / PAGE_SIZE;
      f.token[i] = this.tokens[slot];
      this.stats.pswpin++;
      // add_to_swap_cache: the cache takes a reference; a shadow found there is the refault's.
      this.hasCache[slot] = 1;
      this.cache.set(slot, head);
      this.slotOf.set(head, slot);
      f.set(head, PG_swapcache);
      f.get(head);
      const shadow = this.shadows.get(slot);
      if (shadow !== undefined) {
        this.shadows.delete(slot);
        this.workingset?.refault(head, shadow);
      }
      // folio_add_lru: active if the refault activated it (MGLRU places it itself).
      if (mm.lruAddNew !== null) mm.lruAddNew(head, vma, Math.floor(hva / PAGE_SIZE) * PAGE_SIZE);
      else f.lruAdd(head, f.test(head, PG_active) ? LruList.ActiveAnon : LruList.InactiveAnon);
    }
    f.mapcount[f.idx(head)]++;
    const exclusive = (lo & _PAGE_SWP_EXCLUSIVE) !== 0;
    let flags = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED;
    if ((lo & _PAGE_SWP_SOFT_DIRTY) !== 0) flags |= _PAGE_SOFT_DIRTY;
    if (exclusive && vma.writable) {
      flags |= _PAGE_RW;
      if (write) flags |= _PAGE_DIRTY | _PAGE_SOFT_DIRTY;
    }
    this.count[slot]--; // swap_free
    if (write || this.full) this.freeSwap(head);
    mm.mem.store64(entry, pfnLo(head, flags), pfnHi(head) | _PAGE_NX_HI);
    return true;
  }

  private slotFromPte(lo: number, hi: number): number {
    if (swpType(hi) !== this.type) throw new Error(`assertion: swap entry of type ${swpType(hi)} on device ${this.type}`);
    const slot = swpOffset(lo, hi);
    if (!(slot >= 0 && slot < this.nslots)) throw new Error(`assertion: swap offset ${slot} beyond the device`);
    return slot;
  }
}

