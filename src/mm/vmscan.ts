/**
 * Classic (two-list) LRU reclaim of anonymous memory (mm/vmscan.c):
 * shrink_active_list, shrink_inactive_list, folio_check_references with
 * its look-twice rule (mm.md 2.3), and shrink_folio_list evicting to swap.
 * One lruvec; the isolate/putback steps take and drop a folio reference as
 * the kernel's do.
 *
 * MGLRU is another model (src/mm/mglru*.ts): when `lruGen` is set,
 * shrinkLruvec hands the lruvec to it (lru_gen_shrink_lruvec), and
 * folio_check_references takes its lru_gen_set_refs branch; shrink_folio_list
 * is shared, as in the kernel.
 *
 * kswapd is modelled by balance(): a page budget stands for the zone, with
 * low/high watermarks on what is left of it; below low, reclaim runs until
 * high is met (no direct reclaim, no memcg, no file pages, no THP split:
 * large folios are kept).
 */
import {
  LruList, LRU_REFS_MASK, PG_active, PG_dirty, PG_ksm, PG_referenced, PG_swapbacked, PG_swapcache, PG_unevictable, PG_workingset, type FolioTable,
} from './folio.js';
import { PAGE_SIZE, VM_EXEC, VM_LOCKED, type MmStruct } from './mm.js';
import type { Program } from './mmu_notifier.js';
import { isLazyfree, tryToUnmapLazyfree } from './madvise_free.js';
import { HostRmap } from './rmap.js';
import { SwapDevice } from './swap.js';
import { Workingset } from './workingset.js';

/** enum folio_references. */
export const enum FolioReferences {
  Reclaim = 0,
  ReclaimClean = 1,
  Keep = 2,
  Activate = 3,
}

export const SWAP_CLUSTER_MAX = 32;
export const DEF_PRIORITY = 12;

/** Where MGLRU plugs in (lru_gen_enabled()). */
export interface LruGenReclaim {
  /** lru_gen_shrink_lruvec: reclaim up to nrToReclaim pages; returns pages reclaimed. */
  shrinkLruvec(nrToReclaim: number, priority: number): Program<number>;
}

/** Counters of one reclaimer (the vmstat names in comments). */
export interface ReclaimStats {
  /** pgscan: pages isolated from the inactive list. */
  scanned: number;
  /** pgsteal: pages evicted. */
  evicted: number;
  /** pgactivate: pages activated by shrink_folio_list. */
  activated: number;
  /** pages put back inactive by a KEEP verdict. */
  kept: number;
  /** pgdeactivate: active -> inactive. */
  deactivated: number;
  /** pages kept active by shrink_active_list (referenced executable file pages). */
  rotated: number;
  /** pgrefill: pages scanned on the active list. */
  refill: number;
  /** nr_unmap_fail. */
  unmapFailed: number;
  /** large folios left alone (THP split is not modelled). */
  skippedLarge: number;
  /** folios mapped by a parent and its forked child, put back instead of unmapped (try_to_unmap of both is not modelled). */
  keptShared: number;
  /** folio_check_references verdicts. */
  verdicts: [reclaim: number, reclaimClean: number, keep: number, activate: number];
  /** kswapd wakeups (balance() finding the low watermark breached). */
  kswapdWakeups: number;
}

export class Reclaimer {
  readonly stats: ReclaimStats = {
    scanned: 0, evicted: 0, activated: 0, kept: 0, deactivated: 0, rotated: 0, refill: 0, unmapFailed: 0, skippedLarge: 0, keptShared: 0,
    verdicts: [0, 0, 0, 0], kswapdWakeups: 0,
  };
  /** MGLRU, when enabled. */
  lruGen: LruGenReclaim | null = null;
  /** MADV_FREE folios met by shrink_folio_list: discarded clean (PGLAZYFREED), or found written again and kept. */
  readonly lazyfree = { freed: 0, redirtied: 0 };
  readonly folios: FolioTable;

  constructor(
    readonly mm: MmStruct,
    readonly rmap: HostRmap,
    readonly swap: SwapDevice,
    readonly workingset: Workingset,
  ) {
    this.folios = mm.folios;
  }

  /** Pages on the anon LRU lists (what the budget of balance() counts). */
  get lruPages(): number {
    const n = this.folios.nrPages;
    // The file lists hold only MADV_FREE folios here (src/mm/madvise_free.ts).
    return n[LruList.ActiveAnon] + n[LruList.InactiveAnon] + n[LruList.InactiveFile] + n[LruList.ActiveFile];
  }

