/**
 * fork of the VMM's address space (dup_mmap, in mm/mmap.c as of 6.17; mm/memory.c
 * copy_page_range): a child MmStruct on the same host memory, page
 * allocator and FolioTable, with a copy of every area and, for the areas
 * the kernel copies, of their page tables, every private page shared
 * copy-on-write. mm.md section 6: "fork (COW mapping): PROTECTION_PAGE on
 * the parent mm, VMA span, parent PTEs write-protected".
 *
 * Mirrored, per parent area in address order:
 * - vm_area_dup + anon_vma_fork: the child's area has the same range,
 *   flags (VM_LOCKED dropped: mlock is not inherited) and vm_pgoff, its own
 *   anon_vma (for the folios it faults in later) and, when the parent's
 *   area has an anon_vma, is linked on the parent's anon_vma chain too, so
 *   the rmap of a folio the parent faulted in finds both areas
 *   (folioVmas). The data tokens (what each page must read) are copied.
 * - vma_needs_copy: the page tables are copied only when the parent's
 *   area has an anon_vma (anon_vma_prepare ran: something was faulted in
 *   once, even if it was zapped since). Otherwise the child faults its
 *   pages in fresh, as the parent would, and no notifier fires.
 * - copy_page_range with is_cow (every private anonymous area is a COW
 *   mapping: VM_MAYWRITE without VM_SHARED, mprotect'ed read-only or not):
 *   mmu_notifier_range_init(PROTECTION_PAGE, 0, parent mm, vm_start,
 *   vm_end) and invalidate_range_start (blockable) on the PARENT's
 *   notifiers, whether or not a PTE is present; then per entry:
 *   - a present PTE (copy_present_ptes -> __copy_present_ptes): the folio
 *     gains a mapping and a reference (folio_try_dup_anon_rmap_pte: no GUP
 *     pins in the model, so it never fails into copy_present_page; a KSM
 *     folio gains one more sharer the same way); a writable PTE is
 *     write-protected in the parent (ptep_set_wrprotect) and the child gets
 *     the entry read-only and old (pte_wrprotect, pte_mkold), dirty and
 *     soft-dirty kept (a private mapping);
 *   - a swap entry (copy_nonpresent_pte): swap_duplicate, and an exclusive
 *     entry loses SWP_EXCLUSIVE in the parent (the page is now shared);
 *     the child gets the same, non-exclusive entry;
 *   then invalidate_range_end.
 * - after all areas, flush_tlb_mm(oldmm): the parent's TLB is flushed once,
 *   after every range has ended (the kernel orders it so: dup_mmap's `out:`
 *   path), with arch_invalidate_secondary_tlbs from inside the flush.
 *
 * The child has no notifier subscribers (KVM subscribed to the parent), the
 * parent's swap layer and LRU hook. Not modelled: huge (2M/1G) areas
 * (copy_huge_pmd, and the THP split their COW would need: refused with a
 * RangeError), VM_WIPEONFORK / VM_DONTCOPY, the write_protect_seq GUP-fast
 * uses, copy_present_page for pinned folios.
 */
import { PG_anon } from './folio.js';
import { MmStruct, PAGE_SIZE, VM_LOCKED, VMA_EXTRAS_NONE, type AnonVma, type VmArea } from './mm.js';
import { MmuNotifierEvent, ULONG_MAX, mmuNotifierRangeInit, type Program } from './mmu_notifier.js';
import {
  _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_RW, _PAGE_SWP_EXCLUSIVE, entryAddr, type LeafVisitor,
} from './pgtable.js';

/** What dup_mmap did: areas copied, areas whose page tables were copied (one PROTECTION_PAGE pair each), PTEs and swap entries shared. */
export interface ForkStats {
  vmas: number;
  cowVmas: number;
  ptes: number;
  swapEntries: number;
}

/**
 * dup_mmap: forks `parent` (a generator: the parent's notifiers run inside).
 * Returns the child mm and what was copied.
 */
