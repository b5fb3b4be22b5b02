/**
 * Pre-order iterator over a TDP (EPT/NPT) paging structure held in emulated
 * host physical memory, modelled on arch/x86/kvm/mmu/tdp_iter.{h,c} of Linux
 * 6.17 (see ../shared/spec/kvm-mmu.md section 3).
 *
 * Representation choices:
 * - Table and SPTE pointers (`ptPath`, `sptep`) are host physical addresses
 *   (numbers), not host virtual addresses: the kernel's `__va(pfn << 12)`
 *   becomes `pfn * 4096`.
 * - GFNs are numbers. Every GFN is below 2^40 (52-bit physical addresses), so
 *   doubles hold them exactly; helpers below avoid 32-bit bitwise operators.
 * - The SPTE snapshot is kept as two 32-bit halves (`oldLo`, `oldHi`), so
 *   walking allocates nothing; `oldSpte` gives it as the bigint that the
 *   src/kvm/spte.ts predicates take.
 * - Every SPTE read goes through {@link PhysMem.load64}, so a scheduler's
 *   preempt hook sees (and may interleave at) each one, like READ_ONCE in
 *   kvm_tdp_mmu_read_spte.
 *
 * The iterator only reads. What to do with a frozen or otherwise changing
 * entry (FROZEN_SPTE, a child table being unlinked) is the caller's business,
 * as in the kernel: the iterator merely re-reads the parent entry before it
 * descends, so it never enters a table that is no longer linked from it.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import {
  PG_LEVEL_4K, PT64_ROOT_MAX_LEVEL, SPTE_ENT_PER_PAGE, isLastSpte, isShadowPresentPte, spteNeedsAtomicWrite, spteToPfn, type SpteFlavour,
} from './spte.js';
import { lo32, hi32, join64 } from '../hw/halves.js';

const PAGE_SIZE = 4096;
const TWO_32 = 2 ** 32;

/** The parts of a root `struct kvm_mmu_page` the iterator uses. */
export interface TdpRoot {
  /** Host physical address of the root's 4K table (root->spt). */
  readonly hpa: number;
  /** root->role.level: 4 or 5 for a real TDP root; 1..5 accepted. */
  readonly level: number;
  /** kvm_mmu_page_as_id(root): 0 normally, 1 for the SMM address space. */
  readonly asId?: number;
}

/** KVM_PAGES_PER_HPAGE by level, so stepping needs no exponentiation. */
const PAGES_PER_LEVEL = [0, 1, 512, 512 * 512, 512 ** 3, 512 ** 4];
/** Their reciprocals: powers of two, so multiplying by one is exact, and much cheaper than dividing. */
const INV_PAGES_PER_LEVEL = [0, 1, 1 / 512, 1 / 512 ** 2, 1 / 512 ** 3, 1 / 512 ** 4];

/** GFNs mapped by one entry at `level` (KVM_PAGES_PER_HPAGE). */
export function pagesPerHpage(level: number): number {
  return PAGES_PER_LEVEL[level];
}

/** `gfn` rounded down to the first GFN an entry at `level` maps (gfn_round_for_level). */
export function gfnRoundForLevel(gfn: number, level: number): number {
  return Math.floor(gfn * INV_PAGES_PER_LEVEL[level]) * PAGES_PER_LEVEL[level];
}

/** Bitwise OR of two non-negative integers below 2^53. */
function or53(a: number, b: number): number {
  if (b === 0) return a;
  const hi = (Math.floor(a / TWO_32) | Math.floor(b / TWO_32)) >>> 0;
  const lo = ((a >>> 0) | (b >>> 0)) >>> 0;
  return hi * TWO_32 + lo;
}

/** Index inside a table at `level` of the entry covering `gfn`: SPTE_INDEX(gfn << 12, level). */
export function spteIndexOfGfn(gfn: number, level: number): number {
  // ToInt32 truncates, and keeps the low bits of any integer below 2^53: no division, no floating-point remainder.
  return (gfn * INV_PAGES_PER_LEVEL[level]) & (SPTE_ENT_PER_PAGE - 1);
}

/** Reads one SPTE through PhysMem as a bigint; mirrors kvm_tdp_mmu_read_spte. */
export function readSpte(mem: PhysMem, sptep: number): bigint {
  mem.load64(sptep);
  return join64(mem.lo, mem.hi);
}

