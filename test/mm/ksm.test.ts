/**
 * KSM merging and the COW break against a real KVM (mm.md section 6: "KSM
 * write-protect / replace: CLEAR, one page", "COW fault (wp_page_copy):
 * CLEAR, one page"): the exact notifier pairs and their order, the PTEs,
 * the KSM folio's mapcount, refcount and flags, the frames freed, KVM's
 * SPTEs zapped, then a guest read mapping the KSM page read-only and a
 * guest write breaking COW into a new page with the written token; the
 * integrity check stays clean throughout.
 */
import { describe, expect, it } from 'vitest';
import { Outcome } from '../../src/hw/result.js';
import { runProgram } from '../../src/hw/sched.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { LruList, PG_anon, PG_dirty, PG_ksm, PG_referenced } from '../../src/mm/folio.js';
import { ksmCounts, ksmMergePages, ksmScan } from '../../src/mm/ksm.js';
import { migrateFolio } from '../../src/mm/migrate.js';
import { setUpReclaim } from '../../src/mm/vmscan.js';
import { MMU_NOTIFIER_EVENT_NAMES } from '../../src/mm/mmu_notifier.js';
import { GUEST_HVA_BASE, guestAccess, makeVm, sptePresent, watchInvalidations } from '../support/kvm_setup.js';

const K4 = 4096;
const hva = (gpa: number): number => GUEST_HVA_BASE + gpa;

interface Rec {
  op: 'start' | 'end';
  event: string;
  start: number;
  end: number;
  /** The watched PTEs when the callback ran. */
  ptes: bigint[];
  /** Whether KVM still had an SPTE for the range's first gfn (KVM is called after the recorder at start, before it at end). */
  spte: boolean;
}

/** A VM with paging off and a recorder registered after KVM (hlist order: the recorder is called first). */
function setup(): { kvm: Kvm; log: Rec[]; watch: number[] } {
  const kvm = makeVm({ memory: 16 * K4 });
  const log: Rec[] = [];
  const watch: number[] = [];
  watchInvalidations(kvm, (op, r) => {
    log.push({ op, event: MMU_NOTIFIER_EVENT_NAMES[r.event], start: r.start, end: r.end, ptes: watch.map((a) => kvm.mm.pte(a)), spte: sptePresent(kvm, (r.start - GUEST_HVA_BASE) / K4) });
  });
  return { kvm, log, watch };
}

/** A guest write storing data: new (a fresh token) or the same bytes as an earlier write (`content`). */
function guestWrite(kvm: Kvm, gpa: number, content?: number): number {
  const o = guestAccess(kvm, gpa, 'write');
  expect(o.outcome).toBe(Outcome.Ok);
  return kvm.mm.recordWrite(o.hpa, content);
}

const pairs = (log: Rec[]): [string, string, number, number][] => log.map((l) => [l.op, l.event, l.start, l.end]);
const clear = (a: number): [string, string, number, number][] => [
  ['start', 'MMU_NOTIFY_CLEAR', a, a + K4],
  ['end', 'MMU_NOTIFY_CLEAR', a, a + K4],
];
/** A PTE's flags (low 12 bits) and its pfn. */
const flagsOf = (pte: bigint): bigint => pte & 0xfffn;
const pfnOf = (pte: bigint): number => Number((pte >> 12n) & 0xff_ffff_ffffn);

