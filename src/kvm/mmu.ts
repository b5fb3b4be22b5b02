/**
 * The vCPU side of a TDP fault (arch/x86/kvm/mmu/mmu.c and the exit
 * handlers of vmx.c / svm.c, Linux 6.17): exit information to a page-fault
 * error code, fast_page_fault, kvm_mmu_faultin_pfn with its
 * mmu_invalidate_seq snapshot, huge-page adjustment, is_page_fault_stale and
 * kvm_tdp_mmu_map under mmu_lock held for read.
 */
import { AccessResult, Outcome } from '../hw/result.js';
import { runProgram } from '../hw/sched.js';
import type { Program } from '../mm/mmu_notifier.js';
import { KVM_MEM_READONLY, markPageDirtyInSlot, slotDirtyLogging, type KvmMemorySlot } from './memslots.js';
import {
  PG_LEVEL_1G, PG_LEVEL_4K, PT_WRITABLE_MASK, isAccessAllowed, isAccessTrackSpte, isLastSpte, isMmioSpte, isMmuWritableSpte,
  isShadowPresentPte, isWritablePte, restoreAccTrackSpte, checkMmioSpte, FROZEN_SPTE,
} from './spte.js';
import { hi32, join64, lo32 } from '../hw/halves.js';
import { pagesPerHpage } from './tdp_iter.js';
import { PT_POISON, RetPf, type KvmPageFault } from './tdp_mmu.js';
import type { Kvm, KvmVcpu } from './vm.js';

export const PFERR_PRESENT_MASK = 1 << 0;
export const PFERR_WRITE_MASK = 1 << 1;
export const PFERR_USER_MASK = 1 << 2;
export const PFERR_RSVD_MASK = 1 << 3;
export const PFERR_FETCH_MASK = 1 << 4;
/** Bits 32 and 33 of the 64-bit error code. */
export const PFERR_GUEST_FINAL_MASK = 2 ** 32;
export const PFERR_GUEST_PAGE_MASK = 2 ** 33;

/** -EFAULT from the fault path: the gfn's host memory is gone; KVM_RUN fails. */
export const EFAULT = -14;

const EPT_VIOLATION_ACC_READ = 1 << 0;
const EPT_VIOLATION_ACC_WRITE = 1 << 1;
const EPT_VIOLATION_ACC_INSTR = 1 << 2;
const EPT_VIOLATION_PROT_MASK = 7 << 3;
const EPT_VIOLATION_GVA_IS_VALID = 1 << 7;
const EPT_VIOLATION_GVA_TRANSLATED = 1 << 8;

/** __vmx_handle_ept_violation: the exit qualification as a #PF-style error code. */
export function eptViolationErrorCode(qual: number): number {
  let ec = qual & EPT_VIOLATION_ACC_READ ? PFERR_USER_MASK : 0;
  if (qual & EPT_VIOLATION_ACC_WRITE) ec |= PFERR_WRITE_MASK;
  if (qual & EPT_VIOLATION_ACC_INSTR) ec |= PFERR_FETCH_MASK;
  if (qual & EPT_VIOLATION_PROT_MASK) ec |= PFERR_PRESENT_MASK;
  if (qual & EPT_VIOLATION_GVA_IS_VALID) ec += qual & EPT_VIOLATION_GVA_TRANSLATED ? PFERR_GUEST_FINAL_MASK : PFERR_GUEST_PAGE_MASK;
  return ec;
}

/**
 * Handles one EPT violation, EPT misconfiguration or NPF exit: the exit
 * handler, then kvm_mmu_page_fault and, in line, kvm_tdp_mmu_page_fault:
 * fast path, kvm_mmu_faultin_pfn, then kvm_tdp_mmu_map under mmu_lock held
 * for read. The kernel functions that never give way to another CPU are
 * plain functions here; their program steps (the smp_rmb points, the lock)
 * sit in this one program, since every generator layer costs a fault-in
 * tens of nanoseconds. Returns the RET_PF_* result, or EFAULT.
 */
