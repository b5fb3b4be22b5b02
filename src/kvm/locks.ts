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

/** kvm->mmu_lock (rwlock_t on x86): many readers or one writer. */
export class MmuLock {
  /** Readers inside; -1 while a writer holds it. */
  private state = 0;
  /** Scheduler steps spent waiting, for the cost of a design. */
  waits = 0;

  constructor(private readonly mem: PhysMem) {}

  *readLock(): Generator<void, void, undefined> {
    if (this.mem.yields) yield;
    while (this.state < 0) {
      mustWait(this.mem, 'read_lock(mmu_lock)');
      this.waits++;
      yield;
    }
    this.state++;
  }

  readUnlock(): void {
    if (this.state <= 0) throw new Error('assertion: read_unlock of mmu_lock not held for read');
    this.state--;
  }

  *writeLock(): Generator<void, void, undefined> {
    if (this.mem.yields) yield;
    while (this.state !== 0) {
      mustWait(this.mem, 'write_lock(mmu_lock)');
      this.waits++;
      yield;
    }
    this.state = -1;
  }

  writeUnlock(): void {
    if (this.state !== -1) throw new Error('assertion: write_unlock of mmu_lock not held for write');
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
