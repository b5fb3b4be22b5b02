/**
 * A set-associative cache of tagged translations, in typed arrays (SDM 4.10,
 * 28.3.1): used for the TLB, the guest-physical TLB and every
 * paging-structure cache. Replacement is round-robin per set, so runs are
 * deterministic. Keys are address prefixes as two 32-bit halves, already
 * masked to the cache's granule.
 */
export class TagCache {
  readonly sets: number;
  readonly ways: number;
  private readonly setMask: number;
  readonly valid: Uint8Array;
  /**
   * keyLo | TAG_VALID for a valid entry (| TAG_CHAINED when it is in a
   * chain), 0 for a free one; keys are masked to a granule of at least 12
   * bits, so the low bits are free. One compare tests the low key and
   * validity, a free way is a zero, and the chain flag spares a look at
   * bucketOf for the many entries that are not chained.
   */
  private readonly tag: Int32Array;
  readonly keyHi: Int32Array;
  readonly keyLo: Int32Array;
  /** Tags: PCID, VPID (ASID under NPT), EP4TA (0 when not under EPT). */
  readonly pcid: Int32Array;
  readonly vpid: Int32Array;
  readonly ep4ta: Float64Array;
  readonly global: Uint8Array;
  /** log2 of the size of the page (or region) the entry was made from. */
  readonly shift: Uint8Array;
  /** Host physical address the key maps to (frame or table). */
  readonly hpa: Float64Array;
  /** Guest-physical address the key maps to (frame or table), when two-dimensional. */
  readonly gpa: Float64Array;
  /** Packed rights, see rights.ts. */
  readonly rights: Int32Array;
  private readonly victim: Uint8Array;
  /**
   * Entries made from pages larger than the granule (4K fragments of 2M/1G
   * pages) live in the set of their own 4K key but cover addresses of other
   * sets. They are also chained in buckets by the page they came from, so
   * an invalidation for one address looks at one set plus the chains of the
   * pages that could cover it: a TLB full of fragments of other 1G pages
   * costs it nothing. Chains are doubly linked through entry indices.
   */
  private readonly bucketHead = new Int32Array(LARGE_BUCKETS).fill(-1);
  /** The bucket entry i is chained in, or -1 when it is not large. */
  private readonly bucketOf: Int32Array;
  private readonly chainNext: Int32Array;
  private readonly chainPrev: Int32Array;
  /** Large entries by page shift (only 21 and 30 occur). */
  private readonly largeAt = new Int32Array(31);
  /** Large entries of any shift: most caches never have one. */
  private nLarge = 0;
  /** Entries inserted so far (statistics). */
  fills = 0;
  /** Valid entries now: an invalidation of an empty cache has nothing to look at. */
  private nValid = 0;
  /**
   * Bumped by every insert and drop: a memo of an entry (the L1 TLB) is good
   * while it is unchanged. A cell, so that the combined TLB can share it with
   * the registers' generation and a memo checks one number.
   */
  readonly epoch: Int32Array;

  constructor(
    entries: number,
    ways: number,
    /** bit position of the key's lowest bit (12 for 4K pages, 21 for the PDE cache, ...) */
    readonly granule: number,
    epoch: Int32Array = new Int32Array(1),
  ) {
    this.epoch = epoch;
    if (ways < 1 || entries < ways || entries % ways !== 0) throw new Error(`assertion: cache of ${entries} entries cannot have ${ways} ways`);
    const sets = entries / ways;
    if ((sets & (sets - 1)) !== 0) throw new Error(`assertion: cache set count ${sets} is not a power of two`);
    this.sets = sets;
    this.ways = ways;
    this.setMask = sets - 1;
    this.valid = new Uint8Array(entries);
    this.tag = new Int32Array(entries);
    this.keyHi = new Int32Array(entries);
    this.keyLo = new Int32Array(entries);
    this.pcid = new Int32Array(entries);
    this.vpid = new Int32Array(entries);
    this.ep4ta = new Float64Array(entries);
    this.global = new Uint8Array(entries);
    this.shift = new Uint8Array(entries);
    this.hpa = new Float64Array(entries);
    this.gpa = new Float64Array(entries);
    this.rights = new Int32Array(entries);
    this.victim = new Uint8Array(sets);
    this.bucketOf = new Int32Array(entries).fill(-1);
    this.chainNext = new Int32Array(entries);
    this.chainPrev = new Int32Array(entries);
  }

