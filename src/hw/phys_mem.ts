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
}

/** Called before every operation; a scheduler may run other simulated CPUs here. */
export interface PreemptHook {
  point(op: MemOp, hpa: number): void;
}

const FRAME_WORDS = 1024; // 4 KiB as 32-bit words
const DIR_SHIFT = 12; // frames per directory leaf: 4096 (16 MiB)
const DIR_LIMIT = 2 ** 32; // frame numbers below this use the directory

export class PhysMem {
  /** Result of the last load (and the old value after cmpxchg/or/and). */
  lo = 0;
  hi = 0;
  /** Set by a scheduler; null costs one branch per operation. */
  preempt: PreemptHook | null = null;
  /** Frames allocated so far. */
  frameCount = 0;

  private readonly dir: (Int32Array | undefined)[][] = [];
  private readonly far = new Map<number, Int32Array>();
  readonly limit: number;

  constructor(readonly maxPhysAddr: number) {
    if (!(maxPhysAddr >= 32 && maxPhysAddr <= 52)) throw new Error(`assertion: MAXPHYADDR ${maxPhysAddr} outside 32..52`);
    this.limit = 2 ** maxPhysAddr;
  }

  /** The frame holding hpa, or undefined if never written. */
  private peekFrame(fn: number): Int32Array | undefined {
    if (fn < DIR_LIMIT) {
      const leaf = this.dir[fn >>> DIR_SHIFT];
      return leaf === undefined ? undefined : leaf[fn & ((1 << DIR_SHIFT) - 1)];
    }
    return this.far.get(fn);
  }

  private frame(fn: number): Int32Array {
    let f = this.peekFrame(fn);
    if (f !== undefined) return f;
    f = new Int32Array(FRAME_WORDS);
    this.frameCount++;
    if (fn < DIR_LIMIT) {
      let leaf = this.dir[fn >>> DIR_SHIFT];
      if (leaf === undefined) {
        leaf = new Array<Int32Array | undefined>(1 << DIR_SHIFT).fill(undefined);
        this.dir[fn >>> DIR_SHIFT] = leaf;
      }
      leaf[fn & ((1 << DIR_SHIFT) - 1)] = f;
    } else {
      this.far.set(fn, f);
    }
    return f;
  }

  private check(hpa: number): void {
    if (!(hpa >= 0 && hpa < this.limit && (hpa & 7) === 0 && Number.isInteger(hpa))) {
      throw new Error(`assertion: bad 8-byte physical address ${hpa} (MAXPHYADDR ${this.maxPhysAddr})`);
    }
  }

  /** 8-byte little-endian load into lo/hi. Untouched memory reads as zero. */
  load64(hpa: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Load, hpa);
    this.check(hpa);
    const f = this.peekFrame((hpa - (hpa & 0xfff)) / 4096);
    if (f === undefined) {
      this.lo = 0;
      this.hi = 0;
      return;
    }
    const w = (hpa & 0xff8) >>> 2;
    this.lo = f[w];
    this.hi = f[w + 1];
  }

  store64(hpa: number, lo: number, hi: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Store, hpa);
    this.check(hpa);
    const f = this.frame((hpa - (hpa & 0xfff)) / 4096);
    const w = (hpa & 0xff8) >>> 2;
    f[w] = lo;
    f[w + 1] = hi;
  }

  /**
   * Atomic compare-and-exchange. Returns true if the value was (expLo, expHi)
   * and is now (newLo, newHi); either way lo/hi hold the value found.
   */
  cmpxchg64(hpa: number, expLo: number, expHi: number, newLo: number, newHi: number): boolean {
    if (this.preempt !== null) this.preempt.point(MemOp.Cmpxchg, hpa);
    this.check(hpa);
    const f = this.frame((hpa - (hpa & 0xfff)) / 4096);
    const w = (hpa & 0xff8) >>> 2;
    const lo = f[w];
    const hi = f[w + 1];
    this.lo = lo;
    this.hi = hi;
    if (lo !== (expLo | 0) || hi !== (expHi | 0)) return false;
    f[w] = newLo;
    f[w + 1] = newHi;
    return true;
  }

  /** Atomic OR (LOCK OR / set_bit); the old value is left in lo/hi. */
  or64(hpa: number, lo: number, hi: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.Or, hpa);
    this.check(hpa);
    const f = this.frame((hpa - (hpa & 0xfff)) / 4096);
    const w = (hpa & 0xff8) >>> 2;
    this.lo = f[w];
    this.hi = f[w + 1];
    f[w] |= lo;
    f[w + 1] |= hi;
  }

  /** Atomic AND (LOCK AND / clear_bit); the old value is left in lo/hi. */
  and64(hpa: number, lo: number, hi: number): void {
    if (this.preempt !== null) this.preempt.point(MemOp.And, hpa);
    this.check(hpa);
    const f = this.frame((hpa - (hpa & 0xfff)) / 4096);
    const w = (hpa & 0xff8) >>> 2;
    this.lo = f[w];
    this.hi = f[w + 1];
    f[w] &= lo;
    f[w + 1] &= hi;
  }
}
