/**
 * The MMU-notifier core (mm.md section 1): scenarios 1-10 of section 7, then
 * each op's contract where the scenarios are silent.
 */
import { describe, expect, it } from 'vitest';
import { PhysMem } from '../../src/hw/phys_mem.js';
import { CR0_PE } from '../../src/hw/regs.js';
import { AccessKind, AccessResult, Outcome } from '../../src/hw/result.js';
import { runProgram } from '../../src/hw/sched.js';
import { EFAULT, kvmMmuPageFault } from '../../src/kvm/mmu.js';
import { isShadowPresentPte } from '../../src/kvm/spte.js';
import { RetPf } from '../../src/kvm/tdp_mmu.js';
import { GUEST_HVA_BASE, Kvm, type GuestAccess } from '../../src/kvm/vm.js';
import { MmStruct } from '../../src/mm/mm.js';
import {
  EAGAIN, EINVAL, EOVERFLOW, MMU_NOTIFIER_EVENT_NAMES, MMU_NOTIFIER_RANGE_BLOCKABLE, MmuIntervalNotifier, MmuNotifierEvent,
  MmuNotifierSubscriptions, UINT_MAX, ULONG_MAX, mmuNotifierRangeBlockable, mmuNotifierRangeInit,
  type MmuIntervalNotifierOps, type MmuNotifierOps, type MmuNotifierRange, type MmuNotifierTemplate,
} from '../../src/mm/mmu_notifier.js';
import { MmuNotifierSrcu } from '../../src/mm/mmu_notifier_srcu.js';
import { PageAllocator } from '../../src/mm/page_alloc.js';

const M = 1 << 20;
const K4 = 4096;

interface FakeOpts {
  young?: number;
  testYoung?: number;
  startRet?: number;
  /** Implement start but not end (a subscriber whose start can fail). */
  noEnd?: boolean;
  /** Implement neither start nor end. */
  noStartEnd?: boolean;
  arch?: boolean;
  /** Yield once inside clear_young and release (to interleave). */
  yields?: boolean;
  /** Called inside each callback, to observe the core's state there. */
  probe?: (op: string) => void;
}

function rangeStr(r: MmuNotifierRange): string {
  const end = r.end === ULONG_MAX ? 'ULONG_MAX' : `0x${r.end.toString(16)}`;
  return `${MMU_NOTIFIER_EVENT_NAMES[r.event]},${r.flags & MMU_NOTIFIER_RANGE_BLOCKABLE ? 'BLOCKABLE' : 'NONBLOCK'},0x${r.start.toString(16)},${end}`;
}

/** A classic subscriber that logs each call as `name.op`. */
function fake(name: string, log: string[], o: FakeOpts = {}): MmuNotifierOps {
  const sub: MmuNotifierOps = {
    *release() {
      o.probe?.('release');
      log.push(`${name}.release`);
      if (o.yields) yield;
    },
    *clearFlushYoung() {
      log.push(`${name}.clear_flush_young`);
      return o.young ?? 0;
    },
    *clearYoung() {
      o.probe?.('clear_young');
      log.push(`${name}.clear_young`);
      if (o.yields) yield;
      return o.young ?? 0;
    },
    *testYoung() {
      log.push(`${name}.test_young`);
      return o.testYoung ?? 0;
    },
  };
  if (!o.noStartEnd) {
    sub.invalidateRangeStart = function* (r) {
      o.probe?.('start');
      log.push(`${name}.start(${rangeStr(r)})`);
      return o.startRet ?? 0;
    };
    if (!o.noEnd) {
      sub.invalidateRangeEnd = function* (r) {
        o.probe?.('end');
        log.push(`${name}.end(${rangeStr(r)})`);
      };
    }
  }
  if (o.arch) sub.archInvalidateSecondaryTlbs = (s, e) => void log.push(`${name}.arch_invalidate_secondary_tlbs(0x${s.toString(16)},0x${e.toString(16)})`);
  return sub;
}

/** An interval subscriber following the required pattern: set_seq, then tear down. */
function intervalOps(name: string, log: string[], ok = true): MmuIntervalNotifierOps {
  return {
    *invalidate(sub, r, curSeq) {
      sub.setSeq(curSeq);
      log.push(`${name}.invalidate(${rangeStr(r)},seq=${curSeq})`);
      return ok;
    },
  };
}

/** Subscriptions with their own SRCU domain and a CPU whose preemptibility a test switches. */
function subscriptions() {
  const cpu = { yields: false };
  const srcu = new MmuNotifierSrcu();
  return { subs: new MmuNotifierSubscriptions({ cpu, srcu }), cpu, srcu };
}

function mmOnly(): MmStruct {
  const mem = new PhysMem(40);
  return new MmStruct(mem, new PageAllocator(mem, 0x100_0000, 0x1000_0000));
}

const range = (event: MmuNotifierEvent, start: number, end: number, flags = MMU_NOTIFIER_RANGE_BLOCKABLE) => mmuNotifierRangeInit(event, flags, start, end);

