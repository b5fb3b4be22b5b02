/**
 * The one SRCU domain of mm/mmu_notifier.c (DEFINE_STATIC_SRCU(srcu)), shared
 * by every mm: hlist callbacks run inside its read sections, and
 * unregister/release wait for them with synchronize_srcu; mmu_notifier_put
 * frees through call_srcu.
 */
import { RcuDomain } from './rcu.js';

export type { SimCpu } from './rcu.js';

export class MmuNotifierSrcu extends RcuDomain {
  constructor() {
    super('synchronize_srcu');
  }

  /** call_srcu. */
  callSrcu(cb: () => void): void {
    this.call(cb);
  }
}

/** The global domain; a MmuNotifierSubscriptions uses it unless given its own (tests). */
export const mmuNotifierSrcu = new MmuNotifierSrcu();
