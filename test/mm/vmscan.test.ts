/**
 * Classic LRU reclaim (src/mm/vmscan.ts, src/mm/rmap.ts): reference
 * collection through the host PTE and KVM's SPTE, the look-twice rule
 * (mm.md 7, scenario 11), eviction to swap with the CLEAR invalidation
 * (mm.md 6), active-list deactivation.
 */
import { describe, expect, it } from 'vitest';
import { runProgram } from '../../src/hw/sched.js';
import { isShadowPresentPte } from '../../src/kvm/spte.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { LruList, PG_active, PG_dirty, PG_referenced, PG_swapcache, PG_workingset } from '../../src/mm/folio.js';
import { VM_LOCKED } from '../../src/mm/mm.js';
import { _PAGE_ACCESSED, _PAGE_SWP_EXCLUSIVE, _PAGE_SWP_SOFT_DIRTY, swpEntryHi, swpEntryLo } from '../../src/mm/pgtable.js';
import { FolioReferences, setUpReclaim } from '../../src/mm/vmscan.js';
import { guestAccess, hvaOf, makeVm, spteOf } from '../support/kvm_setup.js';

const PAGE = 4096;
const EPT_A = 1n << 8n;

/** A VM with no vCPU TLB (every guest access walks, so it sets A again) and the classic reclaim stack. */
function setUp() {
  const kvm = makeVm({ memory: 64 * PAGE, tlb: false });
  return { kvm, ...setUpReclaim(kvm.mm, { swapSlots: 64 }) };
}

/** A guest write of new data to gfn; returns the folio and the token. */
function guestWrite(kvm: Kvm, gfn: number): { head: number; token: number } {
  const a = guestAccess(kvm, gfn * PAGE, 'write');
  const token = kvm.mm.recordWrite(a.hpa);
  return { head: kvm.mm.lookup(hvaOf(gfn * PAGE))!, token };
}

/** Clears the host PTE's accessed bit (P.young = 0). */
function primaryOld(kvm: Kvm, gfn: number): void {
  kvm.mm.pt.walk(hvaOf(gfn * PAGE));
  kvm.mem.and64(kvm.mm.pt.entry, ~_PAGE_ACCESSED, -1);
}

const cfy = (kvm: Kvm) => kvm.mm.notifiers.calls.get('clear_flush_young') ?? 0;

