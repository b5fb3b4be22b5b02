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
import { MmuIntervalNotifier, MmuItree, ULONG_MAX, type MmuIntervalNotifierOps } from './mmu_interval_notifier.js';
import { mmuNotifierSrcu, type MmuNotifierSrcu, type SimCpu } from './mmu_notifier_srcu.js';

export { MmuIntervalNotifier, ULONG_MAX, type MmuIntervalNotifierOps };

export const EAGAIN = 11;
export const EINVAL = 22;
export const EOVERFLOW = 75;
export const UINT_MAX = 0xffff_ffff;

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
  /** Set or cleared by the start wrappers, as the kernel's do. */
  flags: number;
  readonly owner: unknown;
}

/** mmu_notifier_range_init / mmu_notifier_range_init_owner. */
export function mmuNotifierRangeInit(event: MmuNotifierEvent, flags: number, start: number, end: number, owner: unknown = null): MmuNotifierRange {
  return { start, end, event, flags, owner };
}

/** mmu_notifier_range_blockable. */
export function mmuNotifierRangeBlockable(range: MmuNotifierRange): boolean {
  return (range.flags & MMU_NOTIFIER_RANGE_BLOCKABLE) !== 0;
}

export type Program<T> = Generator<unknown, T, undefined>;

/**
 * struct mmu_notifier_ops. The subscriber object is also its struct
 * mmu_notifier (one object, one subscription). Every op is optional, as in
 * the kernel, where a NULL op is skipped.
 */
export interface MmuNotifierOps {
  /** Once, from unregister or exit, before the mm's pages are freed: drop every mapping, make no more. */
  release?(): Program<void>;
  /** Test-and-clear the accessed state of [start, end), may flush; nonzero if any was young. */
  clearFlushYoung?(start: number, end: number): Program<number>;
  /** The same without the secondary TLB flush. */
  clearYoung?(start: number, end: number): Program<number>;
  /** Test only: nothing cleared, nothing torn down. */
  testYoung?(address: number): Program<number>;
  /** 0 or -EAGAIN (only when the range is not blockable; then end must not be implemented). */
  invalidateRangeStart?(range: MmuNotifierRange): Program<number>;
  invalidateRangeEnd?(range: MmuNotifierRange): Program<void>;
  /** For TLBs that share the CPU page tables; called beside the CPU flush with the PTL held, so it cannot yield. */
  archInvalidateSecondaryTlbs?(start: number, end: number): void;
}

/** alloc_notifier / free_notifier, for the get/put API; the template's identity plays the ops pointer's role. */
export interface MmuNotifierTemplate {
  /** A new subscriber, or a negative errno. */
  allocNotifier(subscriptions: MmuNotifierSubscriptions): MmuNotifierOps | number;
  /** From an SRCU callback after the last put: no callback is running or will run. */
  freeNotifier(sub: MmuNotifierOps): void;
}

/** struct mmu_notifier: the subscriber's hlist node, users count and get/put template. */
export interface MmuNotifierSubscription {
  readonly ops: MmuNotifierOps;
  readonly template: MmuNotifierTemplate | null;
  users: number;
  /** On the list (!hlist_unhashed). */
  hashed: boolean;
  /** RCU list link: kept when unhooked, so a walker standing on the node goes on. */
  next: MmuNotifierSubscription | null;
}

/** A WARN_ON the core would print: recorded, never thrown, so a policy run can go on and be checked. */
export type MmuNotifierWarningKind =
  | 'start-failed-in-blockable-context'
  | 'start-failed-not-eagain'
  | 'failing-start-has-end'
  | 'register-conflict'
  | 'interval-invalidate-failed-in-blockable-context'
  | 'interval-release-failed'
  | 'interval-remove-not-inserted'
  | 'interval-insert-while-invalidating'
  | 'put-without-users';

export interface MmuNotifierWarning {
  readonly kind: MmuNotifierWarningKind;
  readonly detail: string;
}

function bump(m: Map<string, number>, k: string): void {
  m.set(k, (m.get(k) ?? 0) + 1);
}