/** Steps the programs in turn until all have finished (bounded: a test must not hang). */
function drive(...gens: Generator<unknown, unknown, undefined>[]): void {
  const done = gens.map(() => false);
  for (let i = 0; done.includes(false); i++) {
    if (i > 100_000) throw new Error('drive: programs still running after 100000 rounds');
    gens.forEach((g, k) => {
      if (!done[k]) done[k] = g.next().done === true;
    });
  }
}

/** Steps one program to its end (bounded) and returns its value. */
function finish<T>(g: Generator<unknown, T, undefined>): T {
  for (let i = 0; i < 100_000; i++) {
    const r = g.next();
    if (r.done === true) return r.value;
  }
  throw new Error('finish: program still running after 100000 steps');
}

/** A VM with paging off in the guest (gva == gpa). */
function vm(memory = 4 << 20): Kvm {
  const kvm = new Kvm({ tdp: 'ept', memory });
  const regs = kvm.machine.vcpu(0).regs;
  regs.efer = 0;
  regs.cr0 = CR0_PE;
  return kvm;
}

function guest(kvm: Kvm, gpa: number, kind: AccessKind): Outcome {
  const out = { result: undefined, exits: 0, userExit: null } as unknown as GuestAccess;
  runProgram(kvm.access(0, 0, gpa, kind, 1, out));
  return out.result.outcome;
}

/** The exit a guest access at gpa takes now (not handled). */
function exitFor(kvm: Kvm, gpa: number, kind: AccessKind): AccessResult {
  const r = new AccessResult();
  r.copyFrom(kvm.machine.access(0, 0, gpa, kind, 1, false));
  expect(r.outcome).toBe(Outcome.EptViolation);
  return r;
}

function sptepresent(kvm: Kvm, gfn: number): boolean {
  const l = kvm.tdpMmu.lookup(gfn);
  return l !== null && isShadowPresentPte(l.spte);
}