describe('KSM merge of two pages with equal content', () => {
  it('page A becomes the KSM page (one CLEAR pair: write_protect_page), page B is write-protected then replaced (two CLEAR pairs); both PTEs map A read-only; B freed; SPTEs zapped', () => {
    const { kvm, log, watch } = setup();
    const t = guestWrite(kvm, 0);
    expect(guestWrite(kvm, K4, t)).toBe(t); // the same bytes in page 1
    const [a, b] = [hva(0), hva(K4)];
    const pfnA = kvm.mm.lookup(a)!;
    const pfnB = kvm.mm.lookup(b)!;
    // Written through KVM: present, RW, accessed, dirty, soft-dirty (0x867 = P|RW|U|A|D|SD).
    expect(flagsOf(kvm.mm.pte(a))).toBe(0x867n);
    expect(sptePresent(kvm, 0) && sptePresent(kvm, 1)).toBe(true);
    watch.push(a, b);
    const inUse = kvm.pages.inUse;
    const r = runProgram(ksmMergePages(kvm.mm, [a, b]));
    expect(r).toEqual({ merged: 2, freed: [pfnB] });
    // try_to_merge_one_page(A, NULL): write_protect_page only; then (B, kpage A): write_protect_page, replace_page.
    expect(pairs(log)).toEqual([...clear(a), ...clear(b), ...clear(b)]);
    // Inside A's pair: at start the PTE is as written, at end read-only and clean (0x825 = P|U|A|SD, RW and D gone).
    expect(log[0].ptes[0]).toBe(BigInt(pfnA) * 4096n + 0x867n + (1n << 63n));
    expect(flagsOf(log[1].ptes[0])).toBe(0x825n);
    // KVM zapped the SPTE of each range at start (the recorder runs first and still sees it; at end it is gone).
    expect(log.map((l) => l.spte)).toEqual([true, false, true, false, false, false]);
    // B's write_protect_page leaves B read-only on its own frame; replace_page maps A with vm_page_prot (0x25 = P|U|A).
    expect(pfnOf(log[3].ptes[1])).toBe(pfnB);
    expect(flagsOf(log[3].ptes[1])).toBe(0x825n);
    expect(kvm.mm.pte(a)).toBe(BigInt(pfnA) * 4096n + 0x825n + (1n << 63n));
    expect(kvm.mm.pte(b)).toBe(BigInt(pfnA) * 4096n + 0x25n + (1n << 63n));
    // The KSM folio: one reference and one mapping per sharer, PG_ksm, still anon, dirty (write_protect_page moved D;
    // try_to_merge_one_page marks it dirty anyway), referenced (folio_mark_accessed), still on the inactive list.
    const f = kvm.mm.folios;
    const i = f.idx(pfnA);
    expect([f.mapcount[i], f.refcount[i]]).toEqual([2, 2]);
    expect(f.test(pfnA, PG_ksm) && f.test(pfnA, PG_anon) && f.test(pfnA, PG_dirty) && f.test(pfnA, PG_referenced)).toBe(true);
    expect(f.lruListOf(pfnA)).toBe(LruList.InactiveAnon);
    expect(f.token[i]).toBe(t);
    // B's frame went back to the allocator, nothing else moved.
    expect(kvm.pages.inUse).toBe(inUse - 1);
    expect([f.refcount[f.idx(pfnB)], f.lruListOf(pfnB)]).toEqual([0, -1]);
    expect(ksmCounts(f)).toEqual({ pagesShared: 1, pagesSharing: 1 });
    expect(kvm.mm.checkIntegrity()).toEqual({ pages: 16, mismatches: [] });
  });

  it('unequal contents are refused and nothing changes: no event, PTEs, SPTEs and folios as before', () => {
    const { kvm, log } = setup();
    const t0 = guestWrite(kvm, 0);
    const t1 = guestWrite(kvm, K4);
    const before = [kvm.mm.pte(hva(0)), kvm.mm.pte(hva(K4))];
    const r = runProgram(ksmMergePages(kvm.mm, [hva(0), hva(K4)]));
    expect(r).toBe(`ksm_merge: contents differ: hva 0x${hva(0).toString(16)} holds token ${t0}, hva 0x${hva(K4).toString(16)} holds ${t1}`);
    expect(log).toEqual([]);
    expect([kvm.mm.pte(hva(0)), kvm.mm.pte(hva(K4))]).toEqual(before);
    expect(sptePresent(kvm, 0) && sptePresent(kvm, 1)).toBe(true);
    expect(kvm.mm.folios.test(kvm.mm.lookup(hva(0))!, PG_ksm)).toBe(false);
    // A page not resident is no candidate either.
    expect(runProgram(ksmMergePages(kvm.mm, [hva(0), hva(2 * K4)]))).toBe(`ksm_merge: hva 0x${hva(2 * K4).toString(16)} is not resident`);
    expect(log).toEqual([]);
  });
});

describe('one ksmd pass over a range (cmp_and_merge_page in address order)', () => {
  it('pages 0, 2 and 3 hold the same bytes, page 1 other bytes: page 2 (the page scanned) becomes the KSM page, page 0 (the unstable tree\'s) is merged into it, page 3 found in the stable tree', () => {
    const { kvm, log } = setup();
    const t = guestWrite(kvm, 0);
    const t1 = guestWrite(kvm, K4);
    guestWrite(kvm, 2 * K4, t);
    guestWrite(kvm, 3 * K4, t);
    const pfn = [0, 1, 2, 3].map((p) => kvm.mm.lookup(hva(p * K4))!);
    const r = runProgram(ksmScan(kvm.mm, hva(0), hva(16 * K4)));
    expect(r).toEqual({ scanned: 4, merged: 3, freed: [pfn[0], pfn[3]] });
    // try_to_merge_two_pages(page 2, tree page 0): wp 2; wp 0, replace 0. Then page 3 against the stable tree: wp 3, replace 3.
    expect(pairs(log)).toEqual([...clear(hva(2 * K4)), ...clear(hva(0)), ...clear(hva(0)), ...clear(hva(3 * K4)), ...clear(hva(3 * K4))]);
    for (const p of [0, 2, 3]) expect(kvm.mm.lookup(hva(p * K4))).toBe(pfn[2]);
    expect(kvm.mm.lookup(hva(K4))).toBe(pfn[1]); // other content: left alone
    const f = kvm.mm.folios;
    expect([f.mapcount[f.idx(pfn[2])], f.refcount[f.idx(pfn[2])]]).toEqual([3, 3]);
    expect(ksmCounts(f)).toEqual({ pagesShared: 1, pagesSharing: 2 });
    expect(kvm.mm.tokenAt(hva(K4))).toBe(t1);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
    // A second pass finds everything merged: nothing to do, no event.
    const n = log.length;
    expect(runProgram(ksmScan(kvm.mm, hva(0), hva(16 * K4)))).toEqual({ scanned: 4, merged: 0, freed: [] });
    expect(log.length).toBe(n);
  });
});

