/**
 * The host's x86-64 4-level page tables (pgd -> pud -> pmd -> pte; p4d
 * folded), in emulated physical memory so the hardware walker of the host
 * CPU reads them and sets their A/D bits. Entries are 64-bit, handled as two
 * signed 32-bit halves (lo, hi) as PhysMem carries them.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import type { PageAllocator } from './page_alloc.js';

export const _PAGE_PRESENT = 0x1;
export const _PAGE_RW = 0x2;
export const _PAGE_USER = 0x4;
export const _PAGE_ACCESSED = 0x20;
export const _PAGE_DIRTY = 0x40;
/** PSE: a leaf at the PMD (2M) or PUD (1G) level. */
export const _PAGE_PSE = 0x80;
/** Bit 11 (_PAGE_SOFTW3), CONFIG_MEM_SOFT_DIRTY: pte_mkdirty sets it with D. */
export const _PAGE_SOFT_DIRTY = 0x800;
/** Bit 63, in the high half. */
export const _PAGE_NX_HI = 0x80000000 | 0;
/** Non-leaf entries (_PAGE_TABLE): P, RW, USER, A, D. */
export const _PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY;

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PMD_SIZE = 2 ** 21;
export const PUD_SIZE = 2 ** 30;
const PGD_SIZE = 2 ** 39;
/** TASK_SIZE_MAX with 4-level paging: user addresses lie below it. */
export const TASK_SIZE = 2 ** 47;
const TWO32 = 4294967296;
const INV_PUD_SIZE = 1 / PUD_SIZE;
/** Address bits 47:30 (after scaling by INV_PUD_SIZE): the PGD and PUD indexes. */
const PMD_KEY_MASK = (1 << 18) - 1;
const INV_TWO32 = 1 / TWO32;

/** Bytes one entry maps at a level (1 = PTE ... 4 = PGD). */
export function levelSpan(level: number): number {
  return level === 1 ? PAGE_SIZE : level === 2 ? PMD_SIZE : level === 3 ? PUD_SIZE : PGD_SIZE;
}

/** 1 / levelSpan(level): powers of two, so multiplying by them is exact, and cheaper than dividing. */
const INV_SPAN = [0, 1 / PAGE_SIZE, 1 / PMD_SIZE, 1 / PUD_SIZE, 1 / PGD_SIZE];

function indexAt(addr: number, level: number): number {
  // ToInt32 truncates, and is exact modulo 2^32 for doubles below 2^53, so the low 9 bits are right.
  return (addr * INV_SPAN[level]) & 511;
}

/** Physical address in an entry, bits 51:12 (the low flag bits of a huge leaf are flags: PAT is unused here). */
export function entryAddr(lo: number, hi: number): number {
  return (hi & 0xfffff) * TWO32 + ((lo & ~0xfff) >>> 0);
}

/** Low half of an entry pointing at pfn, with flags. */
export function pfnLo(pfn: number, flags: number): number {
  return (pfn << PAGE_SHIFT) | flags;
}
const INV_2_20 = 1 / 1048576;
/** High half of an entry pointing at pfn (address bits 51:32). */
export function pfnHi(pfn: number): number {
  return (pfn * INV_2_20) | 0;
}

// ----------------------------------------------------------------- swap entries
// x86-64 (arch/x86/include/asm/pgtable_64.h): P clear, type in bits 63:59,
// the offset inverted in bits 58:9 (so that a non-present entry points at no
// real memory: the L1TF mitigation), bit 3 remembers PG_anon_exclusive,
// bit 2 uffd-wp, bit 1 soft-dirty. G (bit 8) and PSE (bit 7) stay clear.

export const SWP_TYPE_BITS = 5;
const SWP_OFFSET_BITS = 50;
export const _PAGE_SWP_EXCLUSIVE = 0x8;
export const _PAGE_SWP_SOFT_DIRTY = 0x2;