export function* kvmMmuPageFault(kvm: Kvm, vcpu: KvmVcpu, exit: AccessResult): Program<RetPf | typeof EFAULT> {
  // Straight-line work is in plain functions: every value the program keeps costs each fault.
  const fault = beginPageFault(kvm, vcpu, exit);
  let r: RetPf | typeof EFAULT = RetPf.Invalid;
  if (fault.rsvd) r = yield* handleMmioPageFault(kvm, vcpu, fault);
  // kvm_tdp_mmu_page_fault, when the MMIO path did not settle the fault.
  if (r === RetPf.Invalid && pageFaultCanBeFast(kvm, fault)) r = yield* fastPageFault(kvm, vcpu, fault);
  if (r === RetPf.Invalid) {
    // kvm_mmu_faultin_pfn: the snapshot, smp_rmb, the pfn, and the unlocked re-check.
    fault.mmuSeq = kvm.invalidate.seq;
    if (kvm.mem.yields) yield; // smp_rmb: the snapshot comes before the pfn
    r = kvmMmuFaultinPfn(kvm, fault);
    if (r === RetPf.Continue && fault.slot !== null) {
      if (kvm.mem.yields) yield;
      if (retryGfnUnsafe(kvm, fault)) r = RetPf.Retry;
    }
  }
  if (r === RetPf.Continue) {
    r = RetPf.Retry;
    // read_lock(&kvm->mmu_lock), uncontended without a program of its own when nothing interleaves.
    if (kvm.mem.yields || !kvm.mmuLock.readTrylock('fault')) yield* kvm.mmuLock.readLock('fault');
    try {
      // kvm_tdp_mmu_map begins with kvm_mmu_hugepage_adjust, under the lock.
      if (mapPrepare(kvm, fault)) r = yield* kvm.tdpMmu.map(fault, vcpu.iter, 0);
    } finally {
      kvm.mmuLock.readUnlock('fault');
    }
  }
  countResult(kvm, r);
  return r;
}

/**
 * kvmMmuPageFault as plain code, for a caller that nothing can interleave
 * (!mem.yields): the same steps without the program's yields, so a fault
 * runs no generator at all (each one costs a fault-in over 100 ns). The
 * rare paths (MMIO, fast page fault, a contended lock) still run as
 * programs, to their ends. test/kvm/plain_twins.test.ts checks that the two
 * texts say the same apart from the program steps.
 */
export function kvmMmuPageFaultNow(kvm: Kvm, vcpu: KvmVcpu, exit: AccessResult): RetPf | typeof EFAULT {
  const fault = beginPageFault(kvm, vcpu, exit);
  let r: RetPf | typeof EFAULT = RetPf.Invalid;
  if (fault.rsvd) r = runProgram(handleMmioPageFault(kvm, vcpu, fault));
  if (r === RetPf.Invalid && pageFaultCanBeFast(kvm, fault)) r = runProgram(fastPageFault(kvm, vcpu, fault));
  if (r === RetPf.Invalid) {
    fault.mmuSeq = kvm.invalidate.seq;
    r = kvmMmuFaultinPfn(kvm, fault);
    if (r === RetPf.Continue && fault.slot !== null) {
      if (retryGfnUnsafe(kvm, fault)) r = RetPf.Retry;
    }
  }
  if (r === RetPf.Continue) {
    r = RetPf.Retry;
    if (!kvm.mmuLock.readTrylock('fault')) runProgram(kvm.mmuLock.readLock('fault'));
    try {
      if (mapPrepare(kvm, fault)) r = kvm.tdpMmu.mapNow(fault, vcpu.iter, 0);
    } finally {
      kvm.mmuLock.readUnlock('fault');
    }
  }
  countResult(kvm, r);
  return r;
}

