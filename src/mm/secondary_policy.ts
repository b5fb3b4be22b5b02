/**
 * How MGLRU consults secondary MMUs (mm.md section 4, issue 4 item 4),
 * switchable per run:
 * - `eviction-only`: before 6.13. Aging and look-around see only primary
 *   PTEs; at eviction folio_referenced_one adds clear_flush_young.
 * - `current`: 6.13+. The aging walk and look-around call clear_young for
 *   every present PTE of an mm with notifiers (ptep_clear_young_notify).
 * - `v3-bitmap`: the April 2024 RFC. clear_young over a 64-page window with
 *   a bitmap, answering YOUNG / YOUNG_FAST / BITMAP_UNRELIABLE; a subscriber
 *   without the bitmap op is asked page by page.
 * - `fast-only`: v5-v7. Aging asks only subscribers with has_fast_aging
 *   (KVM x86 ages locklessly since 6.15; a `kernel: 614` VM is not fast);
 *   eviction still asks everyone.
 *
 * The proposed ops never landed, so they are modelled here, beside the
 * policy, as per-subscriber capabilities (`SecondaryAgingCaps`). The mm
 * knows KVM only through the notifier interface and these caps: KVM's side
 * of them is src/kvm/aging_caps.ts.
 */
import type { MmStruct } from './mm.js';
import type { MmuNotifierOps, Program } from './mmu_notifier.js';

export type SecondaryPolicyName = 'eviction-only' | 'current' | 'v3-bitmap' | 'fast-only';
export const SECONDARY_POLICIES: readonly SecondaryPolicyName[] = ['eviction-only', 'current', 'v3-bitmap', 'fast-only'];

/** v3's return flags of mmu_notifier_{test,clear}_young_bitmap. */
export const MMU_NOTIFIER_YOUNG = 1 << 0;
export const MMU_NOTIFIER_YOUNG_BITMAP_UNRELIABLE = 1 << 1;
export const MMU_NOTIFIER_YOUNG_FAST = 1 << 2;

const PAGE = 4096;

/** What a subscriber offers beyond the merged ops (the proposals' runtime flags and bitmap op). */
export interface SecondaryAgingCaps {
  /** v6's has_fast_aging: aging it cannot block (lockless). */
  readonly fast: boolean;
  /**
   * v3's clear_young with a bitmap over [start, end): bitmap[i] set = page i
   * is to be aged; on return it is set only for young pages. Returns flags.
   */
  clearYoungBitmap?(start: number, end: number, bitmap: Uint8Array): Program<number>;
}

/** Cost and benefit of one run (issue 4 item 4). */
export class PolicyStats {
  /** Subscriber callbacks made by aging and eviction, by op. */
  readonly calls = new Map<string, number>();
  /** Pages the secondary MMUs were asked about. */
  pagesAsked = 0;
  /** Secondary answers that were young. */
  secondaryYoung = 0;
  /** Folios evicted, refaulted (a later fault on an evicted page) and evicted while the workload still used them. */
  evicted = 0;
  refaults = 0;
  evictedHot = 0;

  bump(op: string, n = 1): void {
    this.calls.set(op, (this.calls.get(op) ?? 0) + n);
  }

  get notifierCalls(): number {
    let n = 0;
    for (const v of this.calls.values()) n += v;
    return n;
  }
}

export class SecondaryPolicy {
  readonly stats = new PolicyStats();

  constructor(
    readonly name: SecondaryPolicyName,
    /** Capabilities of a subscriber (null: none, a plain 6.13 subscriber). */
    readonly caps: (sub: MmuNotifierOps) => SecondaryAgingCaps | null = () => null,
  ) {}

  /** mm_has_fast_young_notifiers (v6). */
  hasFastNotifiers(mm: MmStruct): boolean {
    return mm.notifiers.subscribers.some((s) => this.caps(s)?.fast === true);
  }

  /**
   * Whether the aging walk asks the secondary MMUs of mm: then non-young
   * primary PTEs stay candidates and the non-leaf PMD short-cut is off.
   */
  walkAsksSecondary(mm: MmStruct): boolean {
    switch (this.name) {
      case 'eviction-only':
        return false;
      case 'fast-only':
        return this.hasFastNotifiers(mm);
      default:
        return mm.notifiers.hasNotifiers;
    }
  }

