/**
 * The host's page allocator over a range of host physical frames
 * (alloc_pages / __free_pages, much simplified): single frames come from a
 * free list, higher orders from an aligned bump pointer. Frames are zeroed
 * when handed out, as __GFP_ZERO would, since page tables rely on it.
 *
 * Two ends of the pool: data frames (user folios, KVM's own tables) grow
 * from the bottom, host page-table pages (pagetable_alloc) from the top
 * down. The split is the model's, not the kernel's: it keeps the frame
 * numbers KVM and the fixtures see independent of how many host page
 * tables the mm needs, and lets struct page (the FolioTable) cover the
 * bottom end only.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import { FolioTable } from './folio.js';

const PAGE_SIZE = 4096;
/** 1 / PAGE_SIZE: a power of two, so the product is exact. */
const INV_PAGE_SIZE = 1 / PAGE_SIZE;

export class PageAllocator {
  private next: number;
  private readonly free: number[] = [];
  /** Lowest page-table frame handed out so far (the top end's bump pointer). */
  private tableNext: number;
  private readonly tableFree: number[] = [];
  /** Frames handed out and not yet freed (both ends). */
  inUse = 0;
  /** Page-table frames handed out and not yet freed (included in inUse). */
  tablePages = 0;
  /** struct page of every frame of the bottom end (mem_map). */
  readonly folios: FolioTable;

  constructor(
    readonly mem: PhysMem,
    /** First host physical address of the pool. */
    readonly base: number,
    /** Bytes in the pool. */
    readonly size: number,
  ) {
    if (base % PAGE_SIZE !== 0 || size % PAGE_SIZE !== 0) throw new Error('assertion: page pool not page aligned');
    if (base + size > mem.limit) throw new Error(`assertion: page pool ends beyond MAXPHYADDR ${mem.maxPhysAddr}`);
    this.next = base;
    this.tableNext = base + size;
    this.folios = new FolioTable(base / PAGE_SIZE);
  }

  /** One zeroed frame; returns its host physical address. */
  allocPage(): number {
    let hpa: number;
    const free = this.free;
    if (free.length !== 0) {
      hpa = free.pop() as number;
      if (this.dirty.size !== 0 && this.dirty.delete(hpa)) this.zero(hpa, 1);
    } else {
      // bump(0) for the common case: the pointer is page aligned already, and fresh frames read as zero.
      hpa = this.next;
      if (hpa + PAGE_SIZE > this.tableNext) this.exhausted();
      this.next = hpa + PAGE_SIZE;
      const folios = this.folios;
      const end = this.next * INV_PAGE_SIZE;
      if (end - folios.basePfn > folios.capacity) folios.ensure(end);
    }
    this.inUse++;
    this.folios.prepNewPage(hpa * INV_PAGE_SIZE, 0);
    return hpa;
  }

  /** 2^order zeroed, naturally aligned, contiguous frames (a compound page: the head carries the order). */
  allocPages(order: number): number {
    if (order === 0) return this.allocPage();
    const hpa = this.bump(order);
    this.inUse += 2 ** order;
    this.folios.prepNewPage(hpa / PAGE_SIZE, order);
    return hpa;
  }

  /** A zeroed frame for a host page table (pagetable_alloc), from the top end. */
  allocTablePage(): number {
    let hpa = this.tableFree.pop();
    if (hpa === undefined) {
      hpa = this.tableNext - PAGE_SIZE;
      if (hpa < this.next) this.exhausted();
      this.tableNext = hpa;
    } else if (this.dirty.delete(hpa)) this.zero(hpa, 1);
    this.inUse++;
    this.tablePages++;
    return hpa;
  }

  freePage(hpa: number): void {
    if (hpa < this.base || hpa >= this.base + this.size || hpa % PAGE_SIZE !== 0) throw new Error(`assertion: freeing 0x${hpa.toString(16)}, not a page of the pool`);
    if (hpa >= this.tableNext) {
      this.tableFree.push(hpa);
      this.tablePages--;
    } else {
      this.folios.freePage(hpa / PAGE_SIZE);
      this.free.push(hpa);
    }
    this.dirty.add(hpa);
    this.inUse--;
  }

  /** __free_pages of an order-N block: its frames go back as single pages (no buddy merging). */
  freePages(hpa: number, order: number): void {
    for (let i = 0; i < 2 ** order; i++) this.freePage(hpa + i * PAGE_SIZE);
  }

  private bump(order: number): number {
    const bytes = PAGE_SIZE * 2 ** order;
    const hpa = Math.ceil(this.next / bytes) * bytes;
    if (hpa + bytes > this.tableNext) this.exhausted();
    // Frames skipped for alignment stay usable as single pages.
    for (let p = this.next; p < hpa; p += PAGE_SIZE) this.free.push(p);
    this.next = hpa + bytes;
    this.folios.ensure(this.next / PAGE_SIZE);
    return hpa;
  }

  private exhausted(): never {
    throw new Error(`out of host memory: pool of ${this.size / PAGE_SIZE} pages exhausted`);
  }

  private zero(hpa: number, pages: number): void {
    for (let a = hpa; a < hpa + pages * PAGE_SIZE; a += 8) this.mem.store64(a, 0, 0);
  }

  /** Freed frames, which may hold old contents until handed out again. */
  private readonly dirty = new Set<number>();
}