describe('folio_check_references (classic LRU)', () => {
  it('Scenario 11: look twice', () => {
    const { kvm, reclaim } = setUp();
    const f = kvm.mm.folios;
    const { head } = guestWrite(kvm, 5);
    primaryOld(kvm, 5);
    expect(spteOf(kvm, 5) & EPT_A).toBe(EPT_A); // S.young = 1
    expect(f.test(head, PG_referenced)).toBe(false);

    // First check: only KVM says young -> one referencing mapping -> KEEP, PG_referenced set.
    expect(runProgram(reclaim.folioCheckReferences(head))).toBe(FolioReferences.Keep);
    expect(cfy(kvm)).toBe(1);
    expect(f.test(head, PG_referenced)).toBe(true);
    expect(spteOf(kvm, 5) & EPT_A).toBe(0n); // KVM's aging cleared it

    // The guest touches it again: second check -> ACTIVATE (it was already referenced).
    guestAccess(kvm, 5 * PAGE, 'read');
    expect(spteOf(kvm, 5) & EPT_A).toBe(EPT_A);
    expect(runProgram(reclaim.folioCheckReferences(head))).toBe(FolioReferences.Activate);
    expect(cfy(kvm)).toBe(2);

    // P.young = 0 and S.young = 0: RECLAIM.
    const other = guestWrite(kvm, 6).head;
    primaryOld(kvm, 6);
    runProgram(kvm.notifier.clearYoung(hvaOf(6 * PAGE), hvaOf(7 * PAGE)));
    expect(runProgram(reclaim.folioCheckReferences(other))).toBe(FolioReferences.Reclaim);
    expect(f.test(other, PG_referenced)).toBe(false);
    expect(reclaim.stats.verdicts).toEqual([1, 0, 1, 1]);
  });

  it('the primary A bit alone is a reference, and is cleared by the check', () => {
    const { kvm, reclaim } = setUp();
    const { head } = guestWrite(kvm, 3);
    runProgram(kvm.notifier.clearYoung(hvaOf(3 * PAGE), hvaOf(4 * PAGE))); // S.young = 0; P.young = 1 from the fault
    expect(kvm.mm.pte(hvaOf(3 * PAGE)) & BigInt(_PAGE_ACCESSED)).toBe(BigInt(_PAGE_ACCESSED));
    expect(runProgram(reclaim.folioCheckReferences(head))).toBe(FolioReferences.Keep);
    expect(kvm.mm.pte(hvaOf(3 * PAGE)) & BigInt(_PAGE_ACCESSED)).toBe(0n);
    expect(runProgram(reclaim.folioCheckReferences(head))).toBe(FolioReferences.Reclaim); // referenced flag taken, nothing young
    expect(reclaim.rmap.stats).toMatchObject({ referencedWalks: 2, ptesTested: 2, young: 1 });
  });

  it('VM_LOCKED activates without testing young', () => {
    const { kvm, reclaim } = setUp();
    const { head } = guestWrite(kvm, 2);
    kvm.mm.findVma(hvaOf(0))!.vmFlags = VM_LOCKED;
    expect(runProgram(reclaim.folioCheckReferences(head))).toBe(FolioReferences.Activate);
    expect(cfy(kvm)).toBe(0);
  });

  it('MGLRU branch (lru_gen_set_refs): first reference keeps with PG_referenced, the next sets workingset and activates', () => {
    const { kvm, reclaim } = setUp();
    const f = kvm.mm.folios;
    const { head } = guestWrite(kvm, 4);
    reclaim.lruGen = { *shrinkLruvec() { return 0; } };
    expect(runProgram(reclaim.folioCheckReferences(head))).toBe(FolioReferences.Keep);
    expect([f.test(head, PG_referenced), f.test(head, PG_workingset)]).toEqual([true, false]);
    guestAccess(kvm, 4 * PAGE, 'read');
    expect(runProgram(reclaim.folioCheckReferences(head))).toBe(FolioReferences.Activate);
    expect([f.test(head, PG_referenced), f.test(head, PG_workingset)]).toEqual([false, true]);
    primaryOld(kvm, 4);
    runProgram(kvm.notifier.clearYoung(hvaOf(4 * PAGE), hvaOf(5 * PAGE)));
    expect(runProgram(reclaim.folioCheckReferences(head))).toBe(FolioReferences.Reclaim);
  });
});

