/**
 * Writes paging structures into host memory the way system software would:
 * guest (x86 long-mode) tables, EPT tables and NPT tables. Tests,
 * benchmarks and fixture generators use it; the hardware never does.
 *
 * Tables live in an address space of their own (guest-physical for guest
 * tables, host-physical for EPT/NPT); `toHpa` says where a table address is
 * in host memory (identity unless the caller maps guest memory elsewhere).
 */
import { PhysMem } from './phys_mem.js';
import { lo32, hi32, join64 } from './halves.js';

export const X86_P = 1n;
export const X86_W = 2n;
export const X86_U = 4n;
export const X86_PWT = 8n;
export const X86_PCD = 0x10n;
export const X86_A = 0x20n;
export const X86_D = 0x40n;
export const X86_PS = 0x80n;
export const X86_G = 0x100n;
export const X86_XD = 1n << 63n;
/** P|W|U: what a permissive entry carries. */
export const X86_PWU = 7n;

export const EPT_R = 1n;
export const EPT_W = 2n;
export const EPT_X = 4n;
export const EPT_RWX = 7n;
export const EPT_WB = 6n << 3n;
export const EPT_PS = 0x80n;
export const EPT_A = 0x100n;
export const EPT_D = 0x200n;

export interface MapOptions {
  /** Level of the leaf: 1 (4K), 2 (2M), 3 (1G). Default 1. */
  leafLevel?: 1 | 2 | 3;
  /** Flags of the leaf entry (PS is added for large leaves). */
  leafFlags: bigint;
  /** Flags of new non-leaf entries. */
  tableFlags: bigint;
  /** Table levels: 4 or 5. Default 4. */
  levels?: 4 | 5;
  /** The PS bit of this format (x86 and EPT both use bit 7). */
}

const ADDR_MASK = ((1n << 52n) - 1n) & ~0xfffn;

export class TableWriter {
  constructor(
    readonly mem: PhysMem,
    /** Next free table address (4K-aligned) in the tables' own address space. */
    private next: number,
    readonly toHpa: (pa: number) => number = (pa) => pa,
  ) {}

  /** A fresh zeroed 4K table; returns its address in the tables' address space. */
  allocTable(): number {
    const pa = this.next;
    this.next += 4096;
    const hpa = this.toHpa(pa);
    for (let i = 0; i < 4096; i += 8) this.mem.store64(hpa + i, 0, 0);
    return pa;
  }

  read(pa: number): bigint {
    this.mem.load64(this.toHpa(pa));
    return join64(this.mem.lo, this.mem.hi);
  }

  write(pa: number, v: bigint): void {
    this.mem.store64(this.toHpa(pa), lo32(v), hi32(v));
  }

  /** Address of the level-`level` entry for `va`, following existing tables; undefined if a table is missing. */
  entryAddress(root: number, va: bigint, level: number, levels = 4): number | undefined {
    let table = root;
    for (let l = levels; l >= level; l--) {
      const pa = table + Number((va >> BigInt(12 + 9 * (l - 1))) & 511n) * 8;
      if (l === level) return pa;
      const e = this.read(pa);
      if ((e & 7n) === 0n) return undefined;
      table = Number(e & ADDR_MASK);
    }
    return undefined;
  }

  /** Map va to pa with a leaf at opts.leafLevel, creating tables as needed. */
  map(root: number, va: bigint, pa: number, opts: MapOptions): void {
    const levels = opts.levels ?? 4;
    const leaf = opts.leafLevel ?? 1;
    let table = root;
    for (let l = levels; l > leaf; l--) {
      const ea = table + Number((va >> BigInt(12 + 9 * (l - 1))) & 511n) * 8;
      let e = this.read(ea);
      if ((e & 7n) === 0n) {
        const t = this.allocTable();
        e = BigInt(t) | opts.tableFlags;
        this.write(ea, e);
      }
      table = Number(e & ADDR_MASK);
    }
    const ea = table + Number((va >> BigInt(12 + 9 * (leaf - 1))) & 511n) * 8;
    this.write(ea, BigInt(pa) | opts.leafFlags | (leaf > 1 ? 0x80n : 0n));
  }
}