  /** Chains entry i (valid, larger than the granule) in the bucket of the page it came from. */
  private chain(i: number): void {
    const shift = this.shift[i];
    if (shift !== 21 && shift !== 30) throw new Error(`assertion: a cache entry larger than its granule made from a page of shift ${shift}`);
    const b = largeBucket(this.keyHi[i], this.keyLo[i], shift);
    const head = this.bucketHead[b];
    this.chainNext[i] = head;
    this.chainPrev[i] = -1;
    if (head >= 0) this.chainPrev[head] = i;
    this.bucketHead[b] = i;
    this.bucketOf[i] = b;
    this.largeAt[shift]++;
    this.nLarge++;
    this.tag[i] |= TAG_CHAINED;
  }

  /** Takes entry i, which is chained, out of its chain (before its key or shift change, or it stops being valid). */
  private unchain(i: number): void {
    const b = this.bucketOf[i];
    const next = this.chainNext[i];
    const prev = this.chainPrev[i];
    if (prev >= 0) this.chainNext[prev] = next;
    else this.bucketHead[b] = next;
    if (next >= 0) this.chainPrev[next] = prev;
    this.bucketOf[i] = -1;
    this.largeAt[this.shift[i]]--;
    this.nLarge--;
  }

  /** Index of the set a key lives in. */
  private setIndex(keyHi: number, keyLo: number): number {
    const g = this.granule;
    const x = g < 32 ? (keyLo >>> g) ^ (keyHi << (32 - g)) : keyHi >>> (g - 32);
    return x & this.setMask;
  }

  /** Index of the first entry of the key's set. */
  private setOf(keyHi: number, keyLo: number): number {
    return this.setIndex(keyHi, keyLo) * this.ways;
  }

  /**
   * Index of the entry for this key and context, or -1. A global entry
   * matches any PCID (it still needs its VPID and EP4TA).
   */
  lookup(keyHi: number, keyLo: number, vpid: number, pcid: number, ep4ta: number): number {
    if (this.nValid === 0) return -1; // paging-structure caches are often empty
    const base = this.setOf(keyHi, keyLo);
    const end = base + this.ways;
    const tag = this.tag;
    const want = keyLo | TAG_VALID;
    for (let i = base; i < end; i++) if ((tag[i] & ~TAG_CHAINED) === want && this.sameContext(i, keyHi, vpid, pcid, ep4ta)) return i;
    return -1;
  }

  /** Entry i, whose low key and validity are known to match, holds this high key and context. */
  private sameContext(i: number, keyHi: number, vpid: number, pcid: number, ep4ta: number): boolean {
    return (
      this.keyHi[i] === keyHi &&
      this.vpid[i] === vpid &&
      this.ep4ta[i] === ep4ta &&
      (this.pcid[i] === pcid || this.global[i] === 1)
    );
  }

  /** Insert (or replace the matching entry); returns its index. */
  insert(
    keyHi: number, keyLo: number, vpid: number, pcid: number, ep4ta: number,
    global: boolean, shift: number, hpa: number, gpa: number, rights: number,
  ): number {
    // One pass over the set: the matching entry, else the first free way.
    const set = this.setIndex(keyHi, keyLo);
    const base = set * this.ways;
    const end = base + this.ways;
    const tag = this.tag;
    const want = keyLo | TAG_VALID;
    let i = -1;
    let w = -1;
    for (let j = base; j < end; j++) {
      const t = tag[j];
      if ((t & ~TAG_CHAINED) === want) {
        if (this.sameContext(j, keyHi, vpid, pcid, ep4ta)) {
          i = j;
          break;
        }
      } else if (t === 0 && w < 0) w = j;
    }
    if (i < 0) {
      if (w < 0) {
        // Round robin, without a division.
        const v = this.victim[set];
        w = base + v;
        this.victim[set] = v + 1 === this.ways ? 0 : v + 1;
      }
      i = w;
    }
    const old = tag[i];
    if (old === 0) this.nValid++;
    else if ((old & TAG_CHAINED) !== 0) this.unchain(i);
    tag[i] = want;
    this.valid[i] = 1;
    this.keyHi[i] = keyHi;
    this.keyLo[i] = keyLo;
    this.vpid[i] = vpid;
    this.pcid[i] = pcid;
    this.ep4ta[i] = ep4ta;
    this.global[i] = global ? 1 : 0;
    this.shift[i] = shift;
    this.hpa[i] = hpa;
    this.gpa[i] = gpa;
    this.rights[i] = rights;
    if (shift > this.granule) this.chain(i);
    this.fills++;
    this.epoch[0]++;
    return i;
  }

  /** Number of valid entries. */
  count(): number {
    return this.nValid;
  }

