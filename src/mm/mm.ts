/**
 * The VMM's address space (struct mm_struct): anonymous private VMAs backed
 * by folios mapped through x86-64 page tables in host memory (pgtable.ts),
 * host page faults (handle_mm_fault), get_user_pages for KVM, the host CPU
 * the VMM runs on (host_cpu.ts: the hardware walker sets A/D), and the mm
 * operations that take pages away, which fire MMU-notifier invalidations in
 * the kernel's order: start -> clear PTEs -> flush TLB -> end, then the
 * folios are freed (mm.md section 6).
 *
 * Not modelled (yet): the shared zero page (an anonymous read fault maps a
 * fresh folio, as with mm_forbids_zeropage), THP splitting (a partial zap
 * of a huge mapping is refused), VMA splitting, per-CPU LRU-add batches.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import { Outcome } from '../hw/result.js';
import { LruList, PG_anon, PG_dirty, PG_swapbacked, PG_uptodate, type FolioTable } from './folio.js';
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
  readonly start: number;
  readonly end: number;
  /** VM_WRITE; changed by mprotect. */
  writable: boolean;
  /** Page size of the folios backing the area (2M mapped as THP PMDs, 1G as PUD leaves). */
  readonly level: HostLevel;
  /** The area's anon_vma: folio->mapping of its folios (an id in the FolioTable). */
  readonly anonVma: number;
  /** Data tokens: the last token written per page (0: zero-filled or discarded); null until the first write. */
  tokens: Uint32Array | null;
  /** vm_flags bits beyond VM_WRITE that reclaim reads (VM_LOCKED, VM_EXEC, VM_SEQ_READ, VM_RAND_READ); absent means none. */
  vmFlags?: number;
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

