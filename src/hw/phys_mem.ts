/**
 * Sparse host physical memory: the one interface through which every
 * shared-memory operation of the model goes (hardware walks and, later, KVM's
 * lockless code), so a seeded scheduler can interleave simulated CPUs there.
 *
 * Addresses are numbers: every host physical address is below 2^52 and so
 * exact in a double (load64Halves also takes one as two 32-bit halves).
 * 64-bit values travel as two signed 32-bit halves; a load leaves its result
 * in `lo`/`hi` so that nothing is allocated per access.
 */

export const enum MemOp {
  Load = 0,
  Store = 1,
  Cmpxchg = 2,
  Or = 3,
  And = 4,
  Xchg = 5,
}

/** Called before every operation; a scheduler may run other simulated CPUs here. */
export interface PreemptHook {
  point(op: MemOp, hpa: number): void;
}

const FRAME_WORDS = 1024; // 4 KiB as 32-bit words
const TWO32 = 4294967296;
/** 1/2^32: multiplying by it is exact and much cheaper than dividing. */
const INV_TWO32 = 1 / TWO32;
/** Radix-tree nodes: 1024 entries, 10 bits of the frame number each. */
const NODE = 1024;
/** Frame cache: direct-mapped, FC_SIZE entries of [addr hi, addr lo & ~0xfff, word base, unused]. */
const FC_SIZE = 4096;
const FC_MASK = FC_SIZE - 1;

/**
 * The frame-cache slot of the address (hi, lo): the frame number's low bits,
 * mixed with a multiplicative hash of the high half. (A plain XOR of the
 * high half made the top-down page-table frames of the host, near
 * MAXPHYADDR, collide with the bottom-up frames of the guest's tables.)
 */
function fcSlot(hi: number, lo: number): number {
  return (((lo >>> 12) ^ (Math.imul(hi, 0x9e3779b1) >>> 20)) & FC_MASK) * 4;
}

/**
 * Frames live in one Int32Array arena. A 4-level radix tree over the frame
 * number (address bits 51:42, 41:32, 31:22, 21:12) finds a frame; a
 * direct-mapped cache in front of it makes the usual lookup one typed-array
 * read keyed by integer parts of the address, with no float arithmetic.
 * Frames are never freed, so a cached entry never goes stale.
 */
export class PhysMem {
  /** Result of the last load (and the old value after cmpxchg/or/and). */
  lo = 0;
  hi = 0;
  /** Set by a scheduler; null costs one branch per operation. */
  preempt: PreemptHook | null = null;
  /**
   * True while a scheduler interleaves simulated CPUs. Software written as a
   * program yields before a memory operation only then (`if (mem.yields) yield;`),
   * so the same code runs at full speed when nothing interleaves it.
   */
  yields = false;
  /**
   * Scheduler steps begun so far (program steps and agent operations, one
   * per entry of Scheduler.log): the clock that lock hold times are measured
   * in. It stands still when no scheduler runs.
   */
  clock = 0;
  /** Frames allocated so far. */
  frameCount = 0;
  /** Lookups the frame cache missed (a radix-tree walk each): for tests of the cache's hash. */
  frameCacheMisses = 0;
  readonly limit: number;
  /** Bits that must be clear in a valid address's high half: [31:M-32]. */
  private readonly badHi: number;

  private words = new Int32Array(64 * FRAME_WORDS);
  /** Radix nodes; node 0 is the root. Inner entries: child offset (0 = none); leaf entries: slot + 1 (0 = none). */
  private tree = new Int32Array(4 * NODE);
  private nodes = 1;
  private readonly fc = new Int32Array(FC_SIZE * 4).fill(-1);

  constructor(readonly maxPhysAddr: number) {
    if (!(maxPhysAddr >= 32 && maxPhysAddr <= 52)) throw new Error(`assertion: MAXPHYADDR ${maxPhysAddr} outside 32..52`);
    this.limit = 2 ** maxPhysAddr;
    this.badHi = ~(2 ** (maxPhysAddr - 32) - 1);
  }

  /** Word index of the frame holding the address (hi, lo), or -1 if it was never written (unless `create`). */
  private frameBase(hi: number, lo: number, create: boolean): number {
    const c = fcSlot(hi, lo);
    const fc = this.fc;
    if (fc[c] === hi && fc[c + 1] === (lo & -4096)) return fc[c + 2];
    return this.frameBaseSlow(hi, lo, create, c);
  }

