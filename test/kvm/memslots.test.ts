/**
 * Memslots (kvm_host.h struct kvm_memory_slot / kvm_memslots; kvm_main.c
 * kvm_set_memory_region, kvm_swap_active_memslots, __gfn_to_memslot,
 * kvm_handle_hva_range's clipping).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_MAX_NR_PAGES,
  KVM_MEM_READONLY,
  KVM_USER_MEM_SLOTS,
  KvmError,
  KvmMemslots,
  type KvmUserspaceMemoryRegion,
  PAGE_SIZE,
  clearPageDirty,
  dirtyGfns,
  hvaToGfnMemslot,
  markPageDirtyInSlot,
  testPageDirty,
} from '../../src/kvm/memslots.js';

const HVA0 = 0x7f0000000000;
const IP = KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS;

function region(slot: number, gpa: number, size: number, hva: number, flags = 0): KvmUserspaceMemoryRegion {
  return { slot, flags, guest_phys_addr: gpa, memory_size: size, userspace_addr: hva };
}

/**
 * AS 0: slot 0 = gfn [0, 0x10) at HVA0; slot 1 = gfn [0x100, 0x108) at
 * HVA0 + 0x10000 (hva-adjacent to slot 0); slot 2 = readonly gfn
 * [0x200, 0x204) at HVA0 + 0x100000.
 */
function threeSlots(opts = {}): KvmMemslots {
  const m = new KvmMemslots(opts);
  expect(m.setMemoryRegion(region(0, 0, 0x10000, HVA0))).toBe('create');
  expect(m.setMemoryRegion(region(1, 0x100000, 0x8000, HVA0 + 0x10000))).toBe('create');
  expect(m.setMemoryRegion(region(2, 0x200000, 0x4000, HVA0 + 0x100000, KVM_MEM_READONLY))).toBe('create');
  return m;
}

