/**
 * A set-associative cache of tagged translations (SDM 4.10, 28.3.1): used for
 * the TLB, the guest-physical TLB and every paging-structure cache.
 * Replacement is round-robin per set, so runs are deterministic. Keys are
 * address prefixes as two 32-bit halves, already masked to the cache's
 * granule.
 *
 * Layout: entry i is the 16 int32 (64 bytes, a cache line) of `data` from
 * i * STRIDE, fields at the F_* offsets below; 52-bit addresses and the
 * EP4TA are doubles in the same line, read through `wide`. A fill or an
 * invalidation touches one entry's line instead of one line per field. The
 * per-way `tag` array stays separate so that a set's scan reads one short
 * run of it.
 */
export class TagCache {
  readonly sets: number;
  readonly ways: number;
  /** Number of entries (sets * ways); indices run below it. */
  readonly size: number;
  private readonly setMask: number;
  /**
   * keyLo | TAG_VALID for a valid entry (| TAG_CHAINED when it is in a
   * chain), 0 for a free one; keys are masked to a granule of at least 12
   * bits, so the low bits are free. One compare tests the low key and
   * validity, a free way is a zero, and the chain flag spares a look at
   * the entry's bucket for the many entries that are not chained.
   */
  private readonly tag: Int32Array;
  /** The entries, STRIDE int32 each (see the class doc). */
  private readonly data: Int32Array;
  /** The same memory as float64: the wide fields (EP4TA, hPA, gPA) are whole doubles at W_* of entry i's i * WSTRIDE. */
  private readonly wide: Float64Array;
  private readonly victim: Uint8Array;
  /**
   * Valid entries by the low bits of their key's hash (a superset of the set
   * index): most lookups and invalidations on a fault path are for keys not
   * cached, and a zero here answers them without scanning the set.
   */
  private readonly keyCount: Uint16Array;
  private readonly keyMask: number;
  /** ANDed into an address's halves, they give its key at this cache's granule (bits below it clear). */
  readonly hiMask: number;
  readonly loMask: number;
  /** Whether a keyCount slot depends on the high key (else the tag alone gives it, without a look at the entry). */
  private readonly slotUsesHi: boolean;
  /** Valid entries by set: a fill into a full set goes straight to the victim. */
  private readonly setFill: Uint8Array;
  /**
   * Entries made from pages larger than the granule (4K fragments of 2M/1G
   * pages) live in the set of their own 4K key but cover addresses of other
   * sets. They are also chained in buckets by the page they came from, so
   * an invalidation for one address looks at one set plus the chains of the
   * pages that could cover it: a TLB full of fragments of other 1G pages
   * costs it nothing. Chains are doubly linked through entry indices
   * (F_NEXT, F_PREV; F_BUCKET is the entry's bucket while it is chained).
   */
  private readonly bucketHead = new Int32Array(LARGE_BUCKETS).fill(-1);
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
    if (ways > 255 || entries > 0xffff) throw new Error(`assertion: cache of ${entries} entries in ${ways} ways is too large`);
    this.sets = sets;
    this.ways = ways;
    this.size = entries;
    this.setMask = sets - 1;
    this.tag = new Int32Array(entries);
    this.data = new Int32Array(entries * STRIDE);
    this.wide = new Float64Array(this.data.buffer);
    for (let i = 0; i < entries; i++) this.data[i * STRIDE + F_BUCKET] = -1;
    this.victim = new Uint8Array(sets);
    let slots = sets;
    while (slots < entries * 4) slots *= 2;
    this.keyCount = new Uint16Array(slots);
    this.keyMask = slots - 1;
    this.slotUsesHi = granule + Math.log2(slots) > 32;
    if (granule < 12 || granule > 63) throw new Error(`assertion: cache granule ${granule} outside 12..63`);
    this.hiMask = granule <= 32 ? -1 : -1 << (granule - 32);
    this.loMask = granule >= 32 ? 0 : -1 << granule;
    this.setFill = new Uint8Array(sets);
  }

  // Fields of entry i (meaningful while it is valid).
  isValid(i: number): boolean {
    return this.tag[i] !== 0;
  }
  keyHiOf(i: number): number {
    return this.data[i * STRIDE + F_KEY_HI];
  }
  keyLoOf(i: number): number {
    return this.tag[i] & ~0xfff; // the tag is the low key with flags below bit 12
  }
  /** Tags: VPID (ASID under NPT), PCID, EP4TA (0 when not under EPT). */
  vpidOf(i: number): number {
    return this.data[i * STRIDE + F_VPID];
  }
  pcidOf(i: number): number {
    return this.data[i * STRIDE + F_PCID];
  }
  ep4taOf(i: number): number {
    return this.wide[i * WSTRIDE + W_EP4TA];
  }
  isGlobal(i: number): boolean {
    return (this.data[i * STRIDE + F_SHIFT] & S_GLOBAL) !== 0;
  }
  /** log2 of the size of the page (or region) the entry was made from. */
  shiftOf(i: number): number {
    return this.data[i * STRIDE + F_SHIFT] & S_SHIFT;
  }
  /** Host physical address the key maps to (frame or table). */
  hpaOf(i: number): number {
    return this.wide[i * WSTRIDE + W_HPA];
  }
  /** Guest-physical address the key maps to (frame or table) when two-dimensional, or -1. */
  gpaOf(i: number): number {
    return this.wide[i * WSTRIDE + W_GPA];
  }
  /** Packed rights, see rights.ts. */
  rightsOf(i: number): number {
    return this.data[i * STRIDE + F_RIGHTS];
  }
  /** Chains entry i (valid, larger than the granule) in the bucket of the page it came from. */
  private chain(i: number): void {
    const d = this.data;
    const e = i * STRIDE;
    if (d[e + F_BUCKET] >= 0) throw new Error(`assertion: cache entry ${i} chained twice`);
    const shift = d[e + F_SHIFT] & S_SHIFT;
    if (shift !== 21 && shift !== 30) throw new Error(`assertion: a cache entry larger than its granule made from a page of shift ${shift}`);
    const b = largeBucket(d[e + F_KEY_HI], this.tag[i] & ~0xfff, shift);
    const head = this.bucketHead[b];
    d[e + F_NEXT] = head;
    d[e + F_PREV] = -1;
    if (head >= 0) d[head * STRIDE + F_PREV] = i;
    this.bucketHead[b] = i;
    d[e + F_BUCKET] = b;
    this.largeAt[shift]++;
    this.nLarge++;
    this.tag[i] |= TAG_CHAINED;
  }

  /** Takes entry i, which is chained, out of its chain (before its key or shift change, or it stops being valid). */
  private unchain(i: number): void {
    const d = this.data;
    const e = i * STRIDE;
    const b = d[e + F_BUCKET];
    const next = d[e + F_NEXT];
    const prev = d[e + F_PREV];
    if (prev >= 0) d[prev * STRIDE + F_NEXT] = next;
    else this.bucketHead[b] = next;
    if (next >= 0) d[next * STRIDE + F_PREV] = prev;
    d[e + F_BUCKET] = -1;
    this.largeAt[d[e + F_SHIFT] & S_SHIFT]--;
    this.nLarge--;
  }

  /**
   * Hash of a key: its low bits are the set index (and the keyCount slot).
   * Always a signed 32-bit integer (hence the `| 0` on the unsigned shift):
   * a result that is only sometimes unsigned made V8 carry it as a double.
   */
  private hash(keyHi: number, keyLo: number): number {
    const g = this.granule;
    return g < 32 ? (keyLo >>> g) ^ (keyHi << (32 - g)) : (keyHi >>> (g - 32)) | 0;
  }

  /**
   * Index of the entry for this key and context, or -1. A global entry
   * matches any PCID (it still needs its VPID and EP4TA).
   */
  lookup(keyHi: number, keyLo: number, vpid: number, pcid: number, ep4ta: number): number {
    if (this.nValid === 0) return -1; // paging-structure caches are often empty
    const x = this.hash(keyHi, keyLo);
    if (this.keyCount[x & this.keyMask] === 0) return -1;
    const base = (x & this.setMask) * this.ways;
    const end = base + this.ways;
    const tag = this.tag;
    const want = keyLo | TAG_VALID;
    for (let i = base; i < end; i++) if ((tag[i] & ~TAG_CHAINED) === want && this.sameContext(i, keyHi, vpid, pcid, ep4ta)) return i;
    return -1;
  }

  /** Entry i, whose low key and validity are known to match, holds this high key and context. */
  private sameContext(i: number, keyHi: number, vpid: number, pcid: number, ep4ta: number): boolean {
    const d = this.data;
    const e = i * STRIDE;
    return (
      d[e + F_KEY_HI] === keyHi &&
      d[e + F_VPID] === vpid &&
      this.wide[i * WSTRIDE + W_EP4TA] === ep4ta &&
      (d[e + F_PCID] === pcid || (d[e + F_SHIFT] & S_GLOBAL) !== 0)
    );
  }

  /** Insert (or replace the matching entry); returns its index. */
  insert(
    keyHi: number, keyLo: number, vpid: number, pcid: number, ep4ta: number,
    global: boolean, shift: number, hpa: number, gpa: number, rights: number,
  ): number {
    if (hpa < 0 || ep4ta < 0) throw new Error(`assertion: cache fill with a negative address (hPA ${hpa}, EP4TA ${ep4ta})`);
    const x = this.hash(keyHi, keyLo);
    const set = x & this.setMask;
    const base = set * this.ways;
    const end = base + this.ways;
    const tag = this.tag;
    const want = keyLo | TAG_VALID;
    let i = -1;
    if (this.keyCount[x & this.keyMask] !== 0) {
      for (let j = base; j < end; j++) {
        if ((tag[j] & ~TAG_CHAINED) === want && this.sameContext(j, keyHi, vpid, pcid, ep4ta)) {
          i = j;
          break;
        }
      }
    }
    if (i >= 0) {
      // The matching entry: same key, so the same set and count slot; only its chain may change (with its shift).
      if ((tag[i] & TAG_CHAINED) !== 0) this.unchain(i);
    } else {
      if (this.setFill[set] !== this.ways) {
        for (let j = base; j < end; j++) {
          if (tag[j] === 0) {
            i = j;
            break;
          }
        }
        this.nValid++;
        this.setFill[set]++;
      } else {
        // A full set: the round-robin victim, without a division.
        const v = this.victim[set];
        i = base + v;
        this.victim[set] = v + 1 === this.ways ? 0 : v + 1;
        if ((tag[i] & TAG_CHAINED) !== 0) this.unchain(i);
        this.keyCount[this.slotOf(i)]--;
      }
      this.keyCount[x & this.keyMask]++;
    }
    tag[i] = want;
    const d = this.data;
    const e = i * STRIDE;
    d[e + F_KEY_HI] = keyHi;
    d[e + F_VPID] = vpid;
    d[e + F_PCID] = pcid;
    d[e + F_SHIFT] = global ? shift | S_GLOBAL : shift;
    const w = this.wide;
    const we = i * WSTRIDE;
    w[we + W_EP4TA] = ep4ta;
    w[we + W_HPA] = hpa;
    w[we + W_GPA] = gpa < 0 ? -1 : gpa; // -1: no gPA
    d[e + F_RIGHTS] = rights;
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
    // Chained entries leave their chains (F_BUCKET -1), as unchain() would.
    if (this.nLarge !== 0) {
      for (let b = 0; b < LARGE_BUCKETS; b++) {
        for (let i = this.bucketHead[b]; i >= 0; i = this.data[i * STRIDE + F_NEXT]) this.data[i * STRIDE + F_BUCKET] = -1;
      }
    }
    this.tag.fill(0);
    this.keyCount.fill(0);
    this.setFill.fill(0);
    this.nValid = 0;
    this.bucketHead.fill(-1);
    this.largeAt.fill(0);
    this.nLarge = 0;
    this.epoch[0]++;
  }

  /** Drop entries the predicate selects (invalidation is rare: a scan is fine). */
  drop(pred: (i: number) => boolean): number {
    let n = 0;
    const tag = this.tag;
    for (let i = 0; i < tag.length; i++) {
      if (tag[i] !== 0 && pred(i)) {
        this.invalidate(i, this.setOf(i), this.slotOf(i));
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
    const kHi = hi & this.hiMask;
    const kLo = lo & this.loMask;
    const x = this.hash(kHi, kLo);
    const slot = x & this.keyMask;
    // The set holds the entries whose key is the address's (none when its
    // count is zero); entries larger than the granule that cover it from
    // other keys are all in the chains below.
    if (this.keyCount[slot] !== 0) {
      const set = x & this.setMask;
      const base = set * this.ways;
      const end = base + this.ways;
      const tag = this.tag;
      const want = kLo | TAG_VALID;
      for (let i = base; i < end; i++) {
        if ((tag[i] & ~TAG_CHAINED) === want && this.data[i * STRIDE + F_KEY_HI] === kHi && this.tagged(i, vpid, pcid, ep4ta, globalAnyPcid)) {
          this.invalidate(i, set, slot); // its key is the address's: set and count slot are known
          n++;
        }
      }
    }
    // The large entries: only those chained under the 2M and 1G pages that contain the address.
    if (this.nLarge !== 0) {
      if (g < 21 && this.largeAt[21] !== 0) n += this.dropChain(largeBucket(hi, lo, 21), hi, lo, vpid, pcid, ep4ta, globalAnyPcid);
      if (g < 30 && this.largeAt[30] !== 0) n += this.dropChain(largeBucket(hi, lo, 30), hi, lo, vpid, pcid, ep4ta, globalAnyPcid);
    }
    this.nValid -= n;
    if (n > 0) this.epoch[0]++;
    return n;
  }

  /** dropCovering's look at one chain of large entries; returns how many it freed. */
  private dropChain(bucket: number, hi: number, lo: number, vpid: number, pcid: number, ep4ta: number, globalAnyPcid: boolean): number {
    let n = 0;
    for (let i = this.bucketHead[bucket]; i >= 0; ) {
      const next = this.data[i * STRIDE + F_NEXT];
      if (this.tagged(i, vpid, pcid, ep4ta, globalAnyPcid) && this.covers(i, hi, lo)) {
        this.invalidate(i, this.setOf(i), this.slotOf(i));
        n++;
      }
      i = next;
    }
    return n;
  }

  /**
   * The keyCount slot of valid entry i, from its tag when the high key does
   * not matter: a fill over a victim then only writes the victim's line.
   */
  private slotOf(i: number): number {
    const hi = this.slotUsesHi ? this.data[i * STRIDE + F_KEY_HI] : 0;
    return this.hash(hi, this.tag[i]) & this.keyMask;
  }

  /** The set of entry i (i / ways is exact enough: the quotient is never within 2^-8 below an integer). */
  private setOf(i: number): number {
    return (i / this.ways) | 0;
  }

  /** Frees entry i, of the given set and keyCount slot (the caller counts it). */
  private invalidate(i: number, set: number, slot: number): void {
    if ((this.tag[i] & TAG_CHAINED) !== 0) this.unchain(i);
    this.keyCount[slot]--;
    this.tag[i] = 0;
    this.setFill[set]--;
  }

  /** Entry i carries these tags (EP4TA as halves; vpid or pcid -1: any). */
  private tagged(i: number, vpid: number, pcid: number, ep4ta: number, globalAnyPcid: boolean): boolean {
    const d = this.data;
    const e = i * STRIDE;
    return (
      (vpid < 0 || d[e + F_VPID] === vpid) &&
      this.wide[i * WSTRIDE + W_EP4TA] === ep4ta &&
      (pcid < 0 || d[e + F_PCID] === pcid || (globalAnyPcid && (d[e + F_SHIFT] & S_GLOBAL) !== 0))
    );
  }

  /** Whether entry i covers the address (hi, lo) at the size it was made from. */
  covers(i: number, hi: number, lo: number): boolean {
    const d = this.data;
    const e = i * STRIDE;
    const s = Math.max(d[e + F_SHIFT] & S_SHIFT, this.granule);
    if (s >= 32) return d[e + F_KEY_HI] >>> (s - 32) === hi >>> (s - 32);
    return d[e + F_KEY_HI] === hi && this.tag[i] >>> s === lo >>> s;
  }
}

const TAG_VALID = 1;
const TAG_CHAINED = 2;

/**
 * Int32 per entry: 64 bytes, one cache line. The low key is not among the
 * fields: it is the tag's bits 31:12.
 */
const STRIDE = 16;
const F_KEY_HI = 0;
const F_VPID = 1;
const F_PCID = 2;
/** The page shift (S_SHIFT) and the global flag (S_GLOBAL). */
const F_SHIFT = 3;
const S_SHIFT = 0xff;
const S_GLOBAL = 0x100;
// Int32 4-9: the wide fields (W_* below).
const F_RIGHTS = 10;
const F_BUCKET = 11;
const F_NEXT = 12;
const F_PREV = 13;
// Int32 14-15: unused.

/**
 * The wide fields as float64 (WSTRIDE per entry): EP4TA, hPA and gPA (-1:
 * none) as whole doubles, exact since no address reaches 2^52. One store or
 * compare each, where halves took two and a conversion.
 */
const WSTRIDE = STRIDE / 2;
const W_EP4TA = 2;
const W_HPA = 3;
const W_GPA = 4;

const LARGE_BUCKET_BITS = 6;
const LARGE_BUCKETS = 1 << LARGE_BUCKET_BITS;

/** The bucket of the page of size 2^shift holding the address (hi, lo): a hash of its page number and size. */
function largeBucket(hi: number, lo: number, shift: number): number {
  const page = (lo >>> shift) | (hi << (32 - shift));
  return Math.imul(page + shift, 0x9e3779b1) >>> (32 - LARGE_BUCKET_BITS);
}
