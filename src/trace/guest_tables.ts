/**
 * Guest software, not KVM: the guest kernel building its own 4-level page
 * tables in guest memory, for the `guest map` / `guest identity` verbs.
 * Table pages come from a bump allocator that starts at the top of guest
 * memory (slot 0) and grows down. Non-leaf entries are P|W|U so that the
 * leaf alone decides the rights.
 *
 * The same builder runs twice: at validation with no memory behind it (so a
 * conflict is reported as FILE:LINE:COL before anything runs), and at run
 * time writing each entry through `write`, which the runner points at the
 * VMM's mapping of guest memory.
 */

/** Where an entry goes: the guest-physical address and the 64-bit value as halves. */
export type EntryWriter = (gpa: number, lo: number, hi: number) => void;

/** A mapping the builder cannot make; the message is for the trace's author. */
export class GuestMapError extends Error {}

interface Leaf {
  level: number;
  line: number;
}
/** An entry: the gpa of the next table, or a leaf. */
type Entry = number | Leaf;

/** Non-leaf entries: present, writable, user. */
const TABLE_BITS = 0x7;
const PAGE = 4096;
const LEVELS = 4;
const SIZE_NAMES = ['', '4K', '2M', '1G'];

/** Leaf options of a mapping. */
export interface LeafBits {
  readonly: boolean;
  user: boolean;
  nx: boolean;
  global: boolean;
  /** Raw bits ORed into the leaf (`flags=`), as halves. */
  extraLo: number;
  extraHi: number;
}

export function pageLevelBytes(level: number): number {
  return PAGE * 2 ** (9 * (level - 1));
}

export class GuestTables {
  /** The PML4's gpa, or -1 before the first mapping. */
  root = -1;
  /** Table pages allocated. */
  pages = 0;
  private next: number;
  private readonly tables = new Map<number, Map<number, Entry>>();

  constructor(
    /** One past the highest gpa tables may use (end of slot 0). */
    readonly top: number,
    /** The lowest gpa tables may use (start of slot 0). */
    readonly floor: number,
    private readonly write: EntryWriter,
  ) {
    this.next = top;
  }

  /**
   * Maps one page of `level` (1 = 4K, 2 = 2M, 3 = 1G) at gva to gpa, making
   * the tables on the way. Remapping a page of the same size replaces its
   * leaf (no TLB flush: the guest would INVLPG); a page of another size over
   * an existing one is a GuestMapError.
   */
  map(gva: bigint, gpa: number, level: number, bits: LeafBits, line: number): void {
    if (this.root < 0) this.root = this.allocTable();
    let table = this.root;
    for (let l = LEVELS; l > level; l--) {
      const idx = index(gva, l);
      const t = this.tables.get(table)!;
      const e = t.get(idx);
      if (e === undefined) {
        const child = this.allocTable();
        t.set(idx, child);
        this.write(table + 8 * idx, (child % 2 ** 32) | TABLE_BITS, Math.floor(child / 2 ** 32));
        table = child;
      } else if (typeof e === 'number') {
        table = e;
      } else {
        throw new GuestMapError(`gva 0x${gva.toString(16)} is already mapped by a ${SIZE_NAMES[e.level]} page (line ${e.line})`);
      }
    }
    const idx = index(gva, level);
    const t = this.tables.get(table)!;
    const e = t.get(idx);
    if (typeof e === 'number') {
      throw new GuestMapError(`gva 0x${gva.toString(16)}: a ${SIZE_NAMES[level]} page would replace a table of smaller pages mapped before`);
    }
    t.set(idx, { level, line });
    let lo = (gpa % 2 ** 32) | 1;
    if (!bits.readonly) lo |= 2;
    if (bits.user) lo |= 4;
    if (level > 1) lo |= 0x80;
    if (bits.global) lo |= 0x100;
    let hi = Math.floor(gpa / 2 ** 32);
    if (bits.nx) hi |= 0x80000000;
    this.write(table + 8 * idx, lo | bits.extraLo, hi | bits.extraHi);
  }

  private allocTable(): number {
    const gpa = this.next - PAGE;
    if (gpa < this.floor) {
      throw new GuestMapError(`no guest memory left for page tables (they take ${this.pages} pages, growing down from gpa 0x${this.top.toString(16)})`);
    }
    this.next = gpa;
    this.pages++;
    this.tables.set(gpa, new Map());
    return gpa;
  }
}

function index(gva: bigint, level: number): number {
  return Number((gva >> BigInt(12 + 9 * (level - 1))) & 511n);
}

/** Whether a linear address is canonical for 4-level paging (bits 63:47 equal). */
export function canonical4(gva: bigint): boolean {
  const top = gva >> 47n;
  return top === 0n || top === (1n << 17n) - 1n;
}