function expectKvmError(f: () => unknown, code: string, errno: number, msg: RegExp): void {
  let caught: unknown;
  try {
    f();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(KvmError);
  const err = caught as KvmError;
  expect(err.code).toBe(code);
  expect(err.errno).toBe(errno);
  expect(err.message).toMatch(msg);
}

describe('gfn lookups (__gfn_to_memslot)', () => {
  it('finds slots exactly at their first and last gfn and nothing just outside', () => {
    const m = threeSlots();
    const id = (gfn: number) => m.gfnToMemslot(gfn)?.id ?? null;
    expect(id(0)).toBe(0);
    expect(id(0xf)).toBe(0);
    expect(id(0x10)).toBe(null);
    expect(id(0xff)).toBe(null);
    expect(id(0x100)).toBe(1);
    expect(id(0x107)).toBe(1);
    expect(id(0x108)).toBe(null);
    expect(id(0x1ff)).toBe(null);
    expect(id(0x200)).toBe(2);
    expect(id(0x203)).toBe(2);
    expect(id(0x204)).toBe(null);
    expect(m.gfnToMemslot(0, 1)).toBe(null);
  });

  it('caches the last slot found (last_used_slot) and keeps it on a miss', () => {
    const m = threeSlots();
    m.gfnToMemslot(0x105);
    expect(m.lastUsedSlot()?.id).toBe(1);
    m.gfnToMemslot(0x50);
    expect(m.lastUsedSlot()?.id).toBe(1);
    m.gfnToMemslot(3);
    expect(m.lastUsedSlot()?.id).toBe(0);
  });

  it('rejects bad gfns and address spaces with clear errors', () => {
    const m = threeSlots();
    expect(() => m.gfnToMemslot(-1)).toThrow(/non-negative safe integer/);
    expect(() => m.gfnToMemslot(1.5)).toThrow(/non-negative safe integer/);
    expect(() => m.gfnToMemslot(0, 2)).toThrow(/address space 2 does not exist/);
  });
});

describe('gfn -> hva (__gfn_to_hva_many, gfn_to_hva_memslot_prot)', () => {
  it('translates at slot boundaries', () => {
    const m = threeSlots();
    expect(m.gfnToHva(0, true)).toEqual({ ok: true, hva: HVA0, writable: true });
    expect(m.gfnToHva(0xf, true)).toEqual({ ok: true, hva: HVA0 + 0xf000, writable: true });
    expect(m.gfnToHva(0x100, false)).toEqual({ ok: true, hva: HVA0 + 0x10000, writable: true });
    expect(m.gfnToHva(0x107, false)).toEqual({ ok: true, hva: HVA0 + 0x17000, writable: true });
    expect(m.gfnToHva(0x10, false)).toEqual({ ok: false, error: 'KVM_HVA_ERR_BAD' });
  });

  it('readonly slot: read lookups succeed with writable=false, write lookups give KVM_HVA_ERR_RO_BAD', () => {
    const m = threeSlots();
    expect(m.gfnToHvaProt(0x203)).toEqual({ ok: true, hva: HVA0 + 0x103000, writable: false });
    expect(m.gfnToHva(0x200, true)).toEqual({ ok: false, error: 'KVM_HVA_ERR_RO_BAD' });
    expect(m.gfnToHvaProt(0x204)).toEqual({ ok: false, error: 'KVM_HVA_ERR_BAD' });
  });

  it('hva_to_gfn_memslot truncates within a page', () => {
    const m = threeSlots();
    const s1 = m.idToMemslot(0, 1)!;
    expect(hvaToGfnMemslot(HVA0 + 0x10000, s1)).toBe(0x100);
    expect(hvaToGfnMemslot(HVA0 + 0x12fff, s1)).toBe(0x102);
    expect(hvaToGfnMemslot(HVA0 + 0x13000, s1)).toBe(0x103);
    expect(() => hvaToGfnMemslot(HVA0 + 0xfff0, s1)).toThrow(/below slot 1 start/);
  });

  it('a slot being deleted is INVALID while published, so lookups fail with KVM_HVA_ERR_BAD', () => {
    const seen: unknown[] = [];
    let probe: KvmMemslots | null = null;
    const m = threeSlots({
      onSwap: (_as: number, gen: bigint) => {
        if (probe !== null) seen.push([gen, probe.gfnToHva(0x101, false)]);
      },
    });
    probe = m;
    m.deleteMemoryRegion(0, 1);
    expect(seen).toEqual([
      [IP | 6n, { ok: false, error: 'KVM_HVA_ERR_BAD' }],
      [IP | 8n, { ok: false, error: 'KVM_HVA_ERR_BAD' }],
    ]);
    expect(m.gfnToMemslot(0x101)).toBe(null);
  });
});

describe('hva range walk (kvm_handle_hva_range clipping)', () => {
  const ranges = (m: KvmMemslots, s: number, e: number) =>
    m.hvaRangeGfnRanges(s, e).map((r) => ({ as: r.slot.as_id, id: r.slot.id, start: r.start, end: r.end }));

  it('a range straddling two slots and ending mid-page is clipped per slot and rounded up', () => {
    const m = threeSlots();
    expect(ranges(m, HVA0 + 0xf000, HVA0 + 0x12800)).toEqual([
      { as: 0, id: 0, start: 0xf, end: 0x10 },
      { as: 0, id: 1, start: 0x100, end: 0x103 },
    ]);
  });

  it('covers whole slots, partial starts and single bytes', () => {
    const m = threeSlots();
    expect(ranges(m, 0, 2 ** 47)).toEqual([
      { as: 0, id: 0, start: 0, end: 0x10 },
      { as: 0, id: 1, start: 0x100, end: 0x108 },
      { as: 0, id: 2, start: 0x200, end: 0x204 },
    ]);
    // start mid-page: hva_to_gfn truncates, so the partly covered page is included
    expect(ranges(m, HVA0 + 0x100800, HVA0 + 0x100801)).toEqual([{ as: 0, id: 2, start: 0x200, end: 0x201 }]);
    expect(ranges(m, HVA0 + 0x101fff, HVA0 + 0x102001)).toEqual([{ as: 0, id: 2, start: 0x201, end: 0x203 }]);
    // last byte of slot 0 only; first byte of slot 1 excluded (end is exclusive)
    expect(ranges(m, HVA0 + 0xffff, HVA0 + 0x10000)).toEqual([{ as: 0, id: 0, start: 0xf, end: 0x10 }]);
    // hole between slot 1 and slot 2
    expect(ranges(m, HVA0 + 0x18000, HVA0 + 0x100000)).toEqual([]);
    expect(() => m.hvaRangeGfnRanges(HVA0, HVA0)).toThrow(/empty hva range/);
  });

  it('walks every address space: an SMM alias of the same hva is reported too', () => {
    const m = threeSlots();
    expect(m.setMemoryRegion(region(1 << 16, 0x40000, 0x4000, HVA0 + 0x2000))).toBe('create');
    expect(ranges(m, HVA0 + 0x3000, HVA0 + 0x5000)).toEqual([
      { as: 0, id: 0, start: 0x3, end: 0x5 },
      { as: 1, id: 0, start: 0x41, end: 0x43 },
    ]);
  });

  it('two slots of one address space may alias one hva range; deleting one leaves the other in the tree', () => {
    const m = threeSlots();
    expect(m.setMemoryRegion(region(7, 0x800000, 0x10000, HVA0))).toBe('create');
    expect(ranges(m, HVA0 + 0x1000, HVA0 + 0x2000)).toEqual([
      { as: 0, id: 0, start: 0x1, end: 0x2 },
      { as: 0, id: 7, start: 0x801, end: 0x802 },
    ]);
    m.deleteMemoryRegion(0, 0);
    expect(ranges(m, HVA0 + 0x1000, HVA0 + 0x2000)).toEqual([{ as: 0, id: 7, start: 0x801, end: 0x802 }]);
  });

  it('agrees with a brute-force scan of all slots (property)', () => {
    const m = threeSlots();
    const all = m.slots(0);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0x120000 }), fc.integer({ min: 1, max: 0x40000 }), (off, len) => {
        const s = HVA0 - 0x10000 + off;
        const e = s + len;
        const want = all
          .filter((sl) => sl.userspace_addr < e && s < sl.userspace_addr + sl.npages * PAGE_SIZE)
          .map((sl) => {
            const hs = Math.max(s, sl.userspace_addr);
            const he = Math.min(e, sl.userspace_addr + sl.npages * PAGE_SIZE);
            return { as: 0, id: sl.id, start: sl.base_gfn + Math.floor((hs - sl.userspace_addr) / PAGE_SIZE), end: sl.base_gfn + Math.ceil((he - sl.userspace_addr) / PAGE_SIZE) };
          })
          .sort((a, b) => a.id - b.id);
        expect(ranges(m, s, e).sort((a, b) => a.id - b.id)).toEqual(want);
      }),
    );
  });
});