/**
 * struct mmu_notifier_subscriptions of one mm: the hlist of classic
 * subscribers (registered at the head, so the last registered is called
 * first) and the interval tree.
 */
export class MmuNotifierSubscriptions {
  private head: MmuNotifierSubscription | null = null;
  private readonly subs = new Map<MmuNotifierOps, MmuNotifierSubscription>();
  /** mm->notifier_subscriptions != NULL: set by the first registration, never cleared while the mm lives. */
  private allocated = false;
  /** Set by the first interval insert (a NULL registration). */
  hasItree = false;
  readonly itree: MmuItree;
  readonly srcu: MmuNotifierSrcu;
  private readonly cpu: SimCpu;
  /** non_block_start depth: a non-blockable callback is running and must not sleep. */
  private nonBlock = 0;

  /** Subscriber callbacks made, by op name (invalidate = interval op, plus alloc_notifier/free_notifier): what a policy cost. */
  readonly calls = new Map<string, number>();
  /** Times the mm asked (a wrapper found mm_has_notifiers), by op name, whoever was subscribed. */
  readonly asks = new Map<string, number>();
  /** Invalidation ranges started, by event name. */
  readonly rangesByEvent = new Map<string, number>();
  /** Invalidation callbacks (start, end, interval invalidate) made, by event name. */
  readonly callsByEvent = new Map<string, number>();
  /** invalidate_range_start callbacks that returned an error. */
  startFailures = 0;
  readonly warnings: MmuNotifierWarning[] = [];

  constructor(opts: { cpu?: SimCpu; srcu?: MmuNotifierSrcu } = {}) {
    this.cpu = opts.cpu ?? { yields: false };
    this.srcu = opts.srcu ?? mmuNotifierSrcu;
    this.itree = new MmuItree(this.cpu, (kind, detail) => this.warn(kind, detail));
  }

  /** mm_has_notifiers: stays true after every subscriber has gone (the struct lives until mmdrop). */
  get hasNotifiers(): boolean {
    return this.allocated;
  }