  /**
   * folio_check_references. Classic LRU looks twice: PTE references set
   * PG_referenced and KEEP the folio the first time; a folio referenced
   * again (or by several mappings) is ACTIVATEd. No references: RECLAIM.
   */
  *folioCheckReferences(head: number): Program<FolioReferences> {
    const v = yield* this.checkReferences(head);
    this.stats.verdicts[v]++;
    return v;
  }

  private *checkReferences(head: number): Program<FolioReferences> {
    const f = this.folios;
    const { referenced, vmFlags } = yield* this.rmap.folioReferenced(head);
    if ((vmFlags & VM_LOCKED) !== 0) return FolioReferences.Activate;
    if (referenced === -1) return FolioReferences.Keep;
    if (this.lruGen !== null) {
      if (referenced === 0) return FolioReferences.Reclaim;
      return this.lruGenSetRefs(head) ? FolioReferences.Activate : FolioReferences.Keep;
    }
    const referencedFolio = f.testClear(head, PG_referenced);
    if (referenced > 0) {
      f.set(head, PG_referenced);
      if (referencedFolio || referenced > 1) return FolioReferences.Activate;
      if ((vmFlags & VM_EXEC) !== 0 && !f.test(head, PG_swapbacked)) return FolioReferences.Activate;
      return FolioReferences.Keep;
    }
    if (referencedFolio && !f.test(head, PG_swapbacked)) return FolioReferences.ReclaimClean;
    return FolioReferences.Reclaim;
  }

  /** lru_gen_set_refs: first reference sets PG_referenced only (keep); later ones set workingset (activate). */
  private lruGenSetRefs(head: number): boolean {
    const f = this.folios;
    const i = f.idx(head);
    if ((f.flags[i] & (PG_referenced | PG_workingset)) === 0) {
      f.flags[i] = (f.flags[i] & ~LRU_REFS_MASK) | PG_referenced;
      return false;
    }
    f.flags[i] = (f.flags[i] & ~(LRU_REFS_MASK | PG_referenced)) | PG_workingset;
    return true;
  }

  /** isolate_lru_folios: up to nr folios from the tail (oldest) of a list, each with a reference taken. */
  private isolate(list: number, nr: number): number[] {
    const f = this.folios;
    const out: number[] = [];
    let pages = 0;
    while (pages < nr) {
      const i = f.tail[list];
      if (i < 0) break;
      const head = i + f.basePfn;
      f.lruDel(head);
      f.get(head);
      out.push(head);
      pages += 2 ** f.order(head);
    }
    return out;
  }

  /** move_folios_to_lru: back at the head of the list their PG_active says; the isolation reference dropped. */
  private putback(heads: number[]): void {
    const f = this.folios;
    for (const head of heads) {
      // folio_lru_list: lazyfree folios (not swap-backed) go to the file lists.
      const anon = f.test(head, PG_swapbacked);
      f.lruAdd(head, f.test(head, PG_active) ? (anon ? LruList.ActiveAnon : LruList.ActiveFile) : anon ? LruList.InactiveAnon : LruList.InactiveFile);
      if (f.put(head)) {
        f.lruDel(head);
        this.mm.pages.freePages(head * PAGE_SIZE, f.order(head));
      }
    }
  }

  /**
   * shrink_inactive_list: isolate nrToScan pages from the inactive anon
   * list, run shrink_folio_list on them, put back what was not freed.
   * Returns pages reclaimed.
   */
  *shrinkInactiveList(nrToScan: number): Program<number> {
    const heads = this.isolate(LruList.InactiveAnon, nrToScan);
    for (const h of heads) this.stats.scanned += 2 ** this.folios.order(h);
    const { reclaimed, remaining } = yield* this.shrinkFolioList(heads);
    this.putback(remaining);
    return reclaimed;
  }