export function* dupMmap(parent: MmStruct): Program<{ child: MmStruct; stats: ForkStats }> {
  for (const v of parent.areas) {
    if (v.level !== 1) throw new RangeError(`fork: the area 0x${v.start.toString(16)}..0x${v.end.toString(16)} has ${v.level === 2 ? '2M' : '1G'} pages (copy_huge_pmd and THP split are not modelled)`);
  }
  const child = new MmStruct(parent.mem, parent.pages);
  child.swap = parent.swap;
  child.lruAddNew = parent.lruAddNew;
  const stats: ForkStats = { vmas: 0, cowVmas: 0, ptes: 0, swapEntries: 0 };
  const f = parent.folios;
  for (const src of [...parent.areas]) {
    // vm_area_dup + anon_vma_fork: a new anon_vma for the child, chained to the parent's.
    const av: AnonVma = { id: 0, vmas: [] };
    (av as { id: number }).id = f.registerMapping(av);
    const dst: VmArea = {
      mm: child, start: src.start, end: src.end, pgoff: src.pgoff, writable: src.writable, level: src.level, anonVma: av.id,
      tokens: src.tokens === null ? null : src.tokens.slice(), ...VMA_EXTRAS_NONE,
    };
    // anon_vma_fork does nothing for a parent area without an anon_vma: the child's gets its own at its first fault.
    if (src.hasAnonVma === true) {
      dst.hasAnonVma = true;
      dst.anonChain = [...(src.anonChain ?? []), src.anonVma];
    }
    // The child does not inherit mlock (vm_flags_clear of VM_LOCKED_MASK).
    dst.vmFlags = src.vmFlags & ~VM_LOCKED;
    child.insertVma(dst);
    stats.vmas++;
    if (src.hasAnonVma !== true) continue; // vma_needs_copy: no anon_vma, nothing to copy
    stats.cowVmas++;
    yield* copyPageRange(parent, child, src, stats);
  }
  // flush_tlb_mm(oldmm), after mmap_write_unlock(mm): the parent's stale writable TLB entries go.
  parent.cpu.flushAll();
  parent.notifiers.archInvalidateSecondaryTlbs(0, ULONG_MAX);
  return { child, stats };
}

/**
 * copy_page_range for one COW area: the PROTECTION_PAGE range on the
 * parent around copy_pte_range of every page table of the area.
 */
function* copyPageRange(parent: MmStruct, child: MmStruct, src: VmArea, stats: ForkStats): Program<void> {
  const mem = parent.mem;
  const f = parent.folios;
  const range = mmuNotifierRangeInit(MmuNotifierEvent.ProtectionPage, 0, src.start, src.end);
  yield* parent.notifiers.invalidateRangeStartBlocking(range);
  const visit: LeafVisitor = (e, _level, addr, lo, hi) => {
    let childLo = lo;
    if ((lo & _PAGE_PRESENT) === 0) {
      // copy_nonpresent_pte: a swap entry.
      if (parent.swap?.duplicatePte === undefined) throw new Error('assertion: a swap entry with no swap layer');
      parent.swap.duplicatePte(lo, hi);
      if ((lo & _PAGE_SWP_EXCLUSIVE) !== 0) {
        childLo = lo & ~_PAGE_SWP_EXCLUSIVE;
        mem.store64(e, childLo, hi); // pte_swp_clear_exclusive in the parent
      }
      stats.swapEntries++;
    } else {
      // __copy_present_ptes.
      const head = f.folioOf(entryAddr(lo, hi) / PAGE_SIZE);
      const i = f.idx(head);
      if ((f.flags[i] & PG_anon) === 0) throw new Error('assertion: a non-anonymous folio in an anonymous area');
      f.get(head); // folio_get
      f.mapcount[i]++; // folio_try_dup_anon_rmap_pte
      if ((lo & _PAGE_RW) !== 0) {
        // wrprotect_ptes in the parent: an atomic clear of RW, so a D the hardware sets meanwhile stays in the
        // parent's entry; the child's is made from the value read before (pte_wrprotect of it).
        mem.and64(e, ~_PAGE_RW, -1);
        childLo = lo & ~_PAGE_RW;
      }
      childLo &= ~_PAGE_ACCESSED; // pte_mkold; dirty stays (a private mapping: pte_mkclean is for VM_SHARED only)
      stats.ptes++;
    }
    mem.store64(child.pt.entryFor(addr, 1), childLo, hi); // set_ptes into the child's (new) page table
  };
  for (let a = src.start; a < src.end;) {
    if (mem.yields) yield;
    a = parent.pt.scan(a, src.end, visit);
  }
  yield* parent.notifiers.invalidateRangeEnd(range);
}
