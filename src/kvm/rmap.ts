/**
 * The shadow MMU's reverse maps (arch/x86/kvm/mmu/mmu.c, Linux 6.17;
 * kvm-mmu.md section 5): per-memslot, per-level rmap heads holding the SPTE
 * pointers that map a gfn, the per-rmap lock in bit 1 of the head (6.15+),
 * and lockless aging through them (kvm_rmap_age_gfn_range).
 *
 * Each head is an 8-byte word in emulated memory, so the lock's cmpxchg and
 * the lockless readers race through PhysMem like everything else. The
 * pte_list_desc chains are kernel objects the lock protects; they live here
 * as JS objects, named in the head by an id in place of a pointer.
 */
import type { PhysMem } from '../hw/phys_mem.js';
import { hi32, join64, lo32 } from '../hw/halves.js';
import type { PageAllocator } from '../mm/page_alloc.js';
import type { MmuLock } from './locks.js';
import type { KvmGfnRange, KvmMemorySlot } from './memslots.js';
import { PG_LEVEL_1G, PG_LEVEL_4K, isAccessedSpte, isShadowPresentPte, markSpteForAccessTrack, spteAdEnabled, type SpteFlavour } from './spte.js';
import { pagesPerHpage } from './tdp_iter.js';

/** Bit 0: the head points to a pte_list_desc chain, not a single SPTE. */
export const KVM_RMAP_MANY = 1;
/** Bit 1: the per-rmap lock. */
export const KVM_RMAP_LOCKED = 2;
/** SPTE pointers per descriptor. */
export const PTE_LIST_EXT = 14;

type Program<T> = Generator<unknown, T, undefined>;

/** struct pte_list_desc. */
export class PteListDesc {
  more: PteListDesc | null = null;
  spteCount = 0;
  tailCount = 0;
  readonly sptes: number[] = new Array<number>(PTE_LIST_EXT).fill(0);
  constructor(readonly id: number) {}
}

/** What the rmap code needs of the VM. */
export interface RmapVm {
  readonly mem: PhysMem;
  readonly flavour: SpteFlavour;
  readonly mmuLock: MmuLock;
  readonly pages: PageAllocator;
}

/**
 * The rmaps of one memslot: heads for 4K, 2M and 1G (slot->arch.rmap[]),
 * 512 heads per page of kernel memory, and the descriptors they name.
 */
export class KvmRmaps {
  private readonly headPages: number[][] = [[], [], [], []];
  private readonly descs = new Map<number, PteListDesc>();
  private nextDesc = 1;

  constructor(private readonly vm: RmapVm, readonly slot: KvmMemorySlot) {}

  /** gfn_to_rmap: the head for gfn at level, as a physical address. */
  headFor(gfn: number, level: number): number {
    if (level < PG_LEVEL_4K || level > PG_LEVEL_1G) throw new Error(`assertion: rmap level ${level}`);
    const n = pagesPerHpage(level);
    const idx = Math.floor(gfn / n) - Math.floor(this.slot.base_gfn / n);
    if (idx < 0 || gfn >= this.slot.base_gfn + this.slot.npages) throw new Error(`assertion: gfn 0x${gfn.toString(16)} outside memslot ${this.slot.id}`);
    const pages = this.headPages[level];
    const page = Math.floor(idx / 512);
    while (pages.length <= page) pages.push(this.vm.pages.allocPage());
    return pages[page] + 8 * (idx % 512);
  }

  /** The descriptor a head value names (val & ~3). */
  desc(val: number): PteListDesc {
    const d = this.descs.get(Math.floor(val / 4));
    if (d === undefined) throw new Error(`assertion: rmap value 0x${val.toString(16)} names no descriptor`);
    return d;
  }

  private newDesc(): PteListDesc {
    const d = new PteListDesc(this.nextDesc++);
    this.descs.set(d.id, d);
    return d;
  }

  private freeDesc(d: PteListDesc): void {
    this.descs.delete(d.id);
  }

  private static descVal(d: PteListDesc): number {
    return d.id * 4 + KVM_RMAP_MANY;
  }

  /**
   * __kvm_rmap_lock: an empty rmap is never locked (returns 0); otherwise
   * wait while LOCKED is set, then cmpxchg the bit in. Returns the value
   * without the bit.
   */
  private *rmapLock(head: number): Program<number> {
    const mem = this.vm.mem;
    if (mem.yields) yield;
    mem.load64(head);
    let old = mem.lo >>> 0;
    if (old === 0) return 0;
    for (;;) {
      while (old & KVM_RMAP_LOCKED) {
        if (!mem.yields) throw new Error('assertion: rmap locked and no other simulated CPU can unlock it');
        yield;
        mem.load64(head);
        old = mem.lo >>> 0;
      }
      if (old === 0) return 0; // purged by the holder
      if (mem.yields) yield;
      if (mem.cmpxchg64(head, old, 0, old | KVM_RMAP_LOCKED, 0)) return old;
      old = mem.lo >>> 0;
    }
  }

  /** __kvm_rmap_unlock: a release store of a value without the lock bit. */
  private *rmapUnlock(head: number, val: number): Program<void> {
    if (val & KVM_RMAP_LOCKED) throw new Error('assertion: unlocking an rmap with a LOCKED value');
    const mem = this.vm.mem;
    if (mem.yields) yield;
    mem.store64(head, val, 0);
  }

  /** kvm_rmap_lock: for changing the chain; needs mmu_lock held for write. */
  *lock(head: number): Program<number> {
    this.vm.mmuLock.assertHeld('write');
    return yield* this.rmapLock(head);
  }

