/**
 * The one SRCU domain of mm/mmu_notifier.c (DEFINE_STATIC_SRCU(srcu)), shared
 * by every mm: hlist callbacks run inside its read sections, and
 * unregister/release wait for them with synchronize_srcu; mmu_notifier_put
 * frees through call_srcu.
 *
 * Modelled as in src/kvm/locks.ts (which the mm may not import): read
 * sections are tokens; a grace period ends when every section open at its
 * start has closed. A waiter yields while the simulated CPU may be
 * preempted; with nobody else to run, waiting is an assertion failure.
 */
import type { Program } from './mmu_notifier.js';

/** What the core needs to know of the CPU it runs on: whether it may yield (PhysMem.yields). */
export interface SimCpu {
  readonly yields: boolean;
}

export class MmuNotifierSrcu {
  private nextToken = 1;
  private readonly readers = new Set<number>();
  private readonly pending: { cb: () => void; waitFor: Set<number> }[] = [];
  /** synchronize_srcu calls, and scheduler steps they spent waiting. */
  syncs = 0;
  syncWaits = 0;
  /** call_srcu callbacks run. */
  callbacksRun = 0;

  /** srcu_read_lock; returns the token for readUnlock. */
  readLock(): number {
    const t = this.nextToken++;
    this.readers.add(t);
    return t;
  }

  /** srcu_read_unlock. */
  readUnlock(token: number): void {
    if (!this.readers.delete(token)) throw new Error('assertion: srcu_read_unlock without srcu_read_lock');
    for (const p of this.pending) p.waitFor.delete(token);
    this.runReady();
  }

  get readersInside(): number {
    return this.readers.size;
  }

  /** synchronize_srcu: wait until every read section open now has closed. */
  *synchronize(cpu: SimCpu): Program<void> {
    this.syncs++;
    const waitFor = [...this.readers];
    while (waitFor.some((t) => this.readers.has(t))) {
      // Inside one's own read section this is the kernel's self-deadlock.
      if (!cpu.yields) throw new Error('assertion: synchronize_srcu would wait forever: a read section is open and no other simulated CPU can close it');
      this.syncWaits++;
      yield;
    }
  }

  /** call_srcu: run cb once the sections open now have closed (at once if none is). */
  callSrcu(cb: () => void): void {
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

/** The global domain; a MmuNotifierSubscriptions uses it unless given its own (tests). */
export const mmuNotifierSrcu = new MmuNotifierSrcu();
