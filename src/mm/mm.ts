/**
 * The VMM's address space, as far as KVM needs it today: anonymous private
 * VMAs whose pages are faulted in on first use (get_user_pages), and the mm
 * operations that take pages away, which fire MMU-notifier invalidations in
 * the kernel's order (start -> clear PTEs -> end; mm.md section 6).
 *
 * This is the minimal provider of issue 3; the full host mm (host page
 * tables, folios, reclaim) grows behind the same methods.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, MmuNotifierSubscriptions, ULONG_MAX, mmuNotifierRangeInit, type MmuNotifierRange, type Program,
} from './mmu_notifier.js';
import { PageAllocator } from './page_alloc.js';

export const PAGE_SIZE = 4096;
const PMD_SIZE = 2 * 1024 * 1024;
const PUD_SIZE = 1024 * 1024 * 1024;

/** A host mapping's page size, as host_pfn_mapping_level reports it: 1 = 4K, 2 = 2M, 3 = 1G. */
export type HostLevel = 1 | 2 | 3;

export interface VmArea {
  readonly start: number;
  readonly end: number;
  /** Changed by mprotect. */
  writable: boolean;
  /** Page size backing the area (hugetlbfs-style when above 4K). */
  readonly level: HostLevel;
  /**
   * Host mappings by page index within the area: 0 when not present, else
   * pfn * 2 + the young bit (arithmetic: pfns exceed 32 bits; pfn 0 is never
   * handed out). Allocated on the first fault.
   */
  ptes: Float64Array | null;
}

/** Result of hva_to_pfn: a frame and whether the host mapping lets it be written. */
export type HvaToPfn = { ok: true; pfn: number; writable: boolean } | { ok: false; error: 'EFAULT' };

const YOUNG = 1;

function levelBytes(level: HostLevel): number {
  return level === 1 ? PAGE_SIZE : level === 2 ? PMD_SIZE : PUD_SIZE;
}

export class MmStruct {
  readonly notifiers: MmuNotifierSubscriptions;
  private readonly vmas: VmArea[] = [];
  /** Host page faults taken (first touches). */
  faults = 0;

  constructor(
    readonly mem: PhysMem,
    /** Frames for user memory and kernel allocations (page tables). */
    readonly pages: PageAllocator,
  ) {
    this.notifiers = new MmuNotifierSubscriptions({ cpu: mem });
  }

  /** mmap(MAP_ANONYMOUS|MAP_PRIVATE) at a fixed, aligned address. */
  mmap(start: number, length: number, opts: { writable?: boolean; level?: HostLevel } = {}): VmArea {
    const level = opts.level ?? 1;
    const align = levelBytes(level);
    if (start % align !== 0 || length % align !== 0 || length <= 0) {
      throw new RangeError(`mmap: 0x${start.toString(16)}+0x${length.toString(16)} is not aligned to the ${align / 1024}K page size`);
    }
    const end = start + length;
    if (this.vmas.some((v) => v.start < end && start < v.end)) throw new RangeError(`mmap: 0x${start.toString(16)}..0x${end.toString(16)} overlaps a mapping`);
    const vma: VmArea = { start, end, writable: opts.writable ?? true, level, ptes: null };
    this.vmas.push(vma);
    return vma;
  }

  findVma(hva: number): VmArea | null {
    for (const v of this.vmas) if (hva >= v.start && hva < v.end) return v;
    return null;
  }

  /**
   * hva_to_pfn through get_user_pages: fault the page in if absent. A write
   * to a read-only area fails; a read of it maps the page read-only.
   */
  hvaToPfn(hva: number, write: boolean): HvaToPfn {
    const vma = this.findVma(hva);
    if (vma === null || (write && !vma.writable)) return { ok: false, error: 'EFAULT' };
    const page = Math.floor((hva - vma.start) / PAGE_SIZE);
    let pte = vma.ptes === null ? 0 : vma.ptes[page];
    if (pte === 0) pte = this.fault(vma, hva);
    if (pte % 2 === 0) vma.ptes![page] = pte + YOUNG; // the access makes it young
    return { ok: true, pfn: Math.floor(pte / 2), writable: vma.writable };
  }

  /** Level of the host mapping of hva (host_pfn_mapping_level); 4K when unmapped. */
  hostMappingLevel(hva: number): HostLevel {
    const vma = this.findVma(hva);
    return vma === null || vma.ptes === null || vma.ptes[Math.floor((hva - vma.start) / PAGE_SIZE)] === 0 ? 1 : vma.level;
  }

  /** Frame mapped at hva, or null; no fault. */
  lookup(hva: number): number | null {
    const vma = this.findVma(hva);
    const pte = vma?.ptes?.[Math.floor((hva - vma.start) / PAGE_SIZE)] ?? 0;
    return pte === 0 ? null : Math.floor(pte / 2);
  }

  /** Maps the whole host page (4K, 2M or 1G) around hva; returns hva's PTE. */
  private fault(vma: VmArea, hva: number): number {
    this.faults++;
    const bytes = levelBytes(vma.level);
    const base = Math.floor((hva - vma.start) / bytes) * (bytes / PAGE_SIZE);
    const first = this.pages.allocPages(vma.level === 1 ? 0 : vma.level === 2 ? 9 : 18) / PAGE_SIZE;
    if (first === 0) throw new Error('assertion: pfn 0 handed out');
    const ptes = (vma.ptes ??= new Float64Array((vma.end - vma.start) / PAGE_SIZE));
    for (let i = 0; i < bytes / PAGE_SIZE; i++) ptes[base + i] = (first + i) * 2;
    return ptes[Math.floor((hva - vma.start) / PAGE_SIZE)];
  }