  /**
   * shrink_folio_list: per folio, the references verdict; then a slot and
   * the swap cache (add_to_swap), try_to_unmap, the write-out of a dirty
   * folio (pageout, synchronous), and __remove_mapping, which leaves a
   * shadow entry (workingset_eviction) and frees the folio. What is not
   * freed is returned, PG_active set on the activated ones.
   */
  *shrinkFolioList(heads: number[]): Program<{ reclaimed: number; remaining: number[] }> {
    const f = this.folios;
    const swap = this.swap;
    const remaining: number[] = [];
    let reclaimed = 0;
    const activate = (head: number): void => {
      // activate_locked: a swap-cache folio drops its slot when swap runs short.
      if (f.test(head, PG_swapcache) && swap.full) swap.freeSwap(head);
      f.set(head, PG_active);
      this.stats.activated += 2 ** f.order(head);
      remaining.push(head);
    };
    for (const head of heads) {
      const nr = 2 ** f.order(head);
      if (f.test(head, PG_unevictable) || f.test(head, PG_ksm)) {
        // A KSM page is put back: its sharers are found by rmap_walk_ksm, which is not modelled.
        remaining.push(head);
        continue;
      }
      if (f.order(head) !== 0) {
        this.stats.skippedLarge += nr;
        remaining.push(head);
        continue;
      }
      const refs = yield* this.folioCheckReferences(head);
      if (refs === FolioReferences.Activate) {
        activate(head);
        continue;
      }
      if (refs === FolioReferences.Keep) {
        this.stats.kept += nr;
        remaining.push(head);
        continue;
      }
      if (f.mapcount[f.idx(head)] > 1) {
        // Mapped by a parent and its forked child: kept (put back). try_to_unmap of every mm's mapping is not modelled.
        this.stats.keptShared += nr;
        remaining.push(head);
        continue;
      }
      if (isLazyfree(this.mm, head)) {
        // MADV_FREE: no swap slot; try_to_unmap discards a clean folio, keeps one written again.
        if (!(yield* tryToUnmapLazyfree(this.mm, head))) {
          this.lazyfree.redirtied += nr;
          activate(head);
          continue;
        }
        if (f.refcount[f.idx(head)] !== 1) {
          remaining.push(head);
          continue;
        }
        f.refcount[f.idx(head)] = 0;
        f.clear(head, PG_active | PG_referenced | PG_workingset);
        this.mm.pages.freePages(head * PAGE_SIZE, f.order(head));
        reclaimed += nr;
        this.stats.evicted += nr;
        this.lazyfree.freed += nr;
        continue;
      }
      if (f.test(head, PG_swapbacked) && !f.test(head, PG_swapcache) && !swap.addToSwap(head)) {
        activate(head); // swap full
        continue;
      }
      if (f.mapcount[f.idx(head)] > 0 && !(yield* this.rmap.tryToUnmap(head))) {
        this.stats.unmapFailed += nr;
        activate(head);
        continue;
      }
      if (f.test(head, PG_dirty)) {
        this.rmap.tryToUnmapFlush(); // try_to_unmap_flush_dirty: no stale writable TLB entry may outlive the write-out
        swap.writeOut(head);
      }
      // __remove_mapping: only the isolation and swap-cache references may remain.
      if (f.refcount[f.idx(head)] !== 1 + nr) {
        remaining.push(head);
        continue;
      }
      swap.deleteFromSwapCache(head, this.workingset.eviction(head));
      f.refcount[f.idx(head)] = 0; // folio_ref_freeze took the isolation reference
      f.clear(head, PG_active | PG_referenced | PG_workingset);
      this.mm.pages.freePages(head * PAGE_SIZE, f.order(head));
      reclaimed += nr;
      this.stats.evicted += nr;
    }
    this.rmap.tryToUnmapFlush();
    return { reclaimed, remaining };
  }

  /**
   * shrink_active_list: isolate nrToScan pages from the active tail;
   * folio_referenced ages each (clearing the A bits and asking the
   * secondary MMUs); referenced executable file pages stay, everything
   * else goes inactive with PG_workingset.
   */
  *shrinkActiveList(nrToScan: number): Program<void> {
    const f = this.folios;
    const heads = this.isolate(LruList.ActiveAnon, nrToScan);
    for (const head of heads) {
      const nr = 2 ** f.order(head);
      this.stats.refill += nr;
      const { referenced, vmFlags } = yield* this.rmap.folioReferenced(head);
      if (referenced > 0 && (vmFlags & VM_EXEC) !== 0 && !f.test(head, PG_swapbacked)) {
        this.stats.rotated += nr;
        continue;
      }
      f.clear(head, PG_active);
      f.set(head, PG_workingset);
      this.stats.deactivated += nr;
    }
    this.putback(heads);
  }

