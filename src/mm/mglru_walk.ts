/**
 * MGLRU aging by page-table walk and eviction-time look-around (mm.md
 * sections 3.3, 3.5, 3.6): try_to_inc_max_seq -> walk_mm -> walk_pmd_range
 * -> walk_pte_range over the host page tables of each mm, with the non-leaf
 * PMD short-cut and the Bloom filters; secondary MMUs are asked as the
 * SecondaryPolicy says.
 */
import type { MmStruct, VmArea } from './mm.js';
import { LRU_GEN_MM_WALK, LRU_GEN_NONLEAF_YOUNG, MIN_LRU_BATCH, lruGenFromSeq, type Lruvec } from './mglru.js';
import { PG_dirty } from './folio.js';
import type { Program } from './mmu_notifier.js';
import { PMD_SIZE, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, entryAddr } from './pgtable.js';
import type { SecondaryPolicy } from './secondary_policy.js';

const PAGE = 4096;
/** clamp(cacheline / sizeof(pte), 2, 8) on x86: the "suitable table" ratio. */
const YOUNG_RATIO = 8;
/** VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP. */
export const VM_SPECIAL = 0x4000 | 0x40000 | 0x400 | 0x10000000;

/** hpa of the PMD entry for addr, or -1 when an upper level is absent (or a 1G leaf). */
export function pmdEntryOf(mm: MmStruct, addr: number): number {
  const mem = mm.mem;
  let table = mm.pt.pgd;
  for (let level = 4; level > 2; level--) {
    const span = level === 4 ? 2 ** 39 : 2 ** 30;
    mem.load64(table + (Math.floor(addr / span) % 512) * 8);
    if ((mem.lo & _PAGE_PRESENT) === 0 || (mem.lo & _PAGE_PSE) !== 0) return -1;
    table = entryAddr(mem.lo, mem.hi);
  }
  return table + (Math.floor(addr / PMD_SIZE) % 512) * 8;
}

/** Test-and-clear of a present entry's A bit (ptep_test_and_clear_young); returns whether it was set. */
function testClearYoung(mm: MmStruct, e: number): boolean {
  mm.mem.load64(e);
  if ((mm.mem.lo & _PAGE_ACCESSED) === 0) return false;
  mm.mem.and64(e, ~_PAGE_ACCESSED, -1);
  return (mm.mem.lo & _PAGE_ACCESSED) !== 0;
}

/**
 * Scans PTEs [start, start + n pages) of one table at `pte0` (entry of
 * `start`): filter, primary clear-young, secondary per the policy, then
 * `promote` for each young folio. Returns the young count.
 */
function* scanPtes(
  lruvec: Lruvec, mm: MmStruct, policy: SecondaryPolicy, pte0: number, start: number, n: number, promote: (pfn: number) => void,
): Program<number> {
  const mem = mm.mem;
  const f = lruvec.folios;
  const asks = policy.walkAsksSecondary(mm);
  let young = 0;
  for (let w = 0; w < n; w += MIN_LRU_BATCH) {
    const m = Math.min(MIN_LRU_BATCH, n - w);
    const cand = new Uint8Array(m);
    const yes = new Uint8Array(m);
    const pfns = new Float64Array(m);
    const dirty = new Uint8Array(m);
    for (let i = 0; i < m; i++) {
      const e = pte0 + (w + i) * 8;
      mem.load64(e);
      const lo = mem.lo;
      if ((lo & _PAGE_PRESENT) === 0) continue;
      if ((lo & _PAGE_ACCESSED) === 0 && !asks) continue;
      const pfn = f.folioOf(entryAddr(lo, mem.hi) / PAGE);
      if (f.lruGen(pfn) < 0) continue; // not on an MGLRU list (isolated)
      cand[i] = 1;
      pfns[i] = pfn;
      dirty[i] = (lo & _PAGE_DIRTY) !== 0 ? 1 : 0;
      if (testClearYoung(mm, e)) yes[i] = 1;
    }
    yield* policy.ageWindow(mm, start + w * PAGE, m, cand, yes);
    for (let i = 0; i < m; i++) {
      if (cand[i] === 0 || yes[i] === 0) continue;
      young++;
      promote(pfns[i]);
      if (dirty[i] !== 0) f.set(pfns[i], PG_dirty);
    }
  }
  return young;
}

