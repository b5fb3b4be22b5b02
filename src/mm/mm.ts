/**
 * The VMM's address space (struct mm_struct): anonymous private VMAs backed
 * by folios mapped through x86-64 page tables in host memory (pgtable.ts),
 * host page faults (handle_mm_fault), get_user_pages for KVM, the host CPU
 * the VMM runs on (host_cpu.ts: the hardware walker sets A/D), and the mm
 * operations that take pages away, which fire MMU-notifier invalidations in
 * the kernel's order: start -> clear PTEs -> flush TLB -> end, then the
 * folios are freed (mm.md section 6).
 *
 * The VMA list follows mm/vma.c where it is observable: munmap, mprotect
 * and mremap of part of an area split it (__split_vma), and pieces of one
 * anon_vma with the same flags and contiguous vm_pgoff merge back
 * (vma_merge). Arguments are checked before anything changes; a bad one is
 * an MmError carrying the errno the syscall returns.
 *
 * Not modelled (yet): the shared zero page (an anonymous read fault maps a
 * fresh folio, as with mm_forbids_zeropage), THP splitting (a partial zap
 * or split of a huge mapping is refused), merging of a new mmap with its
 * neighbours (every mmap is its own area with its own anon_vma), per-CPU
 * LRU-add batches.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import { Outcome } from '../hw/result.js';
import { runProgram } from '../hw/sched.js';
import { LruList, PG_anon, PG_dirty, PG_ksm, PG_swapbacked, PG_uptodate, type FolioTable } from './folio.js';
import { HostCpu } from './host_cpu.js';
import {
  MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, MmuNotifierSubscriptions, ULONG_MAX, mmuNotifierRangeInit, type MmuNotifierRange, type Program,
} from './mmu_notifier.js';
import { PageAllocator } from './page_alloc.js';
import {
  HostPageTable, PMD_SIZE, TASK_SIZE, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_NX_HI, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_SOFT_DIRTY,
  _PAGE_USER, entryAddr, levelSpan, pfnHi, pfnLo, type LeafVisitor,
} from './pgtable.js';

export const PAGE_SIZE = 4096;

/** A host mapping's page size, as host_pfn_mapping_level reports it: 1 = 4K, 2 = 2M, 3 = 1G. */
export type HostLevel = 1 | 2 | 3;

export interface VmArea {
  readonly mm: MmStruct;
  /** vm_start, vm_end: changed when the area is split, merged or grown. */
  start: number;
  end: number;
  /**
   * vm_pgoff in 4K pages: folio->index of the page at `start`. It counts
   * from 0 at mmap (the kernel starts anonymous areas at addr >> PAGE_SHIFT;
   * only differences matter here), and a piece split off or moved by mremap
   * keeps its pages' indexes, so the rmap still finds them (vma_address).
   */
  pgoff: number;
  /** VM_WRITE; changed by mprotect. */
  writable: boolean;
  /** Page size of the folios backing the area (2M mapped as THP PMDs, 1G as PUD leaves). */
  readonly level: HostLevel;
  /** The area's anon_vma: folio->mapping of its folios (an id in the FolioTable), shared by the pieces of one mmap. */
  readonly anonVma: number;
  /** Data tokens: the last token written per page of the area (0: zero-filled or discarded); null until the first write. */
  tokens: Uint32Array | null;
  /** vm_flags bits beyond VM_WRITE that reclaim reads (VM_LOCKED, VM_EXEC, VM_SEQ_READ, VM_RAND_READ); 0 for none. */
  vmFlags: number;
  /**
   * vma->anon_vma is set (anon_vma_prepare ran: a page was faulted in once).
   * The model registers the anon_vma at mmap, but fork copies the page
   * tables only of areas where the kernel's would exist (vma_needs_copy).
   */
  hasAnonVma: boolean;
  /**
   * The anon_vma_chain beyond `anonVma` (anon_vma_fork): the anon_vmas of
   * the areas this one was forked from, oldest first. The area is on each
   * of their lists too, so the rmap of a folio its parent faulted in finds
   * it.
   */
  anonChain?: readonly number[];
}

/**
 * vm_flags and the anon_vma state of a new area. They are set at creation
 * (not added at the first fault) so that every area has one shape, and code
 * V8 optimized for one VM's areas is not deoptimized by the next VM's.
 */
export const VMA_EXTRAS_NONE = { vmFlags: 0, hasAnonVma: false } as const;

/**
 * An anon_vma with its anon_vma_chain: every area whose folios it may map.
 * Without fork the areas' pgoff ranges never overlap and a folio has at most
 * one area; after fork (fork.ts) the child's areas are on the parent's
 * anon_vma too, so one index can be covered by an area of each mm.
 */
export interface AnonVma {
  readonly id: number;
  readonly vmas: VmArea[];
}

/** An mm system call's failure: the errno it returns; nothing was changed. */
export class MmError extends RangeError {
  constructor(
    readonly errno: 'EINVAL' | 'ENOMEM' | 'EFAULT',
    message: string,
  ) {
    super(message);
    this.name = 'MmError';
  }
}

/** Pages (4K) in an area. */
export function vmaPages(v: VmArea): number {
  return (v.end - v.start) / PAGE_SIZE;
}

/** vma_address: where the page with folio->index `index` sits in the area. */
export function vmaAddress(vma: VmArea, index: number): number {
  return vma.start + (index - vma.pgoff) * PAGE_SIZE;
}

/**
 * rmap_walk_anon's VMA list for one folio: every area on its anon_vma
 * whose pgoff range holds folio->index (anon_vma_interval_tree_foreach),
 * in chain order (the parent's before its forked children's); empty with
 * no anon_vma. A KSM folio (PG_ksm) has a stable node, not an anon_vma,
 * and its sharers are not walked here (rmap_walk_ksm is not modelled):
 * empty. Whether an area's PTE really maps the folio is the caller's
 * check (page_vma_mapped_walk).
 */
export function folioVmas(folios: FolioTable, head: number): VmArea[] {
  const i = folios.idx(head);
  if ((folios.flags[i] & PG_ksm) !== 0) return [];
  const av = folios.mappings[folios.mapping[i]] as AnonVma | null | undefined;
  if (av === null || av === undefined) return [];
  const index = folios.index[i];
  const out: VmArea[] = [];
  for (const v of av.vmas) if (index >= v.pgoff && index < v.pgoff + vmaPages(v)) out.push(v);
  return out;
}

