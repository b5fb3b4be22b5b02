/**
 * Swap and workingset (src/mm/swap.ts, src/mm/workingset.ts): do_swap_page
 * from the slot or the swap cache, shadow entries and refault distance
 * (the classic-LRU half of mm.md 7 scenario 23), no data lost (issue 4
 * item 7), and a guest over-committed 2x against a reclaim budget.
 */
import { describe, expect, it } from 'vitest';
import { runProgram } from '../../src/hw/sched.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { LruList, PG_active, PG_dirty, PG_swapcache, PG_workingset } from '../../src/mm/folio.js';
import { folioVma } from '../../src/mm/mm.js';
import { mremap } from '../../src/mm/mremap.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_RW } from '../../src/mm/pgtable.js';
import { setUpReclaim } from '../../src/mm/vmscan.js';
import { unpackShadow } from '../../src/mm/workingset.js';
import { guestAccess, hvaOf, makeVm } from '../support/kvm_setup.js';

const PAGE = 4096;

function setUp(pages = 64, swapSlots = 64) {
  const kvm = makeVm({ memory: pages * PAGE, tlb: false });
  return { kvm, ...setUpReclaim(kvm.mm, { swapSlots }) };
}

function guestWrite(kvm: Kvm, gfn: number): number {
  return kvm.mm.recordWrite(guestAccess(kvm, gfn * PAGE, 'write').hpa);
}

/** Makes gfn's page old everywhere (host A bit and SPTE A bit). */
function makeOld(kvm: Kvm, gfn: number): void {
  kvm.mm.pt.walk(hvaOf(gfn * PAGE));
  kvm.mem.and64(kvm.mm.pt.entry, ~_PAGE_ACCESSED, -1);
  runProgram(kvm.notifier.clearYoung(hvaOf(gfn * PAGE), hvaOf((gfn + 1) * PAGE)));
}

/** Evicts exactly the given pages (oldest first) from the inactive list. */
function evict(s: ReturnType<typeof setUp>, gfns: number[]): void {
  for (const g of gfns) makeOld(s.kvm, g);
  const before = s.reclaim.stats.evicted;
  runProgram(s.reclaim.shrinkInactiveList(gfns.length));
  expect(s.reclaim.stats.evicted - before).toBe(gfns.length);
}

