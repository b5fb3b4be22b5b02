/**
 * Read-copy-update grace periods, as the host kernel provides them (RCU and
 * SRCU domains): read sections are tokens, and a grace period ends when
 * every section open at its start has closed. A waiter yields while its
 * simulated CPU may be preempted (src/hw/sched.ts); with nobody else to run,
 * waiting is an assertion failure. The mm's notifier SRCU and KVM's RCU
 * (which frees TDP page tables) are both domains of this.
 */
import type { Program } from './mmu_notifier.js';

/** What a waiter needs to know of the CPU it runs on: whether it may yield (PhysMem.yields). */
export interface SimCpu {
  readonly yields: boolean;
}

export class RcuDomain {
  /** The kernel's name for waiting on this domain, for messages. */
  constructor(private readonly syncName = 'synchronize_rcu') {}

  private nextToken = 1;
  private readonly readers = new Set<number>();
  private readonly pending: { cb: () => void; waitFor: Set<number> }[] = [];
  /** synchronize calls, and scheduler steps they spent waiting. */
  syncs = 0;
  syncWaits = 0;
  /** Callbacks run after their grace period. */
  callbacksRun = 0;

  /** rcu_read_lock / srcu_read_lock; returns the token for readUnlock. */
  readLock(): number {
    const t = this.nextToken++;
    this.readers.add(t);
    return t;
  }

  /** rcu_read_unlock / srcu_read_unlock. */
  readUnlock(token: number): void {
    if (!this.readers.delete(token)) throw new Error('assertion: srcu_read_unlock without srcu_read_lock');
    for (const p of this.pending) p.waitFor.delete(token);
    this.runReady();
  }

  get readersInside(): number {
    return this.readers.size;
  }

  /** synchronize_rcu / synchronize_srcu: wait until every read section open now has closed. */
  *synchronize(cpu: SimCpu): Program<void> {
    this.syncs++;
    const waitFor = [...this.readers];
    while (waitFor.some((t) => this.readers.has(t))) {
      // Inside one's own read section this is the kernel's self-deadlock.
      if (!cpu.yields) throw new Error(`assertion: ${this.syncName} would wait forever: a read section is open and no other simulated CPU can close it`);
      this.syncWaits++;
      yield;
    }
  }

  /** call_rcu / call_srcu: run cb once the sections open now have closed (at once if none is). */
  call(cb: () => void): void {
    this.pending.push({ cb, waitFor: new Set(this.readers) });
    this.runReady();
  }

  get pendingCallbacks(): number {
    return this.pending.length;
  }

  private runReady(): void {
    for (let i = 0; i < this.pending.length; ) {
      const p = this.pending[i];
      if (p.waitFor.size === 0) {
        this.pending.splice(i, 1);
        this.callbacksRun++;
        p.cb();
      } else i++;
    }
  }
}