describe('shrink_inactive_list / shrink_folio_list', () => {
  it('an unreferenced folio is swapped out: CLEAR invalidation zaps the SPTE, swap PTE installed, token in the slot, folio freed', () => {
    const { kvm, reclaim, swap, workingset } = setUp();
    const mm = kvm.mm;
    const f = mm.folios;
    const { head, token } = guestWrite(kvm, 7);
    primaryOld(kvm, 7);
    runProgram(kvm.notifier.clearYoung(hvaOf(7 * PAGE), hvaOf(8 * PAGE)));
    mm.notifiers.resetCounters();
    expect(isShadowPresentPte(spteOf(kvm, 7))).toBe(true);

    expect(runProgram(reclaim.shrinkInactiveList(32))).toBe(1);
    expect(reclaim.stats).toMatchObject({ scanned: 1, evicted: 1, activated: 0, kept: 0, unmapFailed: 0 });
    // One clear_flush_young (the check), one CLEAR range with KVM's start and end.
    expect(mm.notifiers.calls.get('clear_flush_young')).toBe(1);
    expect(mm.notifiers.rangesByEvent.get('MMU_NOTIFY_CLEAR')).toBe(1);
    expect(mm.notifiers.callsByEvent.get('MMU_NOTIFY_CLEAR')).toBe(2);
    expect(reclaim.rmap.stats).toMatchObject({ unmapped: 1, unmapRanges: 1 });
    // The SPTE is gone; the host PTE is a swap entry for slot 0: exclusive, soft-dirty carried.
    const l = kvm.tdpMmu.lookup(7, 1);
    expect(l === null || !isShadowPresentPte(l.spte)).toBe(true);
    const lo = swpEntryLo(0, 0, _PAGE_SWP_EXCLUSIVE | _PAGE_SWP_SOFT_DIRTY);
    const hi = swpEntryHi(0, 0);
    expect(mm.pte(hvaOf(7 * PAGE))).toBe((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0));
    expect([swap.count[0], swap.hasCache[0], swap.tokens[0], swap.stats.pswpout]).toEqual([1, 0, token, 1]);
    expect(swap.shadows.get(0)).toBeDefined();
    expect(workingset.nonresidentAge).toBe(1);
    // The frame went back to the allocator.
    expect([f.flags[f.idx(head)], f.refcount[f.idx(head)], f.lruListOf(head)]).toEqual([0, 0, -1]);
    expect(mm.tokenAt(hvaOf(7 * PAGE))).toBe(token);
    expect(mm.checkIntegrity().mismatches).toEqual([]);
  });

  it('look twice through shrink_inactive_list: kept, then activated on the next scan after another touch', () => {
    const { kvm, reclaim } = setUp();
    const f = kvm.mm.folios;
    const { head } = guestWrite(kvm, 9);
    expect(runProgram(reclaim.shrinkInactiveList(32))).toBe(0);
    expect(reclaim.stats).toMatchObject({ scanned: 1, kept: 1, activated: 0, evicted: 0 });
    expect(f.lruListOf(head)).toBe(LruList.InactiveAnon);
    expect(f.refcount[f.idx(head)]).toBe(1); // the isolation reference was dropped
    guestAccess(kvm, 9 * PAGE, 'read');
    expect(runProgram(reclaim.shrinkInactiveList(32))).toBe(0);
    expect(reclaim.stats).toMatchObject({ scanned: 2, kept: 1, activated: 1, evicted: 0 });
    expect(f.lruListOf(head)).toBe(LruList.ActiveAnon);
    expect(f.test(head, PG_active)).toBe(true);
    expect(f.test(head, PG_swapcache)).toBe(false);
  });

  it('shrink_active_list ages (clear_flush_young) and deactivates with PG_workingset', () => {
    const { kvm, reclaim } = setUp();
    const f = kvm.mm.folios;
    const { head } = guestWrite(kvm, 1);
    runProgram(reclaim.shrinkInactiveList(32)); // keep
    guestAccess(kvm, PAGE, 'read');
    runProgram(reclaim.shrinkInactiveList(32)); // activate
    guestAccess(kvm, PAGE, 'read');
    const before = cfy(kvm);
    runProgram(reclaim.shrinkActiveList(32));
    expect(cfy(kvm)).toBe(before + 1);
    expect(spteOf(kvm, 1) & EPT_A).toBe(0n);
    expect(reclaim.stats).toMatchObject({ refill: 1, deactivated: 1, rotated: 0 });
    expect(f.lruListOf(head)).toBe(LruList.InactiveAnon);
    expect([f.test(head, PG_active), f.test(head, PG_workingset)]).toEqual([false, true]);
  });

  it('inactive_is_low drives shrink_lruvec to refill the inactive list', () => {
    const { kvm, reclaim } = setUp();
    for (let g = 0; g < 4; g++) guestWrite(kvm, g);
    for (let n = 0; n < 2; n++) {
      runProgram(reclaim.shrinkInactiveList(32));
      for (let g = 0; g < 4; g++) guestAccess(kvm, g * PAGE, 'read');
    }
    expect(kvm.mm.folios.nrPages[LruList.ActiveAnon]).toBe(4);
    expect(reclaim.inactiveIsLow()).toBe(true);
    runProgram(reclaim.shrinkLruvec(32, 12));
    expect(reclaim.stats.deactivated).toBe(4);
  });

  it('a folio someone else holds a reference to stays (the __remove_mapping freeze fails), in the swap cache', () => {
    const { kvm, reclaim, swap } = setUp();
    const f = kvm.mm.folios;
    const { head, token } = guestWrite(kvm, 8);
    primaryOld(kvm, 8);
    runProgram(kvm.notifier.clearYoung(hvaOf(8 * PAGE), hvaOf(9 * PAGE)));
    f.get(head); // a pin (GUP)
    expect(runProgram(reclaim.shrinkInactiveList(32))).toBe(0);
    expect([f.test(head, PG_swapcache), f.test(head, PG_dirty), swap.tokens[0], swap.count[0]]).toEqual([true, false, token, 1]);
    expect(f.lruListOf(head)).toBe(LruList.InactiveAnon);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });
});