/** The area of `mm` among folioVmas (an mm has at most one covering a folio's index), or null; allocates nothing. */
export function folioVmaOf(folios: FolioTable, head: number, mm: MmStruct): VmArea | null {
  const i = folios.idx(head);
  if ((folios.flags[i] & PG_ksm) !== 0) return null;
  const av = folios.mappings[folios.mapping[i]] as AnonVma | null | undefined;
  if (av === null || av === undefined) return null;
  const index = folios.index[i];
  const vmas = av.vmas;
  for (let k = 0; k < vmas.length; k++) {
    const v = vmas[k];
    if (v.mm === mm && index >= v.pgoff && index < v.pgoff + vmaPages(v)) return v;
  }
  return null;
}

/** Whether the area's entry at the folio's address maps a page of the folio (page_vma_mapped_walk's check; walks vma.mm.pt). */
export function vmaMapsFolio(folios: FolioTable, vma: VmArea, head: number): boolean {
  const pfn = vma.mm.lookup(vmaAddress(vma, folios.index[folios.idx(head)]));
  return pfn !== null && folios.folioOf(pfn) === head;
}

/**
 * The one area a folio belongs to, for the paths that handle a folio with
 * a single mapping (reclaim's eviction, migration, MADV_FREE, the data
 * tokens): the area of folioVmas when there is one; after fork, when the
 * index is covered in several mms, the one whose PTE maps the folio, and
 * null when several do (a folio shared by parent and child: those paths
 * keep it) or none does. Null for a KSM folio or one with no anon_vma.
 */
export function folioVma(folios: FolioTable, head: number): VmArea | null {
  const vmas = folioVmas(folios, head);
  if (vmas.length <= 1) return vmas[0] ?? null;
  let found: VmArea | null = null;
  for (const v of vmas) {
    if (!vmaMapsFolio(folios, v, head)) continue;
    if (found !== null) return null;
    found = v;
  }
  return found;
}

/** vm_flags bits (include/linux/mm.h values) that reference collection looks at. */
export const VM_EXEC = 0x4;
export const VM_SEQ_READ = 0x8000;
export const VM_RAND_READ = 0x10000;
export const VM_LOCKED = 0x2000;

/** Result of hva_to_pfn: a frame and whether the host mapping lets it be written. */
export type HvaToPfn = { ok: true; pfn: number; writable: boolean } | { ok: false; error: 'EFAULT' };

/** What the swap layer (issue 4 item 5) plugs in: swap entries in PTEs are its. */
export interface SwapHooks {
  /** do_swap_page: bring the entry at `entry` (hpa of the PTE) back; true when a present PTE is installed. */
  swapIn(mm: MmStruct, vma: VmArea, hva: number, entry: number, lo: number, hi: number, write?: boolean): boolean;
  /** free_swap_and_cache: a zap dropped a swap entry. */
  free(lo: number, hi: number): void;
  /** Content token of the swapped-out page (for the integrity check). */
  token(lo: number, hi: number): number;
  /** folio_free_swap: drop a cached folio's slot when no swap PTE names it (MADV_FREE uses it); false if still in use. */
  freeSwap?(head: number): boolean;
  /** swap_duplicate: fork copies the swap entry lo:hi into the child (one more swap PTE names its slot). */
  duplicatePte?(lo: number, hi: number): void;
}

/** One mismatch of checkIntegrity: what the page should hold and what a read would return. */
export interface TokenMismatch {
  hva: number;
  expected: number;
  found: number;
}

const EFAULT: HvaToPfn = Object.freeze({ ok: false, error: 'EFAULT' }) as HvaToPfn;
/** Leaf flags of an anonymous folio's mapping: vm_page_prot (PAGE_COPY: P, USER, A, NX) + pte_mkwrite(pte_mkdirty()) when VM_WRITE. */
const LEAF_RO = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED;
const LEAF_RW = LEAF_RO | _PAGE_RW | _PAGE_DIRTY | _PAGE_SOFT_DIRTY;

/** 1 / PAGE_SIZE: a power of two, so multiplying by it is exact (and cheaper than dividing). */
const INV_PAGE_SIZE = 1 / PAGE_SIZE;

/** The frame number in an entry (bits 51:12), as entryAddr / PAGE_SIZE without the division. */
function leafBasePfn(lo: number, hi: number): number {
  return (hi & 0xfffff) * 1048576 + (lo >>> 12);
}

/** Buddy order of a host level's folios (alloc_pages for PAGE_SIZE, HPAGE_PMD_ORDER, HPAGE_PUD_ORDER). */
function levelOrder(level: HostLevel): number {
  return level === 1 ? 0 : level === 2 ? 9 : 18;
}