/**
 * Host physical address of the child table an SPTE links to, or null when the
 * SPTE is not shadow-present or is a leaf at `level`; mirrors spte_to_child_pt.
 */
export function spteToChildPt(spte: bigint, level: number): number | null {
  if (!isShadowPresentPte(spte) || isLastSpte(spte, level)) return null;
  return Number(spteToPfn(spte)) * PAGE_SIZE;
}

/** Iterator state; the fields are the kernel's struct tdp_iter, in camelCase. */
export class TdpIter {
  /** GFN the walk is heading for; a restart resumes the walk here. */
  nextLastLevelGfn = 0;
  /** nextLastLevelGfn at the last (re)start; yielding needs progress beyond it. */
  yieldedGfn = 0;
  /** Host physical address of the table in use at each level (index level - 1). */
  readonly ptPath = new Float64Array(PT64_ROOT_MAX_LEVEL); // typed, so a new iterator's array has the same shape as every other's
  /** Host physical address of the current SPTE. */
  sptep = 0;
  /** Lowest GFN mapped by the current SPTE, without gfnBits. */
  gfn = 0;
  /** Bits ORed into the GFN to form the walked address (TDX shared bit; 0 normally). */
  gfnBits = 0;
  rootLevel = 0;
  minLevel = 0;
  level = 0;
  asId = 0;
  /** Snapshot of the SPTE at sptep, as signed 32-bit halves. */
  oldLo = 0;
  oldHi = 0;
  /** False once the walk has run off the end of the structure (or start refused the root). */
  valid = false;
  /** Set by a caller that dropped the lock; the next step restarts from the root. */
  yielded = false;

  constructor(readonly mem: PhysMem) {}

  /** The snapshot as a bigint (iter->old_spte). */
  get oldSpte(): bigint {
    return join64(this.oldLo, this.oldHi);
  }

  set oldSpte(v: bigint) {
    this.oldLo = lo32(v);
    this.oldHi = hi32(v);
  }

  /** Takes the value a memory operation left in mem.lo/hi as the new snapshot. */
  takeMem(): void {
    this.oldLo = this.mem.lo;
    this.oldHi = this.mem.hi;
  }
}


/** Recomputes sptep for gfn/level and re-reads the SPTE; mirrors tdp_iter_refresh_sptep. */
function refreshSptep(it: TdpIter): void {
  it.sptep = it.ptPath[it.level - 1] + 8 * spteIndexOfGfn(or53(it.gfn, it.gfnBits), it.level);
  it.mem.load64(it.sptep);
  it.takeMem();
}

/** Goes back to the root entry covering nextLastLevelGfn; mirrors tdp_iter_restart. */
export function tdpIterRestart(it: TdpIter): void {
  it.yielded = false;
  it.yieldedGfn = it.nextLastLevelGfn;
  it.level = it.rootLevel;
  it.gfn = gfnRoundForLevel(it.nextLastLevelGfn, it.level);
  refreshSptep(it);
  it.valid = true;
}

/**
 * Points the iterator at the root entry on the way to `startGfn`; mirrors
 * tdp_iter_start. A missing root, a root level outside 1..5, or a start GFN
 * not below a nonzero gfnBits leaves the iterator invalid (the kernel also
 * warns).
 */
export function tdpIterStart(it: TdpIter, root: TdpRoot | null, minLevel: number, startGfn: number, gfnBits = 0): void {
  if (tdpIterSetRoot(it, root, minLevel, startGfn, gfnBits)) tdpIterRestart(it);
}

/**
 * tdp_iter_start up to its tdp_iter_restart: the iterator's own fields only,
 * no SPTE read, so a program may do it before the step that reads the root
 * entry. False (the iterator invalid) when tdp_iter_start would refuse.
 */
export function tdpIterSetRoot(it: TdpIter, root: TdpRoot | null, minLevel: number, startGfn: number, gfnBits = 0): boolean {
  if (root === null || root.level < 1 || root.level > PT64_ROOT_MAX_LEVEL || (gfnBits !== 0 && startGfn >= gfnBits)) {
    it.valid = false;
    return false;
  }
  it.nextLastLevelGfn = startGfn;
  it.gfnBits = gfnBits;
  it.rootLevel = root.level;
  it.minLevel = minLevel;
  it.ptPath[root.level - 1] = root.hpa;
  it.asId = root.asId ?? 0;
  return true;
}

