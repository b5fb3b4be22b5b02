/**
 * Idle page tracking (mm/page_idle.c): /sys/kernel/mm/page_idle/bitmap,
 * mm.md section 2.4.
 *
 * The file is a bitmap over pfns in 8-byte chunks (chunk = pfn / 64,
 * bit = pfn % 64, little-endian u64s). Only LRU folios take part. Writing a
 * 1 bit clears every accessed bit mapping the folio (primary PTE A bit and,
 * through mmu_notifier_clear_young, every secondary MMU's) and then sets
 * PG_idle; reading redoes that clearing for each folio still marked idle and
 * reports whether it is idle still. Anything found young on the way clears
 * PG_idle and sets PG_young, which folio_referenced later consumes as one
 * reference (src/mm/rmap.ts), so the tracker does not hide accesses from
 * reclaim. page_idle never calls test_young and never flushes a TLB.
 *
 * The model's struct-page range is the FolioTable's (the pool's data end):
 * pfns outside it, and host page-table frames, behave as offline/non-LRU.
 */
import type { PageAllocator } from './page_alloc.js';
import { PG_anon, PG_idle, PG_locked, PG_lru, PG_tail, PG_young, type FolioTable } from './folio.js';
import { PAGE_SIZE, folioVmas, vmaAddress, type MmStruct, type VmArea } from './mm.js';
import { EINVAL, type Program } from './mmu_notifier.js';
import { PMD_SIZE, _PAGE_ACCESSED, entryAddr } from './pgtable.js';

/** BITMAP_CHUNK_SIZE: bytes per chunk (sizeof(u64)). */
export const BITMAP_CHUNK_SIZE = 8;
/** BITMAP_CHUNK_BITS: pfns per chunk. */
export const BITMAP_CHUNK_BITS = 64;
export const ENXIO = 6;
/** kernfs caps one read or write of a bin attribute at PAGE_SIZE bytes (kernfs_fop_read_iter / write_iter). */
export const KERNFS_MAX_IO = PAGE_SIZE;
/** Order of a PMD-mapped THP; larger folios are hugetlb in the kernel, never on the LRU. */
const PMD_ORDER = 9;

/** What page_idle did: rmap work and secondary-MMU calls (notifier calls are counted by the mm's MmuNotifierSubscriptions). */
export interface PageIdleStats {
  /** page_idle_bitmap_read / _write calls that got past the argument checks. */
  reads: number;
  writes: number;
  /** page_idle_get_folio hits (LRU folios referenced) and misses (offline, tail, non-LRU). */
  folios: number;
  skipped: number;
  /** page_idle_clear_pte_refs calls, and those that walked the rmap (mapped, lock taken). */
  clearPteRefs: number;
  rmapWalks: number;
  /** Mappings visited (page_idle_clear_pte_refs_one entries): PTE and PMD. */
  ptes: number;
  pmds: number;
  /** mmu_notifier_clear_young calls issued (one per mapping entry, whoever is subscribed). */
  clearYoung: number;
  /** Folios found referenced (PG_young set). */
  young: number;
}

/** The page_idle sysfs file of one host: its pfn space and the struct pages behind it. */
export class PageIdle {
  readonly folios: FolioTable;
  /** max_pfn: one past the highest pfn of the host's memory. */
  readonly maxPfn: number;
  readonly stats: PageIdleStats = { reads: 0, writes: 0, folios: 0, skipped: 0, clearPteRefs: 0, rmapWalks: 0, ptes: 0, pmds: 0, clearYoung: 0, young: 0 };
  private readonly pages: PageAllocator;

  constructor(pages: PageAllocator, opts: { maxPfn?: number } = {}) {
    this.pages = pages;
    this.folios = pages.folios;
    this.maxPfn = opts.maxPfn ?? (pages.base + pages.size) / PAGE_SIZE;
  }

  /**
   * page_idle_get_folio: the folio at pfn with a reference taken, or -1.
   * Only an online, non-tail page whose folio is on the LRU qualifies
   * (an LRU folio is always safe to rmap-walk); isolated folios and those
   * still in a per-CPU add batch have PG_lru clear and are skipped.
   */
  getFolio(pfn: number): number {
    const f = this.folios;
    const i = pfn - f.basePfn;
    if (!(i >= 0 && i < f.capacity) || (f.flags[i] & PG_tail) !== 0) return this.miss(); // pfn_to_online_page, PageTail
    if ((f.flags[i] & PG_lru) === 0 || f.order(pfn) > PMD_ORDER) return this.miss();
    if (f.refcount[i] <= 0) return this.miss(); // folio_try_get fails on a folio being freed
    f.refcount[i]++;
    this.stats.folios++;
    return pfn;
  }