/**
 * The exit handler and kvm_mmu_page_fault up to the first program step: the
 * error code, the count, the kvm_page_fault event, and the vCPU's fault
 * initialised (kvm_mmu_do_page_fault).
 */
function beginPageFault(kvm: Kvm, vcpu: KvmVcpu, exit: AccessResult): KvmPageFault {
  let errorCode: number;
  if (exit.outcome === Outcome.EptViolation) errorCode = eptViolationErrorCode(exit.qualification);
  else if (exit.outcome === Outcome.EptMisconfig) errorCode = PFERR_RSVD_MASK;
  else if (exit.outcome === Outcome.Npf) errorCode = exit.exitinfo1;
  else throw new Error(`assertion: exit ${exit.outcome} is not a TDP fault`);
  const gpa = exit.gpa;
  kvm.stats.pageFaults++;
  if (kvm.events.kvm_page_fault) kvm.events.emit('kvm_page_fault', { vcpu_id: vcpu.id, fault_address: gpa, error_code: errorCode });
  return initFault(vcpu.fault, kvm, gpa, errorCode);
}

/** kvm_tdp_mmu_page_fault under mmu_lock before kvm_tdp_mmu_map: false when the fault is stale; else the huge-page adjustment. */
function mapPrepare(kvm: Kvm, fault: KvmPageFault): boolean {
  if (isPageFaultStale(kvm, fault)) return false;
  hugepageAdjust(kvm, fault);
  return true;
}

function countResult(kvm: Kvm, r: RetPf | typeof EFAULT): void {
  const s = kvm.stats;
  if (r === RetPf.Fixed) s.pfFixed++;
  else if (r === RetPf.Spurious) s.pfSpurious++;
  else if (r === RetPf.Retry) s.pfRetry++;
  else if (r === RetPf.Emulate) s.pfEmulate++;
  else if (r === RetPf.WriteProtected) s.pfWriteProtected++;
}

/** A blank struct kvm_page_fault, one per vCPU (it lives on the kernel stack). */
export function newFault(): KvmPageFault {
  return {
    addr: 0, gfn: 0, errorCode: 0, exec: false, write: false, present: false, rsvd: false, prefetch: false, slot: null,
    pfn: 0, mapWritable: false, maxLevel: PG_LEVEL_1G, reqLevel: PG_LEVEL_4K, goalLevel: PG_LEVEL_4K, hugePageDisallowed: false, mmuSeq: 0,
  };
}

/** kvm_mmu_do_page_fault's initialisation of the fault, with the slot looked up up front. */
function initFault(fault: KvmPageFault, kvm: Kvm, gpa: number, errorCode: number): KvmPageFault {
  const gfn = Math.floor(gpa / 4096);
  fault.addr = gpa;
  fault.gfn = gfn;
  fault.errorCode = errorCode;
  fault.exec = (errorCode & PFERR_FETCH_MASK) !== 0;
  fault.write = (errorCode & PFERR_WRITE_MASK) !== 0;
  fault.present = (errorCode & PFERR_PRESENT_MASK) !== 0;
  fault.rsvd = (errorCode & PFERR_RSVD_MASK) !== 0;
  fault.prefetch = false;
  fault.slot = kvm.memslots.gfnToMemslot(gfn);
  fault.pfn = 0;
  fault.mapWritable = false;
  fault.maxLevel = PG_LEVEL_1G;
  fault.reqLevel = PG_LEVEL_4K;
  fault.goalLevel = PG_LEVEL_4K;
  fault.hugePageDisallowed = false;
  fault.mmuSeq = 0;
  return fault;
}

/**
 * handle_mmio_page_fault: a reserved-bit fault must come from an MMIO SPTE.
 * A current one is emulated; a stale generation falls back to the normal
 * fault. Anything else means the CPU read an entry KVM never wrote: a freed
 * (poisoned) table or a stale cached one, which the model reports loudly.
 */