describe('generation (kvm_swap_active_memslots)', () => {
  it('starts at the address-space id and advances by 2 per swap; delete and move swap twice', () => {
    const swaps: Array<[number, bigint]> = [];
    const updated: Array<[number, bigint]> = [];
    const m = new KvmMemslots({ onSwap: (a, g) => swaps.push([a, g]), onGenerationUpdated: (a, g) => updated.push([a, g]) });
    expect([m.generation(0), m.generation(1)]).toEqual([0n, 1n]);

    m.setMemoryRegion(region(0, 0, 0x10000, HVA0)); // create: one swap
    expect(m.generation(0)).toBe(2n);
    expect(swaps).toEqual([[0, IP | 0n]]);
    expect(updated).toEqual([[0, 2n]]);

    m.setMemoryRegion(region(0, 0, 0x10000, HVA0, KVM_MEM_LOG_DIRTY_PAGES)); // flags only: one swap
    expect(m.generation(0)).toBe(4n);

    expect(m.setMemoryRegion(region(0, 0, 0x10000, HVA0, KVM_MEM_LOG_DIRTY_PAGES))).toBe(null); // no change
    expect(m.generation(0)).toBe(4n);

    expect(m.setMemoryRegion(region(0, 0x1000000, 0x10000, HVA0, KVM_MEM_LOG_DIRTY_PAGES))).toBe('move'); // invalidate + move
    expect(m.generation(0)).toBe(8n);

    m.setMemoryRegion(region(1 << 16, 0, 0x1000, HVA0)); // address space 1 uses odd generations
    expect(m.generation(1)).toBe(3n);

    m.deleteMemoryRegion(0, 0); // invalidate + delete
    expect(m.generation(0)).toBe(12n);
    expect(swaps).toEqual([
      [0, IP | 0n],
      [0, IP | 2n],
      [0, IP | 4n],
      [0, IP | 6n],
      [1, IP | 1n],
      [0, IP | 8n],
      [0, IP | 10n],
    ]);
    expect(updated.map(([, g]) => g)).toEqual([2n, 4n, 6n, 8n, 3n, 10n, 12n]);
  });

  it('with one address space the step is 1', () => {
    const m = new KvmMemslots({ nrAddressSpaces: 1 });
    m.setMemoryRegion(region(0, 0, 0x1000, HVA0));
    expect(m.generation(0)).toBe(1n);
    m.deleteMemoryRegion(0, 0);
    expect(m.generation(0)).toBe(3n);
  });

  it('a move rejected by the arch prepare step (gfn beyond MAXPHYADDR) still costs two swaps and restores the slot', () => {
    const m = new KvmMemslots({ maxGpaBits: 36 });
    m.setMemoryRegion(region(0, 0, 0x2000, HVA0));
    expect(m.generation(0)).toBe(2n);
    expectKvmError(() => m.setMemoryRegion(region(0, 2 ** 36 - 0x1000, 0x2000, HVA0)), 'EINVAL', -22, /last gfn 0x1000000 is beyond the maximum guest gfn 0xffffff/);
    expect(m.generation(0)).toBe(6n);
    const s = m.idToMemslot(0, 0)!;
    expect([s.base_gfn, s.flags]).toEqual([0, 0]);
    expect(m.gfnToHva(1, true)).toEqual({ ok: true, hva: HVA0 + 0x1000, writable: true });
    // the same failure on create costs nothing
    expectKvmError(() => m.setMemoryRegion(region(1, 2 ** 36, 0x1000, HVA0 + 0x10000)), 'EINVAL', -22, /beyond the maximum guest gfn/);
    expect(m.generation(0)).toBe(6n);
  });

  it('validation errors leave the generation untouched', () => {
    const m = threeSlots();
    expect(m.generation(0)).toBe(6n);
    expect(() => m.setMemoryRegion(region(3, 0xf000, 0x1000, HVA0 + 0x200000))).toThrow(KvmError);
    expect(m.generation(0)).toBe(6n);
  });
});

