/**
 * KVM memory slots: guest frame ranges backed by host virtual memory.
 *
 * Models struct kvm_memory_slot / struct kvm_memslots from
 * include/linux/kvm_host.h and the memslot update and lookup code of
 * virt/kvm/kvm_main.c (Linux 6.17), plus the x86 checks made by
 * kvm_arch_prepare_memory_region. See ../shared/spec/kvm-mmu.md section 6
 * for the notifier side, which walks the slots by hva range.
 *
 * Representation:
 * - gfns, hvas and sizes are plain numbers (safe integers, below 2^53);
 * - the memslot generation is a u64 and therefore a `bigint`, because the
 *   kernel keeps its "update in progress" flag in bit 63;
 * - each address space keeps its slots in a list sorted by base_gfn (the
 *   kernel's gfn_tree), a map by id (id_hash) and an interval tree keyed by
 *   the inclusive hva range [userspace_addr, userspace_addr + size - 1]
 *   (hva_tree).
 *
 * The kernel keeps two memslot sets per address space and swaps the active
 * one under SRCU. This model is single-threaded, so it keeps one set and
 * applies each change inside {@link KvmMemslots} `swapActiveMemslots`, which
 * reproduces the generation protocol of kvm_swap_active_memslots exactly,
 * including one swap to publish the INVALID copy of a slot that is being
 * deleted or moved.
 */
import IntervalTree from '@flatten-js/interval-tree';
import { KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS } from './spte.js';

export { KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS };

// ---------------------------------------------------------------------------
// Constants

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT;

/** uapi <linux/kvm.h>: log dirty pages of this slot into its bitmap. */
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
/** uapi <linux/kvm.h>: guest writes to this slot exit as MMIO. */
export const KVM_MEM_READONLY = 1 << 1;
/** uapi <linux/kvm.h>: private memory from a guest_memfd (not modelled; rejected). */
export const KVM_MEM_GUEST_MEMFD = 1 << 2;
/** kvm_host.h: internal flag (bits 16..31 are kernel-only) of a slot being deleted or moved. */
export const KVM_MEMSLOT_INVALID = 1 << 16;

/** kvm_host.h: KVM_MEM_SLOTS_NUM = SHRT_MAX. */
export const KVM_MEM_SLOTS_NUM = 0x7fff;
/** arch/x86/include/asm/kvm_host.h: three private slots (TSS, identity map, APIC access page). */
export const KVM_INTERNAL_MEM_SLOTS = 3;
/** kvm_host.h: slot ids userspace may use. */
export const KVM_USER_MEM_SLOTS = KVM_MEM_SLOTS_NUM - KVM_INTERNAL_MEM_SLOTS;
/** kvm_host.h: dirty bitmaps are indexed by an unsigned int. */
export const KVM_MEM_MAX_NR_PAGES = 2 ** 31 - 1;
/** x86: KVM_MAX_NR_ADDRESS_SPACES is 2 (normal and SMM) when CONFIG_KVM_SMM is on. */
export const KVM_MAX_NR_ADDRESS_SPACES = 2;
/** x86-64 with 4-level paging: TASK_SIZE_MAX, the end of user hva space used by access_ok. */
export const TASK_SIZE_MAX_4LEVEL = 2 ** 47 - PAGE_SIZE;

/** Kernel errno values (returned negated by the ioctl). */
export const ENOENT = 2;
export const EIO = 5;
export const EEXIST = 17;
export const EINVAL = 22;

const ERRNO_NAMES: Record<number, string> = { [ENOENT]: 'ENOENT', [EIO]: 'EIO', [EEXIST]: 'EEXIST', [EINVAL]: 'EINVAL' };

/**
 * An error KVM_SET_USER_MEMORY_REGION would return. `errno` is the negative
 * value the kernel returns (e.g. -22), `code` its name (e.g. 'EINVAL').
 */
export class KvmError extends Error {
  readonly errno: number;
  readonly code: string;
  constructor(errno: number, message: string) {
    const code = ERRNO_NAMES[-errno] ?? `E${-errno}`;
    super(`-${code}: ${message}`);
    this.name = 'KvmError';
    this.errno = errno;
    this.code = code;
  }
}