  /** Cache miss: walk the radix tree (creating the path if asked) and cache the frame found. */
  private frameBaseSlow(hi: number, lo: number, create: boolean, c: number): number {
    this.frameCacheMisses++;
    let node = this.child(0, hi >>> 10, create);
    if (node !== 0) node = this.child(node, hi & (NODE - 1), create);
    if (node !== 0) node = this.child(node, lo >>> 22, create);
    if (node === 0) return -1;
    const leaf = node + ((lo >>> 12) & (NODE - 1));
    let slot = this.tree[leaf] - 1;
    if (slot < 0) {
      if (!create) return -1;
      slot = this.allocate();
      this.tree[leaf] = slot + 1;
    }
    this.fc[c] = hi;
    this.fc[c + 1] = lo & -4096;
    this.fc[c + 2] = slot * FRAME_WORDS;
    return slot * FRAME_WORDS;
  }

  /** Offset of the child node at entry i of a node, or 0 if there is none (made if `create`). */
  private child(node: number, i: number, create: boolean): number {
    let next = this.tree[node + i];
    if (next === 0 && create) {
      next = this.newNode();
      this.tree[node + i] = next;
    }
    return next;
  }

  private newNode(): number {
    if ((this.nodes + 1) * NODE > this.tree.length) {
      const bigger = new Int32Array(this.tree.length * 2);
      bigger.set(this.tree);
      this.tree = bigger;
    }
    return this.nodes++ * NODE;
  }

  /**
   * Makes room for `frames` frames in all, so that allocating up to that many
   * never copies the arena (a caller that knows its size, such as a VM
   * sizing its page tables, saves the copies of repeated doubling).
   */
  reserveFrames(frames: number): void {
    if (frames * FRAME_WORDS <= this.words.length) return;
    const bigger = new Int32Array(frames * FRAME_WORDS);
    bigger.set(this.words);
    this.words = bigger;
  }

  private allocate(): number {
    const slot = this.frameCount++;
    if ((slot + 1) * FRAME_WORDS > this.words.length) {
      const bigger = new Int32Array(this.words.length * 2);
      bigger.set(this.words);
      this.words = bigger;
    }
    return slot;
  }

  private check(hpa: number): void {
    // Bit operations see ToInt32(hpa), whose low bits are hpa's for any integer.
    if (!(hpa >= 0 && hpa < this.limit) || (hpa & 7) !== 0) this.badAddress(hpa);
  }

  private badAddress(hpa: number): never {
    throw new Error(`assertion: bad 8-byte physical address ${hpa} (MAXPHYADDR ${this.maxPhysAddr})`);
  }