function levelBytes(level: HostLevel): number {
  return levelSpan(level);
}

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

  /** mmap(MAP_ANONYMOUS|MAP_PRIVATE) at a fixed, aligned address. */
  mmap(start: number, length: number, opts: { writable?: boolean; level?: HostLevel } = {}): VmArea {
    const level = opts.level ?? 1;
    const align = levelBytes(level);
    if (start % align !== 0 || length % align !== 0 || length <= 0) {
      throw new RangeError(`mmap: 0x${start.toString(16)}+0x${length.toString(16)} is not aligned to the ${align / 1024}K page size`);
    }
    const end = start + length;
    if (end > TASK_SIZE) throw new RangeError(`mmap: 0x${end.toString(16)} is beyond TASK_SIZE`);
    if (this.vmas.some((v) => v.start < end && start < v.end)) throw new RangeError(`mmap: 0x${start.toString(16)}..0x${end.toString(16)} overlaps a mapping`);
    const vma: VmArea = { mm: this, start, end, writable: opts.writable ?? true, level, anonVma: 0, tokens: null };
    (vma as { anonVma: number }).anonVma = this.folios.registerMapping(vma);
    this.vmas.push(vma);
    return vma;
  }

  /** The VMAs, for page-table walkers (MGLRU's walk_mm iterates them). */
  get areas(): readonly VmArea[] {
    return this.vmas;
  }

  findVma(hva: number): VmArea | null {
    for (const v of this.vmas) if (hva >= v.start && hva < v.end) return v;
    return null;
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
    const base = entryAddr(pt.lo, pt.hi) / PAGE_SIZE;
    const level = pt.level;
    return level === 1 ? base : base + ((hva / PAGE_SIZE) & (level === 2 ? 511 : 262143));
  }

  /** Level of the host mapping of hva (host_pfn_mapping_level: a lockless walk); 4K when unmapped. */
  hostMappingLevel(hva: number): HostLevel {
    const pt = this.pt;
    const level = pt.walk(hva);
    return level <= 3 && pt.present ? (level as HostLevel) : 1;
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

  /** do_anonymous_page / do_huge_pmd_anonymous_page: a new folio, on the LRU, mapped by the entry at `entry`. */
  private doAnonymousPage(vma: VmArea, hva: number, entry: number): void {
    const bytes = levelBytes(vma.level);
    const addr = Math.floor(hva / bytes) * bytes;
    const pfn = this.pages.allocPages(vma.level === 1 ? 0 : vma.level === 2 ? 9 : 18) / PAGE_SIZE;
    const f = this.folios;
    const i = f.idx(pfn);
    // folio_add_new_anon_rmap: exclusive anon, mapped once, the allocation's reference is the mapping's.
    f.flags[i] |= PG_anon | PG_swapbacked | PG_uptodate;
    f.mapping[i] = vma.anonVma;
    f.index[i] = (addr - vma.start) / PAGE_SIZE;
    f.mapcount[i] = 1;
    if (this.lruAddNew !== null) this.lruAddNew(pfn, vma, addr);
    else f.lruAdd(pfn, LruList.InactiveAnon); // folio_add_lru_vma: new anon folios start inactive
    const flags = (vma.writable ? LEAF_RW : LEAF_RO) | (vma.level === 1 ? 0 : _PAGE_PSE);
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

  /** madvise(MADV_DONTNEED): drop the pages of [start, start+length); event CLEAR. */
  *madviseDontneed(start: number, length: number): Program<void> {
    yield* this.zapRange(start, start + length, MmuNotifierEvent.Clear);
  }

  /** munmap: drop the pages, the areas, and the page tables only they used; event UNMAP. */
  *munmap(start: number, length: number): Program<void> {
    const end = start + length;
    for (const v of this.vmas) {
      if (v.start < end && start < v.end && (v.start < start || v.end > end)) throw new RangeError('munmap: splitting an area is not modelled yet');
    }
    yield* this.zapRange(start, end, MmuNotifierEvent.Unmap);
    for (let i = this.vmas.length - 1; i >= 0; i--) {
      const v = this.vmas[i];
      if (v.start >= start && v.end <= end) this.vmas.splice(i, 1);
    }
    // free_pgtables: tables between the neighbouring areas go.
    let floor = 0;
    let ceiling = TASK_SIZE;
    for (const v of this.vmas) {
      if (v.end <= start) floor = Math.max(floor, v.end);
      if (v.start >= end) ceiling = Math.min(ceiling, v.start);
    }
    this.pt.freeRange(start, end, floor, ceiling);
  }

  private *zapRange(start: number, end: number, event: MmuNotifierEvent): Program<void> {
    if (start % PAGE_SIZE !== 0 || end % PAGE_SIZE !== 0 || end <= start) throw new RangeError(`zap: 0x${start.toString(16)}..0x${end.toString(16)} not page aligned`);
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

  /**
   * copy_vma for mremap's move (src/mm/mremap.ts): a new area at newStart
   * with the old one's size, flags and anon_vma (folio->index is kept, as
   * vm_pgoff is), which becomes the anon_vma's owner. The old area stays
   * until the caller unmaps it.
   */
  copyVmaTo(vma: VmArea, newStart: number): VmArea {
    const len = vma.end - vma.start;
    const end = newStart + len;
    if (this.vmas.some((v) => v.start < end && newStart < v.end)) throw new RangeError(`mremap: 0x${newStart.toString(16)}..0x${end.toString(16)} overlaps a mapping`);
    const neu: VmArea = { mm: this, start: newStart, end, writable: vma.writable, level: vma.level, anonVma: vma.anonVma, tokens: vma.tokens };
    if (vma.vmFlags !== undefined) neu.vmFlags = vma.vmFlags;
    vma.tokens = null;
    this.folios.mappings[vma.anonVma] = neu;
    this.vmas.push(neu);
    return neu;
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
    this.vmas.length = 0;
    this.pt.freeRange(0, TASK_SIZE, 0, TASK_SIZE);
  }

  // ------------------------------------------------------------ protection and aging

  /**
   * mprotect of whole areas (change_protection): per area, one
   * PROTECTION_VMA pair, started lazily at the first non-none PUD entry
   * (change_pud_range) and running to the end of the area; none when the
   * area has no page tables. Leaves keep A/D (pte_modify); making an area
   * writable makes its exclusive anon PTEs writable again
   * (can_change_pte_writable).
   */
  *mprotect(start: number, length: number, prot: { writable: boolean }): Program<void> {
    const end = start + length;
    if (start % PAGE_SIZE !== 0 || length % PAGE_SIZE !== 0 || length <= 0) throw new RangeError(`mprotect: 0x${start.toString(16)}+0x${length.toString(16)} not page aligned`);
    const vmas = this.vmas.filter((v) => v.start < end && start < v.end).sort((a, b) => a.start - b.start);
    const mem = this.mem;
    const visit: LeafVisitor = (e, _level, _addr, lo) => {
      if ((lo & _PAGE_PRESENT) === 0) return;
      if (prot.writable) mem.or64(e, _PAGE_RW, 0);
      else mem.and64(e, ~_PAGE_RW, -1);
    };
    for (const vma of vmas) {
      if (vma.start < start || vma.end > end) throw new RangeError('mprotect: splitting an area is not modelled yet');
      vma.writable = prot.writable;
      const from = this.firstPud(vma.start, vma.end);
      if (from < 0) continue;
      const range = mmuNotifierRangeInit(MmuNotifierEvent.ProtectionVma, MMU_NOTIFIER_RANGE_BLOCKABLE, from, vma.end);
      yield* this.notifiers.invalidateRangeStart(range);
      for (let a = from; a < vma.end;) {
        if (mem.yields) yield;
        a = this.pt.scan(a, vma.end, visit);
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

  /** A write of new data into the frame at hpa, which must be mapped in this mm; returns the new token. */
  recordWrite(hpa: number): number {
    const f = this.folios;
    const pfn = Math.floor(hpa / PAGE_SIZE);
    const head = f.folioOf(pfn);
    const vma = f.mappings[f.mapping[f.idx(head)]] as VmArea | null;
    if (vma === null || vma === undefined || vma.mm !== this) throw new Error(`assertion: frame 0x${pfn.toString(16)} is not mapped by this mm`);
    const page = f.index[f.idx(head)] + (pfn - head);
    const token = (f.tokenSeq = (f.tokenSeq + 1) >>> 0 || 1);
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