function* handleMmioPageFault(kvm: Kvm, vcpu: KvmVcpu, fault: KvmPageFault): Program<RetPf> {
  const it = vcpu.iter;
  const token = kvm.rcu.readLock();
  const sptep = yield* kvm.tdpMmu.fastPfGetLastSptep(fault.gfn, it);
  kvm.rcu.readUnlock(token);
  const spte = it.oldSpte;
  if (sptep >= 0 && isMmioSpte(kvm.flavour, spte)) {
    if (!checkMmioSpte(spte, kvm.memslotsGeneration())) return RetPf.Invalid;
    return RetPf.Emulate;
  }
  const poisoned = spte === PT_POISON ? ' (KVM reads poison there: the table was freed)' : '';
  throw new Error(
    `assertion: reserved-bit fault at gpa 0x${fault.addr.toString(16)} but KVM's SPTE is 0x${spte.toString(16)}${poisoned}: ` +
      'the CPU walked a page table KVM freed or a translation it should have flushed',
  );
}

/** is_page_fault_stale: an invalidation covering the gfn ran or is running since the snapshot. */
export function isPageFaultStale(kvm: Kvm, fault: KvmPageFault): boolean {
  return fault.slot !== null && kvm.invalidate.retryGfn(fault.mmuSeq, fault.gfn);
}

/** mmu_invalidate_retry_gfn_unsafe: the same test without mmu_lock; a hint, followed by the locked check. */
function retryGfnUnsafe(kvm: Kvm, fault: KvmPageFault): boolean {
  return kvm.invalidate.retryGfn(fault.mmuSeq, fault.gfn);
}

/**
 * kvm_mmu_faultin_pfn between the caller's mmu_invalidate_seq snapshot and
 * its last re-check: the unlocked check for a racing invalidation, then gfn
 * -> hva -> pfn through the host mm (hva_to_pfn faults the host page in).
 * A gfn with no memslot continues to an MMIO SPTE when MMIO caching is on.
 */
function kvmMmuFaultinPfn(kvm: Kvm, fault: KvmPageFault): RetPf | typeof EFAULT {
  const slot = fault.slot;
  if (slot === null) {
    // kvm_handle_noslot_fault: cache an MMIO SPTE when MMIO caching is on, else emulate right away.
    if (!kvm.flavour.mmioCachingEnabled || fault.gfn >= kvm.maxGfn) return RetPf.Emulate;
    return RetPf.Continue;
  }
  if (retryGfnUnsafe(kvm, fault)) return RetPf.Retry;
  if ((slot.flags & KVM_MEM_READONLY) !== 0 && fault.write) return RetPf.Emulate; // KVM_PFN_ERR_RO_FAULT
  const got = kvm.mm.hvaToPfn(gfnToHva(slot, fault.gfn), fault.write);
  if (!got.ok) return EFAULT;
  fault.pfn = got.pfn;
  fault.mapWritable = got.writable && (slot.flags & KVM_MEM_READONLY) === 0;
  return RetPf.Continue;
}

/** __gfn_to_hva_memslot. */
function gfnToHva(slot: KvmMemorySlot, gfn: number): number {
  return slot.userspace_addr + (gfn - slot.base_gfn) * 4096;
}

/**
 * kvm_mmu_hugepage_adjust: map with the largest page that the memslot's
 * alignment (lpage_info) and the host mapping both allow, unless the slot is
 * dirty-logged.
 */
function hugepageAdjust(kvm: Kvm, fault: KvmPageFault): void {
  fault.hugePageDisallowed = false; // the NX huge-page mitigation is off
  const slot = fault.slot;
  if (slot === null || fault.maxLevel === PG_LEVEL_4K || slotDirtyLogging(slot)) return;
  const host = kvm.mm.hostMappingLevel(gfnToHva(slot, fault.gfn));
  let level = Math.min(fault.maxLevel, host);
  while (level > PG_LEVEL_4K && !lpageAllowed(kvm, slot, fault.gfn, level)) level--;
  fault.reqLevel = level;
  if (level === PG_LEVEL_4K) return;
  fault.goalLevel = level;
  const n = pagesPerHpage(level);
  fault.pfn -= fault.pfn % n;
}

