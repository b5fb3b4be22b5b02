/**
 * Sparse host physical memory: the one interface through which every
 * shared-memory operation of the model goes (hardware walks and, later, KVM's
 * lockless code), so a seeded scheduler can interleave simulated CPUs there.
 *
 * Addresses are numbers: every host physical address is below 2^52 and so
 * exact in a double. 64-bit values travel as two signed 32-bit halves; a load
 * leaves its result in `lo`/`hi` so that nothing is allocated per access.
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
const EMPTY = -1;
/** 1/4096: multiplying by it is exact and much cheaper than dividing. */
const INV_4K = 1 / 4096;

/**
 * Frames live in one Int32Array arena, found through an open-addressing
 * hash of frame numbers kept in typed arrays: a load is a few typed-array
 * reads with no object in between, whatever the address.
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
  /** Frames allocated so far. */
  frameCount = 0;
  readonly limit: number;

  private words = new Int32Array(64 * FRAME_WORDS);
  private keys = new Float64Array(256).fill(EMPTY);
  private slots = new Int32Array(256);
  private mask = 255;

  constructor(readonly maxPhysAddr: number) {
    if (!(maxPhysAddr >= 32 && maxPhysAddr <= 52)) throw new Error(`assertion: MAXPHYADDR ${maxPhysAddr} outside 32..52`);
    this.limit = 2 ** maxPhysAddr;
  }

  private static hash(fn: number): number {
    return Math.imul(fn | 0, 0x9e3779b1) ^ ((fn * 2.3283064365386963e-10) | 0);
  }

  /** Word index of the frame's first word, or -1 if never written. */
  private find(fn: number): number {
    const keys = this.keys;
    const mask = this.mask;
    let h = PhysMem.hash(fn) & mask;
    for (;;) {
      const k = keys[h];
      if (k === fn) return this.slots[h] * FRAME_WORDS;
      if (k === EMPTY) return -1;
      h = (h + 1) & mask;
    }
  }

  private frame(fn: number): number {
    const at = this.find(fn);
    return at >= 0 ? at : this.allocate(fn);
  }

  private allocate(fn: number): number {
    const slot = this.frameCount++;
    if ((slot + 1) * FRAME_WORDS > this.words.length) {
      const bigger = new Int32Array(this.words.length * 2);
      bigger.set(this.words);
      this.words = bigger;
    }
    if (this.frameCount * 2 > this.mask + 1) this.rehash((this.mask + 1) * 2);
    this.insertKey(fn, slot);
    return slot * FRAME_WORDS;
  }

  private insertKey(fn: number, slot: number): void {
    let h = PhysMem.hash(fn) & this.mask;
    while (this.keys[h] !== EMPTY) h = (h + 1) & this.mask;
    this.keys[h] = fn;
    this.slots[h] = slot;
  }

  private rehash(size: number): void {
    const oldKeys = this.keys;
    const oldSlots = this.slots;
    this.keys = new Float64Array(size).fill(EMPTY);
    this.slots = new Int32Array(size);
    this.mask = size - 1;
    for (let i = 0; i < oldKeys.length; i++) if (oldKeys[i] !== EMPTY) this.insertKey(oldKeys[i], oldSlots[i]);
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
    // find(), written out: this is the hottest function of the model.
    const fn = Math.floor(hpa * INV_4K);
    const keys = this.keys;
    const mask = this.mask;
    let h = (Math.imul(fn | 0, 0x9e3779b1) ^ ((fn * 2.3283064365386963e-10) | 0)) & mask;
    for (;;) {
      const k = keys[h];
      if (k === fn) break;
      if (k === EMPTY) {
        this.lo = 0;
        this.hi = 0;
        return;
      }
      h = (h + 1) & mask;
    }
    const w = this.slots[h] * FRAME_WORDS + ((hpa & 0xff8) >>> 2);
    this.lo = this.words[w];
    this.hi = this.words[w + 1];
  }

  store64(hpa: number, lo: number, hi: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Store, hpa);
    this.check(hpa);
    const w = this.frame(Math.floor(hpa * INV_4K)) + ((hpa & 0xff8) >>> 2);
    this.words[w] = lo;
    this.words[w + 1] = hi;
  }

  /**
   * Atomic compare-and-exchange. Returns true if the value was (expLo, expHi)
   * and is now (newLo, newHi); either way lo/hi hold the value found.
   */
  cmpxchg64(hpa: number, expLo: number, expHi: number, newLo: number, newHi: number): boolean {
    if (this.preempt !== null) this.preempt.point(MemOp.Cmpxchg, hpa);
    this.check(hpa);
    const w = this.frame(Math.floor(hpa * INV_4K)) + ((hpa & 0xff8) >>> 2);
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
    const w = this.frame(Math.floor(hpa * INV_4K)) + ((hpa & 0xff8) >>> 2);
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
    const w = this.frame(Math.floor(hpa * INV_4K)) + ((hpa & 0xff8) >>> 2);
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
    const w = this.frame(Math.floor(hpa * INV_4K)) + ((hpa & 0xff8) >>> 2);
    const words = this.words;
    this.lo = words[w];
    this.hi = words[w + 1];
    words[w] &= lo;
    words[w + 1] &= hi;
  }
}