  private miss(): number {
    this.stats.skipped++;
    return -1;
  }

  /** folio_put of getFolio's reference; the last one frees the folio (others may have zapped it meanwhile). */
  putFolio(head: number): void {
    const f = this.folios;
    if (!f.put(head)) return;
    f.lruDel(head);
    this.pages.freePages(head * PAGE_SIZE, f.order(head));
  }

  /**
   * page_idle_clear_pte_refs: nothing for an unmapped folio or one without
   * a mapping; non-anon folios need the folio lock (try-lock, else skip);
   * then the rmap walk clears each mapping's accessed bits.
   */
  *clearPteRefs(head: number): Program<void> {
    const f = this.folios;
    const i = f.idx(head);
    this.stats.clearPteRefs++;
    if (f.mapcount[i] <= 0 || f.mapping[i] === 0) return;
    const needLock = (f.flags[i] & PG_anon) === 0; // KSM is not modelled
    if (needLock) {
      if ((f.flags[i] & PG_locked) !== 0) return; // folio_trylock failed
      f.flags[i] |= PG_locked;
    }
    try {
      this.stats.rmapWalks++;
      for (const vma of this.vmasOf(head)) yield* this.clearPteRefsOne(vma, head);
    } finally {
      if (needLock) f.clear(head, PG_locked);
    }
  }

  /** rmap_walk_anon's VMA list: the areas of the folio's anon_vma covering its index (after fork, one per mm). */
  private vmasOf(head: number): VmArea[] {
    return folioVmas(this.folios, head);
  }

  /**
   * page_idle_clear_pte_refs_one: for the entry mapping the folio in vma
   * (page_vma_mapped_walk), a PTE gets ptep_test_and_clear_young (when
   * present) then mmu_notifier_clear_young over one page; a PMD gets
   * pmdp_clear_young_notify (the same over PMD_SIZE). Young anywhere: clear
   * PG_idle, set PG_young so reclaim still sees the reference.
   */
  private *clearPteRefsOne(vma: VmArea, head: number): Program<void> {
    const f = this.folios;
    const mm = vma.mm;
    const addr = vmaAddress(vma, f.index[f.idx(head)]);
    if (addr >= vma.end) return;
    const pt = mm.pt;
    pt.walk(addr);
    if (!pt.present || pt.level !== vma.level || f.folioOf(entryAddr(pt.lo, pt.hi) / PAGE_SIZE) !== head) return; // not mapped here
    if (mm.mem.yields) yield;
    let referenced = false;
    if (pt.level === 1) {
      this.stats.ptes++;
      referenced = this.testAndClearYoung(mm, pt.entry, pt.lo);
      this.stats.clearYoung++;
      if ((yield* mm.notifiers.clearYoung(addr, addr + PAGE_SIZE)) !== 0) referenced = true;
    } else {
      this.stats.pmds++;
      const start = Math.floor(addr / PMD_SIZE) * PMD_SIZE;
      referenced = this.testAndClearYoung(mm, pt.entry, pt.lo); // pmdp_test_and_clear_young
      this.stats.clearYoung++;
      if ((yield* mm.notifiers.clearYoung(start, start + PMD_SIZE)) !== 0) referenced = true;
    }
    if (referenced) {
      this.stats.young++;
      f.clear(head, PG_idle);
      f.set(head, PG_young);
    }
  }

  /** ptep_test_and_clear_young (x86): an atomic bit clear only when the entry looks young; no TLB flush. */
  private testAndClearYoung(mm: MmStruct, entry: number, lo: number): boolean {
    if ((lo & _PAGE_ACCESSED) === 0) return false;
    mm.mem.and64(entry, ~_PAGE_ACCESSED, -1);
    return (mm.mem.lo & _PAGE_ACCESSED) !== 0;
  }