  /** The hlist, head first. */
  get subscribers(): MmuNotifierOps[] {
    const out: MmuNotifierOps[] = [];
    for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) out.push(n.ops);
    return out;
  }

  /** The subscription record of sub (its users count, whether it is hashed), or null. */
  subscription(sub: MmuNotifierOps): MmuNotifierSubscription | null {
    return this.subs.get(sub) ?? null;
  }

  /** In a non-blockable callback: sleeping here would be a bug (non_block_start). */
  get mustNotBlock(): boolean {
    return this.nonBlock > 0;
  }

  resetCounters(): void {
    for (const m of [this.calls, this.asks, this.rangesByEvent, this.callsByEvent]) m.clear();
    this.startFailures = 0;
  }

  private warn(kind: MmuNotifierWarningKind, detail: string): void {
    this.warnings.push({ kind, detail });
  }

  private count(op: string, range?: MmuNotifierRange): void {
    bump(this.calls, op);
    if (range !== undefined) bump(this.callsByEvent, MMU_NOTIFIER_EVENT_NAMES[range.event]);
  }

  // ---- registration -------------------------------------------------------

  /** mmu_notifier_register: 0, or -EINVAL (nothing added) for a subscriber with both TLB styles. */
  register(sub: MmuNotifierOps): number {
    return this.registerAs(sub, null);
  }

  /** __mmu_notifier_register. */
  private registerAs(sub: MmuNotifierOps, template: MmuNotifierTemplate | null): number {
    if (sub.archInvalidateSecondaryTlbs !== undefined && (sub.invalidateRangeStart !== undefined || sub.invalidateRangeEnd !== undefined)) {
      this.warn('register-conflict', 'arch_invalidate_secondary_tlbs together with invalidate_range_start/end');
      return -EINVAL;
    }
    if (this.subs.get(sub)?.hashed) throw new Error('assertion: subscriber registered twice');
    this.allocated = true;
    const node: MmuNotifierSubscription = { ops: sub, template, users: 1, hashed: true, next: this.head };
    this.subs.set(sub, node);
    this.head = node;
    return 0;
  }

  /** hlist_del_init_rcu: unlink; the node keeps its next so a walker on it continues. */
  private unhook(node: MmuNotifierSubscription): void {
    if (!node.hashed) return;
    if (this.head === node) this.head = node.next;
    else {
      let p = this.head;
      while (p !== null && p.next !== node) p = p.next;
      if (p === null) throw new Error('assertion: hashed subscriber not on the list');
      p.next = node.next;
    }
    node.hashed = false;
  }

  /**
   * mmu_notifier_unregister: release (if exit has not called it yet) inside
   * SRCU, unhook, then synchronize_srcu so no callback is still running.
   */
  *unregister(sub: MmuNotifierOps): Program<void> {
    const node = this.subs.get(sub);
    if (node === undefined) throw new Error('assertion: unregister of a subscriber never registered');
    if (node.hashed) {
      const id = this.srcu.readLock();
      try {
        if (sub.release !== undefined) {
          this.count('release');
          yield* sub.release();
        }
      } finally {
        this.srcu.readUnlock(id);
      }
      this.unhook(node);
    }
    yield* this.srcu.synchronize(this.cpu);
  }

  /**
   * mmu_notifier_get_locked: the subscriber made from this template, with one
   * more user; or a new one from alloc_notifier; or a negative errno.
   */
  get(template: MmuNotifierTemplate): MmuNotifierOps | number {
    if (this.allocated) {
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
        if (n.template !== template) continue;
        if (n.users === UINT_MAX) return -EOVERFLOW;
        n.users++;
        return n.ops;
      }
    }
    this.count('alloc_notifier');
    const sub = template.allocNotifier(this);
    if (typeof sub === 'number') return sub;
    const ret = this.registerAs(sub, template);
    if (ret !== 0) {
      this.count('free_notifier');
      template.freeNotifier(sub);
      return ret;
    }
    return sub;
  }

  /** mmu_notifier_put: the last put unhooks and frees through call_srcu; release is not called. */
  put(sub: MmuNotifierOps): void {
    const node = this.subs.get(sub);
    if (node === undefined || node.template === null) throw new Error('assertion: mmu_notifier_put of a subscriber not obtained with get');
    if (node.users === 0) {
      this.warn('put-without-users', 'users already 0');
      return;
    }
    if (--node.users !== 0) return;
    this.unhook(node);
    const template = node.template;
    this.srcu.callSrcu(() => {
      this.count('free_notifier');
      template.freeNotifier(sub);
    });
  }

  /** mmu_notifier_synchronize: every queued free has run. */
  *synchronize(): Program<void> {
    yield* this.srcu.synchronize(this.cpu);
  }

  // ---- interval notifiers -------------------------------------------------

  /** mmu_interval_notifier_insert: 0 or -EOVERFLOW; the interval may enter the tree only at the final end. */
  intervalNotifierInsert(sub: MmuIntervalNotifier, start: number, length: number, ops: MmuIntervalNotifierOps): number {
    if (!this.hasItree) {
      this.allocated = true;
      this.hasItree = true;
    }
    return this.itree.insert(sub, start, length, ops);
  }

  // ---- invalidation -------------------------------------------------------

  /**
   * __mmu_notifier_invalidate_range_start, honouring range.flags: intervals
   * first, then the hlist. 0, or -EAGAIN from a non-blockable range, after
   * which the caller must not call end.
   */
  *invalidateRangeStart(range: MmuNotifierRange): Program<number> {
    if (!this.allocated) return 0;
    bump(this.asks, 'invalidate_range_start');
    bump(this.rangesByEvent, MMU_NOTIFIER_EVENT_NAMES[range.event]);
    if (this.hasItree) {
      const ret = yield* this.itreeInvalidate(range);
      if (ret !== 0) return ret;
    }
    if (this.head !== null) return yield* this.hlistInvalidateRangeStart(range);
    return 0;
  }

  /** mmu_notifier_invalidate_range_start: sets BLOCKABLE; a start cannot fail here (a failure is only warned about). */
  *invalidateRangeStartBlocking(range: MmuNotifierRange): Program<void> {
    range.flags |= MMU_NOTIFIER_RANGE_BLOCKABLE;
    yield* this.invalidateRangeStart(range);
  }

  /** mmu_notifier_invalidate_range_start_nonblock: clears BLOCKABLE; on -EAGAIN do not touch the PTEs, do not call end. */
  *invalidateRangeStartNonblock(range: MmuNotifierRange): Program<number> {
    range.flags &= ~MMU_NOTIFIER_RANGE_BLOCKABLE;
    return yield* this.invalidateRangeStart(range);
  }

  /** __mmu_notifier_invalidate_range_end: interval accounting first, then the hlist. */
  *invalidateRangeEnd(range: MmuNotifierRange): Program<void> {
    if (!this.allocated) return;
    bump(this.asks, 'invalidate_range_end');
    if (this.hasItree) this.itree.invEnd();
    if (this.head === null) return;
    const blockable = mmuNotifierRangeBlockable(range);
    const id = this.srcu.readLock();
    try {
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
        const ops = n.ops;
        if (ops.invalidateRangeEnd === undefined) continue;
        this.count('invalidate_range_end', range);
        if (!blockable) this.nonBlock++;
        try {
          yield* ops.invalidateRangeEnd(range);
        } finally {
          if (!blockable) this.nonBlock--;
        }
      }
    } finally {
      this.srcu.readUnlock(id);
    }
  }

  /** mn_itree_invalidate: a non-blockable failure stops the walk, ends the interval range and returns -EAGAIN. */
  private *itreeInvalidate(range: MmuNotifierRange): Program<number> {
    const { first, seq } = this.itree.invStartRange(range);
    for (let s = first; s !== null; s = this.itree.invNext(s, range)) {
      this.count('invalidate', range);
      const ok = yield* s.ops!.invalidate(s, range, seq);
      if (ok) continue;
      if (mmuNotifierRangeBlockable(range)) {
        this.warn('interval-invalidate-failed-in-blockable-context', `[0x${s.start.toString(16)}, 0x${s.last.toString(16)}]`);
        continue;
      }
      this.itree.invEnd();
      return -EAGAIN;
    }
    return 0;
  }

  /**
   * mn_hlist_invalidate_range_start: every subscriber is called even after a
   * failure (none can learn that another failed); then, on failure, end is
   * called on every subscriber that has one.
   */
  private *hlistInvalidateRangeStart(range: MmuNotifierRange): Program<number> {
    const blockable = mmuNotifierRangeBlockable(range);
    let ret = 0;
    const id = this.srcu.readLock();
    try {
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
        const ops = n.ops;
        if (ops.invalidateRangeStart === undefined) continue;
        this.count('invalidate_range_start', range);
        if (!blockable) this.nonBlock++;
        let r: number;
        try {
          r = yield* ops.invalidateRangeStart(range);
        } finally {
          if (!blockable) this.nonBlock--;
        }
        if (r === 0) continue;
        this.startFailures++;
        if (blockable) this.warn('start-failed-in-blockable-context', `returned ${r}`);
        else if (r !== -EAGAIN) this.warn('start-failed-not-eagain', `returned ${r}`);
        if (ops.invalidateRangeEnd !== undefined) this.warn('failing-start-has-end', 'a subscriber whose start can fail must not implement end');
        ret = r;
      }
      if (ret !== 0) {
        for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
          const ops = n.ops;
          if (ops.invalidateRangeEnd === undefined) continue;
          this.count('invalidate_range_end', range);
          yield* ops.invalidateRangeEnd(range);
        }
      }
    } finally {
      this.srcu.readUnlock(id);
    }
    return ret;
  }

  /** __mmu_notifier_arch_invalidate_secondary_tlbs: from the arch TLB flush, PTL held. */
  archInvalidateSecondaryTlbs(start: number, end: number): void {
    if (!this.allocated) return;
    bump(this.asks, 'arch_invalidate_secondary_tlbs');
    const id = this.srcu.readLock();
    try {
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
        if (n.ops.archInvalidateSecondaryTlbs === undefined) continue;
        this.count('arch_invalidate_secondary_tlbs');
        n.ops.archInvalidateSecondaryTlbs(start, end);
      }
    } finally {
      this.srcu.readUnlock(id);
    }
  }

  // ---- aging --------------------------------------------------------------

  /** __mmu_notifier_clear_flush_young: every subscriber, results ORed. */
  *clearFlushYoung(start: number, end: number): Program<number> {
    if (!this.allocated) return 0;
    bump(this.asks, 'clear_flush_young');
    let young = 0;
    const id = this.srcu.readLock();
    try {
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
        if (n.ops.clearFlushYoung === undefined) continue;
        this.count('clear_flush_young');
        young |= yield* n.ops.clearFlushYoung(start, end);
      }
    } finally {
      this.srcu.readUnlock(id);
    }
    return young;
  }

  /** __mmu_notifier_clear_young: every subscriber, results ORed. */
  *clearYoung(start: number, end: number): Program<number> {
    if (!this.allocated) return 0;
    bump(this.asks, 'clear_young');
    let young = 0;
    const id = this.srcu.readLock();
    try {
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
        if (n.ops.clearYoung === undefined) continue;
        this.count('clear_young');
        young |= yield* n.ops.clearYoung(start, end);
      }
    } finally {
      this.srcu.readUnlock(id);
    }
    return young;
  }

  /** __mmu_notifier_test_young: stops at the first young subscriber and returns its value. */
  *testYoung(address: number): Program<number> {
    if (!this.allocated) return 0;
    bump(this.asks, 'test_young');
    let young = 0;
    const id = this.srcu.readLock();
    try {
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
        if (n.ops.testYoung === undefined) continue;
        this.count('test_young');
        young = yield* n.ops.testYoung(address);
        if (young !== 0) break;
      }
    } finally {
      this.srcu.readUnlock(id);
    }
    return young;
  }

  // ---- teardown -----------------------------------------------------------

  /**
   * __mmu_notifier_release (exit_mmap, before any page is freed): intervals
   * get one RELEASE over everything; every hashed subscriber gets release;
   * all are unhooked; then synchronize_srcu, so a release running from a
   * racing unregister has finished too.
   */
  *release(): Program<void> {
    if (!this.allocated) return;
    bump(this.asks, 'release');
    if (this.hasItree) yield* this.itreeRelease();
    if (this.head !== null) yield* this.hlistRelease();
  }

  /** mn_itree_release: intervals stay in the tree; their owners still remove them. */
  private *itreeRelease(): Program<void> {
    const range = mmuNotifierRangeInit(MmuNotifierEvent.Release, MMU_NOTIFIER_RANGE_BLOCKABLE, 0, ULONG_MAX);
    bump(this.rangesByEvent, MMU_NOTIFIER_EVENT_NAMES[range.event]);
    const { first, seq } = this.itree.invStartRange(range);
    for (let s = first; s !== null; s = this.itree.invNext(s, range)) {
      this.count('invalidate', range);
      if (!(yield* s.ops!.invalidate(s, range, seq))) this.warn('interval-release-failed', `[0x${s.start.toString(16)}, 0x${s.last.toString(16)}]`);
    }
    this.itree.invEnd();
  }

  /** mn_hlist_release. */
  private *hlistRelease(): Program<void> {
    const id = this.srcu.readLock();
    try {
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = n.next) {
        if (n.ops.release === undefined) continue;
        this.count('release');
        yield* n.ops.release();
      }
      for (let n: MmuNotifierSubscription | null = this.head; n !== null; n = this.head) this.unhook(n);
    } finally {
      this.srcu.readUnlock(id);
    }
    yield* this.srcu.synchronize(this.cpu);
  }
}