/** __swp_entry as a PTE (__swp_entry_to_pte), halves in the returned pair's order [lo, hi]. */
export function swpEntryLo(type: number, offset: number, flags = 0): number {
  const inv = 2 ** SWP_OFFSET_BITS - 1 - offset;
  return (((inv % 2 ** 23) << 9) | flags) | 0;
}
export function swpEntryHi(type: number, offset: number): number {
  const inv = 2 ** SWP_OFFSET_BITS - 1 - offset;
  return (Math.floor(inv / 2 ** 23) | (type << 27)) | 0;
}
/** A non-present, non-none entry (is_swap_pte). */
export function isSwapPte(lo: number, hi: number): boolean {
  return (lo & _PAGE_PRESENT) === 0 && (lo !== 0 || hi !== 0);
}
export function swpType(hi: number): number {
  return hi >>> 27;
}
export function swpOffset(lo: number, hi: number): number {
  const inv = (hi & 0x7ffffff) * 2 ** 23 + (lo >>> 9);
  return 2 ** SWP_OFFSET_BITS - 1 - inv;
}

/** Called for each non-none leaf entry of a scanned range. */
export type LeafVisitor = (entryHpa: number, level: number, addr: number, lo: number, hi: number) => void;

/**
 * One mm's page tables. `walk` is the lockless software walk (GUP-fast,
 * follow_page, host_pfn_mapping_level); its result is left in fields so
 * that nothing is allocated per lookup.
 */
export class HostPageTable {
  /** mm->pgd. */
  readonly pgd: number;
  /** pgd as halves, for walk. */
  private readonly pgdHi: number;
  private readonly pgdLo: number;
  // Result of the last walk: the entry where it stopped and its value.
  level = 0;
  entry = 0;
  lo = 0;
  hi = 0;
  /**
   * The model's paging-structure cache: the PMD table (as halves) that the
   * PGD and PUD entries for address bits 47:30 equal to `pmdKey` lead to
   * (-1: none), so a walk skips two loads that would read the same values.
   * A linked table stays linked until free_pgd_range unlinks it (freeLevel
   * drops the cache right after each unlink); entryFor fills only none
   * entries above the level asked for, and leaves go over none entries (a 1G
   * leaf over a linked PMD table would leak it; entryFor at level 3 drops
   * the cache anyway). Used and filled only while no preempt hook runs, as
   * every load is an interleaving point then.
   */
  private pmdKey = -1;
  private pmdHi = 0;
  private pmdLo = 0;

  constructor(readonly mem: PhysMem, readonly pages: PageAllocator) {
    this.pgd = pages.allocTablePage(); // pgd_alloc
    this.pgdHi = (this.pgd * INV_TWO32) | 0;
    this.pgdLo = this.pgd | 0;
  }

  /**
   * Walks from the pgd to the entry mapping addr: stops at a leaf (level 1,
   * or a PSE entry at level 2/3) or at a non-present entry, or at level
   * `lowest` whatever it holds. Returns the level where it stopped.
   */
  walk(addr: number, lowest = 1): number {
    const mem = this.mem;
    const cached = mem.preempt === null;
    const key = (addr * INV_PUD_SIZE) & PMD_KEY_MASK;
    // The table address as halves (tables are page aligned, so an entry's low half is table | index * 8): a double carried across levels was boxed at each one.
    let tHi = this.pgdHi;
    let tLo = this.pgdLo;
    let level = 4;
    if (cached && key === this.pmdKey && lowest <= 2) {
      tHi = this.pmdHi;
      tLo = this.pmdLo;
      level = 2;
    }
    for (; ; level--) {
      const eLo = tLo | (indexAt(addr, level) * 8);
      mem.load64Halves(tHi, eLo);
      const lo = mem.lo;
      if ((lo & _PAGE_PRESENT) === 0 || level === lowest || (level <= 3 && (lo & _PAGE_PSE) !== 0)) {
        this.entry = tHi * TWO32 + (eLo >>> 0);
        this.lo = lo;
        this.hi = mem.hi;
        this.level = level;
        return level;
      }
      tHi = mem.hi & 0xfffff;
      tLo = lo & ~0xfff;
      if (level === 3 && cached) {
        this.pmdKey = key;
        this.pmdHi = tHi;
        this.pmdLo = tLo;
      }
    }
  }

  /** Whether the last walk ended at a present leaf. */
  get present(): boolean {
    return (this.lo & _PAGE_PRESENT) !== 0;
  }

