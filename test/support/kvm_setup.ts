/**
 * Shared set-up for the VM-level KVM tests (test/kvm/scenarios.test.ts,
 * test/kvm/races.test.ts): a Kvm whose vCPUs run with paging off, so a guest
 * access at linear address X is an access to guest-physical X and needs no
 * guest page tables (SDM 9.9 / the walker's translateUnpaged), plus helpers to
 * read SPTEs, capture trace events, steer the host allocator so a guest page
 * gets a given pfn, and run a synchronous action right before a chosen memory
 * operation of a program (a deterministic two-CPU interleaving).
 */
import { hi32, join64, lo32 } from '../../src/hw/halves.js';
import type { MemOp, PhysMem } from '../../src/hw/phys_mem.js';
import { CR0_PE } from '../../src/hw/regs.js';
import { AccessKind, AccessResult, Outcome } from '../../src/hw/result.js';
import { runProgram } from '../../src/hw/sched.js';
import type { EventFields, KvmEventName } from '../../src/kvm/events.js';
import type { KvmMemorySlot } from '../../src/kvm/memslots.js';
import type { MmuNotifierOps, MmuNotifierRange } from '../../src/mm/mmu_notifier.js';
import { GUEST_HVA_BASE, Kvm, type GuestAccess, type VmOptions } from '../../src/kvm/vm.js';

export { GUEST_HVA_BASE };

export const PAGE = 4096;

/** A VM whose vCPUs have CR0.PG=0 (and EFER.LME/LMA clear): gva == gpa, no guest tables. */
export function makeVm(opts: Partial<VmOptions> & { tdp?: 'ept' | 'npt' } = {}): Kvm {
  const kvm = new Kvm({ tdp: 'ept', memory: 16 << 20, ...opts });
  for (const v of kvm.vcpus) {
    const regs = kvm.machine.vcpu(v.id).regs;
    regs.efer = 0;
    regs.cr0 = CR0_PE;
  }
  return kvm;
}

/** Whether KVM has a present SPTE (any of bits 2:0) for the gfn. */
export function sptePresent(kvm: Kvm, gfn: number): boolean {
  const l = kvm.tdpMmu.lookup(gfn);
  return l !== null && (l.spte & 7n) !== 0n;
}

/**
 * Registers a notifier subscriber whose invalidate_range_start and _end both
 * call `seen` (registered after KVM, so hlist order calls it first).
 */
export function watchInvalidations(kvm: Kvm, seen: (op: 'start' | 'end', r: MmuNotifierRange) => void): void {
  const sub: MmuNotifierOps = {
    invalidateRangeStart: function* (r) {
      seen('start', r);
      return 0;
    },
    invalidateRangeEnd: function* (r) {
      seen('end', r);
    },
  };
  if (kvm.mm.notifiers.register(sub) !== 0) throw new Error('test set-up: the recorder could not register');
}

/**
 * Makes the host page allocator hand out `pfn` next (for the spec's PFN
 * 0x12345): takes frames until the bump pointer reaches it. Those frames stay
 * allocated (nobody else's memory). Call right before the access that faults
 * the guest page in: the fault path calls hva_to_pfn before it allocates any
 * page-table page.
 */
export function steerNextPfn(kvm: Kvm, pfn: number): void {
  const target = pfn * PAGE;
  for (let n = 0; ; n++) {
    if (n > 1 << 20) throw new Error('steerNextPfn: allocator never reached the target');
    const hpa = kvm.pages.allocPage();
    if (hpa === target - PAGE) return;
    if (hpa >= target) throw new Error(`steerNextPfn: allocator already past pfn 0x${pfn.toString(16)} (gave 0x${hpa.toString(16)})`);
  }
}

export const KIND = { read: AccessKind.Read, write: AccessKind.Write, fetch: AccessKind.Fetch } as const;
export type KindName = keyof typeof KIND;

/** A finished guest access: the result copied out of the vCPU's reused object. */
export interface AccessOutcome {
  outcome: Outcome;
  hpa: number;
  gpa: number;
  exits: number;
  userExit: GuestAccess['userExit'];
}