function invariant(cond: boolean, what: string): asserts cond {
  if (!cond) throw new Error(`assertion: ${what}`);
}

// ---------------------------------------------------------------------------
// Slots

/** enum kvm_mr_change (kvm_host.h). */
export type KvmMrChange = 'create' | 'delete' | 'move' | 'flags_only';

/** struct kvm_memory_slot (kvm_host.h), minus the arch data and the tree nodes. */
export interface KvmMemorySlot {
  /** Slot id within its address space (low 16 bits of the ioctl's `slot`). */
  readonly id: number;
  /** Address space (high 16 bits of the ioctl's `slot`; 1 is SMM on x86). */
  readonly as_id: number;
  readonly base_gfn: number;
  readonly npages: number;
  /** Host virtual address of the first page. */
  readonly userspace_addr: number;
  /** KVM_MEM_* flags, plus KVM_MEMSLOT_INVALID while being deleted or moved. */
  readonly flags: number;
  /**
   * One bit per page, bit (gfn - base_gfn) in word >> 5, when
   * KVM_MEM_LOG_DIRTY_PAGES is set; null otherwise. The kernel allocates
   * twice this size (the second half is a scratch buffer for
   * KVM_GET_DIRTY_LOG); here the snapshot is a fresh array instead.
   */
  readonly dirty_bitmap: Uint32Array | null;
}

/** The userspace request, struct kvm_userspace_memory_region. */
export interface KvmUserspaceMemoryRegion {
  /** as_id << 16 | id */
  slot: number;
  flags: number;
  guest_phys_addr: number;
  /** bytes; 0 deletes the slot */
  memory_size: number;
  userspace_addr: number;
}

/** kvm_memslot_is_readonly / memslot_is_readonly. */
export function memslotIsReadonly(slot: KvmMemorySlot): boolean {
  return (slot.flags & KVM_MEM_READONLY) !== 0;
}

