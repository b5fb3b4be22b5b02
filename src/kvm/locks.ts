/**
 * KVM's synchronisation, simulated for the seeded scheduler (src/hw/sched.ts):
 * kvm->mmu_lock as an rwlock (x86), RCU read sections with call_rcu, and the
 * memslots' SRCU. A simulated CPU that must wait yields until it may go on,
 * so interleavings that block are explored, never deadlocked on: waiting with
 * nobody else to run is an assertion failure.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import { RcuDomain } from '../mm/rcu.js';

function mustWait(mem: PhysMem, what: string): void {
  if (!mem.yields) throw new Error(`assertion: ${what} would wait forever: no other simulated CPU can release it`);
}

/**
 * Who takes mmu_lock, for the cost figures: the vCPU fault path
 * (kvm_tdp_mmu_page_fault), MMU-notifier aging (kvm_age_hva_range and the
 * proposals' bitmap aging), MMU-notifier invalidation (start/end), or
 * anything else (ioctls, release, tests).
 */
export type MmuLockUser = 'fault' | 'aging' | 'invalidate' | 'other';
export const MMU_LOCK_USERS: readonly MmuLockUser[] = ['fault', 'aging', 'invalidate', 'other'];

function byUser(): Record<MmuLockUser, number> {
  return { fault: 0, aging: 0, invalidate: 0, other: 0 };
}

/**
 * What mmu_lock cost, in scheduler steps (PhysMem.clock: one per program
 * step or agent operation). All figures stay 0 when no scheduler runs: code
 * then never yields inside a critical section, nobody waits.
 */
export class MmuLockStats {
  /** Acquisitions, by mode and user. */
  readonly readLocks = byUser();
  readonly writeLocks = byUser();
  /** Steps begun while held for write, by the writer. */
  readonly writeHeld = byUser();
  /** Steps begun while held for read by at least one reader. */
  readHeld = 0;
  /** Steps a waiter spent spinning (its own steps), by waiter. */
  readonly waitSteps = byUser();
  /**
   * The same steps by waiter and holder, keyed `waiter/holder`; the holder of
   * a read-held lock is its oldest reader.
   */
  readonly waitBehind = new Map<string, number>();

  reset(): void {
    for (const u of MMU_LOCK_USERS) {
      this.readLocks[u] = 0;
      this.writeLocks[u] = 0;
      this.writeHeld[u] = 0;
      this.waitSteps[u] = 0;
    }
    this.readHeld = 0;
    this.waitBehind.clear();
  }

  /** Steps the vCPU fault path waited behind the given holder. */
  faultWaitBehind(holder: MmuLockUser): number {
    return this.waitBehind.get(`fault/${holder}`) ?? 0;
  }
}

/** kvm->mmu_lock (rwlock_t on x86): many readers or one writer. */
export class MmuLock {
  /** Readers inside; -1 while a writer holds it. */
  private state = 0;
  /** The writer. */
  private writer: MmuLockUser = 'other';
  /**
   * The readers in the order they got in: the first `state` entries (those
   * past it are stale). Indexed stores, not push/pop: V8 called a builtin for
   * push on every fault.
   */
  private readonly readerUsers: MmuLockUser[] = [];
  /** PhysMem.clock at the last change of state, for hold times. */
  private since = 0;
  readonly stats = new MmuLockStats();

  constructor(private readonly mem: PhysMem) {}

  /** Scheduler steps spent waiting, all waiters (the cost of a design). */
  get waits(): number {
    const w = this.stats.waitSteps;
    return w.fault + w.aging + w.invalidate + w.other;
  }

  /** Charge the steps since the last change of state to the state it had. */
  private account(): void {
    const now = this.mem.clock;
    const d = now - this.since;
    this.since = now;
    if (d === 0) return;
    if (this.state < 0) this.stats.writeHeld[this.writer] += d;
    else if (this.state > 0) this.stats.readHeld += d;
  }

  /** One spinning step of a waiter, charged to it and to whoever holds the lock. */
  private waitStep(who: MmuLockUser): void {
    this.stats.waitSteps[who]++;
    const holder = this.state < 0 ? this.writer : this.readerUsers[0];
    const k = `${who}/${holder}`;
    this.stats.waitBehind.set(k, (this.stats.waitBehind.get(k) ?? 0) + 1);
  }

  *readLock(who: MmuLockUser = 'other'): Generator<void, void, undefined> {
    if (this.mem.yields) yield;
    while (!this.readTrylock(who)) {
      mustWait(this.mem, 'read_lock(mmu_lock)');
      this.waitStep(who);
      yield;
    }
  }

  /**
   * read_trylock: take the lock for read unless a writer holds it. Plain
   * code, no program step: for a caller that nothing can interleave
   * (!mem.yields), `mem.yields || !readTrylock(who)` then readLock is
   * read_lock with one program fewer.
   */
  readTrylock(who: MmuLockUser = 'other'): boolean {
    if (this.state < 0) return false;
    this.account();
    this.readerUsers[this.state] = who;
    this.state++;
    this.stats.readLocks[who]++;
    return true;
  }

  readUnlock(who: MmuLockUser = 'other'): void {
    if (this.state <= 0) throw new Error('assertion: read_unlock of mmu_lock not held for read');
    const users = this.readerUsers;
    const n = this.state;
    let i = 0; // the earliest reader of that name leaves, as indexOf would find it
    while (i < n && users[i] !== who) i++;
    if (i === n) throw new Error(`assertion: read_unlock of mmu_lock by ${who}, not a reader`);
    this.account();
    for (let j = i + 1; j < n; j++) users[j - 1] = users[j];
    this.state--;
  }

  *writeLock(who: MmuLockUser = 'other'): Generator<void, void, undefined> {
    if (this.mem.yields) yield;
    while (this.state !== 0) {
      mustWait(this.mem, 'write_lock(mmu_lock)');
      this.waitStep(who);
      yield;
    }
    this.account();
    this.state = -1;
    this.writer = who;
    this.stats.writeLocks[who]++;
  }

  writeUnlock(): void {
    if (this.state !== -1) throw new Error('assertion: write_unlock of mmu_lock not held for write');
    this.account();
    this.state = 0;
  }

  /** lockdep_assert_held_read / lockdep_assert_held_write. */
  assertHeld(mode: 'read' | 'write'): void {
    if (mode === 'read' ? this.state <= 0 : this.state !== -1) throw new Error(`assertion: mmu_lock not held for ${mode}`);
  }

  get heldForWrite(): boolean {
    return this.state === -1;
  }

  get readers(): number {
    return Math.max(this.state, 0);
  }
}

/**
 * RCU as KVM uses it: read sections around lockless walks, and call_rcu for
 * page-table pages of the TDP MMU, so lockless walkers never see a page reused.
 */
export class Rcu extends RcuDomain {
  /** call_rcu. */
  callRcu(cb: () => void): void {
    this.call(cb);
  }

  get inReadSection(): boolean {
    return this.readersInside > 0;
  }
}

/**
 * kvm->srcu, which protects the memslot arrays. Memslot updates are not
 * interleaved in this model, so only the read-side nesting is tracked.
 */
export class Srcu {
  private depth = 0;

  readLock(): number {
    return ++this.depth;
  }

  readUnlock(idx: number): void {
    if (idx !== this.depth || this.depth === 0) throw new Error('assertion: srcu_read_unlock out of order');
    this.depth--;
  }

  get held(): boolean {
    return this.depth > 0;
  }
}