/**
 * Descends into the child table of the current entry, towards
 * nextLastLevelGfn; mirrors try_step_down. Refuses at minLevel. Re-reads the
 * entry first so a table unlinked since the last read is not entered (the
 * re-read value stays in oldSpte even when the step fails).
 */
export function tryStepDown(it: TdpIter): boolean {
  if (it.level === it.minLevel) return false;
  it.mem.load64(it.sptep);
  it.takeMem();
  // A child table exists when the SPTE is shadow-present (bit 11) and not a leaf (4K, or bit 7).
  if ((it.oldLo & 0x800) === 0 || it.level === PG_LEVEL_4K || (it.oldLo & 0x80) !== 0) return false;
  const child = (it.oldHi & 0xfffff) * 4294967296 + ((it.oldLo & ~0xfff) >>> 0);
  it.level--;
  it.ptPath[it.level - 1] = child;
  it.gfn = gfnRoundForLevel(it.nextLastLevelGfn, it.level);
  refreshSptep(it);
  return true;
}

/**
 * Moves to the next entry of the same table and reads it; mirrors
 * try_step_side. Fails at index 511. Also moves nextLastLevelGfn to the new
 * entry's first GFN, which is where a restart would resume.
 */
export function tryStepSide(it: TdpIter): boolean {
  // Tables are page aligned, so the last entry is the one at offset 0xff8.
  if ((it.sptep & 0xff8) === 0xff8) return false;
  it.gfn += PAGES_PER_LEVEL[it.level];
  it.nextLastLevelGfn = it.gfn;
  it.sptep += 8;
  it.mem.load64(it.sptep);
  it.takeMem();
  return true;
}

/**
 * `n` successful {@link tryStepSide} calls whose reads the caller made itself
 * (a direct scan of the table, PhysMem.directWords, while nothing can
 * interleave): leaves the iterator where they would, with (lo, hi), the value
 * of the entry reached, as its snapshot. The caller keeps n within the table.
 */
export function tdpIterSideSteps(it: TdpIter, n: number, lo: number, hi: number): void {
  it.gfn += n * PAGES_PER_LEVEL[it.level];
  it.nextLastLevelGfn = it.gfn;
  it.sptep += 8 * n;
  it.oldLo = lo;
  it.oldHi = hi;
}

/** Side steps left in the current table: how many times {@link tryStepSide} would succeed from here. */
export function sideStepsLeft(it: TdpIter): number {
  return (0xff8 - (it.sptep & 0xff8)) >>> 3;
}

/**
 * Returns to the parent entry (already visited) and re-reads it; mirrors
 * try_step_up. Fails at the root level.
 */
export function tryStepUp(it: TdpIter): boolean {
  if (it.level === it.rootLevel) return false;
  it.level++;
  it.gfn = gfnRoundForLevel(it.gfn, it.level);
  refreshSptep(it);
  return true;
}

/**
 * Public name for {@link tryStepUp}. Linux 6.17 has no exported
 * tdp_iter_step_up (older kernels had one, used by huge-page recovery); it is
 * kept here for callers that want to leave a table early.
 */
export const tdpIterStepUp = tryStepUp;

/**
 * Advances to the next entry in pre-order: restart if the caller yielded,
 * else down, else side, else up-and-side until a side step works; mirrors
 * tdp_iter_next. Running off the end of the root table clears `valid`.
 */
export function tdpIterNext(it: TdpIter): void {
  if (it.yielded) {
    tdpIterRestart(it);
    return;
  }
  if (tryStepDown(it)) return;
  do {
    if (tryStepSide(it)) return;
  } while (tryStepUp(it));
  it.valid = false;
}

/**
 * Visits every entry (down to `minLevel`) covering GFNs in [start, end), in
 * pre-order, yielding the one iterator object each time; mirrors
 * for_each_tdp_pte_min_level. The caller may set `it.yielded = true` (after a
 * simulated lock drop) or change memory between steps, as kernel loop bodies
 * do; the next step honours it.
 */
export function* forEachTdpPteMinLevel(
  mem: PhysMem,
  root: TdpRoot | null,
  minLevel: number,
  start: number,
  end: number,
  gfnBits = 0,
  it: TdpIter = new TdpIter(mem),
): Generator<TdpIter, void, void> {
  for (tdpIterStart(it, root, minLevel, start, gfnBits); it.valid && it.gfn < end; tdpIterNext(it)) yield it;
}

