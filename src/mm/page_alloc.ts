/**
 * The host's page allocator over a range of host physical frames
 * (alloc_pages / __free_pages, much simplified): single frames come from a
 * free list, higher orders from an aligned bump pointer. Frames are zeroed
 * when handed out, as __GFP_ZERO would, since page tables rely on it.
 */
import type { PhysMem } from '../hw/phys_mem.js';

const PAGE_SIZE = 4096;

export class PageAllocator {
  private next: number;
  private readonly free: number[] = [];
  /** Frames handed out and not yet freed. */
  inUse = 0;

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
  }

  /** One zeroed frame; returns its host physical address. */
  allocPage(): number {
    const hpa = this.free.pop() ?? this.bump(0);
    if (this.dirty.delete(hpa)) this.zero(hpa, 1); // fresh frames read as zero already
    this.inUse++;
    return hpa;
  }

  /** 2^order zeroed, naturally aligned, contiguous frames. */
  allocPages(order: number): number {
    if (order === 0) return this.allocPage();
    const hpa = this.bump(order);
    this.inUse += 2 ** order;
    return hpa;
  }

  freePage(hpa: number): void {
    if (hpa < this.base || hpa >= this.base + this.size || hpa % PAGE_SIZE !== 0) throw new Error(`assertion: freeing 0x${hpa.toString(16)}, not a page of the pool`);
    this.free.push(hpa);
    this.dirty.add(hpa);
    this.inUse--;
  }

  private bump(order: number): number {
    const bytes = PAGE_SIZE * 2 ** order;
    const hpa = Math.ceil(this.next / bytes) * bytes;
    if (hpa + bytes > this.base + this.size) throw new Error(`out of host memory: pool of ${this.size / PAGE_SIZE} pages exhausted`);
    // Frames skipped for alignment stay usable as single pages.
    for (let p = this.next; p < hpa; p += PAGE_SIZE) this.free.push(p);
    this.next = hpa + bytes;
    return hpa;
  }

  private zero(hpa: number, pages: number): void {
    for (let a = hpa; a < hpa + pages * PAGE_SIZE; a += 8) this.mem.store64(a, 0, 0);
  }

  /** Freed frames, which may hold old contents until handed out again. */
  private readonly dirty = new Set<number>();
}