/** kvm.access as a program (for a scheduler); `done` receives the outcome. */
export function* accessProgram(kvm: Kvm, gpa: number, kind: KindName, vcpu = 0, done?: (o: AccessOutcome) => void): Generator<unknown, AccessOutcome, undefined> {
  const out = { result: new AccessResult(), exits: 0, userExit: null } as GuestAccess;
  yield* kvm.access(vcpu, 0, gpa, KIND[kind], 1, out);
  const o: AccessOutcome = { outcome: out.result.outcome, hpa: out.result.hpa, gpa: out.result.gpa, exits: out.exits, userExit: out.userExit };
  done?.(o);
  return o;
}

/** One guest access run to its end (KVM handles every exit on the way). */
export function guestAccess(kvm: Kvm, gpa: number, kind: KindName, vcpu = 0): AccessOutcome {
  return runProgram(accessProgram(kvm, gpa, kind, vcpu));
}

export function hvaOf(gpa: number): number {
  return GUEST_HVA_BASE + gpa;
}

export function slot0(kvm: Kvm): KvmMemorySlot {
  const s = kvm.memslots.gfnToMemslot(0);
  if (s === null) throw new Error('no memslot at gfn 0');
  return s;
}

export function read64(mem: PhysMem, hpa: number): bigint {
  mem.load64(hpa);
  return join64(mem.lo, mem.hi);
}

export function write64(mem: PhysMem, hpa: number, v: bigint): void {
  mem.store64(hpa, lo32(v), hi32(v));
}

/** The SPTE for gfn at `level` (default: the deepest present one, or the 4K entry). */
export function spteOf(kvm: Kvm, gfn: number, level?: number): bigint {
  const l = kvm.tdpMmu.lookup(gfn, level);
  if (l === null) throw new Error(`no SPTE for gfn 0x${gfn.toString(16)}`);
  return l.spte;
}

export function sptepOf(kvm: Kvm, gfn: number, level?: number): number {
  const l = kvm.tdpMmu.lookup(gfn, level);
  if (l === null) throw new Error(`no SPTE for gfn 0x${gfn.toString(16)}`);
  return l.sptep;
}

export interface CapturedEvent {
  name: KvmEventName;
  fields: EventFields;
}

/** Enables the named events and returns the list they are appended to. */
export function captureEvents(kvm: Kvm, names: readonly KvmEventName[]): CapturedEvent[] {
  const list: CapturedEvent[] = [];
  kvm.events.enable(names, (name, fields) => list.push({ name, fields: { ...fields } }));
  return list;
}

/**
 * Calls `fn` before every memory operation (op, hpa) until removed: the same
 * preempt hook a Scheduler uses, so `fn` may run another CPU's code right
 * before a chosen operation (a deterministic interleaving). Operations made
 * by `fn` itself are not reported. Returns the function that removes the hook.
 */
export function hookOps(mem: PhysMem, fn: (op: MemOp, hpa: number) => void): () => void {
  const prev = mem.preempt;
  let inside = false;
  mem.preempt = {
    point(op, hpa) {
      if (inside) return;
      inside = true;
      try {
        fn(op, hpa);
      } finally {
        inside = false;
      }
    },
  };
  return () => {
    mem.preempt = prev;
  };
}

/** An EPT-violation exit as the hardware reports it, for calling kvmMmuPageFault directly. */
export function eptViolation(gpa: number, o: { read?: boolean; write?: boolean; fetch?: boolean; readable?: boolean; writable?: boolean; executable?: boolean }): AccessResult {
  const r = new AccessResult();
  r.outcome = Outcome.EptViolation;
  r.gpa = gpa;
  r.qualification =
    (o.read ? 1 : 0) | (o.write ? 2 : 0) | (o.fetch ? 4 : 0) | (o.readable ? 8 : 0) | (o.writable ? 16 : 0) | (o.executable ? 32 : 0);
  return r;
}
