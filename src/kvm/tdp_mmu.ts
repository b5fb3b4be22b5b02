/**
 * The TDP MMU of arch/x86/kvm/mmu/tdp_mmu.c (Linux 6.17; kvm-mmu.md section
 * 4): setting SPTEs atomically and under the write lock, the bookkeeping of
 * handle_changed_spte, fault-in (kvm_tdp_mmu_map), zapping for invalidation,
 * lockless aging, write protection for dirty logging.
 *
 * Each algorithm is written step by step as the kernel has it, as a program
 * for the seeded scheduler: `if (mem.yields) yield;` comes before each
 * shared-memory operation (and before each iterator step, which reads one
 * SPTE), so the races the kernel has, the model has. Outside a scheduler
 * nothing yields and the code runs straight through.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import { hi32, join64, lo32 } from '../hw/halves.js';
import { runProgram } from '../hw/sched.js';
import type { PageAllocator } from '../mm/page_alloc.js';
import type { KvmEvents } from './events.js';
import type { MmuLock, Rcu } from './locks.js';
import type { KvmGfnRange, KvmMemorySlot } from './memslots.js';
import { markPageDirtyInSlot, slotDirtyLogging } from './memslots.js';
import {
  ACC_ALL, FROZEN_SPTE, PG_LEVEL_4K, PT_PAGE_SIZE_MASK, PT_WRITABLE_MASK, SHADOW_NONPRESENT_VALUE, SPTE_ENT_PER_PAGE,
  checkSpteWritableInvariants, isAccessAllowed, isAccessedSpte, isExecutablePte, isWritablePte, spteAdEnabled, isFrozenSpte, isLastSpte, isMmioSpte,
  isShadowPresentPte, leafSpteChangeNeedsTlbFlush, makeMmioSpte, makeNonleafSpte, makeSpte, markSpteForAccessTrack,
  spteToPfn, type SpteFlavour,
} from './spte.js';
import {
  TdpIter, gfnRoundForLevel, iterAtPresentLeaf, kvmTdpMmuWriteSpte, sideStepsLeft, tdpMmuClearSpteBits, pagesPerHpage, tdpIterNext, tdpIterRestart,
  tdpIterSetRoot, tdpIterSideSteps, tdpIterStart,
} from './tdp_iter.js';

/** Page-fault handler results (enum ret_pf, mmu_internal.h). */
export const enum RetPf {
  Continue = 0,
  Retry = 1,
  Emulate = 2,
  WriteProtected = 3,
  Invalid = 4,
  Fixed = 5,
  Spurious = 6,
}

export const RET_PF_NAMES = [
  'RET_PF_CONTINUE', 'RET_PF_RETRY', 'RET_PF_EMULATE', 'RET_PF_WRITE_PROTECTED', 'RET_PF_INVALID', 'RET_PF_FIXED', 'RET_PF_SPURIOUS',
] as const;

export const EBUSY = 16;

/** Written over a page-table page when RCU frees it, so a walk through a freed table is caught. */
export const PT_POISON_LO = 0xdeadbeef | 0;
export const PT_POISON_HI = 0xdeadbeef | 0;
export const PT_POISON = join64(PT_POISON_LO, PT_POISON_HI);

/** The parts of struct kvm_mmu_page a TDP MMU page-table page has. */
export class KvmMmuPage {
  /** Set for roots when they are invalidated (role.invalid). */
  invalid = false;
  nxHugePageDisallowed = false;
  constructor(
    /** Host physical address of the table (sp->spt). */
    readonly hpa: number,
    /** role.level */
    readonly level: number,
    /** First gfn the table maps (sp->gfn). */
    readonly gfn: number,
    /** Entry that links it (sp->ptep), or -1 for a root. */
    readonly ptep: number,
    readonly asId: number,
  ) {}
}

/** struct kvm_page_fault, the fields the TDP MMU reads and writes. */
export interface KvmPageFault {
  addr: number;
  gfn: number;
  errorCode: number;
  exec: boolean;
  write: boolean;
  present: boolean;
  rsvd: boolean;
  prefetch: boolean;
  slot: KvmMemorySlot | null;
  pfn: number;
  mapWritable: boolean;
  maxLevel: number;
  reqLevel: number;
  goalLevel: number;
  hugePageDisallowed: boolean;
  mmuSeq: number;
}

/** What the TDP MMU needs of the VM (struct kvm). */
export interface TdpMmuVm {
  readonly mem: PhysMem;
  readonly flavour: SpteFlavour;
  readonly mmuLock: MmuLock;
  readonly rcu: Rcu;
  readonly pages: PageAllocator;
  readonly events: KvmEvents;
  /** Root level: 4 or 5 (EPT walk length, NPT host paging mode). */
  readonly rootLevel: number;
  /** tdp_mmu_max_gfn_exclusive. */
  readonly maxGfn: number;
  /** The memslots generation cached in MMIO SPTEs. */
  memslotsGeneration(): bigint;
  /** kvm_set_pfn_dirty (kernels before 6.13): the folio is dirty, as a lost D or W would otherwise hide it. */
  setPfnDirty(pfn: number): void;
  /** kvm_gfn_is_write_tracked: the gfn's guest page table is shadowed, so KVM must see every write. */
  isWriteTracked(gfn: number): boolean;
  /** kvm_flush_remote_tlbs; the range variant falls back to it on VMX/SVM without Hyper-V. */
  flushRemoteTlbs(): void;
}

/** Counters of the TDP MMU (the kvm->stat fields it touches, and a few more for tests). */
export class TdpMmuStats {
  /** kvm->stat.pages[level - 1]: present leaf SPTEs by level (index = level). */
  readonly pages = [0, 0, 0, 0, 0, 0];
  /** Page-table pages allocated and freed (after their RCU grace period). */
  ptAllocated = 0;
  ptFreed = 0;
  /** Successful and failed cmpxchg of __tdp_mmu_set_spte_atomic. */
  cmpxchgFailed = 0;
  /** SPTEs aged (A cleared or access-tracked) and aging cmpxchgs lost. */
  aged = 0;
  ageLost = 0;
  /** Huge pages split (tdp_mmu_split_huge_page). */
  splits = 0;
}

type Program<T> = Generator<unknown, T, undefined>;