describe('do_swap_page', () => {
  it('a guest read swaps in: new folio, token restored, in the swap cache, mapped writable and clean (exclusive)', () => {
    const s = setUp();
    const { kvm, swap } = s;
    const f = kvm.mm.folios;
    const token = guestWrite(kvm, 3);
    evict(s, [3]);
    const a = guestAccess(kvm, 3 * PAGE, 'read');
    const head = kvm.mm.lookup(hvaOf(3 * PAGE))!;
    expect(Math.floor(a.hpa / PAGE)).toBe(head);
    expect(f.token[f.idx(head)]).toBe(token);
    expect(swap.stats).toMatchObject({ pswpin: 1, swapins: 1, cacheHits: 0 });
    expect([f.test(head, PG_swapcache), f.test(head, PG_dirty), swap.count[0], swap.hasCache[0]]).toEqual([true, false, 0, 1]);
    expect(f.refcount[f.idx(head)]).toBe(2); // mapping + swap cache
    const pte = Number(kvm.mm.pte(hvaOf(3 * PAGE)) & 0xfffn);
    expect([pte & _PAGE_RW, pte & _PAGE_DIRTY]).toEqual([_PAGE_RW, 0]);
    expect(f.lruListOf(head)).toBe(LruList.ActiveAnon); // refault distance 0: activated
    // Clean and still backed by its slot: evicting it again writes nothing.
    runProgram(s.reclaim.shrinkActiveList(1));
    evict(s, [3]);
    expect(swap.stats.pswpout).toBe(1);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
    // New guest data after a read swap-in dirties the folio, so the slot is written again.
    guestAccess(kvm, 3 * PAGE, 'read');
    const t2 = guestWrite(kvm, 3);
    runProgram(s.reclaim.shrinkActiveList(1));
    evict(s, [3]);
    expect([swap.stats.pswpout, swap.tokens[0]]).toEqual([2, t2]);
    expect(kvm.mm.tokenAt(hvaOf(3 * PAGE))).toBe(t2);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });

  it('a write fault frees the slot at once (should_try_to_free_swap): dirty PTE, dirty folio, out of the swap cache', () => {
    const s = setUp();
    const { kvm, swap } = s;
    const f = kvm.mm.folios;
    const token = guestWrite(kvm, 2);
    evict(s, [2]);
    expect(swap.inuse).toBe(1);
    kvm.mm.writeToken(hvaOf(2 * PAGE) + 8); // the VMM writes: host CPU fault -> do_swap_page(write)
    const head = kvm.mm.lookup(hvaOf(2 * PAGE))!;
    expect([f.test(head, PG_swapcache), f.test(head, PG_dirty), swap.inuse, swap.stats.freed]).toEqual([false, true, 0, 1]);
    expect(Number(kvm.mm.pte(hvaOf(2 * PAGE)) & BigInt(_PAGE_DIRTY | _PAGE_RW))).toBe(_PAGE_DIRTY | _PAGE_RW);
    expect(f.refcount[f.idx(head)]).toBe(1);
    expect(token).not.toBe(kvm.mm.readToken(hvaOf(2 * PAGE)));
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });

  it('a zap of swap PTEs (munmap, DONTNEED) frees their slots and shadows', () => {
    const s = setUp();
    const { kvm, swap } = s;
    for (let g = 0; g < 4; g++) guestWrite(kvm, g);
    evict(s, [0, 1, 2, 3]);
    expect([swap.inuse, swap.shadows.size]).toEqual([4, 4]);
    runProgram(kvm.mm.madviseDontneed(hvaOf(0), 2 * PAGE));
    expect([swap.inuse, swap.shadows.size]).toEqual([2, 2]);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });
});

describe('swap entries and partial ranges', () => {
  it('mremap moves swap entries with part of an area; a swap-in at the new address keeps folio->index (vm_pgoff) and the token; munmap of one page frees only its slot', () => {
    const s = setUp();
    const { kvm, swap } = s;
    const tokens = [0, 1, 2, 3].map((g) => guestWrite(kvm, g));
    evict(s, [0, 1, 2, 3]);
    const X = 0x1_0000_0000;
    const r = runProgram(mremap(kvm.mm, hvaOf(2 * PAGE), 2 * PAGE, 2 * PAGE, { fixed: X }));
    expect([r.kind, r.moved, r.flushes]).toEqual(['move', 2, 0]); // swap entries only: no TLB flush
    expect(kvm.mm.findVma(X)!.pgoff).toBe(2);
    expect(swap.inuse).toBe(4);
    expect(kvm.mm.readToken(X + PAGE)).toBe(tokens[3]); // do_swap_page at the new address
    const head = kvm.mm.lookup(X + PAGE)!;
    const f = kvm.mm.folios;
    expect(f.index[f.idx(head)]).toBe(3);
    expect(folioVma(f, head)).toBe(kvm.mm.findVma(X));
    runProgram(kvm.mm.munmap(hvaOf(0), PAGE));
    expect(swap.inuse).toBe(3);
    expect(kvm.mm.areas.map((v) => [v.start, v.end, v.pgoff])).toEqual([[X, X + 2 * PAGE, 2], [hvaOf(PAGE), hvaOf(2 * PAGE), 1], [hvaOf(4 * PAGE), hvaOf(64 * PAGE), 4]]);
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 63, mismatches: [] });
  });
});