/** {@link forEachTdpPteMinLevel} down to 4K entries; mirrors for_each_tdp_pte. */
export function forEachTdpPte(mem: PhysMem, root: TdpRoot | null, start: number, end: number, gfnBits = 0): Generator<TdpIter, void, void> {
  return forEachTdpPteMinLevel(mem, root, PG_LEVEL_4K, start, end, gfnBits);
}

/**
 * Visits the whole structure from GFN 0 up to `maxGfnExclusive` with no
 * gfnBits; mirrors for_each_tdp_pte_min_level_all. The kernel's bound is
 * tdp_mmu_max_gfn_exclusive() (derived from the host's physical-address
 * width); by default the PhysMem's MAXPHYADDR stands in for it.
 */
export function forEachTdpPteMinLevelAll(
  mem: PhysMem,
  root: TdpRoot | null,
  minLevel: number,
  maxGfnExclusive: number = 2 ** (mem.maxPhysAddr - 12),
): Generator<TdpIter, void, void> {
  return forEachTdpPteMinLevel(mem, root, minLevel, 0, maxGfnExclusive, 0);
}

/**
 * Leaf-only filter used by aging and dirty-logging walks: true when the
 * current entry is shadow-present and a leaf (callers `continue` otherwise).
 */
export function iterAtPresentLeaf(it: TdpIter): boolean {
  return (it.oldLo & 0x800) !== 0 && (it.level === PG_LEVEL_4K || (it.oldLo & 0x80) !== 0);
}

// ---------------------------------------------------------------------------
// Writing SPTEs (tdp_iter.h). Each writer is a program step for the seeded
// scheduler (src/hw/sched.ts): it yields right before its memory operation,
// so a test can let a hardware walk run between KVM's read and its write.

/** Mirrors __kvm_tdp_mmu_write_spte: a plain store (WRITE_ONCE); bits set meanwhile by others are overwritten. */
export function* writeSptePlain(mem: PhysMem, sptep: number, newSpte: bigint): Generator<void, void, undefined> {
  if (mem.yields) yield;
  mem.store64(sptep, lo32(newSpte), hi32(newSpte));
}

/** Mirrors kvm_tdp_mmu_write_spte_atomic: an exchange, returning the value it replaced (with whatever others set). */
export function* writeSpteAtomic(mem: PhysMem, sptep: number, newSpte: bigint): Generator<void, bigint, undefined> {
  if (mem.yields) yield;
  mem.xchg64(sptep, lo32(newSpte), hi32(newSpte));
  return join64(mem.lo, mem.hi);
}

/**
 * Mirrors kvm_tdp_mmu_spte_need_atomic_update: only a present leaf can have
 * bits set behind KVM's back, and only when spteNeedsAtomicWrite says so.
 */
export function tdpMmuSpteNeedAtomicUpdate(f: SpteFlavour, oldSpte: bigint, level: number): boolean {
  return isShadowPresentPte(oldSpte) && isLastSpte(oldSpte, level) && spteNeedsAtomicWrite(f, oldSpte);
}

/** Mirrors kvm_tdp_mmu_write_spte: atomic when needed, else a plain store; returns the old value seen. */
export function* kvmTdpMmuWriteSpte(
  f: SpteFlavour, mem: PhysMem, sptep: number, oldSpte: bigint, newSpte: bigint, level: number,
): Generator<void, bigint, undefined> {
  if (tdpMmuSpteNeedAtomicUpdate(f, oldSpte, level)) return yield* writeSpteAtomic(mem, sptep, newSpte);
  yield* writeSptePlain(mem, sptep, newSpte);
  return oldSpte;
}

/** Mirrors tdp_mmu_clear_spte_bits: atomic fetch-and when needed, else a plain store of oldSpte & ~mask. */
export function* tdpMmuClearSpteBits(
  f: SpteFlavour, mem: PhysMem, sptep: number, oldSpte: bigint, mask: bigint, level: number,
): Generator<void, bigint, undefined> {
  if (tdpMmuSpteNeedAtomicUpdate(f, oldSpte, level)) {
    if (mem.yields) yield;
    mem.and64(sptep, lo32(~mask), hi32(~mask));
    return join64(mem.lo, mem.hi);
  }
  yield* writeSptePlain(mem, sptep, oldSpte & ~mask);
  return oldSpte;
}