  /**
   * Address of the level-`level` entry for addr, allocating the tables above
   * it (__pud_alloc, __pmd_alloc, __pte_alloc: _PAGE_TABLE entries).
   */
  entryFor(addr: number, level: number): number {
    const mem = this.mem;
    if (level >= 3) this.pmdKey = -1; // the caller may store a 1G leaf over a linked PMD table
    let table = this.pgd;
    for (let l = 4; ; l--) {
      const e = table + indexAt(addr, l) * 8;
      if (l === level) return e;
      mem.load64(e);
      let lo = mem.lo;
      let hi = mem.hi;
      if ((lo & _PAGE_PRESENT) === 0) {
        if (lo !== 0 || hi !== 0) throw new Error('assertion: a swap entry above the PTE level');
        const t = this.pages.allocTablePage();
        lo = pfnLo(t / PAGE_SIZE, _PAGE_TABLE);
        hi = pfnHi(t / PAGE_SIZE);
        mem.store64(e, lo, hi);
      } else if ((lo & _PAGE_PSE) !== 0) throw new Error(`assertion: a huge leaf at level ${l} above a level-${level} mapping`);
      table = entryAddr(lo, hi);
    }
  }

  /**
   * Visits the non-none leaf entries mapping [addr, end), one PMD span at a
   * time: a PTE table's part, a huge leaf, or a hole skipped whole. Returns
   * where the next call starts (end when done), so a caller that yields does
   * so between page tables, as the PTE lock is held per table.
   */
  scan(addr: number, end: number, visit: LeafVisitor): number {
    const level = this.walk(addr);
    const span = levelSpan(level);
    const next = Math.min(end, Math.floor(addr / span) * span + span);
    if (level > 1) {
      // A huge leaf, or a hole as large as the entry's span.
      if (this.present) visit(this.entry, level, Math.floor(addr / span) * span, this.lo, this.hi);
      return next;
    }
    const mem = this.mem;
    const stop = Math.min(end, Math.floor(addr / PMD_SIZE) * PMD_SIZE + PMD_SIZE);
    let e = this.entry;
    for (let a = addr; a < stop; a += PAGE_SIZE, e += 8) {
      mem.load64(e);
      const lo = mem.lo;
      const hi = mem.hi;
      if (lo !== 0 || hi !== 0) visit(e, 1, a, lo, hi);
    }
    return stop;
  }

  /**
   * free_pgd_range: frees the page tables that map only [floor, ceiling)
   * and meet [start, end) (no VMA is left there), clearing the entries that
   * pointed at them. Leaf entries must already be cleared.
   */
  freeRange(start: number, end: number, floor: number, ceiling: number): void {
    this.freeLevel(this.pgd, 4, 0, Math.max(start, 0), Math.min(end, TASK_SIZE), floor, Math.min(ceiling, TASK_SIZE));
  }

  private freeLevel(table: number, level: number, base: number, start: number, end: number, floor: number, ceiling: number): void {
    const mem = this.mem;
    const span = levelSpan(level);
    for (let i = indexAt(start, level); i < 512; i++) {
      const a = base + i * span;
      if (a >= end) break;
      const e = table + i * 8;
      mem.load64(e);
      const lo = mem.lo;
      const hi = mem.hi;
      if ((lo & _PAGE_PRESENT) === 0 || level === 1 || (lo & _PAGE_PSE) !== 0) continue;
      const child = entryAddr(lo, hi);
      if (a >= floor && a + span <= ceiling) {
        this.freeAll(child, level - 1);
        mem.store64(e, 0, 0);
        this.pmdKey = -1; // at once: a program interleaved at the next load must not walk the unlinked table
        this.pages.freePage(child);
      } else if (level > 2) this.freeLevel(child, level - 1, a, Math.max(start, a), Math.min(end, a + span), floor, ceiling);
    }
  }

  /** Frees every table below a table whose entries are level-`level` entries. */
  private freeAll(table: number, level: number): void {
    if (level === 1) return;
    const mem = this.mem;
    for (let i = 0; i < 512; i++) {
      mem.load64(table + i * 8);
      const lo = mem.lo;
      if ((lo & _PAGE_PRESENT) === 0 || (lo & _PAGE_PSE) !== 0) continue;
      const child = entryAddr(lo, mem.hi);
      this.freeAll(child, level - 1);
      this.pages.freePage(child);
    }
  }
}
