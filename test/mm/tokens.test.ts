/**
 * Data tokens (issue 4 item 7): every write stores a fresh token in the
 * frame and records it as the page's expected content; the integrity check
 * compares every page with what a read would return now.
 */
import { describe, expect, it } from 'vitest';
import { PhysMem } from '../../src/hw/phys_mem.js';
import { runProgram } from '../../src/hw/sched.js';
import { MmStruct, type SwapHooks } from '../../src/mm/mm.js';
import { PageAllocator } from '../../src/mm/page_alloc.js';
import { isSwapPte, swpEntryHi, swpEntryLo, swpOffset, swpType, _PAGE_SWP_EXCLUSIVE } from '../../src/mm/pgtable.js';
import { guestAccess, hvaOf, makeVm } from '../support/kvm_setup.js';

const K4 = 4096;

function mmOnly(): MmStruct {
  const mem = new PhysMem(40);
  return new MmStruct(mem, new PageAllocator(mem, 0x100_0000, 0x1000_0000));
}

describe('data tokens', () => {
  it('VMM writes store counters in the frames; reads return the last one; the check passes', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 4 * K4);
    expect(mm.writeToken(0x40_0010)).toBe(1);
    expect(mm.writeToken(0x40_1000)).toBe(2);
    expect(mm.writeToken(0x40_0ff8)).toBe(3);
    expect([mm.readToken(0x40_0000), mm.readToken(0x40_1000), mm.readToken(0x40_2000)]).toEqual([3, 2, 0]);
    expect(mm.folios.token[mm.folios.idx(0x1000)]).toBe(3);
    expect(mm.checkIntegrity()).toEqual({ pages: 4, mismatches: [] });
  });

  it('a lost write is reported with what was expected and what a read returns', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 2 * K4);
    mm.writeToken(0x40_0000);
    mm.writeToken(0x40_1000);
    mm.folios.token[mm.folios.idx(0x1001)] = 1; // as if a stale copy had come back
    expect(mm.checkIntegrity()).toEqual({ pages: 2, mismatches: [{ hva: 0x40_1000, expected: 2, found: 1 }] });
  });

  it('discarding data (madvise DONTNEED) resets the expectation: the page reads back zero-filled', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 2 * K4);
    mm.writeToken(0x40_0000);
    mm.writeToken(0x40_1000);
    runProgram(mm.madviseDontneed(0x40_1000, K4));
    expect(mm.tokenAt(0x40_1000)).toBe(0);
    expect(mm.readToken(0x40_1000)).toBe(0); // a fresh zeroed folio, faulted in
    expect(mm.checkIntegrity()).toEqual({ pages: 2, mismatches: [] });
  });

  it('huge pages keep a token per 4K frame', () => {
    const mm = mmOnly();
    mm.mmap(0x4000_0000, 2 << 20, { level: 2 });
    mm.writeToken(0x4000_0000);
    mm.writeToken(0x4001_2000);
    expect([mm.readToken(0x4000_0000), mm.readToken(0x4001_2000), mm.readToken(0x4001_3000)]).toEqual([1, 2, 0]);
    expect(mm.checkIntegrity().mismatches).toEqual([]);
  });

  it('guest writes: recordWrite(hpa) finds the page through the folio rmap', () => {
    const kvm = makeVm();
    const a = guestAccess(kvm, 0x5123, 'write');
    const t = kvm.mm.recordWrite(a.hpa);
    expect(kvm.mm.tokenAt(hvaOf(0x5000))).toBe(t);
    expect(kvm.mm.readToken(hvaOf(0x5000))).toBe(t); // the VMM reads what the guest wrote
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
    expect(() => kvm.mm.recordWrite(kvm.pages.allocPage())).toThrow(/not mapped by this mm/);
  });

  it('a swap entry in a PTE: the swap layer is asked for its token and told when a zap drops it', () => {
    const mm = mmOnly();
    mm.mmap(0x40_0000, 2 * K4);
    mm.writeToken(0x40_0000);
    const freed: number[] = [];
    const swap: SwapHooks = {
      swapIn: () => false,
      free: (lo, hi) => freed.push(swpOffset(lo, hi)),
      token: (lo, hi) => (swpOffset(lo, hi) === 7 ? 1 : 0),
    };
    mm.swap = swap;
    // What try_to_unmap would leave (the folio itself is the reclaim work's to free).
    mm.pt.walk(0x40_0000);
    mm.mem.store64(mm.pt.entry, swpEntryLo(0, 7, _PAGE_SWP_EXCLUSIVE), swpEntryHi(0, 7));
    expect(mm.lookup(0x40_0000)).toBe(null);
    expect(mm.checkIntegrity().mismatches).toEqual([]);
    runProgram(mm.madviseDontneed(0x40_0000, K4));
    expect(freed).toEqual([7]);
    expect(mm.pte(0x40_0000)).toBe(0n);
  });
});

describe('swap entry encoding (x86-64 __swp_entry)', () => {
  it('type in 63:59, the inverted offset in 58:9, flags below; P clear', () => {
    const lo = swpEntryLo(3, 0x12345, _PAGE_SWP_EXCLUSIVE);
    const hi = swpEntryHi(3, 0x12345);
    const v = (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
    expect(v).toBe((3n << 59n) | (((1n << 50n) - 1n - 0x12345n) << 9n) | 0x8n);
    expect([isSwapPte(lo, hi), swpType(hi), swpOffset(lo, hi)]).toEqual([true, 3, 0x12345]);
    expect(isSwapPte(0, 0)).toBe(false);
    const big = 2 ** 40 + 5;
    expect([swpType(swpEntryHi(31, big)), swpOffset(swpEntryLo(31, big), swpEntryHi(31, big))]).toEqual([31, big]);
  });
});