const NONPRESENT_LO = lo32(SHADOW_NONPRESENT_VALUE);
const NONPRESENT_HI = hi32(SHADOW_NONPRESENT_VALUE);
const FROZEN_LO = lo32(FROZEN_SPTE);
const FROZEN_HI = hi32(FROZEN_SPTE);

// The aging walk's tests on an SPTE given as halves (lo, hi), shared by its
// step-by-step loop and its direct scan.

/** Shadow-present (bit 11, SPTE_MMU_PRESENT_MASK): is_shadow_present_pte. */
function presentLo(lo: number): boolean {
  return (lo & 0x800) !== 0;
}

/** A present leaf (a 4K entry, `at4k`, or bit 7): tdp_root_for_each_leaf_pte's filter. */
function presentLeaf(lo: number, at4k: boolean): boolean {
  return (lo & 0x800) !== 0 && (at4k || (lo & 0x80) !== 0);
}

/** is_accessed_spte (6.13+): the accessed mask, hardware or software A. */
function accessedHalves(lo: number, hi: number, accLo: number, accHi: number): boolean {
  return ((lo & accLo) | (hi & accHi)) !== 0;
}

/** spte_ad_enabled: bits 53:52 (hi bits 21:20) are not SPTE_TDP_AD_DISABLED. */
function adEnabledHi(hi: number): boolean {
  return ((hi >>> 20) & 3) !== 1;
}

export class TdpMmu {
  readonly roots: KvmMmuPage[] = [];
  readonly stats = new TdpMmuStats();
  /** Page-table pages by host physical address (spte_to_child_sp). */
  private readonly sps = new Map<number, KvmMmuPage>();
  private readonly accessedLo: number;
  private readonly accessedHi: number;
  private readonly mmuWritableLo: number;
  private readonly mmuWritableHi: number;
  private readonly hostWritableLo: number;
  private readonly hostWritableHi: number;
  /** Set when handle_changed_spte saw a transition it only warns about (non-present to non-present). */
  warnings: string[] = [];

  constructor(readonly vm: TdpMmuVm) {
    this.accessedLo = lo32(vm.flavour.accessedMask);
    this.accessedHi = hi32(vm.flavour.accessedMask);
    this.mmuWritableLo = lo32(vm.flavour.mmuWritableMask);
    this.mmuWritableHi = hi32(vm.flavour.mmuWritableMask);
    this.hostWritableLo = lo32(vm.flavour.hostWritableMask);
    this.hostWritableHi = hi32(vm.flavour.hostWritableMask);
  }

  /** The page-table page at a table address, or an assertion failure. */
  sp(hpa: number): KvmMmuPage {
    const sp = this.sps.get(hpa);
    if (sp === undefined) throw new Error(`assertion: no TDP MMU page at 0x${hpa.toString(16)}`);
    return sp;
  }

  /** Page-table pages currently linked or awaiting their grace period. */
  get pageCount(): number {
    return this.sps.size;
  }

  /**
   * tdp_mmu_alloc_sp: the table comes from the vCPU's shadow-page cache,
   * whose pages start with every entry SHADOW_NONPRESENT_VALUE (6.10+).
   */
  private allocSp(level: number, gfn: number, ptep: number, asId: number): KvmMmuPage {
    const sp = new KvmMmuPage(this.vm.pages.allocPage(), level, gfn, ptep, asId);
    this.vm.mem.fill64(sp.hpa, SPTE_ENT_PER_PAGE, NONPRESENT_LO, NONPRESENT_HI);
    this.sps.set(sp.hpa, sp);
    this.stats.ptAllocated++;
    if (this.vm.events.kvm_mmu_get_page) this.vm.events.emit('kvm_mmu_get_page', { gfn: sp.gfn, level, created: true });
    return sp;
  }

  /** Freed after a grace period; the frame is poisoned before it goes back to the allocator. */
  private freeSpRcu(sp: KvmMmuPage): void {
    this.vm.rcu.callRcu(() => {
      this.vm.mem.fill64(sp.hpa, SPTE_ENT_PER_PAGE, PT_POISON_LO, PT_POISON_HI);
      this.sps.delete(sp.hpa);
      this.vm.pages.freePage(sp.hpa);
      this.stats.ptFreed++;
    });
  }

  /** An unused page (lost a link race) goes straight back (tdp_mmu_free_sp). */
  private freeSpNow(sp: KvmMmuPage): void {
    this.sps.delete(sp.hpa);
    this.vm.pages.freePage(sp.hpa);
    this.stats.ptFreed++;
  }

  /** kvm_tdp_mmu_alloc_root: reuse the valid root of the address space, else make one. */
  allocRoot(asId = 0): KvmMmuPage {
    // A loop, not find(): this runs on every fault, and a closure would be allocated each time.
    for (const r of this.roots) if (r.asId === asId && !r.invalid) return r;
    const root = this.allocSp(this.vm.rootLevel, 0, -1, asId);
    this.roots.push(root);
    return root;
  }

  /** for_each_valid_tdp_mmu_root: the roots of an address space that are not invalid. */
  private validRoots(asId: number): KvmMmuPage[] {
    return this.roots.filter((r) => !r.invalid && r.asId === asId);
  }

  // -------------------------------------------------------------------------
  // Setting SPTEs (section 4.1)

  /**
   * __tdp_mmu_set_spte_atomic: one cmpxchg from it.oldSpte. On failure
   * returns -EBUSY and it.oldSpte holds the value found. Plain code: the
   * caller yields before it (`if (mem.yields) yield;`), as before any
   * shared-memory operation.
   */
  setSpteAtomicRaw(it: TdpIter, newLo: number, newHi: number): number {
    if (it.oldLo === FROZEN_LO && it.oldHi === FROZEN_HI) throw new Error('assertion: atomic set of a FROZEN SPTE');
    const mem = this.vm.mem;
    const ok = mem.cmpxchg64(it.sptep, it.oldLo, it.oldHi, newLo, newHi);
    if (!ok) {
      it.takeMem();
      this.stats.cmpxchgFailed++;
      return -EBUSY;
    }
    return 0;
  }

