/**
 * The host's reverse map walks (mm/rmap.c) that reclaim uses: from a folio
 * to the PTEs mapping it, through folio->mapping (an anon_vma; here one
 * VMA per anon_vma, since fork is not modelled).
 *
 * folio_referenced collects references (mm.md 2.1-2.2): the primary A bit
 * and, through ptep_clear_flush_young_notify, every secondary MMU's
 * clear_flush_young, so KVM's aging runs here. try_to_unmap replaces each
 * mapping PTE with a swap entry inside a CLEAR invalidation (mm.md 6).
 */
import { PG_dirty, PG_idle, PG_young, PG_swapcache, type FolioTable } from './folio.js';
import { PAGE_SIZE, VM_LOCKED, VM_RAND_READ, VM_SEQ_READ, folioVmas, vmaAddress, type VmArea } from './mm.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, mmuNotifierRangeInit, type Program } from './mmu_notifier.js';
import {
  _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_SOFT_DIRTY, _PAGE_SWP_EXCLUSIVE, _PAGE_SWP_SOFT_DIRTY, entryAddr, levelSpan, swpEntryHi, swpEntryLo,
} from './pgtable.js';
import type { SwapDevice } from './swap.js';

/** What folio_referenced returns: mappings that referenced the folio (-1: keep it), and their VMAs' flags. */
export interface Referenced {
  referenced: number;
  vmFlags: number;
}

/** MGLRU's young test for a PTE-mapped folio (lru_gen_look_around); plugged in when MGLRU is on. */
export type LookAround = (vma: VmArea, hva: number, head: number) => Program<boolean>;

export class HostRmap {
  /** rmap walks, PTEs tested (ptep_clear_flush_young_notify calls), young found, unmaps, CLEAR ranges started. */
  readonly stats = { referencedWalks: 0, ptesTested: 0, young: 0, unmapped: 0, unmapRanges: 0, unmapFailed: 0 };
  /** Set while MGLRU is enabled: folio_referenced_one uses look-around instead of clear-flush-young. */
  lookAround: LookAround | null = null;
  /**
   * TTU_BATCH_FLUSH with a deferring arch (x86 when another CPU has the mm
   * loaded): try_to_unmap_one leaves the TLB flush to tryToUnmapFlush, after
   * its invalidate_range_end. Off: ptep_clear_flush flushes in place.
   */
  batchFlush = false;
  /** tlb_ubc: the mms with a deferred flush pending. */
  private readonly pendingFlush = new Set<VmArea['mm']>();

  constructor(
    readonly folios: FolioTable,
    readonly swap: SwapDevice | null,
  ) {}

  /** rmap_walk_anon's VMA list for a folio: the areas of its anon_vma covering folio->index (after fork, the parent's and the child's). */
  vmasOf(head: number): VmArea[] {
    return folioVmas(this.folios, head);
  }

  /** Address of the folio in a VMA (vma_address). */
  addressIn(vma: VmArea, head: number): number {
    return vmaAddress(vma, this.folios.index[this.folios.idx(head)]);
  }

  /** Whether the entry at hva in vma's mm maps the folio (page_vma_mapped_walk's check). */
  private mapsFolio(vma: VmArea, hva: number, head: number): boolean {
    const pfn = vma.mm.lookup(hva);
    return pfn !== null && this.folios.folioOf(pfn) === head;
  }

  /**
   * folio_referenced: 0 when the folio is unmapped or has no mapping;
   * otherwise walks the VMAs (skipping those without recency: VM_SEQ_READ,
   * VM_RAND_READ) and sums what folio_referenced_one reports.
   */
  *folioReferenced(head: number): Program<Referenced> {
    const f = this.folios;
    const res: Referenced = { referenced: 0, vmFlags: 0 };
    if (f.mapcount[f.idx(head)] <= 0 || f.mapping[f.idx(head)] === 0) return res;
    this.stats.referencedWalks++;
    let mapcount = f.mapcount[f.idx(head)];
    for (const vma of this.vmasOf(head)) {
      const flags = vma.vmFlags;
      if ((flags & (VM_SEQ_READ | VM_RAND_READ)) !== 0) continue; // invalid_folio_referenced_vma
      mapcount -= yield* this.folioReferencedOne(vma, head, res);
      if ((res.vmFlags & VM_LOCKED) !== 0 || mapcount <= 0) break;
    }
    return res;
  }

