/**
 * Interval notifiers (struct mmu_interval_notifier, mm/mmu_notifier.c; mm.md
 * section 1.5): subscriptions to a VA interval, called through one op,
 * invalidate(range, cur_seq), with a collision-retry protocol over the
 * mm-wide invalidate_seq.
 *
 * invalidate_seq starts at 2 and is even while no invalidation hits an
 * interval. The first start that hits one makes it odd; the last end of the
 * overlapping invalidations makes it even again, then applies the tree
 * inserts/removes deferred meanwhile and wakes the waiters. While it is odd
 * the tree does not change, so a walk over the hit intervals may yield.
 */
import type { MmuNotifierRange, Program } from './mmu_notifier.js';
import type { SimCpu } from './mmu_notifier_srcu.js';

export const EOVERFLOW = 75;
/** Stands in for ~0UL: above every user address and exact in a double. */
export const ULONG_MAX = Number.MAX_SAFE_INTEGER;

/** struct mmu_interval_notifier_ops. */
export interface MmuIntervalNotifierOps {
  /**
   * Must call sub.setSeq(curSeq) under the driver's lock, then stop using
   * mappings in range. Returns false only when it would have to sleep and
   * the range is not blockable.
   */
  invalidate(sub: MmuIntervalNotifier, range: MmuNotifierRange, curSeq: number): Program<boolean>;
}

/** Reports a WARN_ON of the core to its subscriptions' warning list. */
export type WarnFn = (kind: 'interval-remove-not-inserted' | 'interval-insert-while-invalidating', detail: string) => void;

/** struct mmu_interval_notifier: [start, last] inclusive, as the interval tree stores it. */
export class MmuIntervalNotifier {
  start = 0;
  last = 0;
  ops: MmuIntervalNotifierOps | null = null;
  /** The mm's interval state (interval_sub->mm); null before insert and after remove. */
  itree: MmuItree | null = null;
  invalidateSeq = 0;
  /** In the interval tree (!RB_EMPTY_NODE). */
  inTree = false;
  /** On the deferred list, waiting for the final inv_end. */
  deferred = false;

  /** mmu_interval_set_seq: called by invalidate with the (odd) cur_seq. */
  setSeq(curSeq: number): void {
    this.invalidateSeq = curSeq;
  }

  /** mmu_interval_read_retry: under the driver's lock, true if an invalidation collided since read_begin. */
  readRetry(seq: number): boolean {
    return this.invalidateSeq !== seq;
  }

  /** mmu_interval_check_retry: the same test without the lock; true is reliable, false only a hint. */
  checkRetry(seq: number): boolean {
    return this.invalidateSeq !== seq;
  }

  /** mmu_interval_read_begin. */
  readBegin(): Program<number> {
    return this.mustItree().readBegin(this);
  }

  /** mmu_interval_notifier_remove. */
  remove(): Program<void> {
    return this.mustItree().remove(this);
  }

  private mustItree(): MmuItree {
    if (this.itree === null) throw new Error('assertion: interval notifier not inserted');
    return this.itree;
  }
}

/** The interval part of struct mmu_notifier_subscriptions. */
export class MmuItree {
  invalidateSeq = 2;
  activeInvalidateRanges = 0;
  /** The interval tree, in its in-order (start) order. */
  private readonly tree: MmuIntervalNotifier[] = [];
  /** deferred_list: added at the head. */
  private readonly deferredList: MmuIntervalNotifier[] = [];
  /** wake_up_all(&wq) calls, and scheduler steps spent in wait_event. */
  wakeUps = 0;
  waits = 0;

  constructor(private readonly cpu: SimCpu, private readonly warn: WarnFn) {}

  /** mn_itree_is_invalidating: an invalidation hit an interval and has not ended. */
  get isInvalidating(): boolean {
    return this.invalidateSeq % 2 === 1;
  }

  get intervals(): readonly MmuIntervalNotifier[] {
    return this.tree;
  }

  get deferred(): readonly MmuIntervalNotifier[] {
    return this.deferredList;
  }

  /** mn_itree_inv_start_range: count the range in; if it hits an interval, make seq odd. */
  invStartRange(range: MmuNotifierRange): { first: MmuIntervalNotifier | null; seq: number } {
    this.activeInvalidateRanges++;
    const first = this.nextOverlap(0, range);
    if (first !== null) this.invalidateSeq |= 1;
    return { first, seq: this.invalidateSeq };
  }

  /** mn_itree_inv_next. */
  invNext(sub: MmuIntervalNotifier, range: MmuNotifierRange): MmuIntervalNotifier | null {
    return this.nextOverlap(this.tree.indexOf(sub) + 1, range);
  }

