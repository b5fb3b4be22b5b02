/**
 * One vCPU's TLBs and paging-structure caches (SDM 4.10, 28.3.1; APM 15.16).
 *
 * - `comb`: linear and combined mappings (LA page -> hPA), tagged VPID (ASID
 *   under NPT), PCID and EP4TA; a large page is cached as 4K fragments that
 *   remember the page size they came from.
 * - `gpa`: guest-physical mappings (gPA page -> hPA), tagged EP4TA (ASID under NPT).
 * - `gPsc[k]`: guest paging-structure caches for the level-k entry (2 = PDE
 *   cache ... 5 = PML5 cache), keyed by the LA prefix that entry maps.
 * - `ePsc[k]`: the same for EPT/NPT entries, keyed by the gPA prefix.
 */
import { TagCache } from './tag_cache.js';

export interface TlbGeometry {
  entries: number;
  ways: number;
  pscEntries: number;
  pscWays: number;
}

export const DEFAULT_GEOMETRY: TlbGeometry = { entries: 1536, ways: 12, pscEntries: 32, pscWays: 4 };

export class VcpuTlb {
  readonly comb: TagCache;
  readonly gpa: TagCache;
  readonly gPsc: TagCache[] = [];
  readonly ePsc: TagCache[] = [];
  /** The cell `gpa` and every `ePsc[k]` bump on every change: one number tells that none of them changed. */
  readonly gpEpoch = new Int32Array(1);

  /** `stamp`: the cell the combined TLB bumps on every change (shared with the registers' generation). */
  constructor(g: TlbGeometry = DEFAULT_GEOMETRY, stamp: Int32Array = new Int32Array(1)) {
    this.comb = new TagCache(g.entries, g.ways, 12, stamp);
    this.gpa = new TagCache(g.entries, g.ways, 12, this.gpEpoch);
    for (let k = 2; k <= 5; k++) {
      this.gPsc[k] = new TagCache(g.pscEntries, g.pscWays, 12 + 9 * (k - 1));
      this.ePsc[k] = new TagCache(g.pscEntries, g.pscWays, 12 + 9 * (k - 1), this.gpEpoch);
    }
  }

  /** Every cache, for scans. */
  all(): TagCache[] {
    return [this.comb, this.gpa, ...this.gPsc.slice(2), ...this.ePsc.slice(2)];
  }
  linear(): TagCache[] {
    return [this.comb, ...this.gPsc.slice(2)];
  }
  guestPhysical(): TagCache[] {
    return [this.gpa, ...this.ePsc.slice(2)];
  }

  flushAll(): void {
    for (const c of this.all()) c.clear();
  }

  /** Drop linear/combined TLB entries and PSC entries matching the predicates. */
  dropLinear(tlbPred: (c: TagCache, i: number) => boolean, pscPred: (c: TagCache, i: number) => boolean): void {
    this.comb.drop((i) => tlbPred(this.comb, i));
    for (let k = 2; k <= 5; k++) {
      const c = this.gPsc[k];
      c.drop((i) => pscPred(c, i));
    }
  }

  dropGuestPhysical(pred: (c: TagCache, i: number) => boolean): void {
    for (const c of this.guestPhysical()) c.drop((i) => pred(c, i));
  }

  /**
   * A #PF or EPT violation at a linear address: combined mappings with these
   * tags (global ones whatever their PCID) and PSC entries with these tags
   * that cover the address.
   */
  dropLinearCovering(hi: number, lo: number, vpid: number, pcid: number, ep4ta: number): void {
    // An empty cache has nothing to drop: skip the call (most PSC levels are empty on a fault).
    if (this.comb.count() !== 0) this.comb.dropCovering(hi, lo, vpid, pcid, ep4ta, true);
    for (let k = 2; k <= 5; k++) {
      const c = this.gPsc[k];
      if (c.count() !== 0) c.dropCovering(hi, lo, vpid, pcid, ep4ta, false);
    }
  }

  /** An EPT violation or NPF at a guest-physical address: guest-physical mappings with these tags (vpid -1: any) that cover it. */
  dropGuestPhysicalCovering(hi: number, lo: number, vpid: number, ep4ta: number): void {
    if (this.gpa.count() !== 0) this.gpa.dropCovering(hi, lo, vpid, -1, ep4ta, false);
    for (let k = 2; k <= 5; k++) {
      const c = this.ePsc[k];
      if (c.count() !== 0) c.dropCovering(hi, lo, vpid, -1, ep4ta, false);
    }
  }
}