  /**
   * The child table the last setSpteAtomic disconnected, or null: its caller
   * tears it down at once (before any yield) with handleRemovedPt, shared,
   * the one part of tdp_mmu_set_spte_atomic that is a program.
   */
  removedPt: KvmMmuPage | null = null;

  /**
   * tdp_mmu_set_spte_atomic, the new SPTE as halves: mmu_lock held for read;
   * bookkeeping only on success. Plain code like setSpteAtomicRaw (the
   * caller yields before it), so fault-in runs no program for it; see
   * removedPt for the rest.
   */
  setSpteAtomic(it: TdpIter, newLo: number, newHi: number): number {
    this.vm.mmuLock.assertHeld('read');
    const oldLo = it.oldLo;
    const oldHi = it.oldHi;
    this.removedPt = null;
    const r = this.setSpteAtomicRaw(it, newLo, newHi);
    if (r !== 0) return r;
    this.removedPt = this.handleChangedSpte(it.asId, it.gfn, oldLo, oldHi, newLo, newHi, it.level);
    return 0;
  }

  /**
   * tdp_mmu_set_spte: mmu_lock held for write. Still an xchg when the old
   * SPTE is a leaf whose bits others may set (kvm_tdp_mmu_write_spte).
   * Returns the value replaced.
   */
  *setSpte(asId: number, sptep: number, oldSpte: bigint, newSpte: bigint, gfn: number, level: number): Program<bigint> {
    this.vm.mmuLock.assertHeld('write');
    if (isFrozenSpte(oldSpte) || isFrozenSpte(newSpte)) throw new Error('assertion: FROZEN_SPTE under the write lock');
    const old = yield* kvmTdpMmuWriteSpte(this.vm.flavour, this.vm.mem, sptep, oldSpte, newSpte, level);
    const removed = this.handleChangedSpte(asId, gfn, lo32(old), hi32(old), lo32(newSpte), hi32(newSpte), level);
    if (removed !== null) yield* this.handleRemovedPt(removed, false);
    return old;
  }

  /** tdp_mmu_iter_set_spte: the above with the iterator's fields; oldSpte becomes the value replaced. */
  *iterSetSpte(it: TdpIter, newSpte: bigint): Program<void> {
    it.oldSpte = yield* this.setSpte(it.asId, it.sptep, it.oldSpte, newSpte, it.gfn, it.level);
  }

  // -------------------------------------------------------------------------
  // Bookkeeping (section 4.2)

  /**
   * handle_changed_spte: statistics and tracing. Returns the child table
   * the change disconnected, which the caller tears down with
   * handle_removed_pt in its lock mode (so that only that rare case is a
   * program step). No TLB flush.
   */
  handleChangedSpte(asId: number, gfn: number, oldLo: number, oldHi: number, newLo: number, newHi: number, level: number): KvmMmuPage | null {
    const f = this.vm.flavour;
    // is_shadow_present_pte is bit 11, is_last_spte a 4K level or bit 7, spte_to_pfn bits 51:12.
    const wasPresent = (oldLo & 0x800) !== 0;
    const isPresent = (newLo & 0x800) !== 0;
    const wasLeaf = wasPresent && (level === PG_LEVEL_4K || (oldLo & 0x80) !== 0);
    const isLeaf = isPresent && (level === PG_LEVEL_4K || (newLo & 0x80) !== 0);
    const pfnChanged = ((oldLo ^ newLo) & ~0xfff) !== 0 || ((oldHi ^ newHi) & 0xfffff) !== 0;
    if (level < PG_LEVEL_4K || level > 5) throw new Error(`assertion: SPTE level ${level}`);
    if (gfnRoundForLevel(gfn, level) !== gfn) throw new Error(`assertion: gfn 0x${gfn.toString(16)} not aligned to level ${level}`);
    // PFNs only change by zapping and re-creating: a present leaf turning into another present leaf is a kernel BUG.
    if (wasLeaf && isLeaf && pfnChanged) throw new Error(`assertion (BUG): leaf SPTE for gfn 0x${gfn.toString(16)} changed pfn without a zap`);
    if (oldLo === newLo && oldHi === newHi) return null;
    if (this.vm.events.kvm_tdp_mmu_spte_changed) {
      this.vm.events.emit('kvm_tdp_mmu_spte_changed', { as_id: asId, gfn, level, old_spte: join64(oldLo, oldHi), new_spte: join64(newLo, newHi) });
    }
    if (isLeaf && !this.writableInvariantsHold(newLo, newHi)) {
      const spte = join64(newLo, newHi);
      throw new Error(`assertion: ${checkSpteWritableInvariants(f, spte)}: 0x${spte.toString(16)}`);
    }
    if (!wasPresent && !isPresent) {
      // Only MMIO SPTEs and freezing may go from non-present to non-present.
      const oldSpte = join64(oldLo, oldHi);
      const newSpte = join64(newLo, newHi);
      if (!isMmioSpte(f, oldSpte) && !isMmioSpte(f, newSpte) && !isFrozenSpte(newSpte)) {
        this.warnings.push(`unexpected non-present to non-present change, gfn 0x${gfn.toString(16)} level ${level}: 0x${oldSpte.toString(16)} -> 0x${newSpte.toString(16)}`);
      }
      return null;
    }
    if (isLeaf !== wasLeaf) this.stats.pages[level] += isLeaf ? 1 : -1;
    if (wasPresent && !wasLeaf && (isLeaf || !isPresent || pfnChanged)) return this.sp((oldHi & 0xfffff) * 4294967296 + ((oldLo & ~0xfff) >>> 0));
    return null;
  }

  /**
   * check_spte_writable_invariants on halves, as a test (the bigint
   * function words the failure): MMU-writable implies host-writable, W
   * implies MMU-writable.
   */
  private writableInvariantsHold(lo: number, hi: number): boolean {
    if (((lo & this.mmuWritableLo) | (hi & this.mmuWritableHi)) !== 0) return ((lo & this.hostWritableLo) | (hi & this.hostWritableHi)) !== 0;
    return (lo & 2) === 0;
  }