  *unlock(head: number, val: number): Program<void> {
    this.vm.mmuLock.assertHeld('write');
    yield* this.rmapUnlock(head, val);
  }

  /** kvm_rmap_lock_readonly: no mmu_lock needed; one holder at a time (not a reader-writer lock). */
  *lockReadonly(head: number): Program<number> {
    return yield* this.rmapLock(head);
  }

  /** kvm_rmap_unlock_readonly: stores the unchanged head back (nothing for an empty rmap). */
  *unlockReadonly(head: number, old: number): Program<void> {
    if (old === 0) return;
    const mem = this.vm.mem;
    mem.load64(head);
    if (((mem.lo >>> 0) & ~KVM_RMAP_LOCKED) !== old) throw new Error('assertion: rmap changed under its read-only lock');
    yield* this.rmapUnlock(head, old);
  }

  /** kvm_rmap_get: the head value without the lock bit. */
  get(head: number): number {
    this.vm.mem.load64(head);
    return (this.vm.mem.lo >>> 0) & ~KVM_RMAP_LOCKED;
  }

  /** The SPTE pointers of a head value, in rmap_get_first/rmap_get_next order. */
  sptes(val: number): number[] {
    if (val === 0) return [];
    if (!(val & KVM_RMAP_MANY)) return [val];
    const out: number[] = [];
    for (let d: PteListDesc | null = this.desc(val & ~KVM_RMAP_LOCKED); d !== null; d = d.more) {
      for (let i = 0; i < d.spteCount; i++) out.push(d.sptes[i]);
    }
    return out;
  }

  /** pte_list_add: returns the number of SPTEs that were already in the rmap. */
  *pteListAdd(sptep: number, head: number): Program<number> {
    const old = yield* this.lock(head);
    let count = 0;
    let neu: number;
    if (old === 0) neu = sptep;
    else if (!(old & KVM_RMAP_MANY)) {
      const d = this.newDesc();
      d.sptes[0] = old;
      d.sptes[1] = sptep;
      d.spteCount = 2;
      neu = KvmRmaps.descVal(d);
      count = 1;
    } else {
      let d = this.desc(old);
      count = d.tailCount + d.spteCount;
      neu = old;
      if (d.spteCount === PTE_LIST_EXT) {
        const fresh = this.newDesc();
        fresh.more = d;
        fresh.tailCount = count;
        d = fresh;
        neu = KvmRmaps.descVal(d);
      }
      d.sptes[d.spteCount++] = sptep;
    }
    yield* this.unlock(head, neu);
    return count;
  }

  /** pte_list_remove: the entry's hole is filled from the head descriptor, which is freed when empty. */
  *pteListRemove(sptep: number, head: number): Program<void> {
    let val = yield* this.lock(head);
    if (val === 0) throw new Error('assertion (data corruption): removing from an empty rmap');
    if (!(val & KVM_RMAP_MANY)) {
      if (val !== sptep) throw new Error(`assertion (data corruption): rmap holds 0x${val.toString(16)}, not 0x${sptep.toString(16)}`);
      val = 0;
    } else {
      const headDesc = this.desc(val);
      let done = false;
      for (let d: PteListDesc | null = headDesc; d !== null && !done; d = d.more) {
        for (let i = 0; i < d.spteCount; i++) {
          if (d.sptes[i] !== sptep) continue;
          const j = headDesc.spteCount - 1;
          d.sptes[i] = headDesc.sptes[j];
          headDesc.sptes[j] = 0;
          headDesc.spteCount--;
          if (headDesc.spteCount === 0) {
            val = headDesc.more === null ? 0 : KvmRmaps.descVal(headDesc.more);
            this.freeDesc(headDesc);
          }
          done = true;
          break;
        }
      }
      if (!done) throw new Error(`assertion (data corruption): 0x${sptep.toString(16)} not in its rmap`);
    }
    yield* this.unlock(head, val);
  }

  /**
   * kvm_rmap_age_gfn_range: no mmu_lock; each rmap under its read-only lock;
   * each SPTE re-read and only changed atomically. No TLB flush.
   */
  *ageGfnRange(range: KvmGfnRange, testOnly: boolean): Program<boolean> {
    const { mem, flavour: f } = this.vm;
    const aBit = lo32(f.accessedMask); // bit 5 or bit 8: always in the low half
    let young = false;
    for (let level = PG_LEVEL_4K; level <= PG_LEVEL_1G; level++) {
      for (let gfn = range.start; gfn < range.end; gfn += pagesPerHpage(level)) {
        const head = this.headFor(gfn, level);
        const val = yield* this.lockReadonly(head);
        for (const sptep of this.sptes(val)) {
          if (mem.yields) yield;
          mem.load64(sptep); // mmu_spte_get_lockless
          const spte = join64(mem.lo, mem.hi);
          if (!isShadowPresentPte(spte) || !isAccessedSpte(f, spte)) continue;
          if (testOnly) {
            yield* this.unlockReadonly(head, val);
            return true;
          }
          if (mem.yields) yield;
          if (spteAdEnabled(spte)) mem.and64(sptep, ~aBit, -1); // clear_bit of the accessed bit
          else {
            const neu = markSpteForAccessTrack(f, spte);
            mem.cmpxchg64(sptep, lo32(spte), hi32(spte), lo32(neu), hi32(neu)); // a lost race is left alone: likely young again
          }
          young = true;
        }
        yield* this.unlockReadonly(head, val);
      }
    }
    return young;
  }
}