describe('dirty logging bitmap', () => {
  it('is allocated on enabling, set and cleared per page, reused across a move, dropped on disabling', () => {
    const m = threeSlots();
    expect(m.idToMemslot(0, 1)!.dirty_bitmap).toBe(null);
    markPageDirtyInSlot(m.idToMemslot(0, 1)!, 0x101); // not logging: no-op
    expect(m.setMemoryRegion(region(1, 0x100000, 0x8000, HVA0 + 0x10000, KVM_MEM_LOG_DIRTY_PAGES))).toBe('flags_only');
    expect(m.nrMemslotsDirtyLogging).toBe(1);
    const s = m.idToMemslot(0, 1)!;
    expect(s.dirty_bitmap).toEqual(new Uint32Array(2)); // 8 pages round up to one 64-bit long
    markPageDirtyInSlot(s, 0x100);
    markPageDirtyInSlot(s, 0x107);
    expect(Array.from(s.dirty_bitmap!)).toEqual([0x81, 0]);
    expect([testPageDirty(s, 0x100), testPageDirty(s, 0x101), testPageDirty(s, 0x107)]).toEqual([true, false, true]);
    clearPageDirty(s, 0x100);
    expect(dirtyGfns(s)).toEqual([0x107]);
    expect(() => markPageDirtyInSlot(s, 0x108)).toThrow(/gfn 0x108 outside slot 1/);

    // move keeps the bitmap (kvm_prepare_memory_region reuses old->dirty_bitmap)
    const bm = s.dirty_bitmap;
    expect(m.setMemoryRegion(region(1, 0x300000, 0x8000, HVA0 + 0x10000, KVM_MEM_LOG_DIRTY_PAGES))).toBe('move');
    const moved = m.idToMemslot(0, 1)!;
    expect(moved.dirty_bitmap).toBe(bm);
    expect(dirtyGfns(moved)).toEqual([0x307]);

    expect(Array.from(m.getDirtyLog(0, 1))).toEqual([0x80, 0]);
    expect(dirtyGfns(moved)).toEqual([]);

    expect(m.setMemoryRegion(region(1, 0x300000, 0x8000, HVA0 + 0x10000))).toBe('flags_only');
    expect(m.idToMemslot(0, 1)!.dirty_bitmap).toBe(null);
    expect(m.nrMemslotsDirtyLogging).toBe(0);
    expectKvmError(() => m.getDirtyLog(0, 1), 'ENOENT', -2, /does not log dirty pages/);
    expectKvmError(() => m.getDirtyLog(0, 9), 'ENOENT', -2, /does not exist/);
  });

  it('bits past 32 pages land in the next word', () => {
    const m = new KvmMemslots();
    m.setMemoryRegion(region(0, 0x10000, 100 * PAGE_SIZE, HVA0, KVM_MEM_LOG_DIRTY_PAGES));
    const s = m.idToMemslot(0, 0)!;
    expect(s.dirty_bitmap!.length).toBe(4); // 100 pages -> two longs
    markPageDirtyInSlot(s, 0x10 + 33);
    markPageDirtyInSlot(s, 0x10 + 99);
    expect(Array.from(s.dirty_bitmap!)).toEqual([0, 2, 0, 8]);
  });
});

