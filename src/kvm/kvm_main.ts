/**
 * The MMU-notifier callbacks KVM implements (virt/kvm/kvm_main.c, Linux
 * 6.17; kvm-mmu.md section 6): the invalidation counters a fault checks
 * (mmu_invalidate_seq, in-progress count, range), the lockless memslot walk
 * kvm_handle_hva_range, and the subscriber the host mm calls.
 */
import type { MmuNotifierOps, MmuNotifierRange, Program } from '../mm/mmu_notifier.js';
import type { MmuLockUser } from './locks.js';
import type { KvmGfnRange } from './memslots.js';
import type { Kvm } from './vm.js';

/** INVALID_GPA as a gfn bound. */
const INVALID_GFN = -1;

/** kvm->mmu_invalidate_* and mn_active_invalidate_count. */
export class MmuInvalidate {
  seq = 0;
  inProgress = 0;
  rangeStart = INVALID_GFN;
  rangeEnd = INVALID_GFN;
  /** mn_active_invalidate_count: memslot updates wait for zero. */
  mnActive = 0;

  /** kvm_mmu_invalidate_begin (mmu_lock held for write). */
  begin(): void {
    this.inProgress++;
    if (this.inProgress === 1) {
      this.rangeStart = INVALID_GFN;
      this.rangeEnd = INVALID_GFN;
    }
  }

  /** kvm_mmu_invalidate_range_add: widen to the union of overlapping invalidations. */
  rangeAdd(start: number, end: number): void {
    if (this.rangeStart === INVALID_GFN) {
      this.rangeStart = start;
      this.rangeEnd = end;
    } else {
      this.rangeStart = Math.min(this.rangeStart, start);
      this.rangeEnd = Math.max(this.rangeEnd, end);
    }
  }

  /** kvm_mmu_invalidate_end: the sequence moves before the count drops. */
  end(): void {
    if (this.rangeStart === INVALID_GFN) throw new Error('assertion: invalidation ended without a range ever added');
    this.seq++;
    this.inProgress--;
    if (this.inProgress < 0) throw new Error('assertion (BUG): mmu_invalidate_in_progress went negative');
  }

  /**
   * mmu_invalidate_retry_gfn: an invalidation covering gfn is in progress
   * (or one without a range, a KVM bug), or one finished since the snapshot.
   */
  retryGfn(mmuSeq: number, gfn: number): boolean {
    if (this.inProgress !== 0) {
      if (this.rangeStart === INVALID_GFN) return true;
      if (gfn >= this.rangeStart && gfn < this.rangeEnd) return true;
    }
    return this.seq !== mmuSeq;
  }
}

type GfnHandler = (kvm: Kvm, range: KvmGfnRange) => Program<boolean>;

interface HvaRange {
  start: number;
  end: number;
  handler: GfnHandler | null;
  onLock: ((kvm: Kvm) => void) | null;
  flushOnRet: boolean;
  lockless: boolean;
  /** Who takes mmu_lock, for MmuLockStats. */
  user: MmuLockUser;
}

/**
 * kvm_handle_hva_range: under SRCU, for each memslot overlapping the hva
 * range, call the handler on the clipped gfn range; the first match takes
 * mmu_lock for write unless the walk is lockless. Returns whether any
 * handler returned true, and whether a slot was found.
 */
function* kvmHandleHvaRange(kvm: Kvm, r: HvaRange): Program<{ ret: boolean; foundMemslot: boolean }> {
  if (r.end <= r.start) throw new Error('assertion: empty hva range');
  if (r.handler === null && r.onLock === null) throw new Error('assertion: a null handler needs on_lock');
  if (r.lockless && r.onLock !== null) throw new Error('assertion: a lockless walk cannot have on_lock');
  const idx = kvm.srcu.readLock();
  let ret = false;
  let locked = false;
  let found = false;
  try {
    for (const range of kvm.memslots.hvaRangeGfnRanges(r.start, r.end)) {
      if (!found) {
        found = true;
        if (!r.lockless) {
          yield* kvm.mmuLock.writeLock(r.user);
          locked = true;
          r.onLock?.(kvm);
          if (r.handler === null) break;
        }
      }
      if (r.handler !== null && (yield* r.handler(kvm, range))) ret = true;
    }
    if (r.flushOnRet && ret) kvm.flushRemoteTlbs();
  } finally {
    if (locked) kvm.mmuLock.writeUnlock();
    kvm.srcu.readUnlock(idx);
  }
  return { ret, foundMemslot: found };
}

/** kvm_mmu_unmap_gfn_range: record the range, then zap (mmu_lock held for write). */
function* kvmMmuUnmapGfnRange(kvm: Kvm, range: KvmGfnRange): Program<boolean> {
  kvm.invalidate.rangeAdd(range.start, range.end);
  return yield* kvm.tdpMmu.unmapGfnRange(range, false);
}