describe('workingset (classic LRU)', () => {
  it('Scenario 23 (classic half): shadow holds the eviction age; refault distance within the workingset activates, beyond it does not', () => {
    const s = setUp();
    const { kvm, swap, workingset } = s;
    const f = kvm.mm.folios;
    for (let g = 0; g < 4; g++) guestWrite(kvm, g);
    evict(s, [0, 1, 2, 3]); // slots 0..3 in eviction order; ages 1..4
    expect([0, 1, 2, 3].map((slot) => unpackShadow(swap.shadows.get(slot)!).eviction)).toEqual([1, 2, 3, 4]);
    expect(workingset.nonresidentAge).toBe(4);
    // gfn 0: distance 4 - 1 = 3 > workingset size 0 (no active pages): not activated.
    guestAccess(kvm, 0, 'read');
    const h0 = kvm.mm.lookup(hvaOf(0))!;
    expect([f.test(h0, PG_active), f.lruListOf(h0)]).toEqual([false, LruList.InactiveAnon]);
    expect(workingset.stats).toMatchObject({ refault: 1, activate: 0, restore: 0 });
    // gfn 3: distance 0: activated, onto the active list, and the lruvec ages.
    guestAccess(kvm, 3 * PAGE, 'read');
    const h3 = kvm.mm.lookup(hvaOf(3 * PAGE))!;
    expect([f.test(h3, PG_active), f.lruListOf(h3)]).toEqual([true, LruList.ActiveAnon]);
    expect(workingset.stats).toMatchObject({ refault: 2, activate: 1, restore: 0 });
    expect(workingset.nonresidentAge).toBe(5);
    // gfn 2: distance 5 - 3 = 2 > 1 active page: not recent.
    guestAccess(kvm, 2 * PAGE, 'read');
    expect(workingset.stats).toMatchObject({ refault: 3, activate: 1 });
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });

  it('a folio that was workingset (deactivated from active) is restored with PG_workingset on a recent refault', () => {
    const s = setUp();
    const { kvm, reclaim, workingset, swap } = s;
    const f = kvm.mm.folios;
    guestWrite(kvm, 5);
    runProgram(reclaim.shrinkInactiveList(1)); // keep
    guestAccess(kvm, 5 * PAGE, 'read');
    runProgram(reclaim.shrinkInactiveList(1)); // activate
    runProgram(reclaim.shrinkActiveList(1)); // deactivate: PG_workingset
    evict(s, [5]);
    expect(unpackShadow(swap.shadows.get(0)!).workingset).toBe(true);
    guestAccess(kvm, 5 * PAGE, 'read');
    const h = kvm.mm.lookup(hvaOf(5 * PAGE))!;
    expect([f.test(h, PG_active), f.test(h, PG_workingset)]).toEqual([true, true]);
    expect(workingset.stats).toMatchObject({ refault: 1, activate: 1, restore: 1 });
  });
});

describe('over-commit', () => {
  it('a guest writing 2x its memory budget: kswapd keeps the LRU within budget, every page reads back its last write', () => {
    const PAGES = 512;
    const LIMIT = 256;
    const s = setUp(PAGES, 2 * PAGES);
    const { kvm, reclaim, swap } = s;
    const expected = new Uint32Array(PAGES);
    const budget = () => {
      runProgram(reclaim.balance(LIMIT, 16, 32));
      expect(reclaim.lruPages).toBeLessThanOrEqual(LIMIT);
    };
    for (let round = 0; round < 2; round++) {
      for (let g = 0; g < PAGES; g++) {
        expected[g] = guestWrite(kvm, g);
        budget();
      }
    }
    expect(reclaim.stats.evicted).toBeGreaterThan(PAGES);
    expect(swap.stats.pswpin).toBeGreaterThan(0);
    // Read everything back through the guest (swapping in as needed).
    for (let g = 0; g < PAGES; g++) {
      const a = guestAccess(kvm, g * PAGE, 'read');
      const f = kvm.mm.folios;
      expect(f.token[f.idx(Math.floor(a.hpa / PAGE))]).toBe(expected[g]);
      budget();
    }
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: PAGES, mismatches: [] });
    expect(reclaim.stats.kswapdWakeups).toBeGreaterThan(0);
  });
});