describe('the guest after a merge', () => {
  it('a read maps the KSM page read-only (no exit on the second read); a write exits, breaks COW with one CLEAR pair and lands in a new page', () => {
    const { kvm, log, watch } = setup();
    const t = guestWrite(kvm, 0);
    guestWrite(kvm, K4, t);
    const [a, b] = [hva(0), hva(K4)];
    runProgram(ksmMergePages(kvm.mm, [a, b]));
    const kpfn = kvm.mm.lookup(a)!;
    log.length = 0;
    watch.push(b);

    // Read: the SPTE was zapped, so one exit; hva_to_pfn's writable probe fails on the read-only PTE.
    const r1 = guestAccess(kvm, K4, 'read');
    expect([r1.outcome, r1.exits, r1.hpa]).toEqual([Outcome.Ok, 1, kpfn * K4]);
    const l = kvm.tdpMmu.lookup(1)!;
    expect([l.spte & 7n, (l.spte >> 12n) & 0xff_ffff_ffffn]).toEqual([5n, BigInt(kpfn)]); // EPT R|X, no W: read-only, on the KSM frame
    expect(guestAccess(kvm, K4, 'read').exits).toBe(0);
    expect(log).toEqual([]); // reads fire nothing

    // Write: the EPT violation's fault asks hva_to_pfn for write; GUP's fault runs do_wp_page -> wp_page_copy.
    const inUse = kvm.pages.inUse;
    const w = guestAccess(kvm, K4, 'write');
    expect(w.outcome).toBe(Outcome.Ok);
    // Two exits: the write on the read-only SPTE, and after RET_PF_RETRY (the COW's invalidation ran during the
    // fault-in, so mmu_invalidate_seq moved) the fault on the zapped SPTE, which maps the new page writable.
    expect(w.exits).toBe(2);
    expect(pairs(log)).toEqual(clear(b));
    // At start the PTE still maps the KSM page read-only and KVM's SPTE is there; at end the copy is mapped RW+D.
    expect(pfnOf(log[0].ptes[0])).toBe(kpfn);
    expect(log[0].spte).toBe(true);
    const newPfn = kvm.mm.lookup(b)!;
    expect(newPfn).not.toBe(kpfn);
    expect(log[1].ptes[0]).toBe(BigInt(newPfn) * 4096n + 0x867n + (1n << 63n));
    expect(w.hpa).toBe(newPfn * K4);
    expect(kvm.pages.inUse).toBe(inUse + 1);
    const f = kvm.mm.folios;
    // The new page holds the KSM page's content until the guest's data is recorded; then the write's token.
    expect(f.token[f.idx(newPfn)]).toBe(t);
    const t2 = kvm.mm.recordWrite(w.hpa);
    expect(kvm.mm.tokenAt(b)).toBe(t2);
    expect(kvm.mm.tokenAt(a)).toBe(t);
    // The KSM page lost one sharer; the new folio is an ordinary exclusive anon page on the inactive list.
    expect([f.mapcount[f.idx(kpfn)], f.refcount[f.idx(kpfn)]]).toEqual([1, 1]);
    expect(f.test(kpfn, PG_ksm)).toBe(true);
    expect([f.mapcount[f.idx(newPfn)], f.refcount[f.idx(newPfn)], f.test(newPfn, PG_ksm), f.lruListOf(newPfn)]).toEqual([1, 1, false, LruList.InactiveAnon]);
    expect(kvm.mm.cowCopies).toBe(1);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);

    // The last sharer writes too: a KSM page is never reused (wp_page_copy again), and the KSM page is freed.
    log.length = 0;
    const inUse2 = kvm.pages.inUse;
    expect(guestAccess(kvm, 0, 'write').outcome).toBe(Outcome.Ok);
    expect(pairs(log)).toEqual(clear(a));
    expect([f.refcount[f.idx(kpfn)], f.lruListOf(kpfn)]).toEqual([0, -1]);
    expect(kvm.pages.inUse).toBe(inUse2); // one allocated, the KSM page freed
    expect(ksmCounts(f)).toEqual({ pagesShared: 0, pagesSharing: 0 });
    expect(kvm.mm.tokenAt(a)).toBe(t);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });

  it('a write to an exclusive read-only page reuses it (wp_page_reuse): no notifier, same frame', () => {
    const { kvm, log } = setup();
    guestWrite(kvm, 0);
    const pfn = kvm.mm.lookup(hva(0))!;
    runProgram(kvm.mm.mprotect(hva(0), K4, { writable: false }));
    runProgram(kvm.mm.mprotect(hva(0), K4, { writable: true }));
    // mprotect RW makes the exclusive PTE writable again; clear it by hand to reach do_wp_page.
    kvm.mm.mem.and64(kvm.mm.pt.walk(hva(0)) === 1 ? kvm.mm.pt.entry : -1, ~2, -1);
    log.length = 0;
    expect(kvm.mm.hvaToPfn(hva(0), true)).toEqual({ ok: true, pfn, writable: true });
    expect(log).toEqual([]);
    expect(kvm.mm.cowCopies).toBe(0);
  });

  it('the host CPU writing a merged page (the VMM) breaks COW the same way', () => {
    const { kvm, log } = setup();
    const t = guestWrite(kvm, 0);
    guestWrite(kvm, K4, t);
    runProgram(ksmMergePages(kvm.mm, [hva(0), hva(K4)]));
    const kpfn = kvm.mm.lookup(hva(0))!;
    log.length = 0;
    expect(kvm.mm.readToken(hva(K4))).toBe(t); // a load is fine on the read-only PTE
    const t2 = kvm.mm.writeToken(hva(K4));
    expect(pairs(log)).toEqual(clear(hva(K4)));
    expect(kvm.mm.lookup(hva(K4))).not.toBe(kpfn);
    expect([kvm.mm.tokenAt(hva(0)), kvm.mm.tokenAt(hva(K4))]).toEqual([t, t2]);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });
});