/**
 * walk_mm for one mm at walk seq `seq`: per VMA (should_skip_vma: 1G
 * areas stand in for hugetlb), per PMD: THP leaves are aged whole;
 * non-leaf PMDs take the short-cut (A clear -> skip; else clear it) when
 * NONLEAF_YOUNG is on, not force_scan and the policy does not ask
 * secondary MMUs; then the Bloom filter of seq gates the table; a
 * suitable table goes into the filter of seq + 1.
 */
/** Indices of Lruvec.mmStats (enum of mm_stats in mmzone.h). */
export const MM_LEAF_TOTAL = 0;
export const MM_LEAF_YOUNG = 1;
export const MM_NONLEAF_FOUND = 2;
export const MM_NONLEAF_ADDED = 3;

export function* walkMm(lruvec: Lruvec, mm: MmStruct, policy: SecondaryPolicy, seq: number, forceScan: boolean): Program<void> {
  const mem = mm.mem;
  const st = lruvec.stats;
  const gen = lruGenFromSeq(lruvec.maxSeq);
  const promote = (pfn: number) => {
    lruvec.folioUpdateGen(pfn, gen);
  };
  const shortCut = !forceScan && (lruvec.caps & LRU_GEN_NONLEAF_YOUNG) !== 0 && !policy.walkAsksSecondary(mm);
  for (const vma of mm.areas) {
    if (vma.level === 3 || (vma.vmFlags & VM_SPECIAL) !== 0) continue;
    for (let addr = vma.start; addr < vma.end;) {
      const next = Math.min(vma.end, Math.floor(addr / PMD_SIZE) * PMD_SIZE + PMD_SIZE);
      if (mem.yields) yield;
      const e = pmdEntryOf(mm, addr);
      if (e < 0) {
        addr = next;
        continue;
      }
      mem.load64(e);
      const lo = mem.lo;
      const hi = mem.hi;
      if ((lo & _PAGE_PRESENT) === 0) {
        lruvec.mmStats[MM_LEAF_TOTAL]++;
        addr = next;
        continue;
      }
      if ((lo & _PAGE_PSE) !== 0) {
        // A THP: pmdp_clear_young_notify over the PMD (secondary asked per policy on its head page's window).
        lruvec.mmStats[MM_LEAF_TOTAL]++;
        const pfn = entryAddr(lo, hi) / PAGE;
        if (lruvec.folios.lruGen(pfn) >= 0 && ((lo & _PAGE_ACCESSED) !== 0 || policy.walkAsksSecondary(mm))) {
          const y = new Uint8Array([testClearYoung(mm, e) ? 1 : 0]);
          yield* policy.ageWindow(mm, addr, 1, Uint8Array.of(1), y);
          if (y[0] !== 0) {
            lruvec.mmStats[MM_LEAF_YOUNG]++;
            promote(pfn);
          }
        }
        addr = next;
        continue;
      }
      if (shortCut) {
        if ((lo & _PAGE_ACCESSED) === 0) {
          st.tablesSkippedNonleaf++;
          addr = next;
          continue;
        }
        testClearYoung(mm, e);
      }
      if (!forceScan && !lruvec.bloom[seq % 2].test(e)) {
        st.tablesSkippedBloom++;
        addr = next;
        continue;
      }
      const pte0 = entryAddr(lo, hi) + (Math.floor(addr / PAGE) % 512) * 8;
      const total = (next - addr) / PAGE;
      lruvec.mmStats[MM_NONLEAF_FOUND]++;
      const young = yield* scanPtes(lruvec, mm, policy, pte0, addr, total, promote);
      st.tablesWalked++;
      st.ptesScanned += total;
      st.young += young;
      lruvec.mmStats[MM_LEAF_TOTAL] += total;
      lruvec.mmStats[MM_LEAF_YOUNG] += young;
      if (young * YOUNG_RATIO >= total) {
        lruvec.bloom[(seq + 1) % 2].add(e);
        st.bloomAdded++;
        lruvec.mmStats[MM_NONLEAF_ADDED]++;
      }
      addr = next;
    }
  }
}