/** kvm_slot_dirty_track_enabled (without the dirty-ring case). */
export function slotDirtyLogging(slot: KvmMemorySlot): boolean {
  return (slot.flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0;
}

/** One past the last hva of the slot. */
export function slotHvaEnd(slot: KvmMemorySlot): number {
  return slot.userspace_addr + slot.npages * PAGE_SIZE;
}

function checkGfnInSlot(slot: KvmMemorySlot, gfn: number): void {
  if (!Number.isSafeInteger(gfn) || gfn < slot.base_gfn || gfn >= slot.base_gfn + slot.npages) {
    throw new RangeError(`gfn ${fmt(gfn)} outside slot ${slot.id} [${fmt(slot.base_gfn)}, ${fmt(slot.base_gfn + slot.npages)})`);
  }
}

/**
 * __gfn_to_hva_memslot: hva of `gfn` inside `slot`. The kernel clamps the
 * offset with array_index_nospec; here an out-of-slot gfn is a caller error.
 */
export function gfnToHvaMemslotUnchecked(slot: KvmMemorySlot, gfn: number): number {
  checkGfnInSlot(slot, gfn);
  return slot.userspace_addr + (gfn - slot.base_gfn) * PAGE_SIZE;
}

/**
 * hva_to_gfn_memslot: gfn backed by `hva`, which the caller guarantees lies
 * in (or, for a rounded-up range end, just after) the slot's hva range.
 */
export function hvaToGfnMemslot(hva: number, slot: KvmMemorySlot): number {
  if (!Number.isSafeInteger(hva) || hva < slot.userspace_addr) {
    throw new RangeError(`hva ${fmt(hva)} below slot ${slot.id} start ${fmt(slot.userspace_addr)}`);
  }
  return slot.base_gfn + Math.floor((hva - slot.userspace_addr) / PAGE_SIZE);
}

/** Why an hva lookup failed (the kernel returns KVM_HVA_ERR_BAD / KVM_HVA_ERR_RO_BAD). */
export type HvaError = 'KVM_HVA_ERR_BAD' | 'KVM_HVA_ERR_RO_BAD';
export type HvaResult = { ok: true; hva: number; writable: boolean } | { ok: false; error: HvaError };

/**
 * __gfn_to_hva_many without nr_pages: no slot or an INVALID slot gives
 * KVM_HVA_ERR_BAD; a write lookup in a readonly slot gives KVM_HVA_ERR_RO_BAD.
 * `writable` is !readonly, as gfn_to_hva_memslot_prot reports it.
 */
export function gfnToHvaMany(slot: KvmMemorySlot | null, gfn: number, write: boolean): HvaResult {
  if (slot === null || (slot.flags & KVM_MEMSLOT_INVALID) !== 0) return { ok: false, error: 'KVM_HVA_ERR_BAD' };
  if (memslotIsReadonly(slot) && write) return { ok: false, error: 'KVM_HVA_ERR_RO_BAD' };
  return { ok: true, hva: gfnToHvaMemslotUnchecked(slot, gfn), writable: !memslotIsReadonly(slot) };
}

/** gfn_to_hva_memslot_prot: read lookup that also reports whether the slot is writable. */
export function gfnToHvaMemslotProt(slot: KvmMemorySlot | null, gfn: number): HvaResult {
  return gfnToHvaMany(slot, gfn, false);
}

/** gfn_to_hva_memslot: as the kernel's, a lookup "for write" (fails on readonly slots). */
export function gfnToHvaMemslot(slot: KvmMemorySlot | null, gfn: number): HvaResult {
  return gfnToHvaMany(slot, gfn, true);
}

// ---------------------------------------------------------------------------
// Dirty bitmap

/** kvm_dirty_bitmap_bytes: the kernel rounds to whole longs (64 bits). */
export function dirtyBitmapBytes(npages: number): number {
  return Math.ceil(npages / 64) * 8;
}

function newDirtyBitmap(npages: number): Uint32Array {
  return new Uint32Array(dirtyBitmapBytes(npages) / 4);
}

/**
 * mark_page_dirty_in_slot: set the gfn's bit if the slot logs dirty pages;
 * a no-op otherwise (as in the kernel).
 */
export function markPageDirtyInSlot(slot: KvmMemorySlot, gfn: number): void {
  checkGfnInSlot(slot, gfn);
  const bm = slot.dirty_bitmap;
  if (bm === null) return;
  const rel = gfn - slot.base_gfn;
  bm[rel >>> 5] = (bm[rel >>> 5]! | (1 << (rel & 31))) >>> 0;
}

/** test_bit on the slot's dirty bitmap (false when not logging). */
export function testPageDirty(slot: KvmMemorySlot, gfn: number): boolean {
  checkGfnInSlot(slot, gfn);
  const bm = slot.dirty_bitmap;
  if (bm === null) return false;
  const rel = gfn - slot.base_gfn;
  return ((bm[rel >>> 5]! >>> (rel & 31)) & 1) === 1;
}

/** Clear one page's dirty bit, as KVM_CLEAR_DIRTY_LOG does for each set bit it is given. */
export function clearPageDirty(slot: KvmMemorySlot, gfn: number): void {
  checkGfnInSlot(slot, gfn);
  const bm = slot.dirty_bitmap;
  if (bm === null) return;
  const rel = gfn - slot.base_gfn;
  bm[rel >>> 5] = (bm[rel >>> 5]! & ~(1 << (rel & 31))) >>> 0;
}

/** The gfns whose dirty bit is set, ascending. */
export function dirtyGfns(slot: KvmMemorySlot): number[] {
  const out: number[] = [];
  const bm = slot.dirty_bitmap;
  if (bm === null) return out;
  for (let rel = 0; rel < slot.npages; rel++) {
    if (((bm[rel >>> 5]! >>> (rel & 31)) & 1) === 1) out.push(slot.base_gfn + rel);
  }
  return out;
}

// ---------------------------------------------------------------------------
// hva range walk

/** struct kvm_gfn_range as kvm_handle_hva_range builds it (arg, filter and flags left to the caller). */
export interface KvmGfnRange {
  slot: KvmMemorySlot;
  /** first gfn, inclusive */
  start: number;
  /** end gfn, exclusive */
  end: number;
}

// ---------------------------------------------------------------------------
// The memslot sets

/** One address space: struct kvm_memslots. */
interface AddressSpace {
  generation: bigint;
  /** gfn_tree: sorted by base_gfn */
  byGfn: KvmMemorySlot[];
  /** id_hash */
  byId: Map<number, KvmMemorySlot>;
  /** hva_tree, keyed by inclusive [userspace_addr, last hva] */
  hvaTree: IntervalTree<KvmMemorySlot>;
  /** last_used_slot */
  lastUsed: KvmMemorySlot | null;
}

export interface KvmMemslotsOptions {
  /** kvm_arch_nr_memslot_as_ids: 2 on x86 with SMM (default), 1 for VMs with private memory. */
  nrAddressSpaces?: number;
  /** Guest physical address width for kvm_mmu_max_gfn (default 52). */
  maxGpaBits?: number;
  /** End of user address space for access_ok (default x86-64 4-level). */
  taskSizeMax?: number;
  /** kvm_arch_memslots_updated: called with each final generation. */
  onGenerationUpdated?: (asId: number, generation: bigint) => void;
  /** Called between publishing a set and finishing the swap, with the in-progress generation. */
  onSwap?: (asId: number, inProgressGeneration: bigint) => void;
}

function fmt(n: number): string {
  return Number.isSafeInteger(n) && n >= 0 ? `0x${n.toString(16)}` : String(n);
}

/**
 * The memslots of one VM, all address spaces (kvm->memslots[] with
 * kvm->nr_memslot_pages and kvm->nr_memslots_dirty_logging).
 */
export class KvmMemslots {
  readonly nrAddressSpaces: number;
  readonly maxGfn: number;
  readonly taskSizeMax: number;
  /** kvm->nr_memslot_pages */
  nrMemslotPages = 0;
  /** kvm->nr_memslots_dirty_logging */
  nrMemslotsDirtyLogging = 0;
  private readonly spaces: AddressSpace[];
  private readonly onGen: ((asId: number, gen: bigint) => void) | undefined;
  private readonly onSwap: ((asId: number, gen: bigint) => void) | undefined;

  constructor(opts: KvmMemslotsOptions = {}) {
    const nr = opts.nrAddressSpaces ?? KVM_MAX_NR_ADDRESS_SPACES;
    if (!Number.isInteger(nr) || nr < 1 || nr > KVM_MAX_NR_ADDRESS_SPACES) {
      throw new RangeError(`nrAddressSpaces must be 1 or 2, got ${nr}`);
    }
    const bits = opts.maxGpaBits ?? 52;
    if (!Number.isInteger(bits) || bits < 32 || bits > 52) throw new RangeError(`maxGpaBits must be 32..52, got ${bits}`);
    this.nrAddressSpaces = nr;
    /** kvm_mmu_max_gfn: (1 << (max_gpa_bits - PAGE_SHIFT)) - 1 */
    this.maxGfn = 2 ** (bits - PAGE_SHIFT) - 1;
    this.taskSizeMax = opts.taskSizeMax ?? TASK_SIZE_MAX_4LEVEL;
    this.onGen = opts.onGenerationUpdated;
    this.onSwap = opts.onSwap;
    // kvm_create_vm: "Generations must be different for each address space": slots->generation = i.
    this.spaces = [];
    for (let i = 0; i < nr; i++) {
      this.spaces.push({ generation: BigInt(i), byGfn: [], byId: new Map(), hvaTree: new IntervalTree<KvmMemorySlot>(), lastUsed: null });
    }
  }

  private space(asId: number): AddressSpace {
    if (!Number.isInteger(asId) || asId < 0 || asId >= this.nrAddressSpaces) {
      throw new RangeError(`address space ${asId} does not exist (this VM has ${this.nrAddressSpaces})`);
    }
    return this.spaces[asId]!;
  }

  /** slots->generation of the active set of `asId`. */
  generation(asId = 0): bigint {
    return this.space(asId).generation;
  }

  /** id_to_memslot */
  idToMemslot(asId: number, id: number): KvmMemorySlot | null {
    return this.space(asId).byId.get(id) ?? null;
  }

  /** All slots of an address space by ascending base_gfn (kvm_for_each_memslot order aside). */
  slots(asId = 0): readonly KvmMemorySlot[] {
    return this.space(asId).byGfn.slice();
  }

  // -------------------------------------------------------------------------
  // Lookups

  /**
   * search_memslots(slots, gfn, approx=false): binary search of the gfn tree.
   */
  private searchMemslots(sp: AddressSpace, gfn: number): KvmMemorySlot | null {
    let lo = 0;
    let hi = sp.byGfn.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const s = sp.byGfn[mid]!;
      if (gfn >= s.base_gfn) {
        if (gfn < s.base_gfn + s.npages) return s;
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return null;
  }

  /**
   * __gfn_to_memslot (____gfn_to_memslot with approx=false): try the
   * last-used slot first, then search and remember the hit. INVALID slots
   * are returned as the kernel does; gfn_to_hva rejects them.
   */
  gfnToMemslot(gfn: number, asId = 0): KvmMemorySlot | null {
    const sp = this.space(asId);
    if (!Number.isSafeInteger(gfn) || gfn < 0) throw new RangeError(`gfn must be a non-negative safe integer, got ${gfn}`);
    const last = sp.lastUsed;
    if (last !== null && gfn >= last.base_gfn && gfn < last.base_gfn + last.npages) return last;
    const slot = this.searchMemslots(sp, gfn);
    if (slot !== null) sp.lastUsed = slot;
    return slot;
  }

  /** The slot __gfn_to_memslot last cached (slots->last_used_slot). */
  lastUsedSlot(asId = 0): KvmMemorySlot | null {
    return this.space(asId).lastUsed;
  }

  /** gfn_to_hva_prot-style lookup: read access, reports writability. */
  gfnToHvaProt(gfn: number, asId = 0): HvaResult {
    return gfnToHvaMemslotProt(this.gfnToMemslot(gfn, asId), gfn);
  }

  /** gfn_to_hva-style lookup with an explicit write intent (__gfn_to_hva_many). */
  gfnToHva(gfn: number, write: boolean, asId = 0): HvaResult {
    return gfnToHvaMany(this.gfnToMemslot(gfn, asId), gfn, write);
  }

  /**
   * kvm_for_each_memslot_in_hva_range + the clipping of kvm_handle_hva_range:
   * for every address space, every slot whose hva range meets [start, end)
   * gives {slot, start: hva_to_gfn(max(start, slot start)),
   * end: hva_to_gfn(min(end, slot end) + PAGE_SIZE - 1)}. Address spaces are
   * walked in order; slots within one in ascending hva order.
   */
  hvaRangeGfnRanges(start: number, end: number): KvmGfnRange[] {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0) {
      throw new RangeError(`hva range [${start}, ${end}) must be non-negative safe integers`);
    }
    // kvm_handle_hva_range: WARN_ON_ONCE(range->end <= range->start) -> return nothing.
    if (end <= start) throw new RangeError(`empty hva range [${fmt(start)}, ${fmt(end)})`);
    const out: KvmGfnRange[] = [];
    for (const sp of this.spaces) {
      // The tree holds inclusive intervals; [start, end) is [start, end - 1].
      const hits: KvmMemorySlot[] = sp.hvaTree.search([start, end - 1]);
      hits.sort((a, b) => a.userspace_addr - b.userspace_addr);
      for (const slot of hits) {
        const hvaStart = Math.max(start, slot.userspace_addr);
        const hvaEnd = Math.min(end, slotHvaEnd(slot));
        invariant(hvaStart < hvaEnd, `interval tree returned slot ${slot.id} not overlapping [${fmt(start)}, ${fmt(end)})`);
        out.push({
          slot,
          start: hvaToGfnMemslot(hvaStart, slot),
          end: hvaToGfnMemslot(hvaEnd + PAGE_SIZE - 1, slot),
        });
      }
    }
    return out;
  }

  /** Slots (any address space) whose hva range meets [start, end), without clipping. */
  memslotsInHvaRange(start: number, end: number): KvmMemorySlot[] {
    return this.hvaRangeGfnRanges(start, end).map((r) => r.slot);
  }

  // -------------------------------------------------------------------------
  // Updates

  /**
   * kvm_swap_active_memslots: mark the generation in progress, publish the
   * change (`apply`), then drop the flag and advance by the number of
   * address spaces so generations never collide across them.
   */
  private swapActiveMemslots(asId: number, apply: (sp: AddressSpace) => void): void {
    const sp = this.space(asId);
    let gen = sp.generation;
    invariant((gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS) === 0n, `memslot generation ${gen} already in progress`);
    sp.generation = gen | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS;
    apply(sp);
    this.onSwap?.(asId, sp.generation);
    // (synchronize_srcu_expedited would wait for readers here.)
    gen = sp.generation & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS;
    gen += BigInt(this.nrAddressSpaces);
    this.onGen?.(asId, gen);
    sp.generation = gen;
  }

  /** kvm_replace_memslot on the (single) set: old -> new, either may be null. */
  private replaceMemslot(sp: AddressSpace, old: KvmMemorySlot | null, neu: KvmMemorySlot | null): void {
    if (old !== null) {
      invariant(sp.byId.get(old.id) === old, `slot ${old.id} not in its address space`);
      sp.byId.delete(old.id);
      const removed = sp.hvaTree.remove([old.userspace_addr, slotHvaEnd(old) - 1], old);
      invariant(removed !== undefined, `slot ${old.id} missing from the hva tree`);
      const i = sp.byGfn.indexOf(old);
      invariant(i >= 0, `slot ${old.id} missing from the gfn tree`);
      sp.byGfn.splice(i, 1);
      if (sp.lastUsed === old) sp.lastUsed = neu;
    }
    if (neu === null) return;
    sp.byId.set(neu.id, neu);
    sp.hvaTree.insert([neu.userspace_addr, slotHvaEnd(neu) - 1], neu);
    let i = 0;
    while (i < sp.byGfn.length && sp.byGfn[i]!.base_gfn < neu.base_gfn) i++;
    invariant(i === sp.byGfn.length || sp.byGfn[i]!.base_gfn !== neu.base_gfn, `two slots at base gfn ${fmt(neu.base_gfn)}`);
    sp.byGfn.splice(i, 0, neu);
  }

  /** kvm_check_memslot_overlap: any other slot meeting [start, end)? */
  private overlaps(sp: AddressSpace, id: number, start: number, end: number): KvmMemorySlot | null {
    for (const s of sp.byGfn) {
      if (s.id !== id && s.base_gfn < end && start < s.base_gfn + s.npages) return s;
    }
    return null;
  }

  /**
   * kvm_set_memory_region (reached through kvm_vm_ioctl_set_memory_region):
   * validate the request, classify it as create / delete / move /
   * flags-only, and apply it through kvm_set_memslot. Returns the change
   * made, or null when nothing changed. Throws {@link KvmError} with the
   * kernel's error code otherwise.
   */
  setMemoryRegion(mem: KvmUserspaceMemoryRegion): KvmMrChange | null {
    for (const k of ['slot', 'flags', 'guest_phys_addr', 'memory_size', 'userspace_addr'] as const) {
      const v = mem[k];
      if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`memory region ${k} must be a non-negative safe integer, got ${v}`);
    }
    if (mem.slot > 0xffffffff) throw new RangeError(`memory region slot ${mem.slot} does not fit in u32`);
    if (mem.flags > 0xffffffff) throw new RangeError(`memory region flags ${mem.flags} do not fit in u32`);
    const id = mem.slot & 0xffff;
    const asId = mem.slot >>> 16;

    // kvm_vm_ioctl_set_memory_region: userspace cannot touch internal slots.
    if (id >= KVM_USER_MEM_SLOTS) throw new KvmError(-EINVAL, `slot id ${id} is >= KVM_USER_MEM_SLOTS (${KVM_USER_MEM_SLOTS})`);

    // check_memory_region_flags: LOG_DIRTY_PAGES and READONLY only (no guest_memfd here).
    const validFlags = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY;
    if ((mem.flags & ~validFlags) !== 0) throw new KvmError(-EINVAL, `flags 0x${mem.flags.toString(16)} include unsupported bits`);

    // General sanity checks.
    if (mem.memory_size % PAGE_SIZE !== 0) throw new KvmError(-EINVAL, `memory_size ${fmt(mem.memory_size)} is not a multiple of 4 KiB`);
    if (mem.guest_phys_addr % PAGE_SIZE !== 0) throw new KvmError(-EINVAL, `guest_phys_addr ${fmt(mem.guest_phys_addr)} is not 4 KiB aligned`);
    if (mem.userspace_addr % PAGE_SIZE !== 0) throw new KvmError(-EINVAL, `userspace_addr ${fmt(mem.userspace_addr)} is not 4 KiB aligned`);
    if (mem.userspace_addr + mem.memory_size > this.taskSizeMax) {
      throw new KvmError(-EINVAL, `hva range [${fmt(mem.userspace_addr)}, +${fmt(mem.memory_size)}) fails access_ok (user space ends at ${fmt(this.taskSizeMax)})`);
    }
    if (asId >= this.nrAddressSpaces || id >= KVM_MEM_SLOTS_NUM) {
      throw new KvmError(-EINVAL, `address space ${asId} is >= ${this.nrAddressSpaces}`);
    }
    // The kernel's u64 wrap check of guest_phys_addr + memory_size cannot fire:
    // both are below 2^53 here. Gfns past the guest's MAXPHYADDR are rejected
    // later, in prepareMemoryRegion, as x86 does.
    if (mem.memory_size / PAGE_SIZE > KVM_MEM_MAX_NR_PAGES) {
      throw new KvmError(-EINVAL, `${mem.memory_size / PAGE_SIZE} pages exceed KVM_MEM_MAX_NR_PAGES`);
    }

    const sp = this.space(asId);
    const old = sp.byId.get(id) ?? null;

    if (mem.memory_size === 0) {
      if (old === null || old.npages === 0) throw new KvmError(-EINVAL, `cannot delete slot ${id} of address space ${asId}: it does not exist`);
      if (this.nrMemslotPages < old.npages) throw new KvmError(-EIO, `nr_memslot_pages ${this.nrMemslotPages} < ${old.npages}`);
      this.setMemslot(asId, old, null, 'delete');
      return 'delete';
    }

    const baseGfn = mem.guest_phys_addr / PAGE_SIZE;
    const npages = mem.memory_size / PAGE_SIZE;
    let change: KvmMrChange;
    if (old === null || old.npages === 0) {
      change = 'create';
    } else {
      if (mem.userspace_addr !== old.userspace_addr) {
        throw new KvmError(-EINVAL, `slot ${id}: userspace_addr cannot change (${fmt(old.userspace_addr)} -> ${fmt(mem.userspace_addr)})`);
      }
      if (npages !== old.npages) throw new KvmError(-EINVAL, `slot ${id}: size cannot change (${old.npages} -> ${npages} pages)`);
      if (((mem.flags ^ old.flags) & KVM_MEM_READONLY) !== 0) throw new KvmError(-EINVAL, `slot ${id}: KVM_MEM_READONLY cannot change`);
      if (baseGfn !== old.base_gfn) change = 'move';
      else if (mem.flags !== old.flags) change = 'flags_only';
      else return null;
    }

    if (change === 'create' || change === 'move') {
      const other = this.overlaps(sp, id, baseGfn, baseGfn + npages);
      if (other !== null) {
        throw new KvmError(-EEXIST, `gfns [${fmt(baseGfn)}, ${fmt(baseGfn + npages)}) overlap slot ${other.id} [${fmt(other.base_gfn)}, ${fmt(other.base_gfn + other.npages)}) in address space ${asId}`);
      }
    }

    const neu: KvmMemorySlot = { id, as_id: asId, base_gfn: baseGfn, npages, userspace_addr: mem.userspace_addr, flags: mem.flags, dirty_bitmap: null };
    this.setMemslot(asId, old, neu, change);
    return change;
  }

  /** Convenience: delete slot `id` of `asId` (memory_size 0). */
  deleteMemoryRegion(asId: number, id: number): void {
    this.setMemoryRegion({ slot: (asId << 16) | id, flags: 0, guest_phys_addr: 0, memory_size: 0, userspace_addr: 0 });
  }

  /**
   * kvm_prepare_memory_region + the x86 kvm_arch_prepare_memory_region
   * checks: choose the dirty bitmap, reject gfns beyond kvm_mmu_max_gfn.
   * Returns the slot to install, or throws.
   */
  private prepareMemoryRegion(old: KvmMemorySlot | null, neu: KvmMemorySlot | null, change: KvmMrChange): KvmMemorySlot | null {
    if (change === 'delete' || neu === null) return null;
    if (change === 'create' || change === 'move') {
      const last = neu.base_gfn + neu.npages - 1;
      if (last > this.maxGfn) throw new KvmError(-EINVAL, `last gfn ${fmt(last)} is beyond the maximum guest gfn ${fmt(this.maxGfn)}`);
    }
    let bitmap: Uint32Array | null;
    if ((neu.flags & KVM_MEM_LOG_DIRTY_PAGES) === 0) bitmap = null;
    else if (old !== null && old.dirty_bitmap !== null) bitmap = old.dirty_bitmap;
    else bitmap = newDirtyBitmap(neu.npages);
    return { ...neu, dirty_bitmap: bitmap };
  }

  /**
   * kvm_set_memslot: for delete and move, first publish an INVALID copy of
   * the old slot (kvm_invalidate_memslot, one swap); prepare (on failure,
   * put the old slot back with another swap); then install the result
   * (kvm_{create,delete,move,update_flags}_memslot, one swap) and commit.
   */
  private setMemslot(asId: number, old: KvmMemorySlot | null, neu: KvmMemorySlot | null, change: KvmMrChange): void {
    let invalid: KvmMemorySlot | null = null;
    if (change === 'delete' || change === 'move') {
      invariant(old !== null, `${change} without an old slot`);
      const inv: KvmMemorySlot = { ...old, flags: old.flags | KVM_MEMSLOT_INVALID };
      invalid = inv;
      this.swapActiveMemslots(asId, (sp) => this.replaceMemslot(sp, old, inv));
      // kvm_arch_flush_shadow_memslot(old) would zap its SPTEs here.
    }

    let installed: KvmMemorySlot | null;
    try {
      installed = this.prepareMemoryRegion(old, neu, change);
    } catch (e) {
      if (invalid !== null) {
        const inv = invalid;
        this.swapActiveMemslots(asId, (sp) => this.replaceMemslot(sp, inv, old));
      }
      throw e;
    }

    const from = invalid ?? (change === 'flags_only' ? old : null);
    this.swapActiveMemslots(asId, (sp) => this.replaceMemslot(sp, from, installed));

    // kvm_commit_memory_region: page and dirty-logging counters.
    if (change === 'delete') this.nrMemslotPages -= old!.npages;
    else if (change === 'create') this.nrMemslotPages += installed!.npages;
    const oldLog = old !== null ? old.flags & KVM_MEM_LOG_DIRTY_PAGES : 0;
    const newLog = installed !== null ? installed.flags & KVM_MEM_LOG_DIRTY_PAGES : 0;
    if (oldLog !== newLog) this.nrMemslotsDirtyLogging += newLog !== 0 ? 1 : -1;
    invariant(this.nrMemslotPages >= 0 && this.nrMemslotsDirtyLogging >= 0, 'memslot counters went negative');
  }

  /**
   * kvm_get_dirty_log + reset: snapshot the slot's bitmap and clear it
   * (what KVM_GET_DIRTY_LOG does without manual protect, minus the
   * write-protection of the pages, which belongs to the MMU).
   */
  getDirtyLog(asId: number, id: number): Uint32Array {
    const slot = this.idToMemslot(asId, id);
    if (slot === null || slot.dirty_bitmap === null) {
      throw new KvmError(-ENOENT, `slot ${id} of address space ${asId} ${slot === null ? 'does not exist' : 'does not log dirty pages'}`);
    }
    const snap = slot.dirty_bitmap.slice();
    slot.dirty_bitmap.fill(0);
    return snap;
  }
}