  /**
   * The secondary half of ptep_clear_young_notify for a window of up to 64
   * pages from start, as the aging walk or look-around batches it: for
   * every cand[i], young[i] |= what the secondary MMUs said (and cleared).
   */
  *ageWindow(mm: MmStruct, start: number, n: number, cand: Uint8Array, young: Uint8Array): Program<void> {
    if (!this.walkAsksSecondary(mm)) return;
    if (this.name === 'current') {
      for (let i = 0; i < n; i++) {
        if (cand[i] === 0) continue;
        if ((yield* this.clearYoungAll(mm, start + i * PAGE)) !== 0) young[i] = 1;
      }
      return;
    }
    const subs = mm.notifiers.subscribers;
    const id = mm.notifiers.srcu.readLock();
    try {
      for (const sub of subs) {
        const c = this.caps(sub);
        if (this.name === 'fast-only' && c?.fast !== true) continue;
        if (this.name === 'v3-bitmap' && c?.clearYoungBitmap !== undefined) {
          const bitmap = cand.slice(0, n);
          let asked = 0;
          for (let i = 0; i < n; i++) asked += bitmap[i];
          if (asked === 0) continue;
          this.stats.bump('clear_young_bitmap');
          this.stats.pagesAsked += asked;
          const flags = yield* c.clearYoungBitmap(start, start + n * PAGE, bitmap);
          if ((flags & MMU_NOTIFIER_YOUNG_BITMAP_UNRELIABLE) === 0) {
            for (let i = 0; i < n; i++) if (bitmap[i] !== 0) this.youngAt(young, i);
            continue;
          }
          // The bitmap could not be used: fall back to page by page.
        }
        if (sub.clearYoung === undefined) continue;
        for (let i = 0; i < n; i++) {
          if (cand[i] === 0) continue;
          const a = start + i * PAGE;
          this.stats.bump('clear_young');
          this.stats.pagesAsked++;
          if ((yield* sub.clearYoung(a, a + PAGE)) !== 0) this.youngAt(young, i);
        }
      }
    } finally {
      mm.notifiers.srcu.readUnlock(id);
    }
  }

  private youngAt(young: Uint8Array, i: number): void {
    if (young[i] === 0) this.stats.secondaryYoung++;
    young[i] = 1;
  }

  /** mmu_notifier_clear_young for one page through the notifier core (counted by the subscribers it reached). */
  private *clearYoungAll(mm: MmStruct, addr: number): Program<number> {
    const before = mm.notifiers.calls.get('clear_young') ?? 0;
    const r = yield* mm.notifiers.clearYoung(addr, addr + PAGE);
    const made = (mm.notifiers.calls.get('clear_young') ?? 0) - before;
    this.stats.bump('clear_young', made);
    if (made > 0) this.stats.pagesAsked++;
    if (r !== 0) this.stats.secondaryYoung++;
    return r;
  }

  /** mmu_notifier_clear_flush_young for one page through the core. */
  private *clearFlushYoungAll(mm: MmStruct, addr: number): Program<number> {
    const before = mm.notifiers.calls.get('clear_flush_young') ?? 0;
    const r = yield* mm.notifiers.clearFlushYoung(addr, addr + PAGE);
    const made = (mm.notifiers.calls.get('clear_flush_young') ?? 0) - before;
    this.stats.bump('clear_flush_young', made);
    if (made > 0) this.stats.pagesAsked++;
    if (r !== 0) this.stats.secondaryYoung++;
    return r;
  }

  /**
   * The eviction-time target of folio_referenced_one (PTE-mapped), after
   * the primary accessed bit was test-and-cleared: whether the folio was
   * referenced, and whether look-around should scan its neighbours.
   */
  *evictionTarget(mm: MmStruct, hva: number, primaryYoung: boolean): Program<{ referenced: boolean; lookAround: boolean }> {
    const addr = Math.floor(hva / PAGE) * PAGE;
    switch (this.name) {
      case 'eviction-only': {
        // Look-around only on a young primary PTE; then ptep_clear_flush_young_notify on the target.
        const s = (yield* this.clearFlushYoungAll(mm, addr)) !== 0;
        return { referenced: primaryYoung || s, lookAround: primaryYoung };
      }
      case 'current': {
        const s = (yield* this.clearYoungAll(mm, addr)) !== 0;
        return { referenced: primaryYoung || s, lookAround: primaryYoung || s };
      }
      case 'fast-only': {
        // v6: folio_referenced_one's ptep_clear_flush_young_notify asks every subscriber once (eviction
        // consults slow ones too); look around if the primary is young, or the secondary is and the mm
        // has fast-young notifiers (a slow secondary-only young page does not scan its neighbours).
        const s = (yield* this.clearFlushYoungAll(mm, addr)) !== 0;
        return { referenced: primaryYoung || s, lookAround: primaryYoung || (s && this.hasFastNotifiers(mm)) };
      }
      case 'v3-bitmap': {
        // clear_young on the target; a secondary-only young page looks around only if YOUNG_FAST.
        let flags = 0;
        const id = mm.notifiers.srcu.readLock();
        try {
          for (const sub of mm.notifiers.subscribers) {
            if (sub.clearYoung === undefined) continue;
            this.stats.bump('clear_young');
            this.stats.pagesAsked++;
            if ((yield* sub.clearYoung(addr, addr + PAGE)) !== 0) {
              this.stats.secondaryYoung++;
              flags |= MMU_NOTIFIER_YOUNG | (this.caps(sub)?.fast === true ? MMU_NOTIFIER_YOUNG_FAST : 0);
            }
          }
        } finally {
          mm.notifiers.srcu.readUnlock(id);
        }
        return { referenced: primaryYoung || flags !== 0, lookAround: primaryYoung || (flags & MMU_NOTIFIER_YOUNG_FAST) !== 0 };
      }
    }
  }
}
