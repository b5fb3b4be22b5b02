/**
 * madvise(MADV_FREE) (mm/madvise.c: madvise_free_single_vma,
 * madvise_free_pte_range, folio_mark_lazyfree) and the lazyfree half of
 * try_to_unmap_one (mm/rmap.c), mm.md section 6 "madvise FREE".
 *
 * Per area met (madvise_walk_vmas), one CLEAR invalidation over the part
 * of the range inside it: invalidate_range_start; each swap entry is freed
 * and cleared (that data is gone); each present PTE of an exclusive
 * order-0 anon folio has the folio's dirty flag cleared (a swap-cache folio
 * first leaves the swap cache, folio_free_swap), is made old and clean
 * (A and D cleared, RW and soft-dirty kept), and the folio is marked
 * lazyfree: PG_swapbacked, PG_active and PG_referenced cleared, moved to
 * the inactive file list;
 * the TLB is flushed at tlb_end_vma when an entry changed; then
 * invalidate_range_end.
 *
 * At reclaim (vmscan.ts, classic LRU) a lazyfree folio is unmapped under a
 * CLEAR range for its page: the PTE is cleared and flushed; a folio still
 * clean (no D in the PTE, no PG_dirty: guest writes through KVM set it, as
 * kvm_set_page_dirty does) is discarded, and the page reads as zeroes from
 * then on; a folio written again gets its PTE back, PG_swapbacked again,
 * and is activated: its data stays.
 *
 * Not modelled: huge mappings (madvise_free_huge_pmd, splitting), shared
 * folios, MGLRU (lru_gen lists for lazyfree folios).
 */
import { LruList, PG_active, PG_anon, PG_dirty, PG_ksm, PG_referenced, PG_swapbacked, PG_swapcache, PG_unevictable } from './folio.js';
import { PAGE_SIZE, VM_LOCKED, folioVma, vmaAddress, type MmStruct } from './mm.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, mmuNotifierRangeInit, type Program } from './mmu_notifier.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, entryAddr, type LeafVisitor } from './pgtable.js';

/** What one madvise(MADV_FREE) did. */
export interface MadviseFreeResult {
  /** PTEs made old and clean. */
  cleaned: number;
  /** Folios marked lazyfree. */
  lazyfree: number;
  /** Swap entries dropped. */
  swapFreed: number;
  /** TLB flushes (one per area with a changed entry). */
  flushes: number;
}

/**
 * madvise(MADV_FREE) over [start, start+length): one CLEAR pair per area met, over its part of
 * the range (areas are not split). EINVAL for an unaligned start, ENOMEM (nothing done) when part
 * of the range is not mapped.
 */