describe('kvm_set_memory_region errors', () => {
  it('rejects misaligned, oversized, out-of-range and badly flagged regions with -EINVAL', () => {
    const m = threeSlots();
    const bad: Array<[KvmUserspaceMemoryRegion, RegExp]> = [
      [region(5, 0x400000, 0x1800, HVA0 + 0x400000), /memory_size 0x1800 is not a multiple of 4 KiB/],
      [region(5, 0x400800, 0x1000, HVA0 + 0x400000), /guest_phys_addr 0x400800 is not 4 KiB aligned/],
      [region(5, 0x400000, 0x1000, HVA0 + 0x400010), /userspace_addr 0x7f0000400010 is not 4 KiB aligned/],
      [region(5, 0x400000, 0x2000, 2 ** 47 - 0x2000), /fails access_ok/],
      [region(5, 0x400000, 0x1000, HVA0 + 0x400000, 4), /flags 0x4 include unsupported bits/],
      [region((2 << 16) | 5, 0x400000, 0x1000, HVA0 + 0x400000), /address space 2 is >= 2/],
      [region(KVM_USER_MEM_SLOTS, 0x400000, 0x1000, HVA0 + 0x400000), /slot id 32764 is >= KVM_USER_MEM_SLOTS/],
      [region(5, 0, (KVM_MEM_MAX_NR_PAGES + 1) * PAGE_SIZE, 0x1000), /2147483648 pages exceed KVM_MEM_MAX_NR_PAGES/],
      [region(5, 0, 0, HVA0), /cannot delete slot 5 of address space 0: it does not exist/],
      [region(1, 0x100000, 0x9000, HVA0 + 0x10000), /slot 1: size cannot change \(8 -> 9 pages\)/],
      [region(1, 0x100000, 0x8000, HVA0 + 0x20000), /slot 1: userspace_addr cannot change/],
      [region(2, 0x200000, 0x4000, HVA0 + 0x100000), /slot 2: KVM_MEM_READONLY cannot change/],
    ];
    for (const [r, msg] of bad) expectKvmError(() => m.setMemoryRegion(r), 'EINVAL', -22, msg);
    expect(m.generation(0)).toBe(6n);
    expect(m.nrMemslotPages).toBe(28);
  });

  it('rejects gfn overlap in the same address space with -EEXIST, on create and on move', () => {
    const m = threeSlots();
    expectKvmError(() => m.setMemoryRegion(region(5, 0xf000, 0x1000, HVA0 + 0x400000)), 'EEXIST', -17, /gfns \[0xf, 0x10\) overlap slot 0 \[0x0, 0x10\) in address space 0/);
    expectKvmError(() => m.setMemoryRegion(region(5, 0xff000, 0x2000, HVA0 + 0x400000)), 'EEXIST', -17, /overlap slot 1/);
    expectKvmError(() => m.setMemoryRegion(region(2, 0x104000, 0x4000, HVA0 + 0x100000, KVM_MEM_READONLY)), 'EEXIST', -17, /overlap slot 1/);
    // adjacent ranges do not overlap; a move may overlap its own old range; other address spaces are separate
    expect(m.setMemoryRegion(region(5, 0x10000, 0x1000, HVA0 + 0x400000))).toBe('create');
    expect(m.setMemoryRegion(region(1, 0x102000, 0x8000, HVA0 + 0x10000))).toBe('move');
    expect(m.setMemoryRegion(region(1 << 16, 0, 0x10000, HVA0))).toBe('create');
    expect(m.gfnToMemslot(0x101)).toBe(null);
    expect(m.gfnToMemslot(0x109)?.id).toBe(1);
  });

  it('rejects non-integer input as a caller error, not a kernel error', () => {
    const m = new KvmMemslots();
    expect(() => m.setMemoryRegion(region(0, 0.5, 0x1000, HVA0))).toThrow(RangeError);
    expect(() => m.setMemoryRegion(region(0, 0, -0x1000, HVA0))).toThrow(/memory_size must be a non-negative safe integer/);
  });

  it('keeps nr_memslot_pages across create and delete', () => {
    const m = threeSlots();
    expect(m.nrMemslotPages).toBe(16 + 8 + 4);
    m.deleteMemoryRegion(0, 0);
    expect(m.nrMemslotPages).toBe(12);
    expect(m.slots(0).map((s) => s.id)).toEqual([1, 2]);
    expect(m.hvaRangeGfnRanges(HVA0, HVA0 + 0x10000)).toEqual([]);
  });
});