  /**
   * handle_removed_pt: a table no longer linked. Every entry is frozen (in
   * shared mode after waiting out any other freezer), its change handled
   * (recursing into child tables), and the page freed after a grace period.
   */
  *handleRemovedPt(sp: KvmMmuPage, shared: boolean): Program<void> {
    const mem = this.vm.mem;
    const f = this.vm.flavour;
    if (this.vm.events.kvm_mmu_prepare_zap_page) this.vm.events.emit('kvm_mmu_prepare_zap_page', { gfn: sp.gfn, level: sp.level });
    const step = pagesPerHpage(sp.level);
    for (let i = 0; i < SPTE_ENT_PER_PAGE; i++) {
      const sptep = sp.hpa + 8 * i;
      const gfn = sp.gfn + i * step;
      let oldLo: number;
      let oldHi: number;
      if (shared) {
        for (;;) {
          if (mem.yields) yield;
          mem.xchg64(sptep, FROZEN_LO, FROZEN_HI);
          if (mem.lo !== FROZEN_LO || mem.hi !== FROZEN_HI) break;
          if (!mem.yields) throw new Error('assertion: entry stays FROZEN and no other simulated CPU can unfreeze it');
        }
        oldLo = mem.lo;
        oldHi = mem.hi;
      } else {
        if (mem.yields) yield;
        mem.load64(sptep);
        if ((mem.lo & 0x800) === 0) continue; // not shadow-present
        const old = yield* kvmTdpMmuWriteSpte(f, mem, sptep, join64(mem.lo, mem.hi), FROZEN_SPTE, sp.level);
        oldLo = lo32(old);
        oldHi = hi32(old);
      }
      const removed = this.handleChangedSpte(sp.asId, gfn, oldLo, oldHi, FROZEN_LO, FROZEN_HI, sp.level);
      if (removed !== null) yield* this.handleRemovedPt(removed, shared);
    }
    this.freeSpRcu(sp);
  }

  // -------------------------------------------------------------------------
  // Fault-in (section 4.3)

  /**
   * kvm_tdp_mmu_map: walk towards the gfn, linking (or splitting into) child
   * tables with cmpxchg, and install the leaf at the goal level. mmu_lock is
   * held for read; any lost race ends in RET_PF_RETRY. (No default for
   * asId: a default makes V8 copy every parameter of a generator into its
   * registers.)
   */
  *map(fault: KvmPageFault, it: TdpIter, asId: number): Program<RetPf> {
    // Plain code does all it can: the generator keeps few values (each costs every fault).
    const token = this.mapStart(fault, it, asId);
    try {
      if (this.vm.mem.yields) yield;
      for (tdpIterRestart(it); it.valid && it.gfn < fault.gfn + 1; ) {
        if (it.oldLo === FROZEN_LO && it.oldHi === FROZEN_HI) return RetPf.Retry;
        if (it.level === fault.goalLevel) {
          // tdp_mmu_map_handle_target_level: the SPTE, the cmpxchg (the one program step), then what follows it.
          const made = this.targetLevelSpte(fault, it);
          if (made !== RetPf.Continue) return made;
          const newLo = this.madeLo;
          const newHi = this.madeHi;
          const wrprot = this.madeWrprot;
          if (this.vm.mem.yields) yield;
          if (this.setSpteAtomic(it, newLo, newHi) !== 0) return RetPf.Retry;
          if (this.removedPt !== null) yield* this.handleRemovedPt(this.removedPt, true);
          return this.targetLevelSet(fault, it, newLo, newHi, wrprot);
        }
        if ((it.oldLo & 0x800) === 0 || (it.oldLo & 0x80) !== 0) {
          // Non-present, or a huge page in the way: a child table replaces it.
          const sp = this.allocChildSp(fault, it, asId);
          if (((it.oldLo & 0x800) !== 0 ? yield* this.splitHugePage(it, sp) : yield* this.linkSp(it, sp)) !== 0) {
            this.freeSpNow(sp);
            return RetPf.Retry;
          }
        }
        if (this.vm.mem.yields) yield;
        tdpIterNext(it);
      }
      return RetPf.Retry; // the walk ended above the goal level
    } finally {
      this.vm.rcu.readUnlock(token);
    }
  }

  /**
   * map as plain code, for a caller that nothing can interleave
   * (!mem.yields): the same steps without the program's yields; the rare
   * sub-programs (a removed table's teardown, a link, a split) run to their
   * ends. test/kvm/plain_twins.test.ts checks that the two texts say the
   * same apart from the program steps.
   */
  mapNow(fault: KvmPageFault, it: TdpIter, asId: number): RetPf {
    const token = this.mapStart(fault, it, asId);
    try {
      for (tdpIterRestart(it); it.valid && it.gfn < fault.gfn + 1; ) {
        if (it.oldLo === FROZEN_LO && it.oldHi === FROZEN_HI) return RetPf.Retry;
        if (it.level === fault.goalLevel) {
          const made = this.targetLevelSpte(fault, it);
          if (made !== RetPf.Continue) return made;
          const newLo = this.madeLo;
          const newHi = this.madeHi;
          const wrprot = this.madeWrprot;
          if (this.setSpteAtomic(it, newLo, newHi) !== 0) return RetPf.Retry;
          if (this.removedPt !== null) runProgram(this.handleRemovedPt(this.removedPt, true));
          return this.targetLevelSet(fault, it, newLo, newHi, wrprot);
        }
        if ((it.oldLo & 0x800) === 0 || (it.oldLo & 0x80) !== 0) {
          const sp = this.allocChildSp(fault, it, asId);
          if (((it.oldLo & 0x800) !== 0 ? runProgram(this.splitHugePage(it, sp)) : runProgram(this.linkSp(it, sp))) !== 0) {
            this.freeSpNow(sp);
            return RetPf.Retry;
          }
        }
        tdpIterNext(it);
      }
      return RetPf.Retry;
    } finally {
      this.vm.rcu.readUnlock(token);
    }
  }

  /**
   * kvm_tdp_mmu_map up to its walk: the lock check, the root, the
   * kvm_mmu_spte_requested event, the iterator set at the root (whose read
   * is the walk's first program step), and rcu_read_lock, whose token it
   * returns.
   */
  private mapStart(fault: KvmPageFault, it: TdpIter, asId: number): number {
    const vm = this.vm;
    vm.mmuLock.assertHeld('read');
    const root = this.allocRoot(asId);
    if (vm.events.kvm_mmu_spte_requested) {
      const low = fault.gfn % pagesPerHpage(fault.goalLevel);
      vm.events.emit('kvm_mmu_spte_requested', { gfn: fault.gfn, pfn: fault.pfn + low, level: fault.goalLevel });
    }
    if (!tdpIterSetRoot(it, root, PG_LEVEL_4K, fault.gfn)) throw new Error(`assertion: TDP root of level ${root.level}`);
    return vm.rcu.readLock();
  }

