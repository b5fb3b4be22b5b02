/**
 * fork of the VMM against a real KVM (kernel dup_mmap + copy_page_range;
 * mm.md section 6: "fork (COW mapping): PROTECTION_PAGE on the parent mm,
 * VMA span, parent PTEs write-protected", "COW fault (wp_page_copy): CLEAR,
 * one page"): the exact notifier pairs and their ranges, KVM's SPTEs zapped
 * at the PROTECTION_PAGE start (kvm_mmu_notifier_invalidate_range_start does
 * not look at the event), the parent's and the child's PTE bits, mapcount
 * and refcount, swap entries duplicated and made non-exclusive, the guest's
 * write after fork taking a COW copy into a new writable SPTE, the child's
 * write copying on its side, reclaim keeping a shared folio, and the child's
 * exit letting the parent reuse its page.
 */
import { describe, expect, it } from 'vitest';
import { Outcome } from '../../src/hw/result.js';
import { runProgram } from '../../src/hw/sched.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { dupMmap } from '../../src/mm/fork.js';
import { VM_LOCKED, type MmStruct } from '../../src/mm/mm.js';
import { MMU_NOTIFIER_EVENT_NAMES, MMU_NOTIFIER_RANGE_BLOCKABLE } from '../../src/mm/mmu_notifier.js';
import {
  _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_SWP_EXCLUSIVE, swpOffset,
} from '../../src/mm/pgtable.js';
import { setUpReclaim } from '../../src/mm/vmscan.js';
import { GUEST_HVA_BASE, guestAccess, makeVm, sptePresent, watchInvalidations } from '../support/kvm_setup.js';

const K4 = 4096;
const hva = (gpa: number): number => GUEST_HVA_BASE + gpa;
/** An area of the VMM's own, below guest memory. */
const OTHER = 0x7e00_0000_0000;

interface Rec {
  op: 'start' | 'end';
  event: string;
  start: number;
  end: number;
  blockable: boolean;
  /** The watched PTEs of the parent when the callback ran. */
  ptes: bigint[];
  /** Whether KVM still had an SPTE for gfn 0 (the recorder runs before KVM at start, after it at end). */
  spte0: boolean;
}

function sptePfn(kvm: Kvm, gfn: number): number {
  const l = kvm.tdpMmu.lookup(gfn)!;
  return Number((l.spte >> 12n) & 0xff_ffff_ffffn);
}

/** A VM with paging off (16 pages) and a recorder registered after KVM (hlist order: the recorder is called first). */
function setup(pages = 16): { kvm: Kvm; log: Rec[]; watch: number[] } {
  const kvm = makeVm({ memory: pages * K4, tlb: false });
  const log: Rec[] = [];
  const watch: number[] = [];
  watchInvalidations(kvm, (op, r) => {
    log.push({
      op, event: MMU_NOTIFIER_EVENT_NAMES[r.event], start: r.start, end: r.end, blockable: (r.flags & MMU_NOTIFIER_RANGE_BLOCKABLE) !== 0,
      ptes: watch.map((a) => kvm.mm.pte(a)), spte0: sptePresent(kvm, 0),
    });
  });
  return { kvm, log, watch };
}

/** A guest write of new data through KVM; returns its token. */
function guestWrite(kvm: Kvm, gpa: number): number {
  const o = guestAccess(kvm, gpa, 'write');
  expect(o.outcome).toBe(Outcome.Ok);
  return kvm.mm.recordWrite(o.hpa);
}

function fork(kvm: Kvm): { child: MmStruct; stats: { vmas: number; cowVmas: number; ptes: number; swapEntries: number } } {
  return runProgram(dupMmap(kvm.mm));
}

const pairs = (log: Rec[]): [string, string, number, number][] => log.map((l) => [l.op, l.event, l.start, l.end]);
const lo = (pte: bigint): number => Number(pte & 0xffffffffn);
const pfnOf = (pte: bigint): number => Number((pte >> 12n) & 0xff_ffff_ffffn);
const folioState = (kvm: Kvm, pfn: number): [number, number] => {
  const f = kvm.mm.folios;
  const i = f.idx(f.folioOf(pfn));
  return [f.mapcount[i], f.refcount[i]];
};

