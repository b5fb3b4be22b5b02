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
  /**
   * Tokens of the open read sections, oldest first, in open[0 .. nOpen)
   * (entries past it are stale; indexed stores rather than push/pop, which
   * V8 called as builtins on every fault). Tokens only grow. A
   * section open at some moment has a token below nextToken then, and every
   * later one a token at or above it: so "every section open at t has
   * closed" is "no open token is below nextToken at t".
   */
  private readonly open: number[] = [];
  private nOpen = 0;
  /** Callbacks in call order, each with nextToken at its call (its barrier: barriers never decrease). */
  private readonly pending: { cb: () => void; barrier: number }[] = [];
  /** synchronize calls, and scheduler steps they spent waiting. */
  syncs = 0;
  syncWaits = 0;
  /** Callbacks run after their grace period. */
  callbacksRun = 0;

  /** rcu_read_lock / srcu_read_lock; returns the token for readUnlock. */
  readLock(): number {
    const t = this.nextToken++;
    this.open[this.nOpen++] = t;
    return t;
  }

  /** rcu_read_unlock / srcu_read_unlock. */
  readUnlock(token: number): void {
    const open = this.open;
    const n = this.nOpen;
    // Sections mostly nest, so the token is mostly the last.
    let i = n - 1;
    while (i >= 0 && open[i] !== token) i--;
    if (i < 0) throw new Error('assertion: srcu_read_unlock without srcu_read_lock');
    for (let j = i + 1; j < n; j++) open[j - 1] = open[j];
    this.nOpen = n - 1;
    if (this.pending.length !== 0) this.runReady();
  }

  get readersInside(): number {
    return this.nOpen;
  }

  /** Whether every section open when nextToken was `barrier` has closed. */
  private passed(barrier: number): boolean {
    return this.nOpen === 0 || this.open[0] >= barrier;
  }

  /** synchronize_rcu / synchronize_srcu: wait until every read section open now has closed. */
  *synchronize(cpu: SimCpu): Program<void> {
    this.syncs++;
    const barrier = this.nextToken;
    while (!this.passed(barrier)) {
      // Inside one's own read section this is the kernel's self-deadlock.
      if (!cpu.yields) throw new Error(`assertion: ${this.syncName} would wait forever: a read section is open and no other simulated CPU can close it`);
      this.syncWaits++;
      yield;
    }
  }

  /** call_rcu / call_srcu: run cb once the sections open now have closed (at once if none is). */
  call(cb: () => void): void {
    this.pending.push({ cb, barrier: this.nextToken });
    this.runReady();
  }

  get pendingCallbacks(): number {
    return this.pending.length;
  }

  /** Runs the callbacks whose grace period has ended: a prefix of pending, as barriers never decrease. */
  private runReady(): void {
    while (this.pending.length !== 0 && this.passed(this.pending[0].barrier)) {
      const p = this.pending.shift()!;
      this.callbacksRun++;
      p.cb();
    }
  }
}