  /** The child table the fault links (or splits into) at the iterator's entry (tdp_mmu_alloc_sp, tdp_mmu_init_child_sp). */
  private allocChildSp(fault: KvmPageFault, it: TdpIter, asId: number): KvmMmuPage {
    const sp = this.allocSp(it.level - 1, it.gfn, it.sptep, asId);
    sp.nxHugePageDisallowed = fault.hugePageDisallowed;
    return sp;
  }

  /** tdp_mmu_link_sp (shared): a non-leaf SPTE to the new table, by cmpxchg. */
  private *linkSp(it: TdpIter, sp: KvmMmuPage): Program<number> {
    const spte = makeNonleafSpte(this.vm.flavour, BigInt(sp.hpa), !this.vm.flavour.adEnabled);
    if (this.vm.mem.yields) yield;
    const r = this.setSpteAtomic(it, lo32(spte), hi32(spte));
    if (this.removedPt !== null) yield* this.handleRemovedPt(this.removedPt, true);
    return r;
  }

  /**
   * tdp_mmu_split_huge_page: fill the new table with the huge page's pieces
   * (make_small_spte), then link it in place of the huge SPTE.
   */
  private *splitHugePage(it: TdpIter, sp: KvmMmuPage): Program<number> {
    const huge = it.oldSpte;
    const childLevel = it.level - 1;
    const step = BigInt(pagesPerHpage(childLevel)) << 12n;
    for (let i = 0; i < SPTE_ENT_PER_PAGE; i++) {
      let child = huge + BigInt(i) * step;
      if (childLevel === PG_LEVEL_4K) child &= ~PT_PAGE_SIZE_MASK;
      // The new table is not reachable yet: plain stores, nobody can race them.
      this.vm.mem.store64(sp.hpa + 8 * i, lo32(child), hi32(child));
    }
    const r = yield* this.linkSp(it, sp);
    if (r !== 0) return r;
    this.stats.pages[childLevel] += SPTE_ENT_PER_PAGE;
    this.stats.splits++;
    if (this.vm.events.kvm_mmu_split_huge_page) this.vm.events.emit('kvm_mmu_split_huge_page', { gfn: it.gfn, spte: huge, level: it.level, errno: 0 });
    return 0;
  }

  /** Leaf templates by level * 2 + host writability, as halves; templateMade says which are computed. */
  private readonly templateLo = new Int32Array(8);
  private readonly templateHi = new Int32Array(8);
  private readonly templateMade = new Uint8Array(8);

  /**
   * make_spte(ACC_ALL, pfn 0, not prefetch) for a level and host
   * writability, computed once; returns its index in templateLo/templateHi.
   */
  private leafTemplate(level: number, hostWritable: boolean): number {
    const k = level * 2 + (hostWritable ? 1 : 0);
    if (this.templateMade[k] === 0) {
      const made = makeSpte(this.vm.flavour, { level, pfn: 0n, access: ACC_ALL, hostWritable });
      if (made.wrprot) throw new Error('assertion: a TDP leaf template came out write-protected');
      this.templateLo[k] = lo32(made.spte);
      this.templateHi[k] = hi32(made.spte);
      this.templateMade[k] = 1;
    }
    return k;
  }

  /**
   * tdp_mmu_map_handle_target_level up to its cmpxchg: the leaf (or MMIO
   * SPTE) to install at the goal level, left in madeLo/madeHi/madeWrprot
   * (as PhysMem leaves a load in lo/hi: the caller copies them before it
   * yields). Returns RET_PF_SPURIOUS when there is nothing to change, else
   * RET_PF_CONTINUE.
   */
  private targetLevelSpte(fault: KvmPageFault, it: TdpIter): RetPf {
    const vm = this.vm;
    const f = vm.flavour;
    // The SPTEs travel as halves; bigints are made only for the rarer cases below.
    const oldLo = it.oldLo;
    const oldHi = it.oldHi;
    const wasPresent = (oldLo & 0x800) !== 0;
    if (wasPresent && (fault.prefetch || isAccessAllowed(f, fault, it.oldSpte)) && isLastSpte(it.oldSpte, it.level)) return RetPf.Spurious;
    let newLo: number;
    let newHi: number;
    let wrprot = false;
    if (fault.slot === null) {
      const mmio = makeMmioSpte(f, BigInt(it.gfn), ACC_ALL, vm.memslotsGeneration());
      newLo = lo32(mmio);
      newHi = hi32(mmio);
    } else {
      // mmu_try_to_unsync_pages refuses write access to a write-tracked gfn (the TDP MMU has no unsync pages).
      const tracked = vm.isWriteTracked(it.gfn);
      if (fault.prefetch || tracked) {
        const made = makeSpte(f, {
          level: it.level, pfn: BigInt(fault.pfn), access: ACC_ALL, hostWritable: fault.mapWritable, prefetch: fault.prefetch, oldSpte: it.oldSpte, unsyncRefused: tracked,
        });
        newLo = lo32(made.spte);
        newHi = hi32(made.spte);
        wrprot = made.wrprot;
      } else {
        // With ACC_ALL and no prefetch, make_spte's result is the pfn (bits 51:12) ORed into a value fixed by level and host writability.
        const k = this.leafTemplate(it.level, fault.mapWritable);
        newLo = this.templateLo[k] | (fault.pfn << 12);
        newHi = this.templateHi[k] | (fault.pfn / 1048576);
      }
      // make_spte marks the gfn dirty when it creates a writable (bit 1) SPTE in a dirty-logged slot (6.13+).
      if ((newLo & 2) !== 0 && slotDirtyLogging(fault.slot)) {
        if (it.level > PG_LEVEL_4K) throw new Error('assertion: huge writable SPTE in a dirty-logged slot');
        markPageDirtyInSlot(fault.slot, it.gfn);
      }
    }
    if (newLo === oldLo && newHi === oldHi) return RetPf.Spurious;
    this.madeLo = newLo;
    this.madeHi = newHi;
    this.madeWrprot = wrprot;
    return RetPf.Continue;
  }

