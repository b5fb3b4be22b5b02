/**
 * Workingset detection for the classic LRU (mm/workingset.c): an evicted
 * folio leaves a shadow entry in the swap cache holding the lruvec's
 * nonresident age at eviction; when it faults back in, the refault distance
 * (ages elapsed since) is compared with the workingset size, and a folio
 * that could have stayed resident is activated at once.
 *
 * One lruvec (one node, one memcg), so the shadow keeps only the eviction
 * counter and the workingset bit (pack_shadow's memcg and node ids are
 * implied) and bucket_order is 0. MGLRU's shadows (lru_gen_eviction /
 * lru_gen_refault: min_seq and tier) are the MGLRU model's: it plugs in
 * through `lruGen`.
 */
import { LruList, PG_active, PG_workingset, type FolioTable } from './folio.js';

/** A shadow entry: the xa_value stored where the folio was (here a plain number, never 0). */
export type Shadow = number;

/** The MGLRU side of eviction and refault (lru_gen_eviction / lru_gen_refault). */
export interface LruGenWorkingset {
  eviction(head: number): Shadow;
  refault(head: number, shadow: Shadow): void;
}

/** pack_shadow: the eviction counter and the workingset bit. */
export function packShadow(eviction: number, workingset: boolean): Shadow {
  return eviction * 2 + (workingset ? 1 : 0) + 2; // +2: a shadow is never 0
}

/** unpack_shadow. */
export function unpackShadow(shadow: Shadow): { eviction: number; workingset: boolean } {
  const v = shadow - 2;
  return { eviction: Math.floor(v / 2), workingset: v % 2 === 1 };
}

export class Workingset {
  /** lruvec->nonresident_age: ages on every eviction and activation. */
  nonresidentAge = 0;
  /** WORKINGSET_REFAULT_ANON / _ACTIVATE_ANON / _RESTORE_ANON (and WORKINGSET_NODERECLAIM is not modelled). */
  readonly stats = { refault: 0, activate: 0, restore: 0, evictions: 0 };
  /** Set when MGLRU is enabled (lru_gen_enabled()): eviction and refault go there instead. */
  lruGen: LruGenWorkingset | null = null;

  constructor(
    private readonly folios: FolioTable,
    /** mem_cgroup_get_nr_swap_pages > 0: anon competes for the workingset only while swap has room. */
    private readonly swapHasRoom: () => boolean,
  ) {}

  /** workingset_age_nonresident. */
  ageNonresident(nr: number): void {
    this.nonresidentAge += nr;
  }

  /** workingset_eviction: age first, then record the age and whether the folio was workingset. */
  eviction(head: number): Shadow {
    if (this.lruGen !== null) return this.lruGen.eviction(head);
    const nr = 2 ** this.folios.order(head);
    this.ageNonresident(nr);
    this.stats.evictions += nr;
    return packShadow(this.nonresidentAge, this.folios.test(head, PG_workingset));
  }

  /** workingset_test_recent for an anon folio: refault distance <= the workingset size it competes in. */
  testRecent(shadow: Shadow): boolean {
    const { eviction } = unpackShadow(shadow);
    const distance = this.nonresidentAge - eviction;
    const f = this.folios;
    let size = f.nrPages[LruList.ActiveFile] + f.nrPages[LruList.InactiveFile];
    if (this.swapHasRoom()) size += f.nrPages[LruList.ActiveAnon];
    return distance <= size;
  }

  /**
   * workingset_refault, on a new folio not yet on the LRU: a recent refault
   * is activated (and ages the lruvec); one that was workingset before
   * eviction gets PG_workingset back (a restore).
   */
  refault(head: number, shadow: Shadow): void {
    if (this.lruGen !== null) {
      this.lruGen.refault(head, shadow);
      return;
    }
    const nr = 2 ** this.folios.order(head);
    this.stats.refault += nr;
    if (!this.testRecent(shadow)) return;
    this.folios.set(head, PG_active);
    this.ageNonresident(nr);
    this.stats.activate += nr;
    if (unpackShadow(shadow).workingset) {
      this.folios.set(head, PG_workingset);
      this.stats.restore += nr;
    }
  }

  /** workingset_activation: folio_mark_accessed promoted a folio. */
  activation(head: number): void {
    this.ageNonresident(2 ** this.folios.order(head));
  }
}
