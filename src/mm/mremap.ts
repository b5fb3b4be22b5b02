/**
 * mremap(MREMAP_MAYMOVE|MREMAP_FIXED) of a whole area to a new address
 * (mm/mremap.c: move_vma -> copy_vma, move_page_tables, then the unmap of
 * the old area), mm.md section 6 "mremap moving tables".
 *
 * move_page_tables runs inside one UNMAP invalidation over the old range:
 * invalidate_range_start, then per PTE table ptep_get_and_clear on the old
 * entry and set_pte_at of the same entry (made soft-dirty:
 * move_soft_dirty_pte) at the new address, the TLB flushed for the old
 * range when a present entry moved (move_ptes' force_flush), then
 * invalidate_range_end. Folios, content tokens, refcounts and mapcounts do
 * not change: only where they are mapped. Then the old area is unmapped
 * as munmap would (do_vmi_munmap -> unmap_vmas), which fires a second
 * UNMAP pair over the old range with nothing left to zap, and frees the
 * old page tables. The model moves entries one by one, never a whole PMD
 * table (move_normal_pmd); huge leaves move as they are (move_huge_pmd).
 *
 * KVM keeps the memslot's userspace_addr: after the move the old hva has
 * no area, so the guest's next access to that memory faults in KVM,
 * hva_to_pfn fails and the vCPU exits with EFAULT until the VMM moves the
 * memslot as well (KVM_SET_USER_MEMORY_REGION), which this model leaves out.
 */
import type { MmStruct, VmArea } from './mm.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, mmuNotifierRangeInit, type Program } from './mmu_notifier.js';
import { TASK_SIZE, _PAGE_PRESENT, _PAGE_SOFT_DIRTY, _PAGE_SWP_SOFT_DIRTY, levelSpan, type LeafVisitor } from './pgtable.js';

/** What a move did: entries moved and TLB flushes of the old range. */
export interface MremapResult {
  vma: VmArea;
  moved: number;
  flushes: number;
}

/** mremap moving the whole area [oldStart, oldStart+length) to newStart. */
export function* mremapMove(mm: MmStruct, oldStart: number, length: number, newStart: number): Program<MremapResult> {
  const old = mm.findVma(oldStart);
  const hex = (n: number): string => `0x${n.toString(16)}`;
  if (old === null || old.start !== oldStart || old.end !== oldStart + length) {
    throw new RangeError(`mremap: ${hex(oldStart)}+${hex(length)} is not one whole area (moving part of an area is not modelled)`);
  }
  const align = levelSpan(old.level);
  if (newStart % align !== 0) throw new RangeError(`mremap: new address ${hex(newStart)} is not aligned to the area's page size`);
  if (newStart + length > TASK_SIZE) throw new RangeError(`mremap: ${hex(newStart + length)} is beyond TASK_SIZE`);
  const neu = mm.copyVmaTo(old, newStart);
  const delta = newStart - oldStart;
  const mem = mm.mem;
  const pt = mm.pt;
  let moved = 0;
  let flushes = 0;
  let present = false;
  const visit: LeafVisitor = (e, level, addr, lo, hi) => {
    mem.xchg64(e, 0, 0); // ptep_get_and_clear
    const p = (lo & _PAGE_PRESENT) !== 0;
    if (p) present = true;
    const nlo = lo | (p ? _PAGE_SOFT_DIRTY : _PAGE_SWP_SOFT_DIRTY); // move_soft_dirty_pte
    mem.store64(pt.entryFor(addr + delta, level), nlo, hi);
    moved++;
  };
  const range = mmuNotifierRangeInit(MmuNotifierEvent.Unmap, MMU_NOTIFIER_RANGE_BLOCKABLE, oldStart, oldStart + length);
  yield* mm.notifiers.invalidateRangeStart(range);
  for (let a = oldStart; a < old.end;) {
    if (mem.yields) yield;
    present = false;
    a = pt.scan(a, old.end, visit);
    if (present) {
      mm.cpu.flushAll(); // flush_tlb_range of the old range, under the PTE lock
      flushes++;
    }
  }
  yield* mm.notifiers.invalidateRangeEnd(range);
  // The old area goes as munmap takes it: its own UNMAP pair, its tables freed.
  yield* mm.munmap(oldStart, length);
  return { vma: neu, moved, flushes };
}