  /** The SPTE tdp_mmu_map_handle_target_level made (see targetLevelSpte). */
  private madeLo = 0;
  private madeHi = 0;
  private madeWrprot = false;

  /**
   * tdp_mmu_map_handle_target_level after its cmpxchg succeeded: the flush a
   * replaced table or a lost MMU-writable bit needs, the trace events, and
   * the result.
   */
  private targetLevelSet(fault: KvmPageFault, it: TdpIter, newLo: number, newHi: number, wrprot: boolean): RetPf {
    const vm = this.vm;
    const f = vm.flavour;
    // A successful cmpxchg leaves the iterator's snapshot as it was: the SPTE replaced.
    const oldLo = it.oldLo;
    const oldHi = it.oldHi;
    const wasPresent = (oldLo & 0x800) !== 0;
    if (wasPresent) {
      // A huge page replacing a table needs the old translations gone; a leaf change only if MMU-writable was lost.
      const old = join64(oldLo, oldHi);
      if (!isLastSpte(old, it.level)) vm.flushRemoteTlbs();
      else if (leafSpteChangeNeedsTlbFlush(f, old, join64(newLo, newHi))) {
        this.warnings.push(`fault-in cleared MMU-writable of gfn 0x${it.gfn.toString(16)}`);
        vm.flushRemoteTlbs();
      }
    }
    if (wrprot && fault.write) return RetPf.WriteProtected;
    if (fault.slot === null) {
      if (vm.events.mark_mmio_spte) vm.events.emit('mark_mmio_spte', { sptep: it.sptep, gfn: it.gfn, access: ACC_ALL, gen: vm.memslotsGeneration() });
      return RetPf.Emulate;
    }
    if (vm.events.kvm_mmu_set_spte) {
      const newSpte = join64(newLo, newHi);
      vm.events.emit('kvm_mmu_set_spte', {
        gfn: it.gfn, spte: newSpte, sptep: it.sptep, level: it.level, r: (newLo & 1) !== 0 || f.presentMask !== 0n,
        x: isExecutablePte(f, newSpte), u: f.userMask === 0n ? -1 : Number((newSpte & f.userMask) !== 0n),
      });
    }
    return RetPf.Fixed;
  }

  /**
   * kvm_tdp_mmu_fast_pf_get_last_sptep: the deepest SPTE on the way to gfn,
   * read locklessly under RCU (the caller holds the read section).
   */
  *fastPfGetLastSptep(gfn: number, it: TdpIter, asId?: number): Program<number> {
    const root = this.allocRoot(asId);
    let sptep = -1;
    let lo = 0;
    let hi = 0;
    let level = 0;
    const mem = this.vm.mem;
    if (mem.yields) yield;
    for (tdpIterStart(it, root, PG_LEVEL_4K, gfn); it.valid && it.gfn < gfn + 1; ) {
      sptep = it.sptep;
      lo = it.oldLo;
      hi = it.oldHi;
      level = it.level;
      if (mem.yields) yield;
      tdpIterNext(it);
    }
    // Leave the deepest entry, its value and its level in the iterator, as the kernel returns them.
    it.oldLo = lo;
    it.oldHi = hi;
    it.sptep = sptep;
    it.level = level;
    return sptep;
  }

  // -------------------------------------------------------------------------
  // Zapping (section 4.4)

  /** kvm_tdp_mmu_unmap_gfn_range: zap leaves of every root of the slot's address space, invalid ones too. */
  *unmapGfnRange(range: KvmGfnRange, flush: boolean): Program<boolean> {
    for (const root of this.roots) {
      if (root.asId !== range.slot.as_id) continue;
      flush = yield* this.zapLeafs(root, range.start, range.end, flush);
    }
    return flush;
  }

  /**
   * tdp_mmu_zap_leafs: every present leaf in [start, end) becomes
   * SHADOW_NONPRESENT_VALUE under the write lock. Tables stay; the caller
   * flushes. (Yielding on contention is not modelled: nothing contends
   * mmu_lock for long enough here to need it.)
   */
  *zapLeafs(root: KvmMmuPage, start: number, end: number, flush: boolean): Program<boolean> {
    const vm = this.vm;
    const mem = vm.mem;
    vm.mmuLock.assertHeld('write');
    end = Math.min(end, vm.maxGfn);
    const token = vm.rcu.readLock();
    const it = new TdpIter(mem);
    if (mem.yields) yield;
    for (tdpIterStart(it, root, PG_LEVEL_4K, start); it.valid && it.gfn < end; ) {
      if (iterAtPresentLeaf(it)) {
        yield* this.iterSetSpte(it, SHADOW_NONPRESENT_VALUE);
        if (!root.invalid) flush = true;
      }
      if (mem.yields) yield;
      tdpIterNext(it);
    }
    vm.rcu.readUnlock(token);
    return flush;
  }

  /** kvm_tdp_mmu_zap_all: every root's entries become non-present, tables freed through RCU. No flush. */
  *zapAll(): Program<void> {
    const vm = this.vm;
    vm.mmuLock.assertHeld('write');
    const mem = vm.mem;
    for (const root of this.roots) {
      const token = vm.rcu.readLock();
      const it = new TdpIter(mem);
      if (mem.yields) yield;
      for (tdpIterStart(it, root, root.level, 0); it.valid; ) {
        if (isShadowPresentPte(it.oldSpte)) yield* this.iterSetSpte(it, SHADOW_NONPRESENT_VALUE);
        if (mem.yields) yield;
        tdpIterNext(it);
      }
      vm.rcu.readUnlock(token);
    }
  }

  // -------------------------------------------------------------------------
  // Aging (section 4.6): no mmu_lock, only RCU; no flush, no bookkeeping.

