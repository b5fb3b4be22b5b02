/**
 * The 26 SPTE-transition scenarios of kvm-mmu.md section 9, one test each,
 * driven through the real code: a Kvm whose vCPUs run with paging off
 * (gva == gpa), guest accesses that exit to KVM, the notifier callbacks, the
 * TDP MMU walkers, and the spte.ts functions where a scenario is about one
 * function. The host allocator is steered so that the guest page gets the
 * spec's PFN 0x12345 and the reference values appear literally.
 */
import { describe, expect, it } from 'vitest';
import { MemOp } from '../../src/hw/phys_mem.js';
import { Outcome } from '../../src/hw/result.js';
import { runProgram } from '../../src/hw/sched.js';
import { KVM_MEM_READONLY, testPageDirty } from '../../src/kvm/memslots.js';
import { isPageFaultStale, kvmMmuPageFault } from '../../src/kvm/mmu.js';
import { KVM_RMAP_LOCKED } from '../../src/kvm/rmap.js';
import {
  ACC_ALL, EPT_AD, EPT_NOAD, FROZEN_SPTE, NPT, SHADOW_NONPRESENT_VALUE, generationMmioSpteMask, getMmioSpteGeneration,
  getMmioSpteGfn, isAccessTrackSpte, isAccessedSpte, isLargePte, isLastSpte, isMmioSpte, isMmuWritableSpte, isShadowPresentPte,
  isWritablePte, leafSpteChangeNeedsTlbFlush, makeFlavour, makeMmioSpte, makeSpte, markSpteForAccessTrack, spteNeedsAtomicWrite,
} from '../../src/kvm/spte.js';
import { spteIndexOfGfn, tdpMmuSpteNeedAtomicUpdate } from '../../src/kvm/tdp_iter.js';
import { PT_POISON, RetPf, type KvmPageFault } from '../../src/kvm/tdp_mmu.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, type MmuNotifierRange } from '../../src/mm/mmu_notifier.js';
import type { Kvm } from '../../src/kvm/vm.js';
import {
  PAGE, captureEvents, eptViolation, guestAccess, hookOps, hvaOf, makeVm, read64, slot0, spteOf, sptepOf, steerNextPfn, write64,
} from '../support/kvm_setup.js';

// Reference values of section 9 (PFN 0x12345).
const PFN = 0x12345;
const E_W = 0x8600_0000_1234_5b77n;
const E_R = 0x8000_0000_1234_5975n;
const E_WP = 0x8600_0000_1234_5b75n;
const E_DW = 0x8610_0000_1234_5b77n;
const N_W = 0x0000_0000_1234_5e67n;
const A = 0x100n; // EPT accessed (bit 8)
const D = 0x200n; // EPT dirty (bit 9)

/** The guest page every scenario uses: gpa 0x5000, gfn 5. */
const GPA = 0x5000;
const GFN = 5;
const HVA = hvaOf(GPA);

/** A VM whose guest page GPA is faulted in (by a guest `kind` access) with host pfn 0x12345. */
function vmWithPage(opts: Parameters<typeof makeVm>[0] = {}, kind: 'read' | 'write' = 'write'): Kvm {
  const kvm = makeVm(opts);
  steerNextPfn(kvm, PFN);
  const o = guestAccess(kvm, GPA, kind);
  expect(o).toMatchObject({ outcome: Outcome.Ok, exits: 1, hpa: PFN * PAGE, userExit: null });
  return kvm;
}

function range(start: number, end: number): MmuNotifierRange {
  return { start, end, event: MmuNotifierEvent.Clear, flags: MMU_NOTIFIER_RANGE_BLOCKABLE, owner: null };
}

/** Memory operations made on one address while `body` runs. */
function opsAt<T>(kvm: Kvm, hpa: number, body: () => T): { ops: MemOp[]; value: T } {
  const ops: MemOp[] = [];
  const off = hookOps(kvm.mem, (op, a) => {
    if (a === hpa) ops.push(op);
  });
  try {
    return { ops, value: body() };
  } finally {
    off();
  }
}

function withWriteLock<T>(kvm: Kvm, body: () => T): T {
  runProgram(kvm.mmuLock.writeLock());
  try {
    return body();
  } finally {
    kvm.mmuLock.writeUnlock();
  }
}

function withReadLock<T>(kvm: Kvm, body: () => T): T {
  runProgram(kvm.mmuLock.readLock());
  try {
    return body();
  } finally {
    kvm.mmuLock.readUnlock();
  }
}