describe('dup_mmap: the notifier pairs', () => {
  it('one blockable PROTECTION_PAGE pair per area with an anon_vma, over the whole area, on the parent, in address order; none for an area never faulted; KVM zaps at the start', () => {
    const { kvm, log, watch } = setup();
    const mm = kvm.mm;
    mm.mmap(OTHER, 4 * K4); // never faulted: no anon_vma, vma_needs_copy says no
    mm.mmap(OTHER + 0x10_0000, 4 * K4); // faulted, then zapped: the anon_vma stays
    mm.writeToken(OTHER + 0x10_0000);
    runProgram(mm.madviseDontneed(OTHER + 0x10_0000, 4 * K4));
    guestWrite(kvm, 0);
    guestWrite(kvm, K4);
    watch.push(hva(0));
    log.length = 0;
    const flushes = kvm.stats.flushes;

    const { child, stats } = fork(kvm);

    expect(stats).toEqual({ vmas: 3, cowVmas: 2, ptes: 2, swapEntries: 0 });
    expect(pairs(log)).toEqual([
      ['start', 'MMU_NOTIFY_PROTECTION_PAGE', OTHER + 0x10_0000, OTHER + 0x10_0000 + 4 * K4],
      ['end', 'MMU_NOTIFY_PROTECTION_PAGE', OTHER + 0x10_0000, OTHER + 0x10_0000 + 4 * K4],
      ['start', 'MMU_NOTIFY_PROTECTION_PAGE', hva(0), hva(16 * K4)],
      ['end', 'MMU_NOTIFY_PROTECTION_PAGE', hva(0), hva(16 * K4)],
    ]);
    expect(log.every((l) => l.blockable)).toBe(true);
    // Guest memory's pair: at start the PTE is still writable and KVM's SPTE still there (KVM runs after the
    // recorder); by the end the PTE is write-protected and the SPTE gone.
    const [s, e] = log.slice(2);
    expect(lo(s.ptes[0]) & _PAGE_RW).toBe(_PAGE_RW);
    expect(s.spte0).toBe(true);
    expect(lo(e.ptes[0]) & _PAGE_RW).toBe(0);
    expect(e.spte0).toBe(false);
    expect(sptePresent(kvm, 0)).toBe(false);
    expect(sptePresent(kvm, 1)).toBe(false);
    // KVM flushed its TLBs once: only guest memory's range hit a memslot.
    expect(kvm.stats.flushes - flushes).toBe(1);
    // Callbacks by event count per subscriber: KVM and the recorder, start and end, two areas.
    expect(kvm.mm.notifiers.callsByEvent.get('MMU_NOTIFY_PROTECTION_PAGE')).toBe(8);
    // The child has every area, none of KVM's subscriptions.
    expect(child.areas.map((v) => [v.start, v.end])).toEqual(mm.areas.map((v) => [v.start, v.end]));
    expect(child.areas.map((v) => v.hasAnonVma === true)).toEqual([false, true, true]);
  });

  it('an area with nothing present still gets its pair (the range is the area, whatever its PTEs)', () => {
    const { kvm, log } = setup();
    guestWrite(kvm, 0);
    runProgram(kvm.mm.madviseDontneed(hva(0), K4));
    log.length = 0;
    const { stats } = fork(kvm);
    expect(stats).toEqual({ vmas: 1, cowVmas: 1, ptes: 0, swapEntries: 0 });
    expect(pairs(log)).toEqual([
      ['start', 'MMU_NOTIFY_PROTECTION_PAGE', hva(0), hva(16 * K4)],
      ['end', 'MMU_NOTIFY_PROTECTION_PAGE', hva(0), hva(16 * K4)],
    ]);
  });

  it('a VM that never touched its memory forks with no notifier call at all', () => {
    const { kvm, log } = setup();
    const { stats } = fork(kvm);
    expect(stats).toEqual({ vmas: 1, cowVmas: 0, ptes: 0, swapEntries: 0 });
    expect(log).toEqual([]);
  });
});

