/**
 * mremap (mm/mremap.c: do_mremap, mremap_to, vma_to_resize, move_vma,
 * move_page_tables), mm.md section 6 "mremap moving tables", on any
 * page-aligned part of one area:
 *
 * - shrink (new_len < old_len, no MREMAP_FIXED): the tail is unmapped as
 *   munmap does (split, one UNMAP pair over the tail);
 * - grow in place (the range ends at its area's end and the space after is
 *   free): the area is extended (vma_expand), no notifier;
 * - move (MREMAP_MAYMOVE when growing in place is not possible, or
 *   MREMAP_FIXED): copy_vma makes the new area (same flags and anon_vma,
 *   vm_pgoff of the moved part, merged with a neighbour where it can), then
 *   move_page_tables runs inside one UNMAP invalidation over the old range:
 *   per PTE table ptep_get_and_clear of the old entry and set_pte_at of the
 *   same entry (made soft-dirty: move_soft_dirty_pte) at the new address,
 *   the TLB flushed for the old range when a present entry moved (move_ptes'
 *   force_flush); then invalidate_range_end. Folios, tokens, refcounts and
 *   mapcounts do not change, only where they are mapped. Then the old range
 *   is unmapped as munmap does (split, a second UNMAP pair over the old
 *   range with nothing left to zap, old tables freed). With MREMAP_FIXED
 *   whatever was mapped at the target is unmapped first (an UNMAP pair), and
 *   a shrinking move unmaps the old range's tail before moving.
 *
 * Every argument is checked before anything changes (as check_prep_vma
 * does in recent kernels): EINVAL for an unaligned address, a zero new
 * length, a target beyond TASK_SIZE or overlapping the old range; EFAULT
 * when no area holds the address or the old range runs past its area;
 * ENOMEM when growing in place is not possible and moving is not allowed,
 * or no free range is found. The model moves entries one by one, never a
 * whole PMD table (move_normal_pmd); huge leaves move as they are
 * (move_huge_pmd), so a huge area moves and splits at its page size only.
 *
 * KVM keeps the memslot's userspace_addr: after a move the old hvas have
 * no area, so the guest's next access to that memory faults in KVM,
 * hva_to_pfn fails and the vCPU exits with EFAULT until the VMM moves the
 * memslot as well (KVM_SET_USER_MEMORY_REGION), which this model leaves out.
 */
import { MmError, PAGE_SIZE, type MmStruct, type VmArea } from './mm.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, mmuNotifierRangeInit, type Program } from './mmu_notifier.js';
import { TASK_SIZE, _PAGE_PRESENT, _PAGE_SOFT_DIRTY, _PAGE_SWP_SOFT_DIRTY, levelSpan, type LeafVisitor } from './pgtable.js';

/** mremap's flags: MREMAP_MAYMOVE, and MREMAP_FIXED's new address (which implies MREMAP_MAYMOVE). */
export interface MremapFlags {
  maymove?: boolean;
  fixed?: number;
}