  /**
   * page_idle_bitmap_read: -EINVAL unless pos and count are multiples of 8;
   * 0 at or past max_pfn. Each chunk is zeroed at its first pfn; a folio
   * with PG_idle has its refs cleared and reads 1 if still idle. Returns
   * the bytes of whole chunks written: the chunk holding max_pfn - 1, when
   * max_pfn is not a multiple of 64, is filled but not counted.
   */
  *read(buf: Uint8Array, pos: number, count: number = buf.length): Program<number> {
    if (pos % BITMAP_CHUNK_SIZE !== 0 || count % BITMAP_CHUNK_SIZE !== 0) return -EINVAL;
    let pfn = pos * 8;
    if (pfn >= this.maxPfn) return 0;
    const endPfn = Math.min(pfn + count * 8, this.maxPfn);
    if (buf.length < count) throw new RangeError(`page_idle read: buffer of ${buf.length} bytes for ${count}`);
    this.stats.reads++;
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    const f = this.folios;
    let out = 0;
    for (; pfn < endPfn; pfn++) {
      const bit = pfn % BITMAP_CHUNK_BITS;
      if (bit === 0) {
        view.setUint32(out, 0, true);
        view.setUint32(out + 4, 0, true);
      }
      const head = this.getFolio(pfn);
      if (head >= 0) {
        if (f.test(head, PG_idle)) {
          // Referenced through a PTE since marked? Clear refs and look again.
          yield* this.clearPteRefs(head);
          if (f.test(head, PG_idle)) {
            const o = out + (bit < 32 ? 0 : 4);
            view.setUint32(o, (view.getUint32(o, true) | (1 << (bit & 31))) >>> 0, true);
          }
        }
        this.putFolio(head);
      }
      if (bit === BITMAP_CHUNK_BITS - 1) out += BITMAP_CHUNK_SIZE;
    }
    return out;
  }

  /**
   * page_idle_bitmap_write: -EINVAL unless pos and count are multiples of
   * 8; -ENXIO at or past max_pfn. Each 1 bit whose pfn is an LRU folio:
   * clear its refs, then set PG_idle; 0 bits and non-LRU pfns are ignored.
   * Returns whole chunks consumed, as read does.
   */
  *write(buf: Uint8Array, pos: number, count: number = buf.length): Program<number> {
    if (pos % BITMAP_CHUNK_SIZE !== 0 || count % BITMAP_CHUNK_SIZE !== 0) return -EINVAL;
    let pfn = pos * 8;
    if (pfn >= this.maxPfn) return -ENXIO;
    const endPfn = Math.min(pfn + count * 8, this.maxPfn);
    if (buf.length < count) throw new RangeError(`page_idle write: buffer of ${buf.length} bytes for ${count}`);
    this.stats.writes++;
    const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let inp = 0;
    for (; pfn < endPfn; pfn++) {
      const bit = pfn % BITMAP_CHUNK_BITS;
      if (((view.getUint32(inp + (bit < 32 ? 0 : 4), true) >>> (bit & 31)) & 1) !== 0) {
        const head = this.getFolio(pfn);
        if (head >= 0) {
          yield* this.clearPteRefs(head);
          this.folios.set(head, PG_idle);
          this.putFolio(head);
        }
      }
      if (bit === BITMAP_CHUNK_BITS - 1) inp += BITMAP_CHUNK_SIZE;
    }
    return inp;
  }

  /** pread(2) on the file: kernfs passes at most PAGE_SIZE bytes to one read. */
  *pread(buf: Uint8Array, pos: number, count: number = buf.length): Program<number> {
    return yield* this.read(buf, pos, Math.min(count, KERNFS_MAX_IO));
  }

  /** pwrite(2) on the file: at most PAGE_SIZE bytes reach one write. */
  *pwrite(buf: Uint8Array, pos: number, count: number = buf.length): Program<number> {
    return yield* this.write(buf, pos, Math.min(count, KERNFS_MAX_IO));
  }

  // ---- what a user of the file does (the selftest's helpers) -----------------

  /** Reads the chunk holding pfn (one 8-byte pread): the u64 word, or the negative error. */
  *readChunk(pfn: number): Program<bigint | number> {
    const buf = new Uint8Array(BITMAP_CHUNK_SIZE);
    const r = yield* this.pread(buf, Math.floor(pfn / BITMAP_CHUNK_BITS) * BITMAP_CHUNK_SIZE);
    if (r < 0) return r;
    return new DataView(buf.buffer).getBigUint64(0, true);
  }

  /** Whether pfn reads idle (bit pfn % 64 of its chunk); a negative error is returned as is. */
  *isIdle(pfn: number): Program<boolean> {
    const w = yield* this.readChunk(pfn);
    if (typeof w === 'number') throw new Error(`page_idle read of pfn 0x${pfn.toString(16)} failed: ${w}`);
    return ((w >> BigInt(pfn % BITMAP_CHUNK_BITS)) & 1n) !== 0n;
  }

  /** Writes the chunk holding pfn with only pfn's bit set (mark_page_idle); returns the write's result. */
  *markIdle(pfn: number): Program<number> {
    const buf = new Uint8Array(BITMAP_CHUNK_SIZE);
    new DataView(buf.buffer).setBigUint64(0, 1n << BigInt(pfn % BITMAP_CHUNK_BITS), true);
    return yield* this.pwrite(buf, Math.floor(pfn / BITMAP_CHUNK_BITS) * BITMAP_CHUNK_SIZE);
  }
}