  /** Drop every entry. */
  clear(): void {
    this.valid.fill(0);
    this.tag.fill(0);
    this.nValid = 0;
    this.bucketHead.fill(-1);
    this.bucketOf.fill(-1);
    this.largeAt.fill(0);
    this.nLarge = 0;
    this.epoch[0]++;
  }

  /** Drop entries the predicate selects (invalidation is rare: a scan is fine). */
  drop(pred: (i: number) => boolean): number {
    let n = 0;
    for (let i = 0; i < this.valid.length; i++) {
      if (this.valid[i] === 1 && pred(i)) {
        this.invalidate(i);
        n++;
      }
    }
    this.nValid -= n;
    if (n > 0) this.epoch[0]++;
    return n;
  }

  /**
   * Drop the entries that cover the address (hi, lo) and carry these tags
   * (vpid or pcid -1: any; a global entry matches any PCID when
   * `globalAnyPcid`): what a scan with covers() and the same test would drop,
   * found by looking at the address's set and at the chains of the 2M and
   * 1G pages that contain the address.
   */
  dropCovering(hi: number, lo: number, vpid: number, pcid: number, ep4ta: number, globalAnyPcid: boolean): number {
    if (this.nValid === 0) return 0;
    let n = 0;
    const g = this.granule;
    const kHi = maskHi(hi, g);
    const kLo = maskLo(lo, g);
    const base = this.setOf(kHi, kLo);
    const end = base + this.ways;
    const tag = this.tag;
    const want = kLo | TAG_VALID;
    // The set holds the entries whose key is the address's; entries larger
    // than the granule that cover it from other keys are all in the chains below.
    for (let i = base; i < end; i++) {
      if ((tag[i] & ~TAG_CHAINED) === want && this.keyHi[i] === kHi && this.tagged(i, vpid, pcid, ep4ta, globalAnyPcid)) {
        this.invalidate(i);
        n++;
      }
    }
    // The large entries: only those chained under the pages, of each size present, that contain the address.
    for (let k = 0; k < LARGE_SHIFTS.length && this.nLarge > 0; k++) {
      const s = LARGE_SHIFTS[k];
      if (s <= g || this.largeAt[s] === 0) continue;
      for (let i = this.bucketHead[largeBucket(hi, lo, s)]; i >= 0; ) {
        const next = this.chainNext[i];
        if (this.tagged(i, vpid, pcid, ep4ta, globalAnyPcid) && this.covers(i, hi, lo)) {
          this.invalidate(i);
          n++;
        }
        i = next;
      }
    }
    this.nValid -= n;
    if (n > 0) this.epoch[0]++;
    return n;
  }

  /** Frees entry i (the caller counts it). */
  private invalidate(i: number): void {
    if ((this.tag[i] & TAG_CHAINED) !== 0) this.unchain(i);
    this.valid[i] = 0;
    this.tag[i] = 0;
  }

  private tagged(i: number, vpid: number, pcid: number, ep4ta: number, globalAnyPcid: boolean): boolean {
    return (
      (vpid < 0 || this.vpid[i] === vpid) &&
      this.ep4ta[i] === ep4ta &&
      (pcid < 0 || this.pcid[i] === pcid || (globalAnyPcid && this.global[i] === 1))
    );
  }

  /** Whether entry i covers the address (hi, lo) at the size it was made from. */
  covers(i: number, hi: number, lo: number): boolean {
    const s = Math.max(this.shift[i], this.granule);
    if (s >= 32) return this.keyHi[i] >>> (s - 32) === hi >>> (s - 32);
    return this.keyHi[i] === hi && this.keyLo[i] >>> s === lo >>> s;
  }
}

const TAG_VALID = 1;
const TAG_CHAINED = 2;

/** Shifts of the pages whose 4K fragments can be large entries: 2M and 1G. */
const LARGE_SHIFTS = [21, 30];
const LARGE_BUCKET_BITS = 6;
const LARGE_BUCKETS = 1 << LARGE_BUCKET_BITS;

/** The bucket of the page of size 2^shift holding the address (hi, lo): a hash of its page number and size. */
function largeBucket(hi: number, lo: number, shift: number): number {
  const page = (lo >>> shift) | (hi << (32 - shift));
  return Math.imul(page + shift, 0x9e3779b1) >>> (32 - LARGE_BUCKET_BITS);
}

/** Mask the address (hi, lo) down to a granule: returns the low half; the high half is maskHi(). */
export function maskLo(lo: number, granule: number): number {
  return granule >= 32 ? 0 : (lo >>> granule) << granule;
}
export function maskHi(hi: number, granule: number): number {
  return granule <= 32 ? hi : granule >= 64 ? 0 : (hi >>> (granule - 32)) << (granule - 32);
}