export function* madviseFree(mm: MmStruct, start: number, length: number): Program<MadviseFreeResult> {
  const end = mm.checkRange('madvise', start, length);
  if (mm.folios.mglru !== null) throw new RangeError('madvise_free: lazyfree folios on MGLRU lists are not modelled (use the classic LRU)');
  const vmas = end === start ? [] : mm.requireMapped('madvise', start, end);
  for (const v of vmas) if (v.level !== 1) throw new RangeError('madvise_free: huge mappings are not modelled (madvise_free_huge_pmd)');
  const res: MadviseFreeResult = { cleaned: 0, lazyfree: 0, swapFreed: 0, flushes: 0 };
  const mem = mm.mem;
  const f = mm.folios;
  for (const vma of vmas) {
    const s = Math.max(start, vma.start);
    const e = Math.min(end, vma.end);
    let changed = false;
    const visit: LeafVisitor = (ep, _level, addr, lo, hi) => {
      if ((lo & _PAGE_PRESENT) === 0) {
        // A swap entry: free_swap_and_cache, pte_clear_not_present_full; the data is dropped.
        mem.xchg64(ep, 0, 0);
        mm.swap?.free(lo, hi);
        if (vma.tokens !== null) vma.tokens[(addr - vma.start) / PAGE_SIZE] = 0;
        res.swapFreed++;
        return;
      }
      const head = f.folioOf(entryAddr(lo, hi) / PAGE_SIZE);
      const i = f.idx(head);
      if (f.order(head) !== 0 || f.mapcount[i] !== 1 || (f.flags[i] & PG_ksm) !== 0) return; // large or shared (a KSM page, whose rmap is not walked here): left alone
      if ((f.flags[i] & (PG_swapcache | PG_dirty)) !== 0) {
        if ((f.flags[i] & PG_swapcache) !== 0 && !(mm.swap?.freeSwap?.(head) ?? false)) return;
        f.clear(head, PG_dirty);
      }
      if ((lo & (_PAGE_ACCESSED | _PAGE_DIRTY)) !== 0) {
        mem.xchg64(ep, 0, 0); // ptep_get_and_clear_full: the hardware may have set D meanwhile
        const old = mem.lo;
        mem.store64(ep, old & ~(_PAGE_ACCESSED | _PAGE_DIRTY), mem.hi); // pte_mkold(pte_mkclean())
        changed = true;
        res.cleaned++;
      }
      // folio_mark_lazyfree -> lru_lazyfree_fn.
      const fl = f.flags[i];
      if ((fl & (PG_anon | PG_swapbacked)) === (PG_anon | PG_swapbacked) && (fl & (PG_swapcache | PG_unevictable)) === 0) {
        const onLru = f.lruDel(head) >= 0;
        f.clear(head, PG_active | PG_referenced | PG_swapbacked);
        if (onLru) f.lruAdd(head, LruList.InactiveFile);
        res.lazyfree++;
      }
    };
    const range = mmuNotifierRangeInit(MmuNotifierEvent.Clear, MMU_NOTIFIER_RANGE_BLOCKABLE, s, e);
    yield* mm.notifiers.invalidateRangeStart(range);
    for (let a = s; a < e;) {
      if (mem.yields) yield;
      a = mm.pt.scan(a, e, visit);
    }
    if (changed) {
      mm.cpu.flushAll(); // tlb_end_vma
      res.flushes++;
    }
    yield* mm.notifiers.invalidateRangeEnd(range);
  }
  return res;
}

/** Whether a folio is lazyfree: anon and no longer swap-backed (folio_test_anon && !folio_test_swapbacked). */
export function isLazyfree(mm: MmStruct, head: number): boolean {
  const fl = mm.folios.flags[mm.folios.idx(head)];
  return (fl & PG_anon) !== 0 && (fl & PG_swapbacked) === 0;
}

/**
 * try_to_unmap_one for a lazyfree folio (the caller holds the isolation
 * reference): CLEAR range over the page, ptep_clear_flush, then discard
 * when refcount == 1 + mapcount and the folio is clean (the page's token
 * becomes 0: it reads as zeroes), else restore the PTE and set
 * PG_swapbacked again. True when the folio is no longer mapped.
 */
export function* tryToUnmapLazyfree(mm: MmStruct, head: number): Program<boolean> {
  const f = mm.folios;
  const i = f.idx(head);
  const vma = folioVma(f, head);
  if (vma === null || vma.mm !== mm) return f.mapcount[i] <= 0;
  if ((vma.vmFlags & VM_LOCKED) !== 0) return false;
  const addr = vmaAddress(vma, f.index[i]);
  const range = mmuNotifierRangeInit(MmuNotifierEvent.Clear, MMU_NOTIFIER_RANGE_BLOCKABLE, addr, addr + PAGE_SIZE);
  yield* mm.notifiers.invalidateRangeStart(range);
  let ok = true;
  const pt = mm.pt;
  pt.walk(addr);
  if (pt.present && f.folioOf(entryAddr(pt.lo, pt.hi) / PAGE_SIZE) === head) {
    const mem = mm.mem;
    const entry = pt.entry;
    mem.xchg64(entry, 0, 0); // ptep_clear_flush
    const lo = mem.lo;
    const hi = mem.hi;
    mm.cpu.flushAll();
    mm.notifiers.archInvalidateSecondaryTlbs(addr, addr + PAGE_SIZE);
    if ((lo & _PAGE_DIRTY) !== 0) f.set(head, PG_dirty);
    if (f.refcount[i] === 1 + f.mapcount[i] && !f.test(head, PG_dirty)) {
      f.mapcount[i]--; // discard: folio_remove_rmap_pte, folio_put
      f.refcount[i]--;
      if (vma.tokens !== null) vma.tokens[f.index[i] - vma.pgoff] = 0;
    } else {
      mem.store64(entry, lo, hi); // redirtied: remap it
      f.set(head, PG_swapbacked);
      ok = false;
    }
  }
  yield* mm.notifiers.invalidateRangeEnd(range);
  return ok && f.mapcount[i] <= 0;
}