  /**
   * kvm_tdp_mmu_age_gfn_range (testOnly false) and kvm_tdp_mmu_test_age_gfn
   * (testOnly true, which stops at the first young SPTE). Returns young.
   *
   * for_each_valid_tdp_mmu_root, tdp_root_for_each_leaf_pte, and for each
   * young leaf kvm_tdp_mmu_age_spte. While nothing can interleave (no
   * scheduler) the loop first lets {@link ageSiblingsDirect} take the entries
   * of the current table it can finish with plain reads (skips and clears of
   * A, the same steps as the loop body's); the body then handles the entry
   * where it stopped, as it handles every entry under a scheduler.
   */
  *ageGfnRange(range: KvmGfnRange, testOnly: boolean): Program<boolean> {
    const vm = this.vm;
    const mem = vm.mem;
    const accLo = this.accessedLo;
    const accHi = this.accessedHi;
    const f = vm.flavour;
    // Before 6.15 aging held mmu_lock for write; before 6.13 an A/D-disabled SPTE had no A bit to test.
    const locked = f.kernel < 615;
    const legacy = f.kernel < 613;
    if (locked) vm.mmuLock.assertHeld('write');
    let young = false;
    const token = vm.rcu.readLock();
    try {
      for (const root of this.validRoots(range.slot.as_id)) {
        const it = new TdpIter(mem);
        if (mem.yields) yield;
        for (tdpIterStart(it, root, PG_LEVEL_4K, range.start); it.valid && it.gfn < range.end; ) {
          if (!locked && !mem.yields && mem.preempt === null && this.ageSiblingsDirect(it, range.end, testOnly || vm.events.kvm_tdp_mmu_spte_changed)) young = true;
          const lo = it.oldLo;
          const hi = it.oldHi;
          if (presentLeaf(lo, it.level === PG_LEVEL_4K) && (legacy ? isAccessedSpte(f, it.oldSpte) : accessedHalves(lo, hi, accLo, accHi))) {
            if (testOnly) return true;
            young = true; // reported young even if the update below loses a race
            if (locked) yield* this.ageSpteLocked(it);
            else if (adEnabledHi(hi)) {
              // kvm_tdp_mmu_age_spte, A/D enabled: an unconditional atomic clear of A (tdp_mmu_clear_spte_bits_atomic).
              if (mem.yields) yield;
              mem.and64(it.sptep, ~accLo, ~accHi);
              it.takeMem();
              this.stats.aged++;
              if (vm.events.kvm_tdp_mmu_spte_changed) {
                const old = it.oldSpte;
                vm.events.emit('kvm_tdp_mmu_spte_changed', { as_id: it.asId, gfn: it.gfn, level: it.level, old_spte: old, new_spte: old & ~f.accessedMask });
              }
            } else yield* this.ageSpteAccessTrack(it);
          }
          if (mem.yields) yield;
          tdpIterNext(it);
        }
      }
      return young;
    } finally {
      vm.rcu.readUnlock(token);
    }
  }

  /**
   * The aging loop's steps over the current entry and the siblings after it
   * in its table, read with plain array reads (PhysMem.directWords): only
   * while nothing can interleave. Each entry gets the loop body's tests in
   * its order (present leaf, accessed, A/D enabled): an entry that is not a
   * young leaf is passed over, a young A/D-enabled leaf gets A cleared and
   * counted, as the body's atomic clear would. It stops, leaving the
   * iterator there as tryStepSide would, at the first entry that needs more
   * (a table to descend into, an A/D-disabled young leaf, any young leaf
   * when `stopAtYoung`: test_young, or a trace event to emit) or at the last
   * entry of the table or the range; the loop body takes that entry. Returns
   * whether it cleared any A.
   */
  private ageSiblingsDirect(it: TdpIter, end: number, stopAtYoung: boolean): boolean {
    const level = it.level;
    // Entries after this one the walk visits: side steps within the table, at gfns below end.
    const n = Math.min(sideStepsLeft(it), Math.ceil((end - it.gfn) / pagesPerHpage(level)) - 1);
    if (n <= 0) return false;
    const mem = this.vm.mem;
    const w0 = mem.wordIndex(it.sptep);
    if (w0 < 0) return false;
    const words = mem.directWords();
    const accLo = this.accessedLo;
    const accHi = this.accessedHi;
    const keepLo = ~accLo;
    const keepHi = ~accHi;
    const at4k = level === PG_LEVEL_4K;
    let w = w0;
    let aged = 0;
    let i = 0;
    // Entry 0 is the one the iterator just read; nothing has written it since.
    for (; i < n; i++, w += 2) {
      const lo = words[w];
      if (!presentLeaf(lo, at4k)) {
        if (presentLo(lo)) break; // a table: the iterator steps down into it
        continue;
      }
      const hi = words[w + 1];
      if (!accessedHalves(lo, hi, accLo, accHi)) continue;
      if (stopAtYoung || !adEnabledHi(hi)) break;
      words[w] = lo & keepLo;
      words[w + 1] = hi & keepHi;
      aged++;
    }
    if (i > 0) tdpIterSideSteps(it, i, words[w], words[w + 1]);
    this.stats.aged += aged;
    return aged !== 0;
  }

  /**
   * Aging before 6.15, under mmu_lock held for write: A/D enabled, clear A
   * (atomically only if the SPTE has volatile bits); A/D disabled, write the
   * access-tracked value, first marking the pfn dirty if the SPTE was
   * writable (before 6.13), since W is lost.
   */
  private *ageSpteLocked(it: TdpIter): Program<void> {
    const vm = this.vm;
    const f = vm.flavour;
    const old = it.oldSpte;
    let neu: bigint;
    if (spteAdEnabled(old)) {
      neu = old & ~f.accessedMask;
      it.oldSpte = yield* tdpMmuClearSpteBits(f, vm.mem, it.sptep, old, f.accessedMask, it.level);
    } else {
      if (f.kernel < 613 && isWritablePte(old)) vm.setPfnDirty(Number(spteToPfn(old)));
      neu = markSpteForAccessTrack(f, old);
      it.oldSpte = yield* kvmTdpMmuWriteSpte(f, vm.mem, it.sptep, old, neu, it.level);
    }
    this.stats.aged++;
    if (vm.events.kvm_tdp_mmu_spte_changed) vm.events.emit('kvm_tdp_mmu_spte_changed', { as_id: it.asId, gfn: it.gfn, level: it.level, old_spte: old, new_spte: neu });
  }