/**
 * kvm_may_have_shadow_mmu_sptes: with the TDP MMU, shadow SPTEs exist only
 * while indirect shadow pages do (read without locks; a stale value is harmless).
 */
export function kvmMayHaveShadowMmuSptes(kvm: Kvm): boolean {
  return kvm.indirectShadowPages !== 0;
}

/** kvm_age_gfn: x86 ages without mmu_lock (KVM_MMU_LOCKLESS_AGING); both MMUs are aged. */
function* kvmAgeGfn(kvm: Kvm, range: KvmGfnRange): Program<boolean> {
  let young = yield* kvm.tdpMmu.ageGfnRange(range, false);
  if (kvmMayHaveShadowMmuSptes(kvm)) young = (yield* kvm.rmaps(range.slot).ageGfnRange(range, false)) || young;
  return young;
}

/** kvm_test_age_gfn: the rmaps are not walked when the TDP MMU already says young. */
function* kvmTestAgeGfn(kvm: Kvm, range: KvmGfnRange): Program<boolean> {
  if (yield* kvm.tdpMmu.ageGfnRange(range, true)) return true;
  if (kvmMayHaveShadowMmuSptes(kvm)) return yield* kvm.rmaps(range.slot).ageGfnRange(range, true);
  return false;
}

/** KVM's struct mmu_notifier: what the host mm calls. */
export class KvmMmuNotifier implements MmuNotifierOps {
  constructor(private readonly kvm: Kvm) {}

  /** kvm_mmu_notifier_invalidate_range_start. */
  *invalidateRangeStart(range: MmuNotifierRange): Program<number> {
    const kvm = this.kvm;
    if (kvm.events.kvm_unmap_hva_range) kvm.events.emit('kvm_unmap_hva_range', { start: range.start, end: range.end });
    // Memslot updates wait until every started invalidation has ended, so start and end see the same slots.
    kvm.invalidate.mnActive++;
    yield* kvmHandleHvaRange(kvm, {
      start: range.start, end: range.end, handler: kvmMmuUnmapGfnRange, onLock: (k) => k.invalidate.begin(), flushOnRet: true, lockless: false, user: 'invalidate',
    });
    return 0;
  }

  /** kvm_mmu_notifier_invalidate_range_end. */
  *invalidateRangeEnd(range: MmuNotifierRange): Program<void> {
    const kvm = this.kvm;
    yield* kvmHandleHvaRange(kvm, {
      start: range.start, end: range.end, handler: null, onLock: (k) => k.invalidate.end(), flushOnRet: false, lockless: false, user: 'invalidate',
    });
    if (kvm.invalidate.mnActive === 0) throw new Error('assertion: invalidate_range_end without a start');
    kvm.invalidate.mnActive--;
  }

  /** kvm_mmu_notifier_clear_flush_young: x86 elides the flush (KVM_ELIDE_TLB_FLUSH_IF_YOUNG). */
  *clearFlushYoung(start: number, end: number): Program<number> {
    if (this.kvm.events.kvm_age_hva) this.kvm.events.emit('kvm_age_hva', { start, end });
    return (yield* this.ageHvaRange(start, end, kvmAgeGfn)) ? 1 : 0;
  }

  /** kvm_mmu_notifier_clear_young. */
  *clearYoung(start: number, end: number): Program<number> {
    if (this.kvm.events.kvm_age_hva) this.kvm.events.emit('kvm_age_hva', { start, end });
    return (yield* this.ageHvaRange(start, end, kvmAgeGfn)) ? 1 : 0;
  }

  /** kvm_mmu_notifier_test_young: one byte at address. */
  *testYoung(address: number): Program<number> {
    if (this.kvm.events.kvm_test_age_hva) this.kvm.events.emit('kvm_test_age_hva', { hva: address });
    return (yield* this.ageHvaRange(address, address + 1, kvmTestAgeGfn)) ? 1 : 0;
  }

  /** kvm_mmu_notifier_release: drop every mapping (kvm_flush_shadow_all). */
  *release(): Program<void> {
    const kvm = this.kvm;
    const idx = kvm.srcu.readLock();
    yield* kvm.mmuLock.writeLock();
    yield* kvm.tdpMmu.zapAll();
    kvm.mmuLock.writeUnlock();
    kvm.srcu.readUnlock(idx);
  }

  /** kvm_age_hva_range: lockless on x86 since 6.15 (under mmu_lock for write before); no flush on return. */
  private *ageHvaRange(start: number, end: number, handler: GfnHandler): Program<boolean> {
    const lockless = this.kvm.flavour.kernel >= 615;
    return (yield* kvmHandleHvaRange(this.kvm, { start, end, handler, onLock: null, flushOnRet: false, lockless, user: 'aging' })).ret;
  }
}