describe('mm.md section 7: notifier semantics', () => {
  it('Scenario 1: call order and aggregation', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    const a = fake('A', log, { testYoung: 1, young: 1 });
    const b = fake('B', log, { testYoung: 2, young: 0 });
    expect(subs.register(a)).toBe(0);
    expect(subs.register(b)).toBe(0);
    expect(subs.subscribers).toEqual([b, a]);

    expect(runProgram(subs.testYoung(0x1000))).toBe(2); // B's value, A never asked
    expect(log).toEqual(['B.test_young']);
    log.length = 0;
    expect(runProgram(subs.clearYoung(0x1000, 0x2000))).toBe(1);
    expect(log).toEqual(['B.clear_young', 'A.clear_young']);
    log.length = 0;
    expect(runProgram(subs.clearFlushYoung(0x1000, 0x2000))).toBe(1);
    expect(log).toEqual(['B.clear_flush_young', 'A.clear_flush_young']);
    expect(Object.fromEntries(subs.calls)).toEqual({ test_young: 1, clear_young: 2, clear_flush_young: 2 });
    expect(Object.fromEntries(subs.asks)).toEqual({ test_young: 1, clear_young: 1, clear_flush_young: 1 });
  });

  it('Scenario 2: registration conflict', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    expect(subs.register(fake('S', log, { arch: true }))).toBe(-EINVAL);
    expect(subs.register(fake('E', log, { arch: true, noStartEnd: true, noEnd: true }))).toBe(0);
    const endOnly = fake('F', log, { arch: true, noStartEnd: true });
    endOnly.invalidateRangeEnd = function* () {};
    expect(subs.register(endOnly)).toBe(-EINVAL);
    expect(subs.subscribers.length).toBe(1);
    expect(subs.warnings.map((w) => w.kind)).toEqual(['register-conflict', 'register-conflict']);
  });

  it('Scenario 2: a refused first registration leaves the mm without notifiers', () => {
    const { subs } = subscriptions();
    expect(subs.register(fake('S', [], { arch: true }))).toBe(-EINVAL);
    expect(subs.hasNotifiers).toBe(false);
  });

  it('Scenario 3: persistent has-notifiers', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    const k = fake('K', log);
    expect(subs.hasNotifiers).toBe(false);
    subs.register(k);
    runProgram(subs.unregister(k));
    expect(log).toEqual(['K.release']);
    expect(subs.subscribers).toEqual([]);
    expect(subs.hasNotifiers).toBe(true);
    // The aging wrappers still enter the core (so MGLRU still treats the mm as having notifiers), reaching nobody.
    expect(runProgram(subs.clearYoung(0, K4))).toBe(0);
    expect(subs.asks.get('clear_young')).toBe(1);
    expect(subs.calls.get('clear_young')).toBeUndefined();
  });

  it('Scenario 4: munmap ordering, in_progress, and fault retries (real KVM)', () => {
    const kvm = vm();
    const mm = kvm.mm;
    const hva = (gpa: number) => GUEST_HVA_BASE + gpa;
    const log: string[] = [];
    // Registered after KVM, so called first at start and at end.
    mm.notifiers.register(fake('R', log, {
      probe: (op) => {
        if (op === 'start' || op === 'end') log.push(`pte ${mm.lookup(hva(0x5000)) === null ? 'cleared' : 'present'}, in_progress ${kvm.invalidate.inProgress}`);
      },
    }));
    expect(guest(kvm, 0x5000, AccessKind.Write)).toBe(Outcome.Ok);
    expect(sptepresent(kvm, 5)).toBe(true);
    const seq0 = kvm.invalidate.seq;

    kvm.mem.yields = true;
    try {
      // Fault A snapshots mmu_invalidate_seq, then is preempted.
      const faultA = kvmMmuPageFault(kvm, kvm.vcpu(0), exitFor(kvm, 0x6000, AccessKind.Read));
      expect(faultA.next().done).toBe(false);
      expect(kvm.vcpu(0).fault.mmuSeq).toBe(seq0);

      // munmap runs until its PTEs are cleared: every start is done, KVM's end has not run.
      const unmap = mm.munmap(GUEST_HVA_BASE, 4 << 20);
      for (let i = 0; mm.lookup(hva(0x5000)) !== null; i++) {
        expect(i).toBeLessThan(100_000);
        expect(unmap.next().done).toBe(false);
      }
      expect(kvm.invalidate.inProgress).toBe(1);
      expect([kvm.invalidate.rangeStart, kvm.invalidate.rangeEnd]).toEqual([0, 0x400]);
      expect(kvm.invalidate.seq).toBe(seq0);
      expect(sptepresent(kvm, 5)).toBe(false); // zapped at start

      // Fault B, inside the window: retries without mapping anything.
      const b = runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), exitFor(kvm, 0x7000, AccessKind.Read)));
      expect(b).toBe(RetPf.Retry);
      expect(sptepresent(kvm, 7)).toBe(false);

      drive(unmap);
      expect(kvm.invalidate.inProgress).toBe(0);
      expect(kvm.invalidate.seq).toBe(seq0 + 1);

      // Fault A resumes after end: its snapshot is stale, it retries.
      const retries = kvm.stats.pfRetry;
      expect(finish(faultA)).toBe(RetPf.Retry);
      expect(kvm.stats.pfRetry).toBe(retries + 1);
      expect(sptepresent(kvm, 6)).toBe(false);
    } finally {
      kvm.mem.yields = false;
    }
    const s = `MMU_NOTIFY_UNMAP,BLOCKABLE,0x${GUEST_HVA_BASE.toString(16)},0x${(GUEST_HVA_BASE + (4 << 20)).toString(16)}`;
    expect(log).toEqual([
      `pte present, in_progress 0`, `R.start(${s})`,
      `pte cleared, in_progress 1`, `R.end(${s})`,
    ]);
    expect(mm.notifiers.rangesByEvent.get('MMU_NOTIFY_UNMAP')).toBe(1);
    // Afterwards the gfn has no host memory: the fault fails.
    expect(runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), exitFor(kvm, 0x6000, AccessKind.Read)))).toBe(EFAULT);
  });

  it('Scenario 5: overlapping invalidations (real KVM)', () => {
    const kvm = vm(8 << 20);
    const subs = kvm.mm.notifiers;
    const r1 = range(MmuNotifierEvent.Clear, GUEST_HVA_BASE, GUEST_HVA_BASE + 4 * M);
    const r2 = range(MmuNotifierEvent.Clear, GUEST_HVA_BASE + 2 * M, GUEST_HVA_BASE + 8 * M);
    const fault6M = () => runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), exitFor(kvm, 6 * M, AccessKind.Read)));
    expect(runProgram(subs.invalidateRangeStart(r1))).toBe(0);
    expect([kvm.invalidate.inProgress, kvm.invalidate.rangeStart, kvm.invalidate.rangeEnd]).toEqual([1, 0, 0x400]);
    expect(runProgram(subs.invalidateRangeStart(r2))).toBe(0);
    expect([kvm.invalidate.inProgress, kvm.invalidate.rangeStart, kvm.invalidate.rangeEnd]).toEqual([2, 0, 0x800]);
    expect(fault6M()).toBe(RetPf.Retry);
    runProgram(subs.invalidateRangeEnd(r1));
    expect([kvm.invalidate.inProgress, kvm.invalidate.rangeStart, kvm.invalidate.rangeEnd]).toEqual([1, 0, 0x800]);
    expect(fault6M()).toBe(RetPf.Retry);
    runProgram(subs.invalidateRangeEnd(r2));
    expect(kvm.invalidate.inProgress).toBe(0);
    expect(fault6M()).toBe(RetPf.Fixed);
    expect(guest(kvm, 6 * M, AccessKind.Read)).toBe(Outcome.Ok);
  });

  it('Scenario 6: non-blocking start failure', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    subs.register(fake('X', log));
    subs.register(fake('Y', log, { startRet: -EAGAIN, noEnd: true }));
    const r = range(MmuNotifierEvent.Clear, 0x1000, 0x2000);
    expect(runProgram(subs.invalidateRangeStartNonblock(r))).toBe(-EAGAIN);
    expect(mmuNotifierRangeBlockable(r)).toBe(false);
    const s = 'MMU_NOTIFY_CLEAR,NONBLOCK,0x1000,0x2000';
    // Y fails, X is still called, then X's end at once; the caller calls no end.
    expect(log).toEqual([`Y.start(${s})`, `X.start(${s})`, `X.end(${s})`]);
    expect(subs.warnings).toEqual([]);
    expect(subs.startFailures).toBe(1);
  });

  it('Scenario 6 (variant): a failing subscriber that implements end is flagged, and its end is called too', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    subs.register(fake('X', log));
    subs.register(fake('Y', log, { startRet: -EAGAIN }));
    expect(runProgram(subs.invalidateRangeStartNonblock(range(MmuNotifierEvent.Clear, 0, K4)))).toBe(-EAGAIN);
    expect(log.map((l) => l.slice(0, l.indexOf('(')))).toEqual(['Y.start', 'X.start', 'Y.end', 'X.end']);
    expect(subs.warnings.map((w) => w.kind)).toEqual(['failing-start-has-end']);
  });

  it('Scenario 7: release once, exit first (real KVM beside a fake K)', () => {
    const kvm = vm();
    const log: string[] = [];
    const k = fake('K', log);
    kvm.mm.notifiers.register(k);
    expect(guest(kvm, 0x3000, AccessKind.Write)).toBe(Outcome.Ok);
    runProgram(kvm.mm.exit());
    expect(log).toEqual(['K.release']); // and not the UNMAP teardown that follows
    expect(sptepresent(kvm, 3)).toBe(false); // KVM's release zapped everything
    expect(kvm.mm.notifiers.calls.get('release')).toBe(2);
    expect(kvm.mm.notifiers.subscribers).toEqual([]);
    runProgram(kvm.mm.notifiers.unregister(k));
    expect(log).toEqual(['K.release']);
    expect(kvm.mm.notifiers.srcu.syncs).toBeGreaterThanOrEqual(2);
  });

  it('Scenario 7: release once, unregister first; afterwards no callback reaches K', () => {
    const mm = mmOnly();
    const log: string[] = [];
    const k = fake('K', log, { young: 1, testYoung: 1 });
    mm.notifiers.register(k);
    mm.mmap(0x40_0000, 4 * K4);
    mm.hvaToPfn(0x40_0000, true);
    runProgram(mm.notifiers.unregister(k));
    expect(log).toEqual(['K.release']);
    runProgram(mm.exit());
    expect(log).toEqual(['K.release']);
    const subs = mm.notifiers;
    expect(runProgram(subs.clearYoung(0, K4)) + runProgram(subs.clearFlushYoung(0, K4)) + runProgram(subs.testYoung(0))).toBe(0);
    runProgram(subs.invalidateRangeStart(range(MmuNotifierEvent.Clear, 0, K4)));
    runProgram(subs.invalidateRangeEnd(range(MmuNotifierEvent.Clear, 0, K4)));
    expect(log).toEqual(['K.release']);
    expect(subs.rangesByEvent.get('MMU_NOTIFY_UNMAP')).toBe(1); // exit's teardown, seen by nobody
  });

  it('Scenario 8: interval retry', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    const i = new MmuIntervalNotifier();
    expect(subs.intervalNotifierInsert(i, 0, M, intervalOps('I', log))).toBe(0);
    expect(subs.hasNotifiers).toBe(true);
    const seqs = [subs.itree.invalidateSeq];
    const seq = runProgram(i.readBegin());
    expect(seq).toBe(1); // mm seq - 1: odd, not equal, so no wait

    const miss = range(MmuNotifierEvent.Clear, 2 * M, 3 * M);
    runProgram(subs.invalidateRangeStart(miss));
    seqs.push(subs.itree.invalidateSeq);
    runProgram(subs.invalidateRangeEnd(miss));
    expect(i.readRetry(seq)).toBe(false);
    expect(log).toEqual([]);

    const hit = range(MmuNotifierEvent.Clear, 512 * 1024, 600 * 1024);
    runProgram(subs.invalidateRangeStart(hit));
    seqs.push(subs.itree.invalidateSeq);
    expect(log).toEqual(['I.invalidate(MMU_NOTIFY_CLEAR,BLOCKABLE,0x80000,0x96000,seq=3)']);
    expect(i.checkRetry(seq)).toBe(true);
    runProgram(subs.invalidateRangeEnd(hit));
    seqs.push(subs.itree.invalidateSeq);
    expect(i.readRetry(seq)).toBe(true);
    expect(seqs).toEqual([2, 2, 3, 4]);
    // A new read side after the end does not wait and sees no collision.
    const seq2 = runProgram(i.readBegin());
    expect(seq2).toBe(3);
    expect(i.readRetry(seq2)).toBe(false);
  });

  it('Scenario 9: deferred interval insert', () => {
    const { subs, cpu } = subscriptions();
    const log: string[] = [];
    const i = new MmuIntervalNotifier();
    subs.intervalNotifierInsert(i, 0, M, intervalOps('I', log));
    const a = range(MmuNotifierEvent.Clear, 0, K4);
    const b = range(MmuNotifierEvent.Unmap, 16 * M, 17 * M);
    runProgram(subs.invalidateRangeStart(a));
    expect(subs.itree.invalidateSeq).toBe(3);
    const j = new MmuIntervalNotifier();
    expect(subs.intervalNotifierInsert(j, 8 * M, M, intervalOps('J', log))).toBe(0);
    expect(subs.itree.intervals).toEqual([i]);
    expect(subs.itree.deferred).toEqual([j]);
    expect(j.invalidateSeq).toBe(3);
    runProgram(subs.invalidateRangeStart(b)); // overlapping invalidation, misses both

    cpu.yields = true;
    const begin = j.readBegin();
    expect(begin.next().done).toBe(false); // blocked
    runProgram(subs.invalidateRangeEnd(a));
    expect(subs.itree.activeInvalidateRanges).toBe(1);
    expect(subs.itree.intervals).toEqual([i]); // not the last end yet
    expect(begin.next().done).toBe(false);
    runProgram(subs.invalidateRangeEnd(b));
    expect(subs.itree.invalidateSeq).toBe(4);
    expect(subs.itree.intervals).toEqual([i, j]);
    expect(subs.itree.deferred).toEqual([]);
    expect(subs.itree.wakeUps).toBe(1);
    const r = begin.next();
    cpu.yields = false;
    expect(r).toEqual({ done: true, value: 3 });
    expect(j.readRetry(3)).toBe(false);
    expect(subs.itree.waits).toBe(2);
  });

  it('Scenario 10: mprotect RO/RW (real KVM)', () => {
    const kvm = vm();
    const subs = kvm.mm.notifiers;
    const log: string[] = [];
    subs.register(fake('R', log));
    expect(guest(kvm, 0x5000, AccessKind.Write)).toBe(Outcome.Ok);
    subs.resetCounters();

    runProgram(kvm.mm.mprotect(GUEST_HVA_BASE, 4 << 20, { writable: false }));
    const s = `MMU_NOTIFY_PROTECTION_VMA,BLOCKABLE,0x${GUEST_HVA_BASE.toString(16)},0x${(GUEST_HVA_BASE + (4 << 20)).toString(16)}`;
    expect(log).toEqual([`R.start(${s})`, `R.end(${s})`]);
    expect(sptepresent(kvm, 5)).toBe(false); // KVM zapped
    expect(runProgram(kvmMmuPageFault(kvm, kvm.vcpu(0), exitFor(kvm, 0x5000, AccessKind.Write)))).toBe(EFAULT);
    expect(guest(kvm, 0x5000, AccessKind.Read)).toBe(Outcome.Ok); // reads map read-only

    runProgram(kvm.mm.mprotect(GUEST_HVA_BASE, 4 << 20, { writable: true }));
    expect(guest(kvm, 0x5000, AccessKind.Write)).toBe(Outcome.Ok);
    expect(subs.rangesByEvent.get('MMU_NOTIFY_PROTECTION_VMA')).toBe(2);
    expect(subs.callsByEvent.get('MMU_NOTIFY_PROTECTION_VMA')).toBe(8); // 2 changes x (start + end) x (KVM + R)
    expect(Object.fromEntries(subs.asks)).toEqual({ invalidate_range_start: 2, invalidate_range_end: 2 });
  });
});