  /**
   * kvm_tdp_mmu_age_spte, A/D disabled: one cmpxchg to the access-tracked
   * value, given up if it fails (the SPTE is being made young or changed).
   */
  private *ageSpteAccessTrack(it: TdpIter): Program<void> {
    const vm = this.vm;
    const old = it.oldSpte;
    const neu = markSpteForAccessTrack(vm.flavour, old);
    if (vm.mem.yields) yield;
    if (this.setSpteAtomicRaw(it, lo32(neu), hi32(neu)) !== 0) {
      this.stats.ageLost++;
      return;
    }
    this.stats.aged++;
    if (vm.events.kvm_tdp_mmu_spte_changed) vm.events.emit('kvm_tdp_mmu_spte_changed', { as_id: it.asId, gfn: it.gfn, level: it.level, old_spte: old, new_spte: neu });
  }

  // -------------------------------------------------------------------------
  // Dirty logging and write protection (section 4.7)

  /**
   * kvm_tdp_mmu_wrprot_slot: clear W (not MMU-writable) on writable leaves
   * at or above minLevel, retrying a lost cmpxchg. mmu_lock held for read.
   */
  *wrprotSlot(slot: KvmMemorySlot, minLevel: number): Program<boolean> {
    const vm = this.vm;
    const mem = vm.mem;
    vm.mmuLock.assertHeld('read');
    let set = false;
    const token = vm.rcu.readLock();
    for (const root of this.validRoots(slot.as_id)) {
      const it = new TdpIter(mem);
      const end = slot.base_gfn + slot.npages;
      if (mem.yields) yield;
      for (tdpIterStart(it, root, minLevel, slot.base_gfn); it.valid && it.gfn < end; ) {
        for (;;) {
          const old = it.oldSpte;
          if (!isShadowPresentPte(old) || !isLastSpte(old, it.level) || (old & PT_WRITABLE_MASK) === 0n) break;
          if (mem.yields) yield;
          const r = this.setSpteAtomic(it, it.oldLo & ~2, it.oldHi); // W is bit 1
          if (this.removedPt !== null) yield* this.handleRemovedPt(this.removedPt, true);
          if (r === 0) {
            set = true;
            break;
          }
        }
        if (mem.yields) yield;
        tdpIterNext(it);
      }
    }
    vm.rcu.readUnlock(token);
    return set;
  }

  /**
   * kvm_tdp_mmu_write_protect_gfn: clear W and MMU-writable on the leaves
   * mapping gfn at or above minLevel (shadow-page write tracking). mmu_lock
   * held for write; the caller must flush when this returns true.
   */
  *writeProtectGfn(slot: KvmMemorySlot, gfn: number, minLevel: number): Program<boolean> {
    const vm = this.vm;
    const mem = vm.mem;
    vm.mmuLock.assertHeld('write');
    let set = false;
    const mask = PT_WRITABLE_MASK | vm.flavour.mmuWritableMask;
    const token = vm.rcu.readLock();
    for (const root of this.validRoots(slot.as_id)) {
      const it = new TdpIter(mem);
      if (mem.yields) yield;
      for (tdpIterStart(it, root, minLevel, gfn); it.valid && it.gfn < gfn + 1; ) {
        if (iterAtPresentLeaf(it)) {
          const old = it.oldSpte;
          const neu = old & ~mask;
          if (neu === old) break;
          yield* this.iterSetSpte(it, neu);
          set = true;
        }
        if (mem.yields) yield;
        tdpIterNext(it);
      }
    }
    vm.rcu.readUnlock(token);
    return set;
  }

  /**
   * kvm_tdp_mmu_clear_dirty_pt_masked with write protection (no PML): for
   * each gfn of `mask` (bit i = gfn base + i, 64 gfns), clear W on its 4K
   * leaf, atomically only when needed. mmu_lock held for write.
   */
  *clearDirtyPtMasked(slot: KvmMemorySlot, base: number, mask: bigint): Program<void> {
    const vm = this.vm;
    const mem = vm.mem;
    vm.mmuLock.assertHeld('write');
    const token = vm.rcu.readLock();
    for (const root of this.validRoots(slot.as_id)) {
      let m = mask;
      while (m !== 0n) {
        let i = 0;
        while (((m >> BigInt(i)) & 1n) === 0n) i++;
        const gfn = base + i;
        const it = new TdpIter(mem);
        if (mem.yields) yield;
        for (tdpIterStart(it, root, PG_LEVEL_4K, gfn); it.valid && it.gfn < gfn + 1; ) {
          if (it.level === PG_LEVEL_4K && isShadowPresentPte(it.oldSpte) && (it.oldSpte & PT_WRITABLE_MASK) !== 0n) {
            const old = it.oldSpte;
            const neu = old & ~PT_WRITABLE_MASK;
            it.oldSpte = yield* tdpMmuClearSpteBits(vm.flavour, mem, it.sptep, old, PT_WRITABLE_MASK, it.level);
            if (vm.events.kvm_tdp_mmu_spte_changed) vm.events.emit('kvm_tdp_mmu_spte_changed', { as_id: it.asId, gfn, level: 1, old_spte: old, new_spte: neu });
          }
          if (mem.yields) yield;
          tdpIterNext(it);
        }
        m &= ~(1n << BigInt(i));
      }
    }
    vm.rcu.readUnlock(token);
  }

  /** Reads the SPTE mapping gfn at `level` (or the deepest present one), for expectations and dumps. No yields: not part of any race. */
  lookup(gfn: number, level?: number, asId = 0): { spte: bigint; level: number; sptep: number } | null {
    const root = this.roots.find((r) => r.asId === asId && !r.invalid);
    if (root === undefined) return null;
    const it = new TdpIter(this.vm.mem);
    let found: { spte: bigint; level: number; sptep: number } | null = null;
    for (tdpIterStart(it, root, PG_LEVEL_4K, gfn); it.valid && it.gfn < gfn + 1; tdpIterNext(it)) {
      if (level !== undefined ? it.level === level : isShadowPresentPte(it.oldSpte) || it.level === PG_LEVEL_4K) {
        found = { spte: it.oldSpte, level: it.level, sptep: it.sptep };
        if (level !== undefined || isLastSpte(it.oldSpte, it.level)) break;
      }
    }
    return found;
  }
}
