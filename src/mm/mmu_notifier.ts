/**
 * The MMU-notifier interface the host mm offers to secondary MMUs, after
 * include/linux/mmu_notifier.h and mm/mmu_notifier.c (mm.md section 1).
 * KVM is a subscriber; the mm knows it only through these ops.
 *
 * Callbacks are programs for the seeded scheduler (src/hw/sched.ts): they
 * yield where a simulated CPU may be preempted, so a test can interleave an
 * invalidation with a vCPU fault. Outside a scheduler they run straight
 * through (see runProgram).
 */

/** enum mmu_notifier_event, in the kernel's order. */
export const enum MmuNotifierEvent {
  Unmap = 0,
  Clear = 1,
  ProtectionVma = 2,
  ProtectionPage = 3,
  SoftDirty = 4,
  Release = 5,
  Migrate = 6,
  Exclusive = 7,
}

export const MMU_NOTIFIER_EVENT_NAMES = [
  'MMU_NOTIFY_UNMAP', 'MMU_NOTIFY_CLEAR', 'MMU_NOTIFY_PROTECTION_VMA', 'MMU_NOTIFY_PROTECTION_PAGE',
  'MMU_NOTIFY_SOFT_DIRTY', 'MMU_NOTIFY_RELEASE', 'MMU_NOTIFY_MIGRATE', 'MMU_NOTIFY_EXCLUSIVE',
] as const;

/** MMU_NOTIFIER_RANGE_BLOCKABLE, the one flag left. */
export const MMU_NOTIFIER_RANGE_BLOCKABLE = 1;

/** struct mmu_notifier_range: [start, end) in bytes of host virtual address. */
export interface MmuNotifierRange {
  readonly start: number;
  readonly end: number;
  readonly event: MmuNotifierEvent;
  readonly flags: number;
  readonly owner: unknown;
}

export type Program<T> = Generator<unknown, T, undefined>;

/** struct mmu_notifier_ops, the subset a secondary MMU with its own page tables implements. */
export interface MmuNotifierOps {
  release(): Program<void>;
  /** Returns nonzero if any mapping in [start, end) was young; clears the accessed state. */
  clearFlushYoung(start: number, end: number): Program<number>;
  clearYoung(start: number, end: number): Program<number>;
  testYoung(address: number): Program<number>;
  /** 0 or -EAGAIN (only when the range is not blockable). */
  invalidateRangeStart(range: MmuNotifierRange): Program<number>;
  invalidateRangeEnd(range: MmuNotifierRange): Program<void>;
}

/**
 * The per-mm subscriber list (struct mmu_notifier_subscriptions, hlist part).
 * Registration inserts at the head, so the last subscriber is called first.
 */
export class MmuNotifierSubscriptions {
  private readonly subs: MmuNotifierOps[] = [];
  /** Calls made, by op name: what a policy cost. */
  readonly calls = new Map<string, number>();

  register(sub: MmuNotifierOps): void {
    if (this.subs.includes(sub)) throw new Error('assertion: subscriber registered twice');
    this.subs.unshift(sub);
  }

  /** mm_has_notifiers. */
  get hasNotifiers(): boolean {
    return this.subs.length > 0;
  }

  private count(op: string): void {
    this.calls.set(op, (this.calls.get(op) ?? 0) + 1);
  }

  /** __mmu_notifier_invalidate_range_start: every subscriber; blocking failures are a bug. */
  *invalidateRangeStart(range: MmuNotifierRange): Program<number> {
    let ret = 0;
    for (const s of this.subs) {
      this.count('invalidate_range_start');
      const r = yield* s.invalidateRangeStart(range);
      if (r !== 0) {
        if (range.flags & MMU_NOTIFIER_RANGE_BLOCKABLE) throw new Error('assertion: blockable invalidate_range_start failed');
        ret = r;
      }
    }
    if (ret !== 0) yield* this.invalidateRangeEnd(range); // a failed non-blocking start ends itself
    return ret;
  }

  *invalidateRangeEnd(range: MmuNotifierRange): Program<void> {
    for (const s of this.subs) {
      this.count('invalidate_range_end');
      yield* s.invalidateRangeEnd(range);
    }
  }

  /** __mmu_notifier_clear_flush_young: every subscriber, results ORed. */
  *clearFlushYoung(start: number, end: number): Program<number> {
    let young = 0;
    for (const s of this.subs) {
      this.count('clear_flush_young');
      young |= yield* s.clearFlushYoung(start, end);
    }
    return young;
  }

  /** __mmu_notifier_clear_young: every subscriber, results ORed. */
  *clearYoung(start: number, end: number): Program<number> {
    let young = 0;
    for (const s of this.subs) {
      this.count('clear_young');
      young |= yield* s.clearYoung(start, end);
    }
    return young;
  }

  /** __mmu_notifier_test_young: stops at the first young subscriber. */
  *testYoung(address: number): Program<number> {
    for (const s of this.subs) {
      this.count('test_young');
      if ((yield* s.testYoung(address)) !== 0) return 1;
    }
    return 0;
  }

  /** __mmu_notifier_release: every subscriber once, then all are unhooked. */
  *release(): Program<void> {
    const subs = this.subs.splice(0);
    for (const s of subs) {
      this.count('release');
      yield* s.release();
    }
  }
}