describe('dup_mmap: the PTEs and the folios', () => {
  it('parent: RW cleared, A and D kept; child: same frame, RW and A clear, D kept; mapcount and refcount 2', () => {
    const { kvm } = setup();
    guestWrite(kvm, 0);
    const before = kvm.mm.pte(hva(0));
    expect(lo(before) & (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY)).toBe(_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY);
    const pfn = pfnOf(before);
    expect(folioState(kvm, pfn)).toEqual([1, 1]);

    const { child } = fork(kvm);

    const parent = kvm.mm.pte(hva(0));
    expect(parent).toBe(before & ~BigInt(_PAGE_RW));
    const c = child.pte(hva(0));
    expect(c).toBe(before & ~BigInt(_PAGE_RW | _PAGE_ACCESSED));
    expect(pfnOf(c)).toBe(pfn);
    expect(folioState(kvm, pfn)).toEqual([2, 2]);
    // A read-only PTE is copied as it is, only made old.
    expect(child.pte(hva(K4))).toBe(0n);
  });

  it('VM_LOCKED is not inherited; 2M host pages are refused', () => {
    const { kvm } = setup();
    guestWrite(kvm, 0);
    kvm.mm.areas[0].vmFlags = VM_LOCKED;
    const { child } = fork(kvm);
    expect(child.areas[0].vmFlags).toBe(0);
    const big = makeVm({ memory: 2 * 1024 * 1024, hostLevel: 2 });
    expect(() => runProgram(dupMmap(big.mm))).toThrow(/has 2M pages/);
  });

  it('a swap entry: swap_duplicate (the slot count goes 1 -> 2), SWP_EXCLUSIVE cleared in the parent, the child gets the same entry; the child exit puts the count back', () => {
    const { kvm } = setup();
    const { reclaim, swap } = setUpReclaim(kvm.mm, { swapSlots: 16 });
    const token = guestWrite(kvm, 3 * K4);
    // Make it old everywhere and evict it.
    kvm.mm.pt.walk(hva(3 * K4));
    kvm.mem.and64(kvm.mm.pt.entry, ~_PAGE_ACCESSED, -1);
    runProgram(kvm.notifier.clearYoung(hva(3 * K4), hva(4 * K4)));
    runProgram(reclaim.shrinkInactiveList(1));
    expect(reclaim.stats.evicted).toBe(1);
    const swp = kvm.mm.pte(hva(3 * K4));
    expect(lo(swp) & _PAGE_PRESENT).toBe(0);
    expect(lo(swp) & _PAGE_SWP_EXCLUSIVE).toBe(_PAGE_SWP_EXCLUSIVE);
    const slot = swpOffset(lo(swp), Number(swp >> 32n));
    expect(swap.count[slot]).toBe(1);

    const { child, stats } = fork(kvm);

    expect(stats.swapEntries).toBe(1);
    expect(stats.ptes).toBe(0);
    expect(swap.count[slot]).toBe(2);
    const parent = kvm.mm.pte(hva(3 * K4));
    expect(parent).toBe(swp & ~BigInt(_PAGE_SWP_EXCLUSIVE));
    expect(child.pte(hva(3 * K4))).toBe(parent);
    expect(child.tokenAt(hva(3 * K4))).toBe(token);

    runProgram(child.exit());
    expect(swap.count[slot]).toBe(1);
    // The parent's swap-in of its now non-exclusive entry maps the page read-only; the guest's write then
    // reuses it (the only mapping): no copy.
    expect(guestAccess(kvm, 3 * K4, 'write').outcome).toBe(Outcome.Ok);
    expect(kvm.mm.cowCopies).toBe(0);
    expect(lo(kvm.mm.pte(hva(3 * K4))) & _PAGE_RW).toBe(_PAGE_RW);
    expect(kvm.mm.tokenAt(hva(3 * K4))).toBe(token);
  });
});