describe('kvm-mmu.md section 9 scenarios', () => {
  it('S1: make_spte, EPT A/D on, write fault, host writable -> E_W', () => {
    const r = makeSpte(EPT_AD, { level: 1, pfn: BigInt(PFN), access: ACC_ALL, hostWritable: true });
    expect(r).toEqual({ spte: E_W, wrprot: false });
    expect(isShadowPresentPte(E_W)).toBe(true);
    expect(isLastSpte(E_W, 1)).toBe(true);
    expect(isAccessedSpte(EPT_AD, E_W)).toBe(true);
    expect(isWritablePte(E_W)).toBe(true);
    expect(isMmuWritableSpte(EPT_AD, E_W)).toBe(true);
    expect(spteNeedsAtomicWrite(EPT_AD, E_W)).toBe(false);

    // The same leaf from a real guest write: EPT violation -> kvm_tdp_mmu_map -> retry succeeds.
    const kvm = makeVm();
    const ev = captureEvents(kvm, ['kvm_tdp_mmu_spte_changed', 'kvm_mmu_set_spte']);
    steerNextPfn(kvm, PFN);
    expect(guestAccess(kvm, GPA, 'write')).toMatchObject({ outcome: Outcome.Ok, exits: 1, hpa: PFN * PAGE + 0 });
    const sptep = sptepOf(kvm, GFN, 1);
    expect(spteOf(kvm, GFN, 1)).toBe(E_W);
    expect(kvm.stats.pfFixed).toBe(1);
    expect(kvm.tdpMmu.stats.pages[1]).toBe(1);
    const changed = ev.filter((e) => e.name === 'kvm_tdp_mmu_spte_changed' && e.fields.level === 1);
    expect(changed).toHaveLength(1);
    expect(changed[0].fields).toMatchObject({ as_id: 0, gfn: GFN, level: 1, new_spte: E_W });
    expect(isShadowPresentPte(changed[0].fields.old_spte as bigint)).toBe(false); // its exact value: see the SHADOW_NONPRESENT_VALUE test below
    expect(ev.filter((e) => e.name === 'kvm_mmu_set_spte')).toEqual([
      { name: 'kvm_mmu_set_spte', fields: { gfn: GFN, spte: E_W, sptep, level: 1, r: true, x: true, u: 1 } },
    ]);
  });

  it('S2: a READ fault still installs E_W (ACC_ALL + map_writable; D set at creation)', () => {
    const kvm = vmWithPage({}, 'read');
    expect(spteOf(kvm, GFN, 1)).toBe(E_W);
    expect(spteOf(kvm, GFN, 1) & D).toBe(D);
    // make_spte is not told the fault kind: TDP passes ACC_ALL and host_writable.
    expect(makeSpte(EPT_AD, { level: 1, pfn: BigInt(PFN), access: ACC_ALL, hostWritable: true }).spte).toBe(E_W);
  });

  it('S3: make_spte with prefetch clears A: 0x8600_0000_1234_5A77, not accessed, still hardware-present', () => {
    const r = makeSpte(EPT_AD, { level: 1, pfn: BigInt(PFN), access: ACC_ALL, hostWritable: true, prefetch: true });
    expect(r).toEqual({ spte: 0x8600_0000_1234_5a77n, wrprot: false });
    expect(isAccessedSpte(EPT_AD, r.spte)).toBe(false);
    expect(isShadowPresentPte(r.spte)).toBe(true);
    expect(r.spte & 0x7n).toBe(0x7n); // R, W, X all still there for the CPU
    // synchronizing keeps A.
    expect(makeSpte(EPT_AD, { level: 1, pfn: BigInt(PFN), access: ACC_ALL, hostWritable: true, prefetch: true, synchronizing: true }).spte).toBe(E_W);
  });

  it('S4: a hardware write to an A/D-on leaf with D=0 sets D; needs-atomic before, not after', () => {
    const kvm = vmWithPage({}, 'read');
    const sptep = sptepOf(kvm, GFN, 1);
    const clean = E_W & ~D;
    expect(clean).toBe(0x8600_0000_1234_5977n);
    write64(kvm.mem, sptep, clean); // as after a D harvest
    kvm.flushRemoteTlbs(); // ... which flushes, so the CPU walks
    expect(spteNeedsAtomicWrite(EPT_AD, clean)).toBe(true);
    expect(tdpMmuSpteNeedAtomicUpdate(EPT_AD, clean, 1)).toBe(true);
    const { ops, value } = opsAt(kvm, sptep, () => guestAccess(kvm, GPA, 'write'));
    expect(value).toMatchObject({ outcome: Outcome.Ok, exits: 0 });
    expect(ops).toContain(MemOp.Cmpxchg); // the CPU's locked A/D update
    expect(read64(kvm.mem, sptep)).toBe(E_W);
    expect(spteNeedsAtomicWrite(EPT_AD, E_W)).toBe(false);
  });

  it('S5: TDP aging (clear_young / clear_flush_young), A/D on: atomic clear of bit 8 only, young, no flush, no mmu_lock, one trace', () => {
    const kvm = vmWithPage();
    const sptep = sptepOf(kvm, GFN, 1);
    const ev = captureEvents(kvm, ['kvm_age_hva', 'kvm_tdp_mmu_spte_changed']);
    const flushes = kvm.stats.flushes;
    // mmu_lock is held for write by someone else the whole time: aging must not need it.
    const { ops, value } = opsAt(kvm, sptep, () => withWriteLock(kvm, () => runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE))));
    expect(value).toBe(1);
    expect(read64(kvm.mem, sptep)).toBe(0x8600_0000_1234_5a77n);
    expect(ops).toEqual([MemOp.Load, MemOp.And]); // the walk's read, then the atomic fetch-and
    expect(kvm.stats.flushes).toBe(flushes);
    expect(ev).toEqual([
      { name: 'kvm_age_hva', fields: { start: HVA, end: HVA + PAGE } },
      { name: 'kvm_tdp_mmu_spte_changed', fields: { as_id: 0, gfn: GFN, level: 1, old_spte: E_W, new_spte: 0x8600_0000_1234_5a77n } },
    ]);

    // clear_flush_young: x86 elides the flush too.
    const kvm2 = vmWithPage();
    const f2 = kvm2.stats.flushes;
    expect(withWriteLock(kvm2, () => runProgram(kvm2.notifier.clearFlushYoung(HVA, HVA + PAGE)))).toBe(1);
    expect(spteOf(kvm2, GFN, 1)).toBe(0x8600_0000_1234_5a77n);
    expect(kvm2.stats.flushes).toBe(f2);
  });

  it('S6: aging again with A=0: skipped, no write, returns false, no spte trace', () => {
    const kvm = vmWithPage();
    const sptep = sptepOf(kvm, GFN, 1);
    expect(runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE))).toBe(1);
    const ev = captureEvents(kvm, ['kvm_age_hva', 'kvm_tdp_mmu_spte_changed']);
    const aged = kvm.tdpMmu.stats.aged;
    const { ops, value } = opsAt(kvm, sptep, () => runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE)));
    expect(value).toBe(0);
    expect(ops).toEqual([MemOp.Load]);
    expect(read64(kvm.mem, sptep)).toBe(0x8600_0000_1234_5a77n);
    expect(kvm.tdpMmu.stats.aged).toBe(aged);
    expect(ev).toEqual([{ name: 'kvm_age_hva', fields: { start: HVA, end: HVA + PAGE } }]);
  });

  it('S7: test_young on E_W: true, SPTE unchanged, rmaps not walked when the TDP MMU says young', () => {
    const kvm = vmWithPage();
    const sptep = sptepOf(kvm, GFN, 1);
    kvm.indirectShadowPages = 1; // shadow SPTEs may exist
    const head = kvm.rmaps(slot0(kvm)).headFor(GFN, 1);
    const ev = captureEvents(kvm, ['kvm_test_age_hva', 'kvm_tdp_mmu_spte_changed']);
    const loads: number[] = [];
    const off = hookOps(kvm.mem, (op, a) => {
      if (op === MemOp.Load) loads.push(a);
      else throw new Error(`test_young wrote memory: op ${op} at 0x${a.toString(16)}`);
    });
    const young = runProgram(kvm.notifier.testYoung(HVA));
    off();
    expect(young).toBe(1);
    expect(read64(kvm.mem, sptep)).toBe(E_W);
    expect(loads).toContain(sptep);
    expect(loads).not.toContain(head);
    expect(ev).toEqual([{ name: 'kvm_test_age_hva', fields: { hva: HVA } }]);
    // Once aged, the TDP MMU says old and the rmaps are consulted.
    runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE));
    const loads2: number[] = [];
    const off2 = hookOps(kvm.mem, (op, a) => void (op === MemOp.Load && loads2.push(a)));
    expect(runProgram(kvm.notifier.testYoung(HVA))).toBe(0);
    off2();
    expect(loads2).toContain(head);
  });

  it('S8: TDP aging, EPT A/D off, E_DW -> 0x8750_0000_1234_5A70 with one cmpxchg; access-tracked, still present', () => {
    const kvm = vmWithPage({ eptAd: false });
    const sptep = sptepOf(kvm, GFN, 1);
    expect(read64(kvm.mem, sptep)).toBe(E_DW);
    const ev = captureEvents(kvm, ['kvm_tdp_mmu_spte_changed']);
    const flushes = kvm.stats.flushes;
    const { ops, value } = opsAt(kvm, sptep, () => withWriteLock(kvm, () => runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE))));
    expect(value).toBe(1);
    const aged = 0x8750_0000_1234_5a70n;
    expect(read64(kvm.mem, sptep)).toBe(aged);
    expect(ops).toEqual([MemOp.Load, MemOp.Cmpxchg]);
    expect(kvm.tdpMmu.stats.aged).toBe(1);
    expect(kvm.tdpMmu.stats.ageLost).toBe(0);
    expect(kvm.stats.flushes).toBe(flushes);
    expect(ev).toEqual([{ name: 'kvm_tdp_mmu_spte_changed', fields: { as_id: 0, gfn: GFN, level: 1, old_spte: E_DW, new_spte: aged } }]);
    expect(isAccessTrackSpte(EPT_NOAD, aged)).toBe(true);
    expect(isShadowPresentPte(aged)).toBe(true);
    expect(isAccessedSpte(EPT_NOAD, aged)).toBe(false);
    expect(spteNeedsAtomicWrite(EPT_NOAD, aged)).toBe(true);
  });

  it('S9: A/D off aging whose cmpxchg loses a race keeps the concurrent value, still reports young, no retry, no trace', () => {
    const kvm = vmWithPage({ eptAd: false });
    const sptep = sptepOf(kvm, GFN, 1);
    const ev = captureEvents(kvm, ['kvm_tdp_mmu_spte_changed']);
    const agingOps: MemOp[] = [];
    let raced = false;
    // Right before aging's cmpxchg, another CPU write-protects the slot for dirty logging (lock for read, cmpxchg W off).
    const off = hookOps(kvm.mem, (op, a) => {
      if (a !== sptep) return;
      agingOps.push(op);
      if (op === MemOp.Cmpxchg && !raced) {
        raced = true;
        expect(withReadLock(kvm, () => runProgram(kvm.tdpMmu.wrprotSlot(slot0(kvm), 1)))).toBe(true);
      }
    });
    const young = runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE));
    off();
    expect(raced).toBe(true);
    expect(young).toBe(1);
    const concurrent = E_DW & ~0x2n;
    expect(read64(kvm.mem, sptep)).toBe(concurrent); // 0x8610_0000_1234_5B75: wrprot's value, not access-tracked
    expect(agingOps).toEqual([MemOp.Load, MemOp.Cmpxchg]); // one try, no retry
    expect(kvm.tdpMmu.stats.ageLost).toBe(1);
    expect(kvm.tdpMmu.stats.aged).toBe(0);
    // Only the write-protect traced; aging did not.
    expect(ev).toEqual([{ name: 'kvm_tdp_mmu_spte_changed', fields: { as_id: 0, gfn: GFN, level: 1, old_spte: E_DW, new_spte: concurrent } }]);
  });

  /** S8's state (access-tracked 0x8750...5A70) with dirty logging on, TLB off so the CPU walks memory. */
  function accessTracked(): { kvm: Kvm; sptep: number } {
    const kvm = vmWithPage({ eptAd: false, tlb: false });
    runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE));
    runProgram(kvm.enableDirtyLogging(0)); // nothing writable to protect: W is already gone
    const sptep = sptepOf(kvm, GFN, 1);
    expect(read64(kvm.mem, sptep)).toBe(0x8750_0000_1234_5a70n);
    expect(testPageDirty(slot0(kvm), GFN)).toBe(false);
    return { kvm, sptep };
  }

  it('S10: fast PF, read of the access-tracked SPTE -> 0x8610_0000_1234_5B75 (R, X, A back, W still clear), FIXED, no dirty mark', () => {
    const { kvm, sptep } = accessTracked();
    const ev = captureEvents(kvm, ['fast_page_fault']);
    expect(guestAccess(kvm, GPA, 'read')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    expect(read64(kvm.mem, sptep)).toBe(0x8610_0000_1234_5b75n);
    expect(kvm.stats.pfFast).toBe(1);
    expect(testPageDirty(slot0(kvm), GFN)).toBe(false);
    expect(ev).toHaveLength(1);
    expect(ev[0].fields).toMatchObject({ vcpu_id: 0, cr2_or_gpa: GPA, sptep, old_spte: 0x8750_0000_1234_5a70n, new_spte: 0x8610_0000_1234_5b75n, ret: RetPf.Fixed });
    expect(Number(ev[0].fields.error_code) & 1).toBe(0); // fault.present = 0: the entry had no R/W/X
  });

  it('S11: fast PF, WRITE to the access-tracked SPTE -> 0x8610_0000_1234_5B77, gfn marked dirty, FIXED', () => {
    const { kvm, sptep } = accessTracked();
    const ev = captureEvents(kvm, ['fast_page_fault']);
    expect(guestAccess(kvm, GPA, 'write')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    expect(read64(kvm.mem, sptep)).toBe(0x8610_0000_1234_5b77n);
    expect(testPageDirty(slot0(kvm), GFN)).toBe(true);
    expect(kvm.stats.pfFast).toBe(1);
    expect(ev[0].fields).toMatchObject({ old_spte: 0x8750_0000_1234_5a70n, new_spte: 0x8610_0000_1234_5b77n, ret: RetPf.Fixed });
  });

  it('S12: dirty-log write-protect (wrprot_slot, mmu_lock read) of E_W -> E_WP by cmpxchg; MMU-writable kept; no flush needed', () => {
    const kvm = vmWithPage();
    const sptep = sptepOf(kvm, GFN, 1);
    const ev = captureEvents(kvm, ['kvm_tdp_mmu_spte_changed']);
    const flushes = kvm.stats.flushes;
    const { ops, value } = opsAt(kvm, sptep, () => withReadLock(kvm, () => runProgram(kvm.tdpMmu.wrprotSlot(slot0(kvm), 1))));
    expect(value).toBe(true);
    expect(read64(kvm.mem, sptep)).toBe(E_WP);
    expect(ops).toEqual([MemOp.Load, MemOp.Cmpxchg]);
    expect(isMmuWritableSpte(EPT_AD, E_WP)).toBe(true);
    expect(leafSpteChangeNeedsTlbFlush(EPT_AD, E_W, E_WP)).toBe(false);
    expect(spteNeedsAtomicWrite(EPT_AD, E_WP)).toBe(true);
    expect(kvm.stats.flushes).toBe(flushes);
    expect(ev).toEqual([{ name: 'kvm_tdp_mmu_spte_changed', fields: { as_id: 0, gfn: GFN, level: 1, old_spte: E_W, new_spte: E_WP } }]);
  });

  it('S13: fast PF write to E_WP at 4K -> E_W, FIXED, gfn dirty; a 2M E_WP in a dirty-logged slot -> INVALID (slow path)', () => {
    const kvm = vmWithPage();
    const sptep = sptepOf(kvm, GFN, 1);
    runProgram(kvm.enableDirtyLogging(0));
    expect(read64(kvm.mem, sptep)).toBe(E_WP);
    const ev = captureEvents(kvm, ['fast_page_fault']);
    expect(guestAccess(kvm, GPA, 'write')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    expect(read64(kvm.mem, sptep)).toBe(E_W);
    expect(testPageDirty(slot0(kvm), GFN)).toBe(true);
    expect(kvm.stats.pfFast).toBe(1);
    expect(ev.map((e) => e.fields)).toMatchObject([{ sptep, old_spte: E_WP, new_spte: E_W, ret: RetPf.Fixed }]);

    // 2M: host memory in 2M pages, so the fault maps a 2M leaf.
    const big = makeVm({ hostLevel: 2 });
    expect(guestAccess(big, 0x20_0000, 'read')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    const pfn2m = BigInt(big.mm.lookup(hvaOf(0x20_0000))!);
    const huge = spteOf(big, 0x200, 2);
    expect(huge).toBe(0x8600_0000_0000_0bf7n | (pfn2m << 12n)); // E_W with bit 7
    runProgram(big.enableDirtyLogging(0));
    expect(spteOf(big, 0x200, 2)).toBe(huge & ~0x2n);
    const ev2 = captureEvents(big, ['fast_page_fault']);
    expect(guestAccess(big, 0x20_1000, 'write')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    expect(ev2.map((e) => e.fields)).toMatchObject([{ old_spte: huge & ~0x2n, ret: RetPf.Invalid }]);
    expect(big.stats.pfFast).toBe(0);
    // The slow path split the huge page and made the written 4K page writable (and logged it).
    expect(spteOf(big, 0x201, 1)).toBe(0x8600_0000_0000_0b77n | ((pfn2m + 1n) << 12n));
    expect(testPageDirty(slot0(big), 0x201)).toBe(true);
    expect(testPageDirty(slot0(big), 0x200)).toBe(false);
  });

  it('S14: fast PF write to E_R (host read-only) stops -> INVALID, slow path emulates; a read fault on E_R -> SPURIOUS', () => {
    const kvm = makeVm({ memory: 0 });
    kvm.addMemory(0, 0, 16 << 20, KVM_MEM_READONLY);
    steerNextPfn(kvm, PFN);
    expect(guestAccess(kvm, GPA, 'read')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    const sptep = sptepOf(kvm, GFN, 1);
    expect(read64(kvm.mem, sptep)).toBe(E_R);
    expect(isMmuWritableSpte(EPT_AD, E_R)).toBe(false);
    const ev = captureEvents(kvm, ['fast_page_fault']);
    expect(guestAccess(kvm, GPA, 'write')).toMatchObject({ exits: 1, userExit: 'mmio' });
    expect(ev.map((e) => e.fields)).toMatchObject([{ sptep, old_spte: E_R, new_spte: E_R, ret: RetPf.Invalid }]);
    expect(kvm.stats.pfFast).toBe(0);
    expect(kvm.stats.pfEmulate).toBe(1);
    expect(read64(kvm.mem, sptep)).toBe(E_R);
    // A read EPT violation on E_R (e.g. from a stale TLB entry): access already allowed.
    const r = runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), eptViolation(GPA, { read: true, readable: true, executable: true })));
    expect(r).toBe(RetPf.Spurious);
    expect(kvm.stats.pfSpurious).toBe(1);
    expect(read64(kvm.mem, sptep)).toBe(E_R);
  });

  it('S15: write_protect_gfn clears W and MMU-writable -> 0x8200_0000_1234_5B75; flush required; fast PF cannot fix it', () => {
    const kvm = vmWithPage();
    const sptep = sptepOf(kvm, GFN, 1);
    const ev = captureEvents(kvm, ['kvm_tdp_mmu_spte_changed', 'fast_page_fault']);
    const set = withWriteLock(kvm, () => runProgram(kvm.tdpMmu.writeProtectGfn(slot0(kvm), GFN, 1)));
    expect(set).toBe(true); // the caller must flush
    const wp = 0x8200_0000_1234_5b75n;
    expect(read64(kvm.mem, sptep)).toBe(wp);
    expect(leafSpteChangeNeedsTlbFlush(EPT_AD, E_W, wp)).toBe(true);
    expect(spteNeedsAtomicWrite(EPT_AD, wp)).toBe(false);
    expect(ev).toEqual([{ name: 'kvm_tdp_mmu_spte_changed', fields: { as_id: 0, gfn: GFN, level: 1, old_spte: E_W, new_spte: wp } }]);
    // A write EPT violation: the fast path finds nothing it may fix (not MMU-writable) and leaves it to the slow path.
    runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), eptViolation(GPA, { write: true, readable: true, executable: true })));
    expect(ev.filter((e) => e.name === 'fast_page_fault').map((e) => e.fields)).toMatchObject([{ old_spte: wp, new_spte: wp, ret: RetPf.Invalid }]);
    expect(kvm.stats.pfFast).toBe(0);
  });

  it('S15: with the gfn write-tracked (kvm_write_track_add_gfn) the slow path refuses W too: RET_PF_WRITE_PROTECTED, KVM emulates the write', () => {
    const kvm = vmWithPage();
    const sptep = sptepOf(kvm, GFN, 1);
    const flushes = kvm.stats.flushes;
    runProgram(kvm.writeTrackAddGfn(GFN));
    const wp = 0x8200_0000_1234_5b75n;
    expect(read64(kvm.mem, sptep)).toBe(wp);
    expect(kvm.stats.flushes).toBe(flushes + 1); // MMU-writable was lost
    const r = runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), eptViolation(GPA, { write: true, readable: true, executable: true })));
    expect(r).toBe(RetPf.WriteProtected);
    // make_spte gives no W, MMU-writable or D without write access, so the leaf is rewritten without D.
    expect(read64(kvm.mem, sptep)).toBe(0x8200_0000_1234_5975n);
    // Untracked again, the slow path restores a writable SPTE.
    kvm.writeTrackRemoveGfn(GFN);
    expect(runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), eptViolation(GPA, { write: true, readable: true, executable: true })))).toBe(RetPf.Fixed);
    expect(read64(kvm.mem, sptep)).toBe(E_W);
  });

  it('S16: invalidate_range_start over the gfn: in_progress 1, range set, E_W -> 0x8000_0000_0000_0000 by plain store, stats -1, one flush', () => {
    const kvm = vmWithPage();
    const sptep = sptepOf(kvm, GFN, 1);
    const ev = captureEvents(kvm, ['kvm_unmap_hva_range', 'kvm_tdp_mmu_spte_changed']);
    const flushes = kvm.stats.flushes;
    const freed = kvm.tdpMmu.stats.ptFreed;
    expect(kvm.tdpMmu.stats.pages[1]).toBe(1);
    const r = range(HVA, HVA + PAGE);
    const { ops, value } = opsAt(kvm, sptep, () => runProgram(kvm.notifier.invalidateRangeStart(r)));
    expect(value).toBe(0);
    expect(kvm.invalidate).toMatchObject({ inProgress: 1, seq: 0, rangeStart: GFN, rangeEnd: GFN + 1 });
    expect(read64(kvm.mem, sptep)).toBe(0x8000_0000_0000_0000n);
    expect(ops).toEqual([MemOp.Load, MemOp.Store]); // E_W is not volatile: no xchg
    expect(kvm.tdpMmu.stats.pages[1]).toBe(0);
    expect(kvm.stats.flushes).toBe(flushes + 1);
    expect(ev).toEqual([
      { name: 'kvm_unmap_hva_range', fields: { start: HVA, end: HVA + PAGE } },
      { name: 'kvm_tdp_mmu_spte_changed', fields: { as_id: 0, gfn: GFN, level: 1, old_spte: E_W, new_spte: SHADOW_NONPRESENT_VALUE } },
    ]);
    // The 4K table stays linked and allocated.
    expect(kvm.tdpMmu.stats.ptFreed).toBe(freed);
    expect(isShadowPresentPte(spteOf(kvm, GFN, 2))).toBe(true);
    runProgram(kvm.notifier.invalidateRangeEnd(r));
    expect(kvm.invalidate).toMatchObject({ inProgress: 0, seq: 1 });
    expect(kvm.stats.flushes).toBe(flushes + 1);
  });

  it('S16 (locking): invalidate_range_start takes mmu_lock for write', () => {
    const kvm = vmWithPage();
    expect(() => withReadLock(kvm, () => runProgram(kvm.notifier.invalidateRangeStart(range(HVA, HVA + PAGE))))).toThrow(/write_lock\(mmu_lock\) would wait forever/);
  });

  it('S17: a fault whose mmu_seq snapshot predates the invalidation retries while in progress and after end; a fresh fault installs', () => {
    const kvm = makeVm();
    const slot = slot0(kvm);
    kvm.mem.yields = true; // the fault program stops before each shared-memory step, as under a scheduler
    try {
      const fault = kvmMmuPageFault(kvm, kvm.vcpu(0), eptViolation(GPA, { read: true }));
      // Run the fault through kvm_mmu_faultin_pfn (snapshot, both unsafe checks, hva_to_pfn) up to read_lock(mmu_lock).
      while (kvm.mm.lookup(HVA) === null) expect(fault.next().done).toBe(false);
      expect(fault.next().done).toBe(false); // second unsafe check passed: now about to take mmu_lock
      expect(kvm.mmuLock.readers).toBe(0);
      const r = range(HVA, HVA + PAGE);
      runProgram(kvm.notifier.invalidateRangeStart(r));
      expect(kvm.invalidate).toMatchObject({ inProgress: 1, seq: 0, rangeStart: GFN, rangeEnd: GFN + 1 });
      let res = fault.next();
      while (res.done !== true) res = fault.next();
      expect(res.value).toBe(RetPf.Retry); // is_page_fault_stale under mmu_lock
      expect(kvm.stats.pfRetry).toBe(1);
      expect(isShadowPresentPte(kvm.tdpMmu.lookup(GFN)?.spte ?? SHADOW_NONPRESENT_VALUE)).toBe(false);
      runProgram(kvm.notifier.invalidateRangeEnd(r));
    } finally {
      kvm.mem.yields = false;
    }
    expect(kvm.invalidate).toMatchObject({ inProgress: 0, seq: 1 });
    // The same snapshot (seq 0) is still stale; one taken now (seq 1) is not.
    const stale: KvmPageFault = {
      addr: GPA, gfn: GFN, errorCode: 4, exec: false, write: false, present: false, rsvd: false, prefetch: false, slot,
      pfn: 0, mapWritable: false, maxLevel: 3, reqLevel: 1, goalLevel: 1, hugePageDisallowed: false, mmuSeq: 0,
    };
    expect(isPageFaultStale(kvm, stale)).toBe(true);
    expect(isPageFaultStale(kvm, { ...stale, mmuSeq: 1 })).toBe(false);
    expect(guestAccess(kvm, GPA, 'read')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    expect(kvm.stats.pfFixed).toBe(1);
    expect(spteOf(kvm, GFN, 1)).toBe(0x8600_0000_0000_0b77n | (BigInt(kvm.mm.lookup(HVA)!) << 12n));
  });

  it('S18: a notifier range overlapping no memslot touches neither in_progress nor seq, takes no lock, no flush', () => {
    const kvm = vmWithPage();
    const outside = hvaOf(64 << 20); // beyond the 16 MiB slot
    const r = range(outside, outside + 2 * PAGE);
    const flushes = kvm.stats.flushes;
    // Held for write by someone else: a callback that tried to take it would wait forever.
    withWriteLock(kvm, () => {
      expect(runProgram(kvm.notifier.invalidateRangeStart(r))).toBe(0);
      expect(kvm.invalidate).toMatchObject({ inProgress: 0, seq: 0, rangeStart: -1, rangeEnd: -1 });
      runProgram(kvm.notifier.invalidateRangeEnd(r));
    });
    expect(kvm.invalidate).toMatchObject({ inProgress: 0, seq: 0, rangeStart: -1, rangeEnd: -1, mnActive: 0 });
    expect(kvm.stats.flushes).toBe(flushes);
    expect(spteOf(kvm, GFN, 1)).toBe(E_W);
  });

  it('S19: a 2M leaf replaces a present non-leaf: 512 children frozen, leaf stats -1, table freed via RCU, 2M flush, 2M stats +1', () => {
    // Host memory in 2M pages; dirty logging makes the first fault map 4K under a level-1 table.
    const kvm = makeVm({ hostLevel: 2 });
    runProgram(kvm.enableDirtyLogging(0));
    expect(guestAccess(kvm, 0x20_0000, 'write')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    const pfn2m = BigInt(kvm.mm.lookup(hvaOf(0x20_0000))!);
    const nonleaf = spteOf(kvm, 0x200, 2);
    const tablePa = Number((nonleaf >> 12n) & 0xff_ffff_ffffn) * PAGE;
    expect(nonleaf).toBe(0x8000_0000_0000_0907n | BigInt(tablePa));
    expect(kvm.tdpMmu.stats.pages[1]).toBe(1);
    // Dirty logging off (flags-only update), no recovery pass: the next fault in the 2M range maps huge.
    const s = slot0(kvm);
    kvm.memslots.setMemoryRegion({ slot: 0, flags: 0, guest_phys_addr: 0, memory_size: s.npages * PAGE, userspace_addr: s.userspace_addr });
    const ev = captureEvents(kvm, ['kvm_tdp_mmu_spte_changed', 'kvm_mmu_prepare_zap_page']);
    const flushes = kvm.stats.flushes;
    const freed = kvm.tdpMmu.stats.ptFreed;
    const xchgs: number[] = [];
    const off = hookOps(kvm.mem, (op, a) => void (op === MemOp.Xchg && xchgs.push(a)));
    expect(guestAccess(kvm, 0x20_1000, 'read')).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
    off();
    const huge = 0x8600_0000_0000_0bf7n | (pfn2m << 12n);
    expect(spteOf(kvm, 0x200, 2)).toBe(huge);
    expect(kvm.tdpMmu.stats.pages[2]).toBe(1);
    expect(kvm.tdpMmu.stats.pages[1]).toBe(0);
    expect(kvm.stats.flushes).toBe(flushes + 1);
    // handle_removed_pt(shared): every entry xchg'd to FROZEN_SPTE once.
    expect(xchgs).toEqual(Array.from({ length: 512 }, (_, i) => tablePa + 8 * i));
    const changed = ev.filter((e) => e.name === 'kvm_tdp_mmu_spte_changed');
    expect(changed[0].fields).toEqual({ as_id: 0, gfn: 0x200, level: 2, old_spte: nonleaf, new_spte: huge });
    expect(ev[1]).toEqual({ name: 'kvm_mmu_prepare_zap_page', fields: { gfn: 0x200, level: 1 } });
    const children = changed.slice(1);
    expect(children).toHaveLength(512);
    expect(children[0].fields).toEqual({ as_id: 0, gfn: 0x200, level: 1, old_spte: 0x8600_0000_0000_0b77n | (pfn2m << 12n), new_spte: FROZEN_SPTE });
    for (let i = 1; i < 512; i++) {
      expect(children[i].fields).toMatchObject({ as_id: 0, gfn: 0x200 + i, level: 1, new_spte: FROZEN_SPTE });
      expect(isShadowPresentPte(children[i].fields.old_spte as bigint)).toBe(false); // exact value: see the SHADOW_NONPRESENT_VALUE test
    }
    // Freed after the fault's RCU read section ended, and poisoned.
    expect(kvm.tdpMmu.stats.ptFreed).toBe(freed + 1);
    expect(read64(kvm.mem, tablePa)).toBe(PT_POISON);
    expect(read64(kvm.mem, tablePa + 8 * 511)).toBe(PT_POISON);
  });

  it('S20: a fault walk meeting FROZEN_SPTE at any level returns RETRY at once, allocating nothing', () => {
    expect(FROZEN_SPTE).toBe(0x8000_0000_0000_05a0n);
    expect(isShadowPresentPte(FROZEN_SPTE)).toBe(false);
    expect(isLargePte(FROZEN_SPTE)).toBe(true);
    expect(FROZEN_SPTE & A).toBe(A);

    const kvm = vmWithPage({ memory: 2 ** 31 });
    const vcpu = kvm.vcpu(0);
    // Level 1: the neighbour of the mapped page, in the same 4K table.
    const p1 = sptepOf(kvm, GFN, 1) + 8;
    write64(kvm.mem, p1, FROZEN_SPTE);
    const allocated = kvm.tdpMmu.stats.ptAllocated;
    expect(runProgram(kvmMmuPageFault(kvm, vcpu, eptViolation(GPA + PAGE, { read: true })))).toBe(RetPf.Retry);
    expect(read64(kvm.mem, p1)).toBe(FROZEN_SPTE);
    // Level 3: the 1G entry for gpa 1 GiB (inside the slot), below a present root entry.
    const p3 = kvm.tdpMmu.lookup(0x4_0000, 3)!.sptep;
    expect(spteIndexOfGfn(0x4_0000, 3)).toBe(1);
    write64(kvm.mem, p3, FROZEN_SPTE);
    expect(runProgram(kvmMmuPageFault(kvm, vcpu, eptViolation(0x4000_0000, { write: true })))).toBe(RetPf.Retry);
    expect(read64(kvm.mem, p3)).toBe(FROZEN_SPTE);
    expect(kvm.tdpMmu.stats.ptAllocated).toBe(allocated);
    expect(kvm.stats.pfRetry).toBe(2);
  });

  for (const ad of [true, false]) {
    it(`S21: link race, EPT A/D ${ad ? 'on' : 'off'}: the loser's cmpxchg fails, its sp is freed, RETRY; the winner's non-leaf is ${ad ? '0x8000_0000_0000_0907' : '0x8010_0000_0000_0807'} | child`, () => {
      const kvm = makeVm({ eptAd: ad, vcpus: 2 });
      const root = kvm.tdpMmu.roots[0];
      const rootEntry = root.hpa + 8 * spteIndexOfGfn(0x10, 4);
      const before = { ...kvm.tdpMmu.stats };
      let winner: RetPf | number | undefined;
      // vCPU 1 faults gfn 0x11; right before it links its level-3 table, vCPU 0 runs its whole fault on gfn 0x10.
      const off = hookOps(kvm.mem, (op, a) => {
        if (op !== MemOp.Cmpxchg || a !== rootEntry || winner !== undefined) return;
        winner = runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), eptViolation(0x1_0000, { read: true })));
      });
      const loser = runProgram(kvmMmuPageFault(kvm, kvm.vcpu(1), eptViolation(0x1_1000, { read: true })));
      off();
      expect(winner).toBe(RetPf.Fixed);
      expect(loser).toBe(RetPf.Retry);
      const l3 = kvm.tdpMmu.lookup(0x10, 3)!.sptep;
      const child = Math.floor(l3 / PAGE) * PAGE;
      expect(read64(kvm.mem, rootEntry)).toBe((ad ? 0x8000_0000_0000_0907n : 0x8010_0000_0000_0807n) | BigInt(child));
      expect(kvm.tdpMmu.stats.cmpxchgFailed - before.cmpxchgFailed).toBe(1);
      expect(kvm.tdpMmu.stats.ptAllocated - before.ptAllocated).toBe(4); // 3 by the winner, 1 by the loser
      expect(kvm.tdpMmu.stats.ptFreed - before.ptFreed).toBe(1); // the loser's, at once
      expect(kvm.stats).toMatchObject({ pfFixed: 1, pfRetry: 1 });
      // The loser re-enters, faults again and maps under the winner's tables.
      expect(guestAccess(kvm, 0x1_1000, 'read', 1)).toMatchObject({ outcome: Outcome.Ok, exits: 1 });
      expect(kvm.tdpMmu.stats.ptAllocated - before.ptAllocated).toBe(4);
    });
  }

  it('S22: spte_needs_atomic_update truth table', () => {
    const ad = (v: bigint) => spteNeedsAtomicWrite(EPT_AD, v);
    expect(ad(E_W)).toBe(false); // W=1, D=1
    expect(ad(E_W & ~D)).toBe(true); // W=1, D=0
    expect(ad(E_WP)).toBe(true); // W=0, MMU-writable=1
    expect(ad(E_R)).toBe(false); // W=0, MMU-writable=0 (host read-only)
    for (const v of [E_W, E_W & ~D, E_WP, E_R]) expect(ad(v & ~A)).toBe(ad(v)); // A is irrelevant (6.15+)
    // A/D-disabled leaves: always.
    const noad = (v: bigint) => spteNeedsAtomicWrite(EPT_NOAD, v);
    expect(noad(E_DW)).toBe(true);
    expect(noad(0x8750_0000_1234_5a70n)).toBe(true); // access-tracked
    expect(noad(0x8010_0000_1234_5975n)).toBe(true); // host read-only
    // kvm_tdp_mmu_spte_need_atomic_update also requires a present leaf.
    expect(tdpMmuSpteNeedAtomicUpdate(EPT_AD, E_W & ~D, 1)).toBe(true);
    expect(tdpMmuSpteNeedAtomicUpdate(EPT_AD, (E_W & ~D) & ~0x800n, 1)).toBe(false);
    expect(tdpMmuSpteNeedAtomicUpdate(EPT_AD, 0x8000_0000_0000_0907n | 0x1234_5000n, 2)).toBe(false);
  });

  it('S23: NPT aging of N_W clears bit 5 only -> 0x0000_0000_1234_5E47 (TDP fetch-and; shadow rmap clear_bit); no access tracking', () => {
    const kvm = vmWithPage({ tdp: 'npt' });
    const sptep = sptepOf(kvm, GFN, 1);
    expect(read64(kvm.mem, sptep)).toBe(N_W);
    // A shadow-MMU SPTE for the same gfn, in its rmap.
    const spt = kvm.pages.allocPage();
    write64(kvm.mem, spt, N_W);
    const rmaps = kvm.rmaps(slot0(kvm));
    withWriteLock(kvm, () => runProgram(rmaps.pteListAdd(spt, rmaps.headFor(GFN, 1))));
    kvm.indirectShadowPages = 1;
    const tdpOps: MemOp[] = [];
    const shadowOps: MemOp[] = [];
    const off = hookOps(kvm.mem, (op, a) => {
      if (a === sptep) tdpOps.push(op);
      if (a === spt) shadowOps.push(op);
    });
    expect(runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE))).toBe(1);
    off();
    expect(read64(kvm.mem, sptep)).toBe(0x0000_0000_1234_5e47n);
    expect(read64(kvm.mem, spt)).toBe(0x0000_0000_1234_5e47n);
    expect(tdpOps).toEqual([MemOp.Load, MemOp.And]);
    expect(shadowOps).toEqual([MemOp.Load, MemOp.And]);
    expect(NPT.accTrackMask).toBe(0n);
    expect(N_W & 0x30_0000_0000_0000n).toBe(0n);
    expect(isAccessTrackSpte(NPT, 0x0000_0000_1234_5e47n)).toBe(false);
  });

  it('S24: shadow rmap aging of an rmap locked by a writer spins, then locks with cmpxchg (head | 2), walks, stores the head back; empty rmaps are not locked', () => {
    const kvm = makeVm();
    const rmaps = kvm.rmaps(slot0(kvm));
    const spt = kvm.pages.allocPage();
    write64(kvm.mem, spt, E_W);
    write64(kvm.mem, spt + 8, E_W);
    const head = rmaps.headFor(GFN, 1);
    withWriteLock(kvm, () => {
      runProgram(rmaps.pteListAdd(spt, head));
      runProgram(rmaps.pteListAdd(spt + 8, head));
    });
    const val = rmaps.get(head);
    kvm.indirectShadowPages = 1;
    kvm.mem.yields = true;
    try {
      // A writer (mmu_lock for write) holds the rmap lock.
      runProgram(kvm.mmuLock.writeLock());
      const held = runProgram(rmaps.lock(head));
      expect(held).toBe(val);
      expect(read64(kvm.mem, head)).toBe(BigInt(val | KVM_RMAP_LOCKED));
      // The aging callback spins on LOCKED: no progress however often it runs.
      const ops: [MemOp, bigint][] = [];
      const off = hookOps(kvm.mem, (op, a) => void (a === head && ops.push([op, read64(kvm.mem, head)])));
      const ager = kvm.notifier.clearYoung(HVA, HVA + PAGE);
      for (let i = 0; i < 40; i++) expect(ager.next().done).toBe(false);
      expect(read64(kvm.mem, spt)).toBe(E_W);
      expect(ops.length).toBeGreaterThan(5);
      expect(ops.every(([op, v]) => op === MemOp.Load && v === BigInt(val | KVM_RMAP_LOCKED))).toBe(true);
      // The writer unlocks; the reader takes the lock with cmpxchg, ages, and stores the original head.
      ops.length = 0;
      off();
      runProgram(rmaps.unlock(head, val));
      kvm.mmuLock.writeUnlock();
      const off2 = hookOps(kvm.mem, (op, a) => void (a === head && ops.push([op, read64(kvm.mem, head)])));
      let r = ager.next();
      while (r.done !== true) r = ager.next();
      off2();
      expect(r.value).toBe(1);
      expect(ops.map(([op]) => op)).toEqual([MemOp.Load, MemOp.Cmpxchg, MemOp.Load, MemOp.Store]);
      expect(ops[1][1]).toBe(BigInt(val)); // cmpxchg from the unlocked value ...
      expect(ops[3][1]).toBe(BigInt(val | KVM_RMAP_LOCKED)); // ... and the store releases our own lock
    } finally {
      kvm.mem.yields = false;
    }
    expect(read64(kvm.mem, head)).toBe(BigInt(val));
    expect(read64(kvm.mem, spt)).toBe(0x8600_0000_1234_5a77n);
    expect(read64(kvm.mem, spt + 8)).toBe(0x8600_0000_1234_5a77n);
    // Empty rmap (gfn 6): one load per level, never locked, nothing aged.
    const empty = rmaps.headFor(GFN + 1, 1);
    const emptyOps: MemOp[] = [];
    const off3 = hookOps(kvm.mem, (op, a) => void (a === empty && emptyOps.push(op)));
    expect(runProgram(kvm.notifier.clearYoung(hvaOf(GPA + PAGE), hvaOf(GPA + 2 * PAGE)))).toBe(0);
    off3();
    expect(emptyOps).toEqual([MemOp.Load]);
    expect(read64(kvm.mem, empty)).toBe(0n);
  });

  it('S25: MMIO SPTE on EPT, generation 0x1FF, gfn 0xFEE00 -> 0x0010_0000_FEE0_07FE; MMIO, not present, decodes back', () => {
    const spte = makeMmioSpte(EPT_AD, 0xfee00n, ACC_ALL, 0x1ffn);
    expect(spte).toBe(0x0010_0000_fee0_07fen);
    expect(isMmioSpte(EPT_AD, spte)).toBe(true);
    expect(spte & 0x8000_0000_0000_0007n).toBe(0x6n);
    expect(isShadowPresentPte(spte)).toBe(false);
    expect(getMmioSpteGeneration(spte)).toBe(0x1ffn);
    expect(getMmioSpteGfn(EPT_AD, spte)).toBe(0xfee00n);

    // Through a guest access to a gpa no memslot covers: cached as an MMIO SPTE, then an EPT misconfig.
    const kvm = makeVm();
    const ev = captureEvents(kvm, ['mark_mmio_spte']);
    const gen = kvm.memslotsGeneration();
    expect(guestAccess(kvm, 0xfee0_0000, 'read')).toMatchObject({ exits: 1, userExit: 'mmio' });
    const mmio = spteOf(kvm, 0xfee00, 1);
    expect(mmio).toBe(0xfee0_0006n | generationMmioSpteMask(gen & 0x7ffffn));
    expect(getMmioSpteGeneration(mmio)).toBe(gen & 0x7ffffn);
    expect(getMmioSpteGfn(EPT_AD, mmio)).toBe(0xfee00n);
    expect(ev.map((e) => e.fields)).toMatchObject([{ gfn: 0xfee00, gen }]);
    expect(guestAccess(kvm, 0xfee0_0000, 'read')).toMatchObject({ exits: 1, userExit: 'mmio' });
    expect(kvm.stats.pfEmulate).toBe(2);
    expect(kvm.tdpMmu.stats.pages[1]).toBe(0);
  });

  // Kernel (6.10+, kvm_mmu_create): mmu_shadow_page_cache.init_value = SHADOW_NONPRESENT_VALUE, so every
  // TDP page-table page (root included) starts with all 512 entries = 0x8000_0000_0000_0000 (spec 1.1),
  // and the first install of a never-populated SPTE traces old_spte = 0x8000_0000_0000_0000 (S1, S16, S19).
  it('S1/S19: never-populated SPTEs are SHADOW_NONPRESENT_VALUE (page-table pages pre-filled), in memory and in the traces', () => {
    const kvm = makeVm();
    const ev = captureEvents(kvm, ['kvm_tdp_mmu_spte_changed']);
    const root = kvm.tdpMmu.roots[0].hpa;
    for (let i = 0; i < 512; i++) expect(read64(kvm.mem, root + 8 * i)).toBe(SHADOW_NONPRESENT_VALUE);
    steerNextPfn(kvm, PFN);
    guestAccess(kvm, GPA, 'write');
    const sptep = sptepOf(kvm, GFN, 1);
    expect(read64(kvm.mem, sptep + 8)).toBe(SHADOW_NONPRESENT_VALUE); // gfn 6, never populated
    // Every link and the leaf replaced SHADOW_NONPRESENT_VALUE.
    expect(ev.map((e) => [e.fields.level, e.fields.old_spte])).toEqual([
      [4, SHADOW_NONPRESENT_VALUE], [3, SHADOW_NONPRESENT_VALUE], [2, SHADOW_NONPRESENT_VALUE], [1, SHADOW_NONPRESENT_VALUE],
    ]);
    expect(ev[3].fields).toEqual({ as_id: 0, gfn: GFN, level: 1, old_spte: SHADOW_NONPRESENT_VALUE, new_spte: E_W });
  });

  it('S26: pre-6.13 (kernel=612), EPT A/D disabled: no software A/D masks, creation sets neither bit 8 nor 9, accessed = not access-tracked', () => {
    const old = makeFlavour('ept-noad', { kernel: 612 });
    expect([old.accessedMask, old.dirtyMask]).toEqual([0n, 0n]);
    const spte = makeSpte(old, { level: 1, pfn: 0x12345n, access: ACC_ALL, hostWritable: true }).spte;
    expect(spte).toBe(0x8610_0000_1234_5877n);
    expect(isAccessedSpte(old, spte)).toBe(true);
    const tracked = markSpteForAccessTrack(old, spte);
    expect(tracked).toBe(0x8750_0000_1234_5870n);
    expect(isAccessedSpte(old, tracked)).toBe(false);
  });

  it('S26: pre-6.13 aging of a writable A/D-disabled SPTE marks the pfn dirty first, under mmu_lock held for write', () => {
    const kvm = vmWithPage({ eptAd: false, kernel: 612 });
    const sptep = sptepOf(kvm, GFN, 1);
    expect(read64(kvm.mem, sptep)).toBe(0x8610_0000_1234_5877n);
    // Aging takes mmu_lock for write before 6.15: with the lock held elsewhere it cannot start.
    expect(() => withWriteLock(kvm, () => runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE)))).toThrow(/write_lock\(mmu_lock\) would wait forever/);
    expect(runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE))).toBe(1);
    expect(kvm.stats.pfnDirtied).toBe(1);
    expect(kvm.lastPfnDirtied).toBe(PFN);
    expect(read64(kvm.mem, sptep)).toBe(0x8750_0000_1234_5870n);
    expect(runProgram(kvm.notifier.clearYoung(HVA, HVA + PAGE))).toBe(0);
  });

  it('S22: before 6.15 (spte_has_volatile_bits) an A/D-enabled leaf with A clear also needs an atomic update', () => {
    const f614 = makeFlavour('ept-ad', { kernel: 614 });
    expect(spteNeedsAtomicWrite(f614, E_W)).toBe(false);
    expect(spteNeedsAtomicWrite(f614, E_W & ~A)).toBe(true);
    expect(spteNeedsAtomicWrite(EPT_AD, E_W & ~A)).toBe(false);
  });
});