/**
 * lpage_info: the huge page lies inside the slot, gfn and hva agree in
 * alignment, and no gfn inside it is write-tracked (kvm_mmu_gfn_disallow_lpage).
 */
function lpageAllowed(kvm: Kvm, slot: KvmMemorySlot, gfn: number, level: number): boolean {
  const n = pagesPerHpage(level);
  const base = gfn - (gfn % n);
  if (base < slot.base_gfn || base + n > slot.base_gfn + slot.npages) return false;
  if ((slot.base_gfn - slot.userspace_addr / 4096) % n !== 0) return false;
  return !kvm.anyWriteTracked(base, base + n);
}

/** page_fault_can_be_fast. */
function pageFaultCanBeFast(kvm: Kvm, fault: KvmPageFault): boolean {
  if (fault.rsvd) return false;
  if (!fault.present) return !kvm.flavour.adEnabled; // could be an access-tracked SPTE
  return fault.write; // a write-protection violation
}

/**
 * fast_page_fault (the caller checked page_fault_can_be_fast): fix an access-tracked or write-protected (but
 * MMU-writable) leaf with one cmpxchg, without mmu_lock, retrying a lost
 * cmpxchg at most four times.
 */
function* fastPageFault(kvm: Kvm, vcpu: KvmVcpu, fault: KvmPageFault): Program<RetPf> {
  const f = kvm.flavour;
  const mem = kvm.mem;
  const it = vcpu.iter;
  let ret = RetPf.Invalid;
  let retries = 0;
  let spte = 0n;
  let sptep = -1;
  const token = kvm.rcu.readLock();
  for (;;) {
    sptep = yield* kvm.tdpMmu.fastPfGetLastSptep(fault.gfn, it);
    spte = sptep < 0 ? FROZEN_SPTE : it.oldSpte;
    if (!isShadowPresentPte(spte)) break;
    if (!isLastSpte(spte, it.level)) break;
    if (isAccessAllowed(f, fault, spte)) {
      ret = RetPf.Spurious; // another vCPU fixed it, or a stale TLB entry faulted
      break;
    }
    let neu = spte;
    if (!f.adEnabled && isAccessTrackSpte(f, spte)) neu = restoreAccTrackSpte(f, neu) | f.accessedMask;
    if (fault.write && isMmuWritableSpte(f, spte)) {
      neu |= PT_WRITABLE_MASK;
      // A huge SPTE in a dirty-logged slot must be split by the slow path, or only its first page is logged.
      if (it.level > PG_LEVEL_4K && fault.slot !== null && slotDirtyLogging(fault.slot)) break;
    }
    if (neu === spte || !isAccessAllowed(f, fault, neu)) break;
    // fast_pf_fix_direct_spte
    if (mem.yields) yield;
    if (mem.cmpxchg64(sptep, lo32(spte), hi32(spte), lo32(neu), hi32(neu))) {
      if (isWritablePte(neu) && !isWritablePte(spte) && fault.slot !== null) markPageDirtyInSlot(fault.slot, fault.gfn);
      ret = RetPf.Fixed;
      break;
    }
    if (++retries > 4) break;
  }
  kvm.rcu.readUnlock(token);
  if (kvm.events.fast_page_fault) {
    mem.load64(Math.max(sptep, 0));
    kvm.events.emit('fast_page_fault', {
      vcpu_id: vcpu.id, cr2_or_gpa: fault.addr, error_code: fault.errorCode, sptep, old_spte: spte,
      new_spte: sptep < 0 ? 0n : join64(mem.lo, mem.hi), ret,
    });
  }
  if (ret !== RetPf.Invalid) kvm.stats.pfFast++;
  return ret;
}