  /** inactive_is_low: inactive * int_sqrt(10 * GB of the lists) < active (ratio 1 below 1 GB). */
  inactiveIsLow(): boolean {
    const n = this.folios.nrPages;
    const inactive = n[LruList.InactiveAnon];
    const active = n[LruList.ActiveAnon];
    const gb = Math.floor(((inactive + active) * PAGE_SIZE) / 2 ** 30);
    const ratio = gb !== 0 ? Math.floor(Math.sqrt(10 * gb)) : 1;
    return inactive * ratio < active;
  }

  /**
   * shrink_lruvec (anon only): scan size >> priority of each list, the
   * active list only to refill a low inactive list; then rebalance.
   * With MGLRU on, lru_gen_shrink_lruvec instead.
   */
  *shrinkLruvec(nrToReclaim: number, priority: number): Program<number> {
    if (this.lruGen !== null) return yield* this.lruGen.shrinkLruvec(nrToReclaim, priority);
    const n = this.folios.nrPages;
    let reclaimed = 0;
    let inactive = Math.max(Math.floor(n[LruList.InactiveAnon] / 2 ** priority), Math.min(n[LruList.InactiveAnon], SWAP_CLUSTER_MAX));
    let active = Math.max(Math.floor(n[LruList.ActiveAnon] / 2 ** priority), Math.min(n[LruList.ActiveAnon], SWAP_CLUSTER_MAX));
    // The inactive file list holds MADV_FREE folios only (madvise_free.ts): scanned after the anon lists, as for_each_evictable_lru does.
    let file = Math.max(Math.floor(n[LruList.InactiveFile] / 2 ** priority), Math.min(n[LruList.InactiveFile], SWAP_CLUSTER_MAX));
    while ((inactive > 0 || active > 0 || file > 0) && reclaimed < nrToReclaim) {
      if (active > 0) {
        const batch = Math.min(active, SWAP_CLUSTER_MAX);
        active -= batch;
        if (this.inactiveIsLow()) yield* this.shrinkActiveList(batch);
      }
      if (inactive > 0) {
        const batch = Math.min(inactive, SWAP_CLUSTER_MAX);
        inactive -= batch;
        reclaimed += yield* this.shrinkInactiveList(batch);
      }
      if (file > 0 && reclaimed < nrToReclaim) {
        const batch = Math.min(file, SWAP_CLUSTER_MAX);
        file -= batch;
        const heads = this.isolate(LruList.InactiveFile, batch);
        for (const h of heads) this.stats.scanned += 2 ** this.folios.order(h);
        const r = yield* this.shrinkFolioList(heads);
        this.putback(r.remaining);
        reclaimed += r.reclaimed;
      }
    }
    if (this.inactiveIsLow()) yield* this.shrinkActiveList(SWAP_CLUSTER_MAX);
    return reclaimed;
  }

  /** The priority loop of do_try_to_free_pages / balance_pgdat: scan harder until enough is reclaimed. */
  *tryToFreePages(nrToReclaim: number): Program<number> {
    let reclaimed = 0;
    for (let priority = DEF_PRIORITY; priority >= 0 && reclaimed < nrToReclaim; priority--) {
      reclaimed += yield* this.shrinkLruvec(nrToReclaim - reclaimed, priority);
    }
    return reclaimed;
  }

  /**
   * kswapd against a budget of `limit` LRU pages: when what is left falls
   * below the low watermark, reclaim until the high watermark is free
   * again. Returns pages reclaimed.
   */
  *balance(limit: number, wmarkLow: number, wmarkHigh: number): Program<number> {
    if (limit - this.lruPages >= wmarkLow) return 0;
    this.stats.kswapdWakeups++;
    return yield* this.tryToFreePages(this.lruPages - (limit - wmarkHigh));
  }
}

/** The classic reclaim stack of one mm: a swap device of `swapSlots` slots, workingset, host rmap, reclaimer. */
export function setUpReclaim(mm: MmStruct, opts: { swapSlots: number }): { swap: SwapDevice; workingset: Workingset; rmap: HostRmap; reclaim: Reclaimer } {
  const swap = new SwapDevice(mm.folios, opts.swapSlots);
  swap.attach(mm);
  const workingset = new Workingset(mm.folios, () => swap.nrFree > 0);
  swap.workingset = workingset;
  const rmap = new HostRmap(mm.folios, swap);
  return { swap, workingset, rmap, reclaim: new Reclaimer(mm, rmap, swap, workingset) };
}