  /** 8-byte little-endian load into lo/hi. Untouched memory reads as zero. */
  load64(hpa: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Load, hpa);
    this.check(hpa);
    this.read((hpa * INV_TWO32) | 0, hpa | 0);
  }

  /**
   * load64 of the address hi * 2^32 + (lo >>> 0), given as two 32-bit
   * halves: the page walker carries addresses so, and this is its hot path.
   */
  load64Halves(hi: number, lo: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Load, hi * TWO32 + (lo >>> 0));
    if (((hi & this.badHi) | (lo & 7)) !== 0) this.badAddress(hi * TWO32 + (lo >>> 0));
    // frameBase and read, spelled out: V8 would not inline them into the walker here, and a walk makes 24 of these.
    const c = fcSlot(hi, lo);
    const fc = this.fc;
    const base = fc[c] === hi && fc[c + 1] === (lo & -4096) ? fc[c + 2] : this.frameBaseSlow(hi, lo, false, c);
    if (base < 0) {
      this.lo = 0;
      this.hi = 0;
      return;
    }
    const words = this.words;
    const w = base + ((lo & 0xff8) >>> 2);
    this.lo = words[w];
    this.hi = words[w + 1];
  }

  private read(hi: number, lo: number): void {
    const base = this.frameBase(hi, lo, false);
    if (base < 0) {
      this.lo = 0;
      this.hi = 0;
      return;
    }
    const w = base + ((lo & 0xff8) >>> 2);
    this.lo = this.words[w];
    this.hi = this.words[w + 1];
  }

  /**
   * Direct access for a scan while nothing can interleave (no scheduler:
   * `yields` false and no preempt hook): the array of every frame's 32-bit
   * words, an 8-byte value at word w being lo = words[w], hi = words[w + 1].
   * Index it with {@link wordIndex}. Valid until the next operation that
   * allocates a frame (the array may then be replaced). While a scheduler is
   * active every access must be an operation with its preempt point, so this
   * is refused.
   */
  directWords(): Int32Array {
    if (this.yields || this.preempt !== null) throw new Error('assertion: direct memory access while a scheduler can interleave');
    return this.words;
  }

  /** Word index in {@link directWords} of the 8-byte value at hpa, or -1 if its frame was never written. Not a memory operation. */
  wordIndex(hpa: number): number {
    this.check(hpa);
    const base = this.frameBase((hpa * INV_TWO32) | 0, hpa | 0, false);
    return base < 0 ? -1 : base + ((hpa & 0xff8) >>> 2);
  }

  /** Word index of the 8-byte value at hpa, allocating its frame. */
  private wordOf(hpa: number): number {
    return this.frameBase((hpa * INV_TWO32) | 0, hpa | 0, true) + ((hpa & 0xff8) >>> 2);
  }

  store64(hpa: number, lo: number, hi: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Store, hpa);
    this.check(hpa);
    const w = this.wordOf(hpa);
    this.words[w] = lo;
    this.words[w + 1] = hi;
  }

  /**
   * memset64: `count` 8-byte stores of (lo, hi) from hpa up, within one
   * frame. With a preempt hook each store is an operation of its own, as
   * store64 makes it; without one they are one fill of the frame's words.
   */
  fill64(hpa: number, count: number, lo: number, hi: number): void {
    this.check(hpa);
    if (count < 0 || (hpa & 0xfff) + 8 * count > 4096) throw new Error(`assertion: fill64 of ${count} words at ${hpa} leaves its frame`);
    if (this.preempt !== null) {
      for (let i = 0; i < count; i++) this.store64(hpa + 8 * i, lo, hi);
      return;
    }
    const w = this.wordOf(hpa); // may allocate the frame, and so replace the arena: read words after it
    const words = this.words;
    for (let i = 0; i < 2 * count; i += 2) {
      words[w + i] = lo;
      words[w + i + 1] = hi;
    }
  }

  /**
   * Atomic compare-and-exchange. Returns true if the value was (expLo, expHi)
   * and is now (newLo, newHi); either way lo/hi hold the value found.
   */
  cmpxchg64(hpa: number, expLo: number, expHi: number, newLo: number, newHi: number): boolean {
    if (this.preempt !== null) this.preempt.point(MemOp.Cmpxchg, hpa);
    this.check(hpa);
    const w = this.wordOf(hpa);
    const words = this.words;
    const lo = words[w];
    const hi = words[w + 1];
    this.lo = lo;
    this.hi = hi;
    if (lo !== (expLo | 0) || hi !== (expHi | 0)) return false;
    words[w] = newLo;
    words[w + 1] = newHi;
    return true;
  }

  /** Atomic exchange (XCHG); the old value is left in lo/hi. */
  xchg64(hpa: number, lo: number, hi: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Xchg, hpa);
    this.check(hpa);
    const w = this.wordOf(hpa);
    const words = this.words;
    this.lo = words[w];
    this.hi = words[w + 1];
    words[w] = lo;
    words[w + 1] = hi;
  }

  /** Atomic OR (LOCK OR / set_bit); the old value is left in lo/hi. */
  or64(hpa: number, lo: number, hi: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Or, hpa);
    this.check(hpa);
    const w = this.wordOf(hpa);
    const words = this.words;
    this.lo = words[w];
    this.hi = words[w + 1];
    words[w] |= lo;
    words[w + 1] |= hi;
  }

  /** Atomic AND (LOCK AND / clear_bit); the old value is left in lo/hi. */
  and64(hpa: number, lo: number, hi: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.And, hpa);
    this.check(hpa);
    const w = this.wordOf(hpa);
    const words = this.words;
    this.lo = words[w];
    this.hi = words[w + 1];
    words[w] &= lo;
    words[w + 1] &= hi;
  }
}