describe('after fork', () => {
  it("the guest's write faults through hva_to_pfn(write): wp_page_copy, one CLEAR pair, a new frame in a writable SPTE; the child keeps the old frame", () => {
    const { kvm, log } = setup();
    const token = guestWrite(kvm, 0);
    const old = sptePfn(kvm, 0);
    const { child } = fork(kvm);
    log.length = 0;

    const o = guestAccess(kvm, 0, 'write');
    expect(o.outcome).toBe(Outcome.Ok);
    expect(pairs(log)).toEqual([
      ['start', 'MMU_NOTIFY_CLEAR', hva(0), hva(K4)],
      ['end', 'MMU_NOTIFY_CLEAR', hva(0), hva(K4)],
    ]);
    expect(kvm.mm.cowCopies).toBe(1);
    expect(sptePresent(kvm, 0)).toBe(true);
    const neu = sptePfn(kvm, 0);
    expect(neu).not.toBe(old);
    expect(Math.floor(o.hpa / K4)).toBe(neu);
    const l = kvm.tdpMmu.lookup(0)!;
    expect(l.spte & 2n).toBe(2n); // EPT W
    expect(pfnOf(kvm.mm.pte(hva(0)))).toBe(neu);
    expect(lo(kvm.mm.pte(hva(0))) & _PAGE_RW).toBe(_PAGE_RW);
    // The copy holds the old data; the child still maps the old frame, now its alone.
    expect(kvm.mm.tokenAt(hva(0))).toBe(token);
    expect(pfnOf(child.pte(hva(0)))).toBe(old);
    expect(folioState(kvm, old)).toEqual([1, 1]);
    expect(folioState(kvm, neu)).toEqual([1, 1]);
    kvm.mm.recordWrite(o.hpa);
    expect(child.tokenAt(hva(0))).toBe(token);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
    expect(child.checkIntegrity().mismatches).toEqual([]);
  });

  it("the child's write copies on its side with no notifier on the parent; the parent's folio is then mapped once and the guest's write reuses it", () => {
    const { kvm, log } = setup();
    guestWrite(kvm, K4);
    const old = pfnOf(kvm.mm.pte(hva(K4)));
    const { child } = fork(kvm);
    log.length = 0;

    child.writeToken(hva(K4));
    expect(child.cowCopies).toBe(1);
    expect(log).toEqual([]);
    expect(pfnOf(child.pte(hva(K4)))).not.toBe(old);
    expect(folioState(kvm, old)).toEqual([1, 1]);
    expect(lo(kvm.mm.pte(hva(K4))) & _PAGE_RW).toBe(0);

    expect(guestAccess(kvm, K4, 'write').outcome).toBe(Outcome.Ok);
    expect(kvm.mm.cowCopies).toBe(0); // wp_page_reuse
    expect(log).toEqual([]);
    expect(sptePfn(kvm, 1)).toBe(old);
    expect(pfnOf(kvm.mm.pte(hva(K4)))).toBe(old);
  });

  it("reclaim keeps a folio parent and child both map (keptShared), and swaps it once the child has exited", () => {
    const { kvm } = setup();
    const { reclaim } = setUpReclaim(kvm.mm, { swapSlots: 16 });
    guestWrite(kvm, 0);
    const pfn = pfnOf(kvm.mm.pte(hva(0)));
    const { child } = fork(kvm);
    const old = (): void => {
      kvm.mm.pt.walk(hva(0));
      kvm.mem.and64(kvm.mm.pt.entry, ~_PAGE_ACCESSED, -1);
    };
    old();
    expect(runProgram(reclaim.shrinkInactiveList(1))).toBe(0);
    expect(reclaim.stats.keptShared).toBe(1);
    expect(reclaim.stats.evicted).toBe(0);
    expect(pfnOf(kvm.mm.pte(hva(0)))).toBe(pfn);
    expect(folioState(kvm, pfn)).toEqual([2, 2]);

    runProgram(child.exit());
    expect(folioState(kvm, pfn)).toEqual([1, 1]);
    old();
    expect(runProgram(reclaim.shrinkInactiveList(1))).toBe(1);
    expect(reclaim.stats.keptShared).toBe(1);
    expect(reclaim.stats.evicted).toBe(1);
    expect(lo(kvm.mm.pte(hva(0))) & _PAGE_PRESENT).toBe(0);
  });

  it("the child's exit drops the mapcount back to 1: the guest's next write reuses the folio (no copy, no notifier), same frame, writable", () => {
    const { kvm, log } = setup();
    guestWrite(kvm, 2 * K4);
    const pfn = pfnOf(kvm.mm.pte(hva(2 * K4)));
    const { child } = fork(kvm);
    expect(folioState(kvm, pfn)).toEqual([2, 2]);
    runProgram(child.exit());
    expect(folioState(kvm, pfn)).toEqual([1, 1]);
    expect(child.areas).toEqual([]);
    log.length = 0;

    expect(guestAccess(kvm, 2 * K4, 'write').outcome).toBe(Outcome.Ok);
    expect(kvm.mm.cowCopies).toBe(0);
    expect(log).toEqual([]);
    expect(sptePfn(kvm, 2)).toBe(pfn);
    expect(kvm.tdpMmu.lookup(2)!.spte & 2n).toBe(2n);
    expect(lo(kvm.mm.pte(hva(2 * K4))) & _PAGE_RW).toBe(_PAGE_RW);
  });
});