function levelBytes(level: HostLevel): number {
  return levelSpan(level);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** What a piece of an area keeps besides its range (__split_vma, copy_vma): vm_flags, the anon_vma state and chain. */
function copyVmaExtras(from: VmArea, to: VmArea): void {
  to.vmFlags = from.vmFlags;
  to.hasAnonVma = from.hasAnonVma;
  if (from.anonChain !== undefined) to.anonChain = from.anonChain;
}

/** Where top-down get_unmapped_area starts (mm->mmap_base); the KVM model maps guest memory at and above it. */
export const MMAP_BASE = 0x7f00_0000_0000;
/** vm.mmap_min_addr's default: nothing is mapped below 64K. */
export const MMAP_MIN_ADDR = 0x10000;

export class MmStruct {
  readonly notifiers: MmuNotifierSubscriptions;
  readonly pt: HostPageTable;
  readonly cpu: HostCpu;
  readonly folios: FolioTable;
  private readonly vmas: VmArea[] = [];
  /** handle_mm_fault calls (host page faults: first touches, write-protect and access-flag faults). */
  faults = 0;
  /** #PFs the host CPU took on VMM accesses. */
  cpuFaults = 0;
  /** The swap layer, once there is one. */
  swap: SwapHooks | null = null;
  /** MGLRU's lru_gen_add_folio for new anon folios (src/mm/mglru.ts), in place of the classic inactive list; null = classic. */
  lruAddNew: ((pfn: number, vma: VmArea, addr: number) => void) | null = null;
  /** hva_to_pfn's result, reused: valid until the next call. */
  private readonly gup = { ok: true as const, pfn: 0, writable: false };

  constructor(
    readonly mem: PhysMem,
    /** Frames for user memory and kernel allocations (page tables). */
    readonly pages: PageAllocator,
  ) {
    this.notifiers = new MmuNotifierSubscriptions({ cpu: mem });
    this.pt = new HostPageTable(mem, pages);
    this.cpu = new HostCpu(mem, this.pt.pgd);
    this.folios = pages.folios;
  }

  /** mmap(MAP_ANONYMOUS|MAP_PRIVATE) at a fixed, aligned address: a new area with its own anon_vma. */
  mmap(start: number, length: number, opts: { writable?: boolean; level?: HostLevel } = {}): VmArea {
    const level = opts.level ?? 1;
    const align = levelBytes(level);
    if (start % align !== 0 || length % align !== 0 || length <= 0) {
      throw new RangeError(`mmap: 0x${start.toString(16)}+0x${length.toString(16)} is not aligned to the ${align / 1024}K page size`);
    }
    const end = start + length;
    if (end > TASK_SIZE) throw new RangeError(`mmap: 0x${end.toString(16)} is beyond TASK_SIZE`);
    if (this.vmas.some((v) => v.start < end && start < v.end)) throw new RangeError(`mmap: 0x${start.toString(16)}..0x${end.toString(16)} overlaps a mapping`);
    const av: AnonVma = { id: 0, vmas: [] };
    (av as { id: number }).id = this.folios.registerMapping(av);
    const vma: VmArea = { mm: this, start, end, pgoff: 0, writable: opts.writable ?? true, level, anonVma: av.id, tokens: null, ...VMA_EXTRAS_NONE };
    this.insertVma(vma);
    return vma;
  }

  /** The VMAs in address order (the maple tree's order), for page-table walkers (MGLRU's walk_mm iterates them). */
  get areas(): readonly VmArea[] {
    return this.vmas;
  }

  findVma(hva: number): VmArea | null {
    for (const v of this.vmas) if (hva >= v.start && hva < v.end) return v;
    return null;
  }

  /** The areas overlapping [start, end), in address order (find_vma_intersection and its successors). */
  vmasIn(start: number, end: number): VmArea[] {
    return this.vmas.filter((v) => v.start < end && start < v.end);
  }

  // ------------------------------------------------------------ the VMA list (mm/vma.c)

  private anonVmaOf(v: VmArea): AnonVma {
    return this.folios.mappings[v.anonVma] as AnonVma;
  }

  /** The anon_vmas whose lists hold the area (its anon_vma_chain): the forked-from ones, then its own. */
  private chainOf(v: VmArea): AnonVma[] {
    const own = this.anonVmaOf(v);
    return v.anonChain === undefined ? [own] : [...v.anonChain.map((id) => this.folios.mappings[id] as AnonVma), own];
  }

  /**
   * Links an area into the list (kept sorted) and into every anon_vma of
   * its chain (anon_vma_chain_link). fork.ts links the child's areas here.
   */
  insertVma(v: VmArea): void {
    if (v.mm !== this) throw new Error('assertion: linking another mm\'s area');
    let i = 0;
    while (i < this.vmas.length && this.vmas[i].start < v.start) i++;
    this.vmas.splice(i, 0, v);
    for (const av of this.chainOf(v)) av.vmas.push(v);
  }

  /** Unlinks an area from the list and from every anon_vma of its chain (unlink_anon_vmas). */
  private removeVma(v: VmArea): void {
    this.vmas.splice(this.vmas.indexOf(v), 1);
    for (const av of this.chainOf(v)) av.vmas.splice(av.vmas.indexOf(v), 1);
  }

  /**
   * Checks a syscall's start and length (PAGE_ALIGN'd as the kernel does):
   * EINVAL for an unaligned start or a range beyond TASK_SIZE; returns the end.
   */
  checkRange(op: string, start: number, length: number): number {
    if (start % PAGE_SIZE !== 0) throw new MmError('EINVAL', `${op}: EINVAL: start ${hex(start)} is not page aligned`);
    const end = start + Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
    if (length < 0 || end > TASK_SIZE) throw new MmError('EINVAL', `${op}: EINVAL: ${hex(start)}+${hex(length)} is beyond TASK_SIZE`);
    return end;
  }

  /** The areas covering [start, end) with no hole, else ENOMEM (madvise's and mprotect's unmapped_error). */
  requireMapped(op: string, start: number, end: number): VmArea[] {
    const vmas = this.vmasIn(start, end);
    let at = start;
    for (const v of vmas) {
      if (v.start > at) break;
      at = v.end;
    }
    if (at < end) throw new MmError('ENOMEM', `${op}: ENOMEM: ${hex(Math.max(at, start))} in ${hex(start)}..${hex(end)} is not mapped`);
    return vmas;
  }

  /** Whether __split_vma could cut at addr (it can: except inside a huge page, whose split is not modelled). */
  private checkSplitAt(op: string, addr: number): void {
    const v = this.findVma(addr);
    if (v === null || v.start === addr) return;
    if (addr % levelBytes(v.level) !== 0) {
      throw new MmError('EINVAL', `${op}: EINVAL: ${hex(addr)} is inside a ${levelBytes(v.level) / 1024}K page of the area ${hex(v.start)}..${hex(v.end)} (splitting huge pages is not modelled)`);
    }
  }

  /**
   * __split_vma (new_below = 0): the area keeps [start, addr) and a new area
   * takes [addr, end) with the same flags and anon_vma and the vm_pgoff of
   * addr, so folios keep their index; the data tokens are split with it.
   * Returns the new upper area. The caller checked addr (checkSplitAt).
   */
  splitVma(vma: VmArea, addr: number): VmArea {
    if (addr <= vma.start || addr >= vma.end || addr % levelBytes(vma.level) !== 0) throw new Error(`assertion: splitting ${hex(vma.start)}..${hex(vma.end)} at ${hex(addr)}`);
    const k = (addr - vma.start) / PAGE_SIZE;
    const upper: VmArea = {
      mm: this, start: addr, end: vma.end, pgoff: vma.pgoff + k, writable: vma.writable, level: vma.level, anonVma: vma.anonVma,
      tokens: vma.tokens === null ? null : vma.tokens.slice(k), ...VMA_EXTRAS_NONE,
    };
    copyVmaExtras(vma, upper);
    vma.tokens = vma.tokens === null ? null : vma.tokens.slice(0, k);
    vma.end = addr;
    this.insertVma(upper);
    return upper;
  }

  /** is_mergeable_vma + is_mergeable_anon_vma + contiguous vm_pgoff: b may be folded into a, its left neighbour. */
  private canMerge(a: VmArea, b: VmArea): boolean {
    return a.end === b.start && a.writable === b.writable && a.vmFlags === b.vmFlags && a.level === b.level &&
      a.anonVma === b.anonVma && a.pgoff + vmaPages(a) === b.pgoff && a.anonChain === b.anonChain;
  }

  /** a takes over b's range and tokens (vma_expand + the removal of b). */
  private absorb(a: VmArea, b: VmArea): void {
    if (a.tokens !== null || b.tokens !== null) {
      const t = new Uint32Array(vmaPages(a) + vmaPages(b));
      if (a.tokens !== null) t.set(a.tokens);
      if (b.tokens !== null) t.set(b.tokens, vmaPages(a));
      a.tokens = t;
    }
    a.end = b.end;
    if (b.hasAnonVma === true) a.hasAnonVma = true;
    this.removeVma(b);
  }

  /**
   * vma_merge (vma_merge_existing_range / vma_merge_new_range): the area is
   * folded into its left neighbour, and its right neighbour into it, where
   * canMerge allows. Returns the area that now holds its range.
   */
  mergeVma(vma: VmArea): VmArea {
    const i = this.vmas.indexOf(vma);
    const prev = i > 0 ? this.vmas[i - 1] : null;
    if (prev !== null && this.canMerge(prev, vma)) {
      this.absorb(prev, vma);
      vma = prev;
    }
    const next = this.vmas[this.vmas.indexOf(vma) + 1];
    if (next !== undefined && this.canMerge(vma, next)) this.absorb(vma, next);
    return vma;
  }

  /** Splits areas so that no area crosses start or end (the caller checked both with checkSplitAt). */
  private splitAround(start: number, end: number): void {
    for (const addr of [start, end]) {
      const v = this.findVma(addr);
      if (v !== null && v.start !== addr) this.splitVma(v, addr);
    }
  }

  /**
   * vma_expand for mremap growing in place: the area ends at newEnd now
   * (the caller checked that nothing is mapped there), then merges with its
   * right neighbour if it can.
   */
  expandVma(vma: VmArea, newEnd: number): VmArea {
    if (vma.tokens !== null) {
      const t = new Uint32Array((newEnd - vma.start) / PAGE_SIZE);
      t.set(vma.tokens);
      vma.tokens = t;
    }
    vma.end = newEnd;
    return this.mergeVma(vma);
  }

  /**
   * copy_vma for mremap's move: a new area [newStart, newStart+length) with
   * vma's flags and anon_vma and vm_pgoff `pgoff` (the moved pages keep
   * folio->index), merged with a neighbour at the new place where it can
   * (vma_merge_new_range). The data tokens of the moved pages go along;
   * pages beyond what moves read as zeroes. The caller checked that the
   * new range is free.
   */
  copyVma(vma: VmArea, oldStart: number, moveLength: number, newStart: number, length: number): VmArea {
    const neu: VmArea = { mm: this, start: newStart, end: newStart + length, pgoff: vma.pgoff + (oldStart - vma.start) / PAGE_SIZE, writable: vma.writable, level: vma.level, anonVma: vma.anonVma, tokens: null, ...VMA_EXTRAS_NONE };
    copyVmaExtras(vma, neu);
    if (vma.tokens !== null) {
      const from = (oldStart - vma.start) / PAGE_SIZE;
      neu.tokens = new Uint32Array(length / PAGE_SIZE);
      neu.tokens.set(vma.tokens.subarray(from, from + moveLength / PAGE_SIZE));
    }
    this.insertVma(neu);
    return this.mergeVma(neu);
  }

  /**
   * get_unmapped_area, top down (arch_get_unmapped_area_topdown): the
   * highest free range of `length` bytes, aligned to `align`, below
   * MMAP_BASE and at or above mmap_min_addr; -1 when none.
   */
  getUnmappedArea(length: number, align: number): number {
    let hi = MMAP_BASE;
    for (let i = this.vmas.length - 1; i >= -1; i--) {
      const v = i >= 0 ? this.vmas[i] : null;
      if (v !== null && v.start >= hi) continue; // above the search
      const lo = Math.max(v === null ? 0 : v.end, MMAP_MIN_ADDR);
      const at = Math.floor((hi - length) / align) * align;
      if (at >= lo) return at;
      if (v === null) break;
      hi = v.start;
    }
    return -1;
  }

  // ------------------------------------------------------------ faults and lookups

  /**
   * hva_to_pfn: get_user_pages, not a CPU access. First hva_to_pfn_fast
   * (get_user_page_fast_only with FOLL_WRITE, since KVM may map a read fault
   * writable): a lockless software walk that takes a present, writable leaf
   * as it is, touching no A/D bit. Otherwise hva_to_pfn_slow: GUP proper,
   * faulting through handle_mm_fault, which installs the PTE with A (and D
   * when writable) set. The GUP reference and KVM's release of it cancel
   * out, so refcounts do not move. The result object is reused.
   */
  hvaToPfn(hva: number, write: boolean): HvaToPfn {
    const pt = this.pt;
    pt.walk(hva);
    if ((pt.lo & (_PAGE_PRESENT | _PAGE_RW)) === (_PAGE_PRESENT | _PAGE_RW)) {
      const r = this.gup;
      r.pfn = this.leafPfn(hva);
      r.writable = true;
      return r;
    }
    return this.hvaToPfnSlow(hva, write);
  }

  /** hva_to_pfn_slow: __get_user_pages (follow_page_mask, else faultin_page and retry), then the writable probe. */
  private hvaToPfnSlow(hva: number, write: boolean): HvaToPfn {
    const vma = this.findVma(hva);
    if (vma === null || (write && !vma.writable)) return EFAULT; // check_vma_flags
    const pt = this.pt; // still holds the walk of hva that the fast path made
    for (let n = 0; ; n++) {
      if (n > 3) throw new Error('assertion: get_user_pages looping on a fault');
      const lo = pt.lo;
      if ((lo & _PAGE_PRESENT) !== 0 && (!write || (lo & _PAGE_RW) !== 0)) {
        // follow_page_pte with FOLL_TOUCH: an old PTE marks the folio accessed (not the PTE young).
        if (n === 0 && (lo & _PAGE_ACCESSED) === 0) this.folioMarkAccessed(this.leafPfn(hva));
        const r = this.gup;
        r.pfn = this.leafPfn(hva);
        r.writable = (lo & _PAGE_RW) !== 0; // a read fault maps writable if get_user_page_fast_only(FOLL_WRITE) would succeed
        return r;
      }
      this.faults++;
      if (!this.faultIn(vma, hva, write)) return EFAULT;
    }
  }

  /** pfn of the 4K page at hva under the leaf the last walk found. */
  private leafPfn(hva: number): number {
    const pt = this.pt;
    const base = leafBasePfn(pt.lo, pt.hi);
    const level = pt.level;
    return level === 1 ? base : base + ((hva * INV_PAGE_SIZE) & (level === 2 ? 511 : 262143));
  }

  /**
   * Level of the host mapping of hva (host_pfn_mapping_level: a lockless
   * walk that reads down to the PMD, never the PTE); 4K when unmapped.
   */
  hostMappingLevel(hva: number): HostLevel {
    const pt = this.pt;
    const level = pt.walk(hva, 2);
    if (!pt.present) return 1;
    return level === 3 || (pt.lo & _PAGE_PSE) !== 0 ? (level as HostLevel) : 1;
  }

  /** Frame mapped at hva, or null; no fault, no A/D change. */
  lookup(hva: number): number | null {
    this.pt.walk(hva);
    return this.pt.present ? this.leafPfn(hva) : null;
  }

  /** The host PTE (or huge leaf) mapping hva, as a 64-bit value; 0n when none. For tests and dumps. */
  pte(hva: number): bigint {
    this.pt.walk(hva);
    return (BigInt(this.pt.hi >>> 0) << 32n) | BigInt(this.pt.lo >>> 0);
  }

  /**
   * A VMM load or store of one byte at hva on the host CPU: the hardware
   * walk sets A (and D for a store); a #PF goes to the fault handler
   * (do_user_addr_fault -> handle_mm_fault) and the access is retried.
   * Returns the host physical address, or -1 for SIGSEGV.
   */
  access(hva: number, write: boolean): number {
    for (let n = 0; ; n++) {
      if (n > 3) throw new Error('assertion: host access looping on a fault');
      const r = this.cpu.access(hva, write);
      if (r.outcome === Outcome.Ok) return r.hpa;
      if (r.outcome !== Outcome.Pf) throw new Error(`assertion: host access ended in outcome ${r.outcome}`);
      this.cpuFaults++;
      const vma = this.findVma(hva);
      if (vma === null || (write && !vma.writable) || !this.handleMmFault(vma, hva, write)) return -1;
    }
  }

  /**
   * handle_mm_fault for an anonymous area (the caller checked the VMA's
   * permission): a none entry gets a new folio (do_anonymous_page,
   * do_huge_pmd_anonymous_page); a write to a read-only present one reuses
   * the exclusive folio (do_wp_page -> wp_page_reuse); otherwise the entry
   * is made young, and dirty for a write (handle_pte_fault's access-flag
   * path). False when the fault cannot be handled (VM_FAULT_SIGSEGV).
   */
  handleMmFault(vma: VmArea, hva: number, write: boolean): boolean {
    this.faults++;
    this.pt.walk(hva);
    return this.faultIn(vma, hva, write);
  }

  /** handle_mm_fault's work, given the walk of hva in `pt`; leaves the entry as it is now in `pt`. */
  private faultIn(vma: VmArea, hva: number, write: boolean): boolean {
    const mem = this.mem;
    const preempt = mem.preempt;
    mem.preempt = null; // page table lock held, preemption off: no interleaving inside
    try {
      const pt = this.pt;
      const level = pt.level;
      const lo = pt.lo;
      if ((lo & _PAGE_PRESENT) !== 0) {
        if (level !== vma.level) throw new Error(`assertion: level-${level} leaf in a level-${vma.level} area`);
        if (write && (lo & _PAGE_RW) === 0) {
          if (!vma.writable) return false;
          // do_wp_page: a shared folio is copied (below, outside the PTE lock); an exclusive one is reused.
          if (this.wpMustCopy(this.leafPfn(hva))) {
            mem.preempt = preempt; // wp_page_copy drops the PTE lock to allocate and to notify
            return this.runAtomic('COW break (wp_page_copy)', this.wpPageCopy(vma, hva));
          }
          // wp_page_reuse: the same folio, made writable, young and dirty in place; no notifier.
          mem.or64(pt.entry, _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_SOFT_DIRTY, 0);
        } else {
          mem.or64(pt.entry, _PAGE_ACCESSED | (write ? _PAGE_DIRTY | _PAGE_SOFT_DIRTY : 0), 0);
        }
        pt.lo = mem.lo | _PAGE_ACCESSED | (write ? _PAGE_RW | _PAGE_DIRTY | _PAGE_SOFT_DIRTY : 0);
        return true;
      }
      if (lo !== 0 || pt.hi !== 0) {
        if (level !== 1 || this.swap === null) throw new Error('assertion: a swap entry with no swap layer');
        const ok = this.swap.swapIn(this, vma, hva, pt.entry, lo, pt.hi, write);
        pt.walk(hva);
        return ok;
      }
      this.doAnonymousPage(vma, hva, level === vma.level ? pt.entry : pt.entryFor(hva, vma.level));
      return true;
    } finally {
      mem.preempt = preempt;
    }
  }

  /**
   * do_wp_page's choice for a write fault on a present read-only PTE in a
   * writable area: copy when the folio is KSM (folio_test_ksm: never
   * reused) or mapped more than once (wp_can_reuse_anon_folio fails on the
   * extra references); otherwise wp_page_reuse. The model has no GUP pins,
   * so an exclusive folio's refcount never stands in the way.
   */
  private wpMustCopy(pfn: number): boolean {
    const f = this.folios;
    const head = f.folioOf(pfn);
    const i = f.idx(head);
    if ((f.flags[i] & PG_ksm) === 0 && f.mapcount[i] <= 1) return false;
    if (f.order(head) !== 0) throw new Error('assertion: COW of a large folio (THP split is not modelled)');
    return true;
  }

  /**
   * Runs an mm program that fires notifiers from a synchronous path (a
   * fault: GUP or the host CPU). Outside a scheduler a program runs
   * straight through; under the seeded scheduler it could spin on a lock
   * the preempted holder never releases, so that is refused.
   */
  private runAtomic<T>(what: string, program: Program<T>): T {
    if (this.mem.yields || this.mem.preempt !== null) throw new Error(`${what} under the seeded scheduler is not modelled`);
    return runProgram(program);
  }

  /** COW breaks: wp_page_copy runs that installed a copy. */
  cowCopies = 0;

  /**
   * wp_page_copy for a 4K page: allocate a new folio and copy the old
   * page's content (its token) before the notifier, then a CLEAR
   * invalidation over the one page (mm.md section 6: "COW fault
   * (wp_page_copy): CLEAR, one page"): invalidate_range_start, under the
   * PTE lock the new folio is made exclusive anon (folio_add_new_anon_rmap)
   * and put on the LRU, the old PTE cleared and flushed (ptep_clear_flush),
   * the new one installed writable, young and dirty (maybe_mkwrite,
   * pte_mkdirty), the old mapping dropped (folio_remove_rmap_pte);
   * invalidate_range_end; then the old folio's reference is put, freeing it
   * on the last. Leaves the new entry in `pt`.
   */
  private *wpPageCopy(vma: VmArea, hva: number): Program<boolean> {
    const addr = Math.floor(hva / PAGE_SIZE) * PAGE_SIZE;
    const f = this.folios;
    const mem = this.mem;
    const pt = this.pt;
    pt.walk(addr);
    const orig = { lo: pt.lo, hi: pt.hi };
    const oldPfn = this.leafPfn(addr);
    const old = f.folioOf(oldPfn);
    const pfn = this.pages.allocPage() / PAGE_SIZE;
    const i = f.idx(pfn);
    f.token[i] = f.token[f.idx(oldPfn)]; // __wp_page_copy_user
    const range = mmuNotifierRangeInit(MmuNotifierEvent.Clear, MMU_NOTIFIER_RANGE_BLOCKABLE, addr, addr + PAGE_SIZE);
    yield* this.notifiers.invalidateRangeStart(range);
    pt.walk(addr);
    if (pt.lo !== orig.lo || pt.hi !== orig.hi) {
      // !pte_same: someone changed the entry meanwhile; drop the copy, the fault is retried.
      yield* this.notifiers.invalidateRangeEnd(range);
      this.putFolio(pfn);
      pt.walk(hva);
      return true;
    }
    const entry = pt.entry;
    this.addNewAnonFolio(vma, pfn, addr);
    mem.xchg64(entry, 0, 0); // ptep_clear_flush
    this.cpu.flushAll();
    this.notifiers.archInvalidateSecondaryTlbs(addr, addr + PAGE_SIZE);
    mem.store64(entry, pfnLo(pfn, LEAF_RW), pfnHi(pfn) | _PAGE_NX_HI);
    f.mapcount[f.idx(old)]--; // folio_remove_rmap_pte
    this.cowCopies++;
    yield* this.notifiers.invalidateRangeEnd(range);
    this.putFolio(old);
    pt.walk(hva);
    return true;
  }

  /**
   * anon_vma_prepare + folio_add_new_anon_rmap + folio_add_lru_vma for a
   * folio just allocated to map `addr` in `vma`: exclusive anon, mapped once
   * (the allocation's reference is the mapping's), on the LRU (new anon
   * folios start inactive).
   */
  private addNewAnonFolio(vma: VmArea, pfn: number, addr: number): void {
    const f = this.folios;
    const i = f.idx(pfn);
    vma.hasAnonVma = true;
    f.flags[i] |= PG_anon | PG_swapbacked | PG_uptodate;
    f.mapping[i] = vma.anonVma;
    f.index[i] = vma.pgoff + (addr - vma.start) * INV_PAGE_SIZE;
    f.mapcount[i] = 1;
    if (this.lruAddNew !== null) this.lruAddNew(pfn, vma, addr);
    else f.lruAdd(pfn, LruList.InactiveAnon);
  }

  /** do_anonymous_page / do_huge_pmd_anonymous_page: a new folio, on the LRU, mapped by the entry at `entry`. */
  private doAnonymousPage(vma: VmArea, hva: number, entry: number): void {
    const level = vma.level;
    // Round down to the folio: ToInt32 keeps the low 30 bits of any integer below 2^53, and spans are at most 2^30.
    const addr = hva - (hva & (levelBytes(level) - 1));
    const pfn = this.pages.allocPages(levelOrder(level)) * INV_PAGE_SIZE;
    this.addNewAnonFolio(vma, pfn, addr);
    const flags = (vma.writable ? LEAF_RW : LEAF_RO) | (level === 1 ? 0 : _PAGE_PSE);
    const lo = pfnLo(pfn, flags);
    const hi = pfnHi(pfn) | _PAGE_NX_HI;
    this.mem.store64(entry, lo, hi);
    const pt = this.pt; // what a walk would now find
    pt.entry = entry;
    pt.level = vma.level;
    pt.lo = lo;
    pt.hi = hi;
  }

  /** folio_mark_accessed (classic LRU): referenced, then active on the second call; clears idle. */
  private folioMarkAccessed(pfn: number): void {
    this.folios.markAccessed(this.folios.folioOf(pfn));
  }

  // ------------------------------------------------------------ zapping

  /**
   * madvise(MADV_DONTNEED) (madvise_walk_vmas -> madvise_dontneed_single_vma):
   * per area met, one CLEAR pair over the part of [start, start+length)
   * inside it, its pages dropped. The areas stay as they are (no split).
   * EINVAL for an unaligned start; ENOMEM when part of the range is not
   * mapped (the kernel then still zaps the mapped parts; here nothing
   * changes).
   */
  *madviseDontneed(start: number, length: number): Program<void> {
    const end = this.checkRange('madvise', start, length);
    if (end === start) return;
    const vmas = this.requireMapped('madvise', start, end);
    for (const v of vmas) this.checkZap('madvise', Math.max(start, v.start), Math.min(end, v.end));
    for (const v of vmas) yield* this.zapRange(Math.max(start, v.start), Math.min(end, v.end), MmuNotifierEvent.Clear);
  }

  /**
   * munmap (do_vmi_munmap): the areas crossing start or end are split
   * (__split_vma), then one UNMAP pair over the whole range drops the pages
   * (unmap_vmas), the areas inside go, and the page tables only they used
   * are freed (free_pgtables). Holes are fine; a range with nothing mapped
   * does nothing. EINVAL for an unaligned start, a zero length or a range
   * beyond TASK_SIZE.
   */
  *munmap(start: number, length: number): Program<void> {
    const end = this.checkRange('munmap', start, length);
    if (end === start) throw new MmError('EINVAL', `munmap: EINVAL: length 0`);
    if (this.vmasIn(start, end).length === 0) return;
    this.checkSplitAt('munmap', start);
    this.checkSplitAt('munmap', end);
    this.splitAround(start, end);
    yield* this.zapRange(start, end, MmuNotifierEvent.Unmap);
    for (const v of this.vmasIn(start, end)) this.removeVma(v);
    // free_pgtables: tables between the neighbouring areas go.
    let floor = 0;
    let ceiling = TASK_SIZE;
    for (const v of this.vmas) {
      if (v.end <= start) floor = Math.max(floor, v.end);
      if (v.start >= end) ceiling = Math.min(ceiling, v.start);
    }
    this.pt.freeRange(start, end, floor, ceiling);
  }

  /** A zap of [start, end) within one area must not cut a huge page (splitting them is not modelled). */
  private checkZap(op: string, start: number, end: number): void {
    const v = this.findVma(start)!;
    const b = levelBytes(v.level);
    if (start % b !== 0 || end % b !== 0) throw new MmError('EINVAL', `${op}: EINVAL: ${hex(start)}..${hex(end)} cuts a ${b / 1024}K page (splitting huge pages is not modelled)`);
  }

  private *zapRange(start: number, end: number, event: MmuNotifierEvent): Program<void> {
    yield* this.zapPtes(mmuNotifierRangeInit(event, MMU_NOTIFIER_RANGE_BLOCKABLE, start, end));
  }

  /**
   * zap_page_range_single / unmap_vmas: invalidate_range_start, clear the
   * entries one page table at a time (dirty moves to the folio, mapcount
   * drops, swap entries are freed), flush the host TLB, invalidate_range_end,
   * then put the folios (tlb_finish_mmu), freeing those no longer used.
   */
  private *zapPtes(range: MmuNotifierRange): Program<void> {
    const start = Math.max(range.start, 0);
    const end = Math.min(range.end, TASK_SIZE);
    for (const v of this.vmas) {
      if (v.level === 1 || v.end <= start || end <= v.start) continue;
      const b = levelBytes(v.level);
      if ((Math.max(start, v.start) % b) !== 0 || (Math.min(end, v.end) % b) !== 0) throw new RangeError('zap: part of a huge page (splitting is not modelled)');
    }
    yield* this.notifiers.invalidateRangeStart(range);
    const mem = this.mem;
    const f = this.folios;
    const gather: number[] = [];
    const visit: LeafVisitor = (e, _level, _addr, lo, hi) => {
      mem.xchg64(e, 0, 0); // ptep_get_and_clear_full
      if ((lo & _PAGE_PRESENT) === 0) {
        this.swap?.free(lo, hi);
        return;
      }
      const head = f.folioOf(entryAddr(lo, hi) / PAGE_SIZE);
      if ((lo & _PAGE_DIRTY) !== 0) f.set(head, PG_dirty);
      f.mapcount[f.idx(head)]--; // folio_remove_rmap_*
      gather.push(head);
    };
    for (let a = start; a < end;) {
      if (mem.yields) yield;
      a = this.pt.scan(a, end, visit);
    }
    this.cpu.flushAll();
    yield* this.notifiers.invalidateRangeEnd(range);
    for (const head of gather) this.putFolio(head);
    // The data in the range is gone: a read now returns zeroes.
    for (const v of this.vmas) {
      if (v.tokens === null || v.end <= start || end <= v.start) continue;
      v.tokens.fill(0, (Math.max(start, v.start) - v.start) / PAGE_SIZE, (Math.min(end, v.end) - v.start) / PAGE_SIZE);
    }
  }

  /** folio_put for the mm operations outside this file (migration's source folio): frees the folio on the last reference. */
  folioPut(head: number): void {
    this.putFolio(head);
  }

  /** folio_put: the last reference takes the folio off the LRU and frees its frames. */
  private putFolio(head: number): void {
    const f = this.folios;
    if (!f.put(head)) return;
    f.lruDel(head);
    this.pages.freePages(head * PAGE_SIZE, f.order(head));
  }

  /**
   * exit_mmap: mmu_notifier_release first (hlist subscribers are released
   * and unhooked, intervals get RELEASE), then the UNMAP teardown of
   * everything, 0..ULONG_MAX, which only intervals still inserted see; then
   * the page tables below the pgd are freed.
   */
  *exit(): Program<void> {
    yield* this.notifiers.release();
    if (this.vmas.length === 0) return;
    yield* this.zapPtes(mmuNotifierRangeInit(MmuNotifierEvent.Unmap, MMU_NOTIFIER_RANGE_BLOCKABLE, 0, ULONG_MAX));
    for (const v of [...this.vmas]) this.removeVma(v);
    this.pt.freeRange(0, TASK_SIZE, 0, TASK_SIZE);
  }

  // ------------------------------------------------------------ protection and aging

  /**
   * mprotect (do_mprotect_pkey -> mprotect_fixup -> change_protection): per
   * area met, in address order, an area whose VM_WRITE changes is cut to
   * the range (vma_modify_flags: __split_vma) and may merge with a
   * neighbour of the same flags (vma_merge_existing_range); then one
   * PROTECTION_VMA pair over that piece, started lazily at the first
   * non-none PUD entry (change_pud_range) and running to the piece's end;
   * none when the piece has no page tables. An area already so is left
   * alone (no event). Leaves keep A/D (pte_modify); making an area
   * writable makes its exclusive anon PTEs writable again
   * (can_change_pte_writable). EINVAL for an unaligned start, ENOMEM when
   * part of the range is not mapped (the kernel then keeps the areas it
   * changed before the hole; here nothing changes).
   */
  *mprotect(start: number, length: number, prot: { writable: boolean }): Program<void> {
    const end = this.checkRange('mprotect', start, length);
    if (end === start) return;
    const pieces = this.requireMapped('mprotect', start, end)
      .filter((v) => v.writable !== prot.writable)
      .map((v) => [Math.max(start, v.start), Math.min(end, v.end)]);
    for (const [s, e] of pieces) {
      this.checkSplitAt('mprotect', s);
      this.checkSplitAt('mprotect', e);
    }
    const mem = this.mem;
    const visit: LeafVisitor = (e, _level, _addr, lo) => {
      if ((lo & _PAGE_PRESENT) === 0) return;
      if (prot.writable) mem.or64(e, _PAGE_RW, 0);
      else mem.and64(e, ~_PAGE_RW, -1);
    };
    for (const [s, e] of pieces) {
      this.splitAround(s, e);
      const vma = this.findVma(s)!;
      vma.writable = prot.writable;
      this.mergeVma(vma);
      const from = this.firstPud(s, e);
      if (from < 0) continue;
      const range = mmuNotifierRangeInit(MmuNotifierEvent.ProtectionVma, MMU_NOTIFIER_RANGE_BLOCKABLE, from, e);
      yield* this.notifiers.invalidateRangeStart(range);
      for (let a = from; a < e;) {
        if (mem.yields) yield;
        a = this.pt.scan(a, e, visit);
      }
      this.cpu.flushAll();
      yield* this.notifiers.invalidateRangeEnd(range);
    }
  }

  /** The address change_pud_range starts its notifier range at: the first non-none PUD entry's, or -1. */
  private firstPud(start: number, end: number): number {
    for (let a = start; a < end;) {
      const level = this.pt.walk(a);
      if (level < 3 || (level === 3 && this.pt.present)) return a;
      const span = levelSpan(level);
      a = Math.floor(a / span) * span + span;
    }
    return -1;
  }

  /**
   * ptep_clear_flush_young_notify: test-and-clear the primary accessed bit
   * (x86 does not flush the TLB for it), then clear_flush_young for the
   * page; for a PMD-mapped folio the pmdp variant, over PMD_SIZE.
   */
  *clearFlushYoungNotify(hva: number): Program<boolean> {
    let start = Math.floor(hva / PAGE_SIZE) * PAGE_SIZE;
    let end = start + PAGE_SIZE;
    let young = false;
    if (this.mem.yields) yield;
    const pt = this.pt;
    pt.walk(hva);
    if (pt.present) {
      if (pt.level === 2) {
        start = Math.floor(hva / PMD_SIZE) * PMD_SIZE;
        end = start + PMD_SIZE;
      }
      if ((pt.lo & _PAGE_ACCESSED) !== 0) {
        this.mem.and64(pt.entry, ~_PAGE_ACCESSED, -1);
        young = (this.mem.lo & _PAGE_ACCESSED) !== 0;
      }
    }
    if ((yield* this.notifiers.clearFlushYoung(start, end)) !== 0) young = true;
    return young;
  }

  // ------------------------------------------------------------ data tokens (issue 4 item 7)
  //
  // Every write of guest data stores a fresh token (a counter) in the frame
  // written and records it as what the page at that hva must hold. Reclaim,
  // swap, migration and merging must carry the frame's token along with the
  // data (the swap layer keeps it per slot), and discarding the data
  // (madvise DONTNEED, munmap) resets the expectation to 0, the token of a
  // zero-filled page. checkIntegrity then proves no data was lost: every
  // page reads back its last write. VMM writes use writeToken(hva); guest
  // writes, which reach the frame through an SPTE without the host page
  // tables, use recordWrite(hpa) with the access's hpa (the folio's rmap
  // gives the hva).

  /** A VMM store to hva (through the host CPU, faulting as needed) writing a new token; returns it. */
  writeToken(hva: number): number {
    const hpa = this.access(hva, true);
    if (hpa < 0) throw new RangeError(`writeToken: SIGSEGV at 0x${hva.toString(16)}`);
    return this.recordWrite(hpa);
  }

  /** A VMM load from hva through the host CPU: the token the page holds. */
  readToken(hva: number): number {
    const hpa = this.access(hva, false);
    if (hpa < 0) throw new RangeError(`readToken: SIGSEGV at 0x${hva.toString(16)}`);
    return this.folios.token[this.folios.idx(Math.floor(hpa / PAGE_SIZE))];
  }

  /**
   * A write of new data into the frame at hpa, which must be mapped in this
   * mm; returns the new token. `content` writes the same bytes an earlier
   * write stored (its token), so two pages can hold equal content, as KSM
   * needs; by default the data is new (a fresh token).
   */
  recordWrite(hpa: number, content?: number): number {
    const f = this.folios;
    const pfn = Math.floor(hpa / PAGE_SIZE);
    const head = f.folioOf(pfn);
    const vma = folioVmaOf(f, head, this); // a guest store: no allocation
    if (vma === null) throw new Error(`assertion: frame 0x${pfn.toString(16)} is not mapped by this mm`);
    const page = f.index[f.idx(head)] - vma.pgoff + (pfn - head);
    const token = content ?? (f.tokenSeq = (f.tokenSeq + 1) >>> 0 || 1);
    f.token[f.idx(pfn)] = token;
    // New data makes the folio dirty: KVM marks a folio it maps writable dirty (kvm_release_faultin_page,
    // 6.13+), which this KVM model only counts; without it a clean swap-cache folio would be dropped unwritten.
    f.set(head, PG_dirty);
    (vma.tokens ??= new Uint32Array((vma.end - vma.start) / PAGE_SIZE))[page] = token;
    return token;
  }

  /** The token a read of hva would return now, without touching anything (0 when nothing is mapped). */
  tokenAt(hva: number): number {
    const pt = this.pt;
    pt.walk(hva);
    if (pt.present) return this.folios.token[this.folios.idx(this.leafPfn(hva))];
    if (pt.lo === 0 && pt.hi === 0) return 0;
    if (this.swap === null) throw new Error('assertion: a swap entry with no swap layer');
    return this.swap.token(pt.lo, pt.hi);
  }

  /** End-of-run integrity check: every page of every area holds its last write. */
  checkIntegrity(): { pages: number; mismatches: TokenMismatch[] } {
    const mismatches: TokenMismatch[] = [];
    let pages = 0;
    for (const v of this.vmas) {
      const t = v.tokens;
      if (t === null) continue;
      for (let p = 0; p < t.length; p++) {
        const hva = v.start + p * PAGE_SIZE;
        const found = this.tokenAt(hva);
        pages++;
        if (found !== t[p]) mismatches.push({ hva, expected: t[p], found });
      }
    }
    return { pages, mismatches };
  }
}