  /**
   * folio_referenced_one for one VMA: VM_LOCKED reports itself and stops;
   * otherwise each mapping entry is tested and cleared (look-around under
   * MGLRU, else ptep_clear_flush_young_notify: primary A bit, then the
   * notifiers' clear_flush_young, which is KVM's aging). Anything young
   * clears PG_idle; page_idle's PG_young counts once more. Returns the
   * mappings visited.
   */
  private *folioReferencedOne(vma: VmArea, head: number, res: Referenced): Program<number> {
    const f = this.folios;
    const mm = vma.mm;
    const hva = this.addressIn(vma, head);
    if (!this.mapsFolio(vma, hva, head)) return 0;
    if ((vma.vmFlags & VM_LOCKED) !== 0) {
      res.vmFlags |= VM_LOCKED; // mlock_vma_folio, then stop the walk
      return 1;
    }
    let referenced = 0;
    this.stats.ptesTested++;
    const young = this.lookAround !== null && vma.level === 1 ? yield* this.lookAround(vma, hva, head) : yield* mm.clearFlushYoungNotify(hva);
    if (young) referenced++;
    if (referenced !== 0) f.clear(head, PG_idle);
    if (f.testClear(head, PG_young)) referenced++;
    if (referenced !== 0) {
      this.stats.young++;
      res.referenced++;
      res.vmFlags |= vma.vmFlags & ~VM_LOCKED;
    }
    return 1;
  }

  /**
   * try_to_unmap for an anon folio in the swap cache: per mapping VMA,
   * try_to_unmap_one. True when the folio is no longer mapped.
   */
  *tryToUnmap(head: number): Program<boolean> {
    for (const vma of this.vmasOf(head)) {
      if (!(yield* this.tryToUnmapOne(vma, head))) break;
    }
    const mapped = this.folios.mapcount[this.folios.idx(head)] > 0;
    if (mapped) this.stats.unmapFailed++;
    return !mapped;
  }

  /**
   * try_to_unmap_one: a CLEAR invalidation over the folio's span in the VMA
   * (secondary MMUs drop their mappings at start); the PTE is cleared and
   * replaced by a swap entry naming the folio's slot (one more swap_map
   * count; exclusive and soft-dirty carried over), its D bit moves to
   * PG_dirty, the mapping's reference and mapcount go; the TLB is flushed
   * (here, or later with the reclaim batch), then the range ends.
   * False for a VM_LOCKED VMA (the folio is mlocked instead).
   */
  private *tryToUnmapOne(vma: VmArea, head: number): Program<boolean> {
    const f = this.folios;
    const mm = vma.mm;
    if ((vma.vmFlags & VM_LOCKED) !== 0) return false;
    if (vma.level !== 1 || f.order(head) !== 0) throw new Error('assertion: unmapping a large folio (THP split is not modelled)');
    const swap = this.swap;
    const slot = swap === null ? -1 : swap.slotOfFolio(head);
    if (slot < 0 || !f.test(head, PG_swapcache)) throw new Error('assertion: try_to_unmap of an anon folio not in the swap cache');
    const start = this.addressIn(vma, head);
    const end = Math.min(vma.end, start + levelSpan(1));
    const range = mmuNotifierRangeInit(MmuNotifierEvent.Clear, MMU_NOTIFIER_RANGE_BLOCKABLE, start, end);
    this.stats.unmapRanges++;
    yield* mm.notifiers.invalidateRangeStart(range);
    const pt = mm.pt;
    pt.walk(start);
    const lo = pt.lo;
    const hi = pt.hi;
    if ((lo & _PAGE_PRESENT) !== 0 && f.folioOf(entryAddr(lo, hi) / PAGE_SIZE) === head) {
      const mem = mm.mem;
      mem.xchg64(pt.entry, 0, 0); // ptep_get_and_clear: the hardware can no longer set D behind our back
      const old = mem.lo;
      if ((old & _PAGE_DIRTY) !== 0) f.set(head, PG_dirty);
      swap!.duplicate(slot);
      // Every anon folio is exclusive here (no fork), so the entry keeps PG_anon_exclusive.
      let flags = _PAGE_SWP_EXCLUSIVE;
      if ((old & _PAGE_SOFT_DIRTY) !== 0) flags |= _PAGE_SWP_SOFT_DIRTY;
      mem.store64(pt.entry, swpEntryLo(swap!.type, slot, flags), swpEntryHi(swap!.type, slot));
      f.mapcount[f.idx(head)]--; // folio_remove_rmap_pte
      f.refcount[f.idx(head)]--; // the mapping's reference (folio_put; the caller's isolation reference remains)
      this.stats.unmapped++;
      if (this.batchFlush) this.pendingFlush.add(mm);
      else this.flush(mm, start, end);
    }
    yield* mm.notifiers.invalidateRangeEnd(range);
    return true;
  }

  /** try_to_unmap_flush: the deferred reclaim-batch flush of every mm with one pending. */
  tryToUnmapFlush(): void {
    for (const mm of this.pendingFlush) this.flush(mm, 0, 2 ** 47);
    this.pendingFlush.clear();
  }

  /** The arch TLB flush: the host CPU's TLB, and arch_invalidate_secondary_tlbs from inside it. */
  private flush(mm: VmArea['mm'], start: number, end: number): void {
    mm.cpu.flushAll();
    mm.notifiers.archInvalidateSecondaryTlbs(start, end);
  }
}