/**
 * try_to_inc_max_seq: false if an iteration for seq already finished;
 * otherwise (MM_WALK on) reset the next Bloom filter and walk every mm,
 * or (off) "nowalk"; then inc_max_seq. The per-mm "used since last walk"
 * skip is not modelled: every mm is walked.
 */
export function* tryToIncMaxSeq(lruvec: Lruvec, mms: readonly MmStruct[], policy: SecondaryPolicy, seq: number, forceScan: boolean): Program<boolean> {
  if (lruvec.walkSeq >= seq) return false;
  if ((lruvec.caps & LRU_GEN_MM_WALK) !== 0) {
    lruvec.bloom[(seq + 1) % 2].reset();
    for (const mm of mms) yield* walkMm(lruvec, mm, policy, seq, forceScan);
  }
  lruvec.walkSeq = seq;
  lruvec.incMaxSeq();
  return true;
}

/** The look-around window [start, end) for a target at addr (lru_gen_look_around step 3); one page means no neighbours. */
export function lookAroundWindow(addr: number, vmaStart: number, vmaEnd: number): [number, number] {
  const a = Math.floor(addr / PAGE) * PAGE;
  let start = Math.max(Math.floor(a / PMD_SIZE) * PMD_SIZE, vmaStart);
  let end = Math.min(Math.floor(a / PMD_SIZE) * PMD_SIZE + PMD_SIZE, vmaEnd);
  const half = (MIN_LRU_BATCH / 2) * PAGE;
  if (end - start > MIN_LRU_BATCH * PAGE) {
    if (a - start < half) end = start + MIN_LRU_BATCH * PAGE;
    else if (end - a < half) start = end - MIN_LRU_BATCH * PAGE;
    else {
      start = a - half;
      end = a + half;
    }
  }
  return [start, end];
}

/**
 * lru_gen_look_around after the target was found young: scans the window
 * (target included: its bits are already clear) as walk_pte_range does,
 * promoting young neighbours with folio_update_gen (the reclaimer's walk
 * context), and feeds the Bloom filter of max_seq when the table was
 * worth it. VM_SPECIAL: no scan. Returns the PTEs scanned.
 */
export function* lookAround(lruvec: Lruvec, vma: VmArea, hva: number, policy: SecondaryPolicy): Program<number> {
  const mm = vma.mm;
  if ((vma.vmFlags & VM_SPECIAL) !== 0 || vma.level !== 1) return 0;
  const [start, end] = lookAroundWindow(hva, vma.start, vma.end);
  const n = (end - start) / PAGE;
  if (n <= 1) return 0;
  const e = pmdEntryOf(mm, start);
  if (e < 0) return 0;
  mm.mem.load64(e);
  const pte0 = entryAddr(mm.mem.lo, mm.mem.hi) + (Math.floor(start / PAGE) % 512) * 8;
  const gen = lruGenFromSeq(lruvec.maxSeq);
  const young = yield* scanPtes(lruvec, mm, policy, pte0, start, n, (pfn) => {
    lruvec.folioUpdateGen(pfn, gen);
  });
  lruvec.stats.lookArounds++;
  lruvec.stats.lookAroundPtes += n;
  if (young * YOUNG_RATIO >= n) {
    lruvec.bloom[lruvec.maxSeq % 2].add(e);
    lruvec.stats.bloomAdded++;
  }
  return n;
}
