/**
 * Writing 4 to /proc/PID/clear_refs (fs/proc/task_mmu.c clear_refs_write,
 * CLEAR_REFS_SOFT_DIRTY), mm.md section 6 "clear_refs soft-dirty".
 *
 * One SOFT_DIRTY invalidation over the whole address space (0 to
 * ULONG_MAX): invalidate_range_start; the walk write-protects every
 * present PTE and huge leaf and clears its soft-dirty bit
 * (ptep_modify_prot_start/commit), and clears the soft-dirty bit of swap
 * entries; then invalidate_range_end, and only then flush_tlb_mm: the
 * kernel's order here is start -> PTEs -> end -> flush (the mm's
 * tlb_flush_pending count covers the window). The next write to a page
 * takes a write-protect fault (do_wp_page reuses the exclusive folio) whose
 * pte_mkdirty sets the soft-dirty bit again; KVM, whose SPTEs the
 * invalidation zapped, faults the page in read-only on a read and faults
 * through the host on a write, so guest writes are tracked too.
 *
 * Not modelled: VM_SOFTDIRTY on the areas (new areas count as soft-dirty
 * in pagemap until the first clear), pagemap itself.
 */
import type { MmStruct } from './mm.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, ULONG_MAX, mmuNotifierRangeInit, type Program } from './mmu_notifier.js';
import { _PAGE_PRESENT, _PAGE_RW, _PAGE_SOFT_DIRTY, _PAGE_SWP_SOFT_DIRTY, type LeafVisitor } from './pgtable.js';

/** clear_refs type 4 on the mm; returns the entries changed. */
export function* clearSoftDirty(mm: MmStruct): Program<{ ptes: number }> {
  const mem = mm.mem;
  let ptes = 0;
  const visit: LeafVisitor = (e, _level, _addr, lo, hi) => {
    if ((lo & _PAGE_PRESENT) !== 0) {
      mem.xchg64(e, 0, 0); // ptep_modify_prot_start: the hardware may set D until here
      mem.store64(e, mem.lo & ~(_PAGE_RW | _PAGE_SOFT_DIRTY), mem.hi); // pte_wrprotect, pte_clear_soft_dirty
    } else {
      mem.store64(e, lo & ~_PAGE_SWP_SOFT_DIRTY, hi); // pte_swp_clear_soft_dirty
    }
    ptes++;
  };
  const range = mmuNotifierRangeInit(MmuNotifierEvent.SoftDirty, MMU_NOTIFIER_RANGE_BLOCKABLE, 0, ULONG_MAX);
  yield* mm.notifiers.invalidateRangeStart(range);
  for (const vma of [...mm.areas].sort((a, b) => a.start - b.start)) {
    for (let a = vma.start; a < vma.end;) {
      if (mem.yields) yield;
      a = mm.pt.scan(a, vma.end, visit);
    }
  }
  yield* mm.notifiers.invalidateRangeEnd(range);
  mm.cpu.flushAll(); // flush_tlb_mm
  return { ptes };
}