  /** madvise(MADV_DONTNEED): drop the pages of [start, start+length); event CLEAR. */
  *madviseDontneed(start: number, length: number): Program<void> {
    yield* this.zapRange(start, start + length, MmuNotifierEvent.Clear);
  }

  /** munmap: drop the pages and the areas; event UNMAP. */
  *munmap(start: number, length: number): Program<void> {
    const end = start + length;
    yield* this.zapRange(start, end, MmuNotifierEvent.Unmap);
    for (let i = this.vmas.length - 1; i >= 0; i--) {
      const v = this.vmas[i];
      if (v.start >= start && v.end <= end) this.vmas.splice(i, 1);
      else if (v.start < end && start < v.end) throw new RangeError('munmap: splitting an area is not modelled yet');
    }
  }

  /** The order of every PTE-changing path: invalidate_range_start, clear PTEs, end; then free the pages. */
  private *zapRange(start: number, end: number, event: MmuNotifierEvent): Program<void> {
    if (start % PAGE_SIZE !== 0 || end % PAGE_SIZE !== 0 || end <= start) throw new RangeError(`zap: 0x${start.toString(16)}..0x${end.toString(16)} not page aligned`);
    yield* this.zapPtes(mmuNotifierRangeInit(event, MMU_NOTIFIER_RANGE_BLOCKABLE, start, end));
  }

  private *zapPtes(range: MmuNotifierRange): Program<void> {
    const { start, end } = range;
    yield* this.notifiers.invalidateRangeStart(range);
    const freed: number[] = [];
    for (const vma of this.vmas) {
      const from = Math.max(start, vma.start);
      const to = Math.min(end, vma.end);
      const ptes = vma.ptes;
      if (ptes === null) continue;
      for (let p = (from - vma.start) / PAGE_SIZE; p < (to - vma.start) / PAGE_SIZE; p++) {
        const pte = ptes[p];
        if (pte === 0) continue;
        ptes[p] = 0;
        freed.push(Math.floor(pte / 2));
      }
    }
    yield* this.notifiers.invalidateRangeEnd(range);
    for (const pfn of freed) this.pages.freePage(pfn * PAGE_SIZE);
  }

  /**
   * exit_mmap: mmu_notifier_release first (hlist subscribers are released
   * and unhooked, intervals get RELEASE), then the UNMAP teardown of
   * everything, 0..ULONG_MAX, which only intervals still inserted see.
   */
  *exit(): Program<void> {
    yield* this.notifiers.release();
    if (this.vmas.length === 0) return;
    yield* this.zapPtes(mmuNotifierRangeInit(MmuNotifierEvent.Unmap, MMU_NOTIFIER_RANGE_BLOCKABLE, 0, ULONG_MAX));
    this.vmas.length = 0;
  }

  /**
   * mprotect of whole areas (change_protection): per area, one
   * PROTECTION_VMA pair, started lazily at the first populated 1G (PUD)
   * span and running to the end of the range; none when nothing is mapped.
   * Read-only PTEs are not stored: hva_to_pfn checks the area's protection.
   */
  *mprotect(start: number, length: number, prot: { writable: boolean }): Program<void> {
    const end = start + length;
    if (start % PAGE_SIZE !== 0 || length % PAGE_SIZE !== 0 || length <= 0) throw new RangeError(`mprotect: 0x${start.toString(16)}+0x${length.toString(16)} not page aligned`);
    const vmas = this.vmas.filter((v) => v.start < end && start < v.end).sort((a, b) => a.start - b.start);
    for (const vma of vmas) {
      if (vma.start < start || vma.end > end) throw new RangeError('mprotect: splitting an area is not modelled yet');
      vma.writable = prot.writable;
      const ptes = vma.ptes;
      const first = ptes === null ? -1 : ptes.findIndex((p) => p !== 0);
      if (first < 0) continue;
      const addr = vma.start + first * PAGE_SIZE;
      const from = Math.max(vma.start, addr - (addr % PUD_SIZE));
      const range = mmuNotifierRangeInit(MmuNotifierEvent.ProtectionVma, MMU_NOTIFIER_RANGE_BLOCKABLE, from, vma.end);
      yield* this.notifiers.invalidateRangeStart(range);
      yield* this.notifiers.invalidateRangeEnd(range);
    }
  }

  /** Test-and-clear the primary young bit and ask the secondary MMUs (ptep_clear_flush_young_notify). */
  *clearFlushYoungNotify(hva: number): Program<boolean> {
    const vma = this.findVma(hva);
    const key = vma === null ? 0 : Math.floor((hva - vma.start) / PAGE_SIZE);
    const pte = vma?.ptes?.[key] ?? 0;
    let young = pte !== 0 && pte % 2 === YOUNG;
    if (young) vma!.ptes![key] = pte - YOUNG;
    const page = Math.floor(hva / PAGE_SIZE) * PAGE_SIZE;
    if ((yield* this.notifiers.clearFlushYoung(page, page + PAGE_SIZE)) !== 0) young = true;
    return young;
  }
}