describe('op contracts beyond the scenarios', () => {
  it('test_young asks everyone when nobody is young; an mm without subscriptions asks nobody', () => {
    const { subs } = subscriptions();
    expect(runProgram(subs.testYoung(0))).toBe(0);
    expect(subs.asks.size).toBe(0); // mm_has_notifiers false: the wrappers return at once
    const log: string[] = [];
    subs.register(fake('A', log));
    subs.register(fake('B', log));
    expect(runProgram(subs.testYoung(0))).toBe(0);
    expect(log).toEqual(['B.test_young', 'A.test_young']);
  });

  it('start/end come in pairs, in list order, with the same range; end is skipped for subscribers without one', () => {
    const mm = mmOnly();
    const log: string[] = [];
    mm.notifiers.register(fake('A', log));
    mm.notifiers.register(fake('B', log, { noEnd: true }));
    mm.mmap(0x40_0000, 8 * K4);
    runProgram(mm.madviseDontneed(0x40_0000, 2 * K4));
    const s = 'MMU_NOTIFY_CLEAR,BLOCKABLE,0x400000,0x402000';
    expect(log).toEqual([`B.start(${s})`, `A.start(${s})`, `A.end(${s})`]);
    expect(Object.fromEntries(mm.notifiers.callsByEvent)).toEqual({ MMU_NOTIFY_CLEAR: 3 });
  });

  it('a start failing in a blockable context is flagged; the core ends everyone, and the blocking wrapper ignores the error', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    subs.register(fake('X', log));
    subs.register(fake('Y', log, { startRet: -EAGAIN, noEnd: true }));
    const r = range(MmuNotifierEvent.Clear, 0, K4, 0);
    runProgram(subs.invalidateRangeStartBlocking(r));
    expect(mmuNotifierRangeBlockable(r)).toBe(true);
    expect(log.map((l) => l.slice(0, l.indexOf('(')))).toEqual(['Y.start', 'X.start', 'X.end']);
    expect(subs.warnings.map((w) => w.kind)).toEqual(['start-failed-in-blockable-context']);
  });

  it('a non-blocking start failing with something other than -EAGAIN is flagged', () => {
    const { subs } = subscriptions();
    subs.register(fake('Y', [], { startRet: -12, noEnd: true }));
    expect(runProgram(subs.invalidateRangeStartNonblock(range(MmuNotifierEvent.Clear, 0, K4)))).toBe(-12);
    expect(subs.warnings.map((w) => w.kind)).toEqual(['start-failed-not-eagain']);
  });

  it('non-blockable callbacks run marked must-not-block, blockable ones do not', () => {
    const { subs } = subscriptions();
    const seen: string[] = [];
    subs.register(fake('A', [], { probe: (op) => void seen.push(`${op}:${subs.mustNotBlock}`) }));
    const nb = range(MmuNotifierEvent.Clear, 0, K4, 0);
    expect(runProgram(subs.invalidateRangeStart(nb))).toBe(0);
    runProgram(subs.invalidateRangeEnd(nb));
    runProgram(subs.invalidateRangeStartBlocking(range(MmuNotifierEvent.Clear, 0, K4)));
    expect(seen).toEqual(['start:true', 'end:true', 'start:false']);
    expect(subs.mustNotBlock).toBe(false);
  });

  it('arch_invalidate_secondary_tlbs reaches only the subscribers that have it', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    subs.register(fake('S', log, { arch: true, noStartEnd: true }));
    subs.register(fake('K', log));
    subs.archInvalidateSecondaryTlbs(0x1000, 0x3000);
    runProgram(subs.invalidateRangeStart(range(MmuNotifierEvent.Clear, 0x1000, 0x3000)));
    expect(log).toEqual(['S.arch_invalidate_secondary_tlbs(0x1000,0x3000)', 'K.start(MMU_NOTIFY_CLEAR,BLOCKABLE,0x1000,0x3000)']);
  });

  it('the range keeps its owner (MIGRATE / EXCLUSIVE filtering)', () => {
    const { subs } = subscriptions();
    const owner = {};
    const seen: unknown[] = [];
    subs.register({
      *invalidateRangeStart(r) {
        seen.push(r.owner === owner);
        return 0;
      },
    });
    runProgram(subs.invalidateRangeStart(mmuNotifierRangeInit(MmuNotifierEvent.Migrate, MMU_NOTIFIER_RANGE_BLOCKABLE, 0, K4, owner)));
    expect(seen).toEqual([true]);
    expect(Object.fromEntries(subs.rangesByEvent)).toEqual({ MMU_NOTIFY_MIGRATE: 1 });
  });

  it('unregister waits (synchronize_srcu) for a walker inside a callback; the walker goes on past the unhooked node', () => {
    const { subs, cpu, srcu } = subscriptions();
    const log: string[] = [];
    const a = fake('A', log);
    const b = fake('B', log, { yields: true });
    subs.register(a);
    subs.register(b);
    cpu.yields = true;
    const walker = subs.clearYoung(0, K4);
    expect(walker.next().done).toBe(false); // inside B.clear_young
    const unreg = subs.unregister(b);
    expect(unreg.next().done).toBe(false); // in B.release
    expect(unreg.next().done).toBe(false); // unhooked, waiting for the walker's read section
    expect(subs.subscribers).toEqual([a]);
    expect(unreg.next().done).toBe(false);
    expect(walker.next()).toEqual({ done: true, value: 0 });
    expect(unreg.next().done).toBe(true);
    cpu.yields = false;
    expect(log).toEqual(['B.clear_young', 'B.release', 'A.clear_young']);
    expect(srcu.syncWaits).toBe(2);
  });

  it('synchronize_srcu from inside a read section, with nobody else to run, is a self-deadlock', () => {
    const { subs } = subscriptions();
    const k: MmuNotifierOps = {
      *clearYoung() {
        yield* subs.unregister(k);
        return 0;
      },
    };
    subs.register(k);
    expect(() => runProgram(subs.clearYoung(0, K4))).toThrow(/synchronize_srcu would wait forever/);
  });

  it('exit racing unregister: both may call release (the kernel documents release as possibly concurrent)', () => {
    const { subs, cpu } = subscriptions();
    const log: string[] = [];
    const k = fake('K', log, { yields: true });
    subs.register(k);
    cpu.yields = true;
    const unreg = subs.unregister(k);
    expect(unreg.next().done).toBe(false); // inside K.release, K still hashed
    const exit = subs.release();
    expect(exit.next().done).toBe(false); // exit's walk reaches K as well
    drive(unreg, exit);
    cpu.yields = false;
    expect(log).toEqual(['K.release', 'K.release']);
  });

  it('exit: intervals get RELEASE over everything first, then each hlist release once in list order, then the UNMAP teardown reaches only intervals', () => {
    const mm = mmOnly();
    const subs = mm.notifiers;
    const log: string[] = [];
    const i = new MmuIntervalNotifier();
    subs.intervalNotifierInsert(i, 0x40_0000, M, intervalOps('I', log));
    subs.register(fake('A', log));
    subs.register(fake('B', log));
    mm.mmap(0x40_0000, 4 * K4);
    mm.hvaToPfn(0x40_0000, false);
    runProgram(mm.exit());
    expect(log).toEqual([
      'I.invalidate(MMU_NOTIFY_RELEASE,BLOCKABLE,0x0,ULONG_MAX,seq=3)',
      'B.release', 'A.release',
      'I.invalidate(MMU_NOTIFY_UNMAP,BLOCKABLE,0x0,ULONG_MAX,seq=5)',
    ]);
    expect(subs.itree.invalidateSeq).toBe(6);
    expect(subs.subscribers).toEqual([]);
    expect(subs.itree.intervals).toEqual([i]); // its owner still removes it
    runProgram(i.remove());
    expect(subs.itree.intervals).toEqual([]);
  });

  it('get/put: one subscriber per template with a users count; the last put frees through call_srcu without release', () => {
    const { subs, srcu } = subscriptions();
    const log: string[] = [];
    const tpl: MmuNotifierTemplate = {
      allocNotifier: () => fake('G', log),
      freeNotifier: () => void log.push('G.free_notifier'),
    };
    const g = subs.get(tpl);
    expect(typeof g).toBe('object');
    expect(subs.get(tpl)).toBe(g);
    const rec = subs.subscription(g as MmuNotifierOps)!;
    expect(rec.users).toBe(2);
    expect(subs.calls.get('alloc_notifier')).toBe(1);
    subs.put(g as MmuNotifierOps);
    expect(rec.hashed).toBe(true);
    // The last put from inside a callback: unhooked now, freed when the read section closes.
    const self: MmuNotifierOps = {
      *clearYoung() {
        subs.put(g as MmuNotifierOps);
        log.push(`after put: hashed ${rec.hashed}, pending ${srcu.pendingCallbacks}`);
        return 0;
      },
    };
    subs.register(self);
    runProgram(subs.clearYoung(0, K4));
    expect(log).toEqual(['after put: hashed false, pending 1', 'G.free_notifier']);
    expect(rec.users).toBe(0);
    runProgram(subs.synchronize());
    expect(srcu.pendingCallbacks).toBe(0);
    subs.put(g as MmuNotifierOps);
    expect(subs.warnings.map((w) => w.kind)).toEqual(['put-without-users']);
  });

  it('get: -EOVERFLOW at UINT_MAX users; alloc errors pass through; a refused registration frees the new subscriber', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    const tpl: MmuNotifierTemplate = { allocNotifier: () => fake('G', log), freeNotifier: () => void log.push('free') };
    const g = subs.get(tpl) as MmuNotifierOps;
    subs.subscription(g)!.users = UINT_MAX;
    expect(subs.get(tpl)).toBe(-EOVERFLOW);
    expect(subs.get({ allocNotifier: () => -12, freeNotifier: () => {} })).toBe(-12);
    expect(subs.get({ allocNotifier: () => fake('C', log, { arch: true }), freeNotifier: () => void log.push('C.free') })).toBe(-EINVAL);
    expect(log).toEqual(['C.free']);
  });

  it('interval: a non-blocking failure stops the walk, ends the interval range and skips the hlist; a blocking one is flagged and goes on', () => {
    const { subs } = subscriptions();
    const log: string[] = [];
    const i1 = new MmuIntervalNotifier();
    const i2 = new MmuIntervalNotifier();
    const i3 = new MmuIntervalNotifier();
    subs.intervalNotifierInsert(i2, 0x2000, K4, intervalOps('I2', log, false));
    subs.intervalNotifierInsert(i1, 0x1000, K4, intervalOps('I1', log));
    subs.intervalNotifierInsert(i3, 0x3000, K4, intervalOps('I3', log));
    subs.register(fake('K', log));
    expect(runProgram(subs.invalidateRangeStartNonblock(range(MmuNotifierEvent.Clear, 0, 0x10000)))).toBe(-EAGAIN);
    expect(log.map((l) => l.slice(0, l.indexOf('(')))).toEqual(['I1.invalidate', 'I2.invalidate']);
    expect([subs.itree.activeInvalidateRanges, subs.itree.invalidateSeq]).toEqual([0, 4]);
    log.length = 0;
    runProgram(subs.invalidateRangeStartBlocking(range(MmuNotifierEvent.Clear, 0, 0x10000, 0)));
    expect(log.map((l) => l.slice(0, l.indexOf('(')))).toEqual(['I1.invalidate', 'I2.invalidate', 'I3.invalidate', 'K.start']);
    expect(subs.warnings.map((w) => w.kind)).toEqual(['interval-invalidate-failed-in-blockable-context']);
  });

  it('kernel behaviour kept: an hlist -EAGAIN after the intervals were invalidated leaves the interval range active', () => {
    const { subs } = subscriptions();
    const i = new MmuIntervalNotifier();
    subs.intervalNotifierInsert(i, 0, K4, intervalOps('I', []));
    subs.register(fake('Y', [], { startRet: -EAGAIN, noEnd: true }));
    expect(runProgram(subs.invalidateRangeStartNonblock(range(MmuNotifierEvent.Clear, 0, K4)))).toBe(-EAGAIN);
    // __mmu_notifier_invalidate_range_start does not undo mn_itree_invalidate here, and the caller calls no end.
    expect([subs.itree.activeInvalidateRanges, subs.itree.invalidateSeq]).toEqual([1, 3]);
  });

  it('interval insert while ranges are active but none hit: seq goes odd, the insert is immediate, and read_begin waits for the end', () => {
    const { subs, cpu } = subscriptions();
    const i = new MmuIntervalNotifier();
    subs.intervalNotifierInsert(i, 0, K4, intervalOps('I', []));
    const r = range(MmuNotifierEvent.Clear, 8 * M, 9 * M);
    runProgram(subs.invalidateRangeStart(r));
    expect(subs.itree.invalidateSeq).toBe(2);
    const j = new MmuIntervalNotifier();
    subs.intervalNotifierInsert(j, 8 * M, K4, intervalOps('J', []));
    expect(subs.itree.invalidateSeq).toBe(3);
    expect(subs.itree.intervals).toEqual([i, j]);
    expect(j.invalidateSeq).toBe(3);
    cpu.yields = true;
    const begin = j.readBegin();
    expect(begin.next().done).toBe(false);
    runProgram(subs.invalidateRangeEnd(r));
    expect(begin.next()).toEqual({ done: true, value: 3 });
    cpu.yields = false;
    expect(subs.itree.invalidateSeq).toBe(4);
  });

  it('interval remove while invalidating is deferred and waits for the final end; removing a deferred insert cancels it', () => {
    const { subs, cpu } = subscriptions();
    const i = new MmuIntervalNotifier();
    subs.intervalNotifierInsert(i, 0, K4, intervalOps('I', []));
    const r = range(MmuNotifierEvent.Clear, 0, K4);
    runProgram(subs.invalidateRangeStart(r));
    const j = new MmuIntervalNotifier();
    subs.intervalNotifierInsert(j, M, K4, intervalOps('J', []));
    runProgram(j.remove()); // cancelled: never enters the tree, no wait
    expect(subs.itree.deferred).toEqual([]);
    cpu.yields = true;
    const rm = i.remove();
    expect(rm.next().done).toBe(false);
    expect(subs.itree.deferred).toEqual([i]);
    expect(subs.itree.intervals).toEqual([i]);
    runProgram(subs.invalidateRangeEnd(r));
    expect(rm.next().done).toBe(true);
    cpu.yields = false;
    expect(subs.itree.intervals).toEqual([]);
    expect(i.itree).toBe(null);
  });

  it('interval insert rejects an empty or overflowing interval', () => {
    const { subs } = subscriptions();
    expect(subs.intervalNotifierInsert(new MmuIntervalNotifier(), 0, 0, intervalOps('I', []))).toBe(-EOVERFLOW);
    expect(subs.intervalNotifierInsert(new MmuIntervalNotifier(), ULONG_MAX, 2, intervalOps('I', []))).toBe(-EOVERFLOW);
    expect(subs.intervalNotifierInsert(new MmuIntervalNotifier(), ULONG_MAX, 1, intervalOps('I', []))).toBe(0);
  });

  it('mprotect of an area with nothing mapped fires nothing', () => {
    const mm = mmOnly();
    mm.notifiers.register(fake('K', []));
    mm.mmap(0x40_0000, 4 * K4);
    runProgram(mm.mprotect(0x40_0000, 4 * K4, { writable: false }));
    expect(mm.notifiers.rangesByEvent.size).toBe(0);
    expect(mm.hvaToPfn(0x40_0000, true)).toEqual({ ok: false, error: 'EFAULT' });
  });
});