/** What an mremap did: the new address, its area, entries moved, TLB flushes of the old range, and which way it went. */
export interface MremapResult {
  addr: number;
  vma: VmArea;
  kind: 'shrink' | 'grow' | 'move' | 'none';
  moved: number;
  flushes: number;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/** mremap(addr, oldLen, newLen, flags[, fixed]). Lengths are PAGE_ALIGN'd, as the kernel does. */
export function* mremap(mm: MmStruct, addr: number, oldLen: number, newLen: number, flags: MremapFlags = {}): Program<MremapResult> {
  const fixed = flags.fixed;
  const maymove = flags.maymove === true || fixed !== undefined;
  oldLen = Math.ceil(oldLen / PAGE_SIZE) * PAGE_SIZE;
  newLen = Math.ceil(newLen / PAGE_SIZE) * PAGE_SIZE;
  if (addr % PAGE_SIZE !== 0) throw new MmError('EINVAL', `mremap: EINVAL: address ${hex(addr)} is not page aligned`);
  if (newLen === 0) throw new MmError('EINVAL', 'mremap: EINVAL: new length 0');
  if (oldLen === 0) throw new MmError('EINVAL', 'mremap: EINVAL: old length 0 duplicates only shared mappings');
  const vma = mm.findVma(addr);
  if (vma === null) throw new MmError('EFAULT', `mremap: EFAULT: no area at ${hex(addr)}`);
  const align = levelSpan(vma.level);
  if (fixed !== undefined) {
    if (fixed % align !== 0) throw new MmError('EINVAL', `mremap: EINVAL: new address ${hex(fixed)} is not aligned to the area's ${align / 1024}K page`);
    if (newLen > TASK_SIZE || fixed > TASK_SIZE - newLen) throw new MmError('EINVAL', `mremap: EINVAL: ${hex(fixed)}+${hex(newLen)} is beyond TASK_SIZE`);
    if (fixed < addr + oldLen && addr < fixed + newLen) throw new MmError('EINVAL', `mremap: EINVAL: new range ${hex(fixed)}+${hex(newLen)} overlaps the old range ${hex(addr)}+${hex(oldLen)}`);
  }
  // vma_to_resize: the part that moves or grows must lie in the area (a shrink without MREMAP_FIXED only unmaps, like munmap).
  const keep = fixed === undefined && newLen <= oldLen ? 0 : Math.min(oldLen, newLen);
  if (addr + keep > vma.end) throw new MmError('EFAULT', `mremap: EFAULT: ${hex(addr)}+${hex(keep)} runs past the area ${hex(vma.start)}..${hex(vma.end)}`);
  if (addr % align !== 0 || oldLen % align !== 0 || newLen % align !== 0) {
    throw new MmError('EINVAL', `mremap: EINVAL: ${hex(addr)}, ${hex(oldLen)}, ${hex(newLen)} must be aligned to the area's ${align / 1024}K page (splitting huge pages is not modelled)`);
  }

  if (fixed === undefined) {
    if (newLen <= oldLen) {
      if (newLen < oldLen) yield* mm.munmap(addr + newLen, oldLen - newLen);
      return { addr, vma: mm.findVma(addr)!, kind: newLen < oldLen ? 'shrink' : 'none', moved: 0, flushes: 0 };
    }
    // vma_expandable: the range ends the area and the space after it is free.
    const end = addr + newLen;
    if (addr + oldLen === vma.end && end <= TASK_SIZE && mm.vmasIn(vma.end, end).length === 0) {
      return { addr, vma: mm.expandVma(vma, end), kind: 'grow', moved: 0, flushes: 0 };
    }
    if (!maymove) throw new MmError('ENOMEM', `mremap: ENOMEM: ${hex(addr)}+${hex(oldLen)} cannot grow to ${hex(newLen)} in place and MREMAP_MAYMOVE is not set`);
    const to = mm.getUnmappedArea(newLen, align);
    if (to < 0) throw new MmError('ENOMEM', `mremap: ENOMEM: no free range of ${hex(newLen)} bytes`);
    return yield* moveVma(mm, addr, oldLen, to, newLen);
  }
  // mremap_to: clear the target, drop the tail of a shrinking range, then move.
  yield* mm.munmap(fixed, newLen);
  if (oldLen > newLen) {
    yield* mm.munmap(addr + newLen, oldLen - newLen);
    oldLen = newLen;
  }
  return yield* moveVma(mm, addr, oldLen, fixed, newLen);
}

/** move_vma: copy_vma, move_page_tables inside an UNMAP pair over the old range, then the old range unmapped. */
function* moveVma(mm: MmStruct, oldStart: number, oldLen: number, newStart: number, newLen: number): Program<MremapResult> {
  const old = mm.findVma(oldStart)!;
  const neu = mm.copyVma(old, oldStart, oldLen, newStart, newLen);
  const oldEnd = oldStart + oldLen;
  const delta = newStart - oldStart;
  const mem = mm.mem;
  const pt = mm.pt;
  let moved = 0;
  let flushes = 0;
  let present = false;
  const visit: LeafVisitor = (e, level, a, lo, hi) => {
    mem.xchg64(e, 0, 0); // ptep_get_and_clear
    const p = (lo & _PAGE_PRESENT) !== 0;
    if (p) present = true;
    const nlo = lo | (p ? _PAGE_SOFT_DIRTY : _PAGE_SWP_SOFT_DIRTY); // move_soft_dirty_pte
    mem.store64(pt.entryFor(a + delta, level), nlo, hi);
    moved++;
  };
  const range = mmuNotifierRangeInit(MmuNotifierEvent.Unmap, MMU_NOTIFIER_RANGE_BLOCKABLE, oldStart, oldEnd);
  yield* mm.notifiers.invalidateRangeStart(range);
  for (let a = oldStart; a < oldEnd;) {
    if (mem.yields) yield;
    present = false;
    a = pt.scan(a, oldEnd, visit);
    if (present) {
      mm.cpu.flushAll(); // flush_tlb_range of the old range, under the PTE lock
      flushes++;
    }
  }
  yield* mm.notifiers.invalidateRangeEnd(range);
  // The old range goes as munmap takes it: its own UNMAP pair, its tables freed.
  yield* mm.munmap(oldStart, oldLen);
  return { addr: newStart, vma: mm.findVma(newStart) ?? neu, kind: 'move', moved, flushes };
}

/** mremap(MREMAP_MAYMOVE|MREMAP_FIXED) of [oldStart, oldStart+length) to newStart, same length. */
export function* mremapMove(mm: MmStruct, oldStart: number, length: number, newStart: number): Program<MremapResult> {
  return yield* mremap(mm, oldStart, length, length, { fixed: newStart });
}