describe('KSM pages and reclaim, migration, unmap', () => {
  it('migration leaves a KSM page alone (returns null, no event); munmap of one sharer drops one mapping, the last frees the page', () => {
    const { kvm, log } = setup();
    const t = guestWrite(kvm, 0);
    guestWrite(kvm, K4, t);
    runProgram(ksmMergePages(kvm.mm, [hva(0), hva(K4)]));
    const kpfn = kvm.mm.lookup(hva(0))!;
    log.length = 0;
    expect(runProgram(migrateFolio(kvm.mm, hva(0)))).toBeNull();
    expect(log).toEqual([]);
    const f = kvm.mm.folios;
    runProgram(kvm.mm.madviseDontneed(hva(K4), K4));
    expect([f.mapcount[f.idx(kpfn)], f.refcount[f.idx(kpfn)]]).toEqual([1, 1]);
    expect(kvm.mm.tokenAt(hva(K4))).toBe(0); // DONTNEED discards: the page reads as zeroes
    runProgram(kvm.mm.madviseDontneed(hva(0), K4));
    expect([f.refcount[f.idx(kpfn)], f.lruListOf(kpfn)]).toEqual([0, -1]);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });

  it('reclaim keeps a KSM page resident (its sharers cannot be unmapped without rmap_walk_ksm) and swaps the others; all data intact', () => {
    const { kvm } = setup();
    const { reclaim, swap } = setUpReclaim(kvm.mm, { swapSlots: 16 });
    const t = guestWrite(kvm, 0);
    guestWrite(kvm, K4, t);
    const t2 = guestWrite(kvm, 2 * K4);
    runProgram(ksmMergePages(kvm.mm, [hva(0), hva(K4)]));
    const kpfn = kvm.mm.lookup(hva(0))!;
    const got = runProgram(reclaim.tryToFreePages(16));
    // Only page 2 could go: the KSM page is put back on every pass.
    expect(got).toBe(1);
    expect(swap.stats.pswpout).toBe(1);
    expect(kvm.mm.lookup(hva(2 * K4))).toBeNull();
    expect([kvm.mm.lookup(hva(0)), kvm.mm.lookup(hva(K4))]).toEqual([kpfn, kpfn]);
    expect([kvm.mm.tokenAt(hva(0)), kvm.mm.tokenAt(hva(K4)), kvm.mm.tokenAt(hva(2 * K4))]).toEqual([t, t, t2]);
    expect(kvm.mm.checkIntegrity().mismatches).toEqual([]);
  });
});