  private nextOverlap(from: number, range: MmuNotifierRange): MmuIntervalNotifier | null {
    const last = range.end - 1;
    for (let i = from; i < this.tree.length; i++) {
      const s = this.tree[i];
      if (s.start > last) return null; // sorted by start
      if (s.last >= range.start) return s;
    }
    return null;
  }

  /** mn_itree_inv_end: the last end of a hitting invalidation makes seq even, applies deferred changes, wakes. */
  invEnd(): void {
    if (this.activeInvalidateRanges === 0) throw new Error('assertion: mn_itree_inv_end without a start');
    if (--this.activeInvalidateRanges !== 0 || !this.isInvalidating) return;
    this.invalidateSeq++;
    for (const s of this.deferredList.splice(0)) {
      s.deferred = false;
      if (!s.inTree) this.treeInsert(s);
      else this.treeRemove(s);
    }
    this.wakeUps++;
  }

  /** __mmu_interval_notifier_insert: 0 or -EOVERFLOW. */
  insert(sub: MmuIntervalNotifier, start: number, length: number, ops: MmuIntervalNotifierOps): number {
    if (sub.itree !== null) throw new Error('assertion: interval notifier inserted twice');
    if (length <= 0 || start + (length - 1) > ULONG_MAX) return -EOVERFLOW;
    sub.ops = ops;
    sub.start = start;
    sub.last = start + length - 1;
    sub.itree = this;
    if (this.activeInvalidateRanges !== 0) {
      // Some range is being invalidated and may cover this one: the new
      // subscription starts out colliding (its seq equals the odd mm seq).
      if (this.isInvalidating) {
        sub.deferred = true;
        this.deferredList.unshift(sub);
      } else {
        this.invalidateSeq |= 1;
        this.treeInsert(sub);
      }
      sub.invalidateSeq = this.invalidateSeq;
    } else {
      if (this.isInvalidating) this.warn('interval-insert-while-invalidating', 'seq odd with no active range');
      sub.invalidateSeq = this.invalidateSeq - 1; // odd and not equal: read_begin does not wait
      this.treeInsert(sub);
    }
    return 0;
  }

  /** mmu_interval_read_begin: waits while this subscription is being invalidated. */
  *readBegin(sub: MmuIntervalNotifier): Program<number> {
    const seq = sub.invalidateSeq;
    if (seq === this.invalidateSeq) yield* this.waitWhileSeq(seq, 'mmu_interval_read_begin');
    return seq;
  }

  /** mmu_interval_notifier_remove: deferred while invalidating, and then waits for the final end. */
  *remove(sub: MmuIntervalNotifier): Program<void> {
    let seq = 0;
    if (this.isInvalidating) {
      if (!sub.inTree) {
        // Its insert is still deferred: cancel it.
        const i = this.deferredList.indexOf(sub);
        if (i < 0) throw new Error('assertion: interval notifier neither in the tree nor deferred');
        this.deferredList.splice(i, 1);
        sub.deferred = false;
      } else {
        sub.deferred = true;
        this.deferredList.unshift(sub);
        seq = this.invalidateSeq;
      }
    } else {
      if (!sub.inTree) this.warn('interval-remove-not-inserted', `[0x${sub.start.toString(16)}, 0x${sub.last.toString(16)}]`);
      else this.treeRemove(sub);
    }
    if (seq !== 0) yield* this.waitWhileSeq(seq, 'mmu_interval_notifier_remove');
    sub.itree = null;
  }

  /** wait_event(wq, invalidate_seq != seq). */
  private *waitWhileSeq(seq: number, who: string): Program<void> {
    while (this.invalidateSeq === seq) {
      if (!this.cpu.yields) throw new Error(`assertion: ${who} would wait forever: an invalidation is in progress and no other simulated CPU can end it`);
      this.waits++;
      yield;
    }
  }

  /** Equal starts go after the existing ones, as the rb-tree inserts them to the right. */
  private treeInsert(sub: MmuIntervalNotifier): void {
    let i = this.tree.length;
    while (i > 0 && this.tree[i - 1].start > sub.start) i--;
    this.tree.splice(i, 0, sub);
    sub.inTree = true;
  }

  private treeRemove(sub: MmuIntervalNotifier): void {
    const i = this.tree.indexOf(sub);
    if (i < 0) throw new Error('assertion: interval notifier not in the tree');
    this.tree.splice(i, 1);
    sub.inTree = false;
  }
}
