/**
 * Runs a validated trace on a fresh machine (trace-format.md): prints one
 * JSON object (--json) or one readable line per access and peek, checks the
 * `expect` verbs, and reports failed expectations.
 */
import type Long from 'long';
import { Machine } from '../hw/machine.js';
import { AccessResult, KIND_NAMES, OUTCOME_NAMES, Outcome, UnsupportedError } from '../hw/result.js';
import { Mode } from '../hw/walk.js';
import { TraceError, type Trace } from './ast.js';
import type { EventFields } from '../kvm/events.js';
import { describeResult } from './describe.js';
import { hexNum, hexPair } from './hex.js';
import { argLong, argNum, argStr, compileSteps, machineStep, Step } from './steps.js';
import type { GuestAccess, Kvm } from '../kvm/vm.js';
import { eventObject, eventText } from './event_format.js';
import { VmSession, type VmRecord } from './vm_steps.js';

export interface RunOptions {
  json?: boolean;
  /** Receives each output line (without newline). */
  out?: (line: string) => void;
  /** Run only the commands on lines <= this. */
  upToLine?: number;
  /** Print nothing (benchmarks, inspectors). */
  quiet?: boolean;
  /** KVM events to print, in order with the other lines (VM-level traces; names from src/kvm/events.ts). */
  events?: readonly string[];
}

export interface ExpectFailure {
  line: number;
  message: string;
}

export interface RunReport {
  machine: Machine;
  /** The VM of a VM-level trace. */
  kvm: Kvm | null;
  failures: ExpectFailure[];
  accesses: number;
  /** The latest access or instruction result, as contract fields. */
  last: Record<string, string | number> | null;
}

/** The contract fields of an access result (trace-format.md "JSON output"). */
export function accessFields(mode: Mode, r: AccessResult, out: Record<string, string | number>): void {
  out.result = OUTCOME_NAMES[r.outcome];
  switch (r.outcome) {
    case Outcome.Ok:
      out.hpa = hexNum(r.hpa);
      if (mode !== Mode.Native) out.gpa = hexNum(r.gpa);
      break;
    case Outcome.Pf:
      out.error_code = hexNum(r.errorCode);
      out.cr2 = hexPair(r.laHi, r.laLo);
      break;
    case Outcome.EptViolation:
      out.qualification = hexNum(r.qualification);
      out.gpa = hexNum(r.gpa);
      if (r.glaValid) out.gla = hexPair(r.laHi, r.laLo);
      break;
    case Outcome.EptMisconfig:
      out.gpa = hexNum(r.gpa);
      break;
    case Outcome.Npf:
      out.exitinfo1 = hexNum(r.exitinfo1);
      out.exitinfo2 = hexNum(r.gpa);
      break;
    case Outcome.VmFail:
      out.vm_error = r.vmError;
      break;
    default:
      break;
  }
}

function lo32(l: Long | undefined): number {
  return l === undefined ? 0 : l.low;
}
function hi32(l: Long | undefined): number {
  return l === undefined ? 0 : l.high;
}

export class Runner {
  readonly machine: Machine;
  /** The VM session of a VM-level trace (first command `vm`), else null. */
  readonly vm: VmSession | null;
  readonly failures: ExpectFailure[] = [];
  accesses = 0;
  private lastStep: Step | null = null;
  /** The step running (for the error an UnsupportedError becomes). */
  private current: Step | null = null;
  private lastOp = '';
  private lastIsAccess = false;
  private readonly lastRes = new AccessResult();
  /**
   * The vCPU result the latest record came from, not yet copied into
   * lastRes: copying waits for a step that is not an access (which might
   * reuse that result), as an access simply replaces the record.
   */
  private lastSrc: AccessResult | null = null;
  /** The VM access the latest record came from, not yet copied into lastExits and lastUserExit (as lastSrc). */
  private lastGuest: GuestAccess | null = null;
  /** VM accesses: exits taken and the user exit; VM verbs with a result: their whole record. */
  private lastExits = -1;
  private lastUserExit: string | null = null;
  private lastRecord: VmRecord | null = null;
  private readonly quiet: boolean;
  private readonly steps: readonly Step[];
  private readonly emit: (line: string) => void;

  constructor(readonly trace: Trace, readonly opts: RunOptions = {}) {
    const out = opts.out ?? ((s: string) => process.stdout.write(s + '\n'));
    this.quiet = opts.quiet === true;
    this.emit = out;
    if (trace.commands[0].verb === 'vm') {
      const json = opts.json === true;
      const sink = (name: string, fields: EventFields) => {
        if (!this.quiet) this.emit(json ? JSON.stringify(eventObject(this.current?.line ?? 0, name, fields)) : eventText(this.current?.line ?? 0, name, fields));
      };
      this.vm = new VmSession(trace, opts.events === undefined ? null : { names: opts.events, sink });
      this.machine = this.vm.kvm.machine;
    } else {
      const m = machineStep(trace);
      this.vm = null;
      this.machine = new Machine({
        mode: m.mode, vcpus: m.vcpus, maxPhysAddr: m.maxPhysAddr, tlb: m.tlb, psc: m.psc, execOnly: m.execOnly,
        geometry: { ...(m.tlbEntries ? { entries: m.tlbEntries } : {}), ...(m.tlbWays ? { ways: m.tlbWays } : {}) },
      });
    }
    this.steps = compileSteps(trace);
  }

  run(): RunReport {
    const upTo = this.opts.upToLine ?? Infinity;
    try {
      this.replay(upTo);
    } catch (e) {
      const s = this.current;
      if (e instanceof UnsupportedError && s !== null) throw new TraceError(this.trace.file, s.line, s.cmd.col, e.message);
      throw e;
    }
    return this.report();
  }

  /** The steps up to line upTo (no try, no reporting: runs of VM accesses go to the hot loop, vmAccesses). */
  private replay(upTo: number): void {
    const steps = this.steps;
    // Indexed: a for-of here allocated an iterator result per step.
    for (let i = 0; i < steps.length; ) {
      const s = steps[i];
      if (s.line > upTo) break;
      this.current = s;
      if (s.verb !== 'access') this.step(s);
      else if (this.vm !== null) {
        i = this.vmAccesses(this.vm, i, upTo);
        continue;
      } else this.machineAccess(s);
      i++;
    }
  }

  /**
   * The VM accesses from steps[start] up to the next other step: replay's
   * hot loop, in a function of its own (with the other verbs in the loop
   * V8 compiled it ~1.5x slower). Quiet, only the run's last access is
   * recorded: each access's record replaces the one before. Returns the
   * index of the step after the run.
   */
  private vmAccesses(vm: VmSession, start: number, upTo: number): number {
    const steps = this.steps;
    const quiet = this.quiet;
    let g: GuestAccess | null = null;
    let i = start;
    for (; i < steps.length; i++) {
      const s = steps[i];
      if (s.verb !== 'access' || s.line > upTo) break;
      this.current = s;
      g = vm.access(s);
      if (!quiet) this.recordGuest(s, g);
    }
    this.accesses += i - start;
    if (quiet) this.recordGuest(steps[i - 1], g!);
    return i;
  }

  private report(): RunReport {
    const last = this.lastFields();
    return { machine: this.machine, kvm: this.vm?.kvm ?? null, failures: this.failures, accesses: this.accesses, last: last as Record<string, string | number> | null };
  }

  /** lastRes, lastExits and lastUserExit as the latest record left them. */
  private settleLast(): void {
    const g = this.lastGuest;
    if (g !== null) {
      this.lastExits = g.exits;
      this.lastUserExit = g.userExit;
      this.lastGuest = null;
    }
    if (this.lastSrc === null) return;
    this.lastRes.copyFrom(this.lastSrc);
    this.lastSrc = null;
  }

  /** An `access` step of a machine-level trace. */
  private machineAccess(s: Step): void {
    this.accesses++;
    this.record(s, 'access', this.machine.access(s.vcpu, s.laHi, s.laLo, s.kind, s.size, s.implicit), true);
  }

  /** Records (and unless quiet prints) a VM access. */
  private recordGuest(s: Step, g: GuestAccess): void {
    this.lastGuest = g;
    this.record(s, 'access', g.result, true);
  }

  /** Any step but `access`. */
  private step(s: Step): void {
    const m = this.machine;
    const c = s.cmd;
    this.settleLast();
    switch (s.verb) {
      case 'poke':
        m.mem.store64(s.hpa, lo32(argLong(c, 'value')), hi32(argLong(c, 'value')));
        return;
      case 'peek': {
        m.mem.load64(s.hpa);
        const value = hexPair(m.mem.hi, m.mem.lo);
        if (this.quiet) return;
        if (this.opts.json) this.emit(JSON.stringify({ line: s.line, op: 'peek', hpa: hexNum(s.hpa), value }));
        else this.emit(`${s.line}: peek hpa=${hexNum(s.hpa)} value=${value}`);
        return;
      }
      case 'cpu':
        this.record(s, 'cpu', this.cpu(s), false);
        return;
      case 'invlpg':
        this.record(s, 'invlpg', m.invlpg(s.vcpu, s.laHi, s.laLo), false);
        return;
      case 'invpcid': {
        const p = argLong(c, 'pcid');
        this.record(s, 'invpcid', m.invpcid(s.vcpu, argNum(c, 'type')!, hi32(p), lo32(p), s.laHi, s.laLo), false);
        return;
      }
      case 'invvpid': {
        const p = argLong(c, 'vpid');
        this.record(s, 'invvpid', m.invvpid(s.vcpu, argNum(c, 'type')!, hi32(p), lo32(p), s.laHi, s.laLo), false);
        return;
      }
      case 'invept': {
        const e = argLong(c, 'eptp');
        this.record(s, 'invept', m.invept(s.vcpu, c.words.has('single'), e === undefined ? null : e.toNumber()), false);
        return;
      }
      case 'flush':
        this.record(s, 'flush', m.flush(s.vcpu), false);
        return;
      case 'vmexit':
        this.record(s, 'vmexit', m.vmexit(s.vcpu), false);
        return;
      case 'vmrun':
        this.record(s, 'vmrun', m.vmrun(s.vcpu, argNum(c, 'tlb_control') ?? 0), false);
        return;
      case 'invlpga': {
        const a = argLong(c, 'asid')!;
        this.record(s, 'invlpga', m.invlpga(s.vcpu, s.laHi, s.laLo, a.high !== 0 ? -1 : a.low >>> 0), false);
        return;
      }
      case 'expect':
        this.expect(s);
        return;
      case 'expect_mem':
        this.expectMem(s);
        return;
      case 'expect spte':
        for (const f of this.vm!.expectSpte(c)) this.fail(s.line, f);
        return;
      case 'expect counter':
        for (const f of this.vm!.expectCounter(c)) this.fail(s.line, f);
        return;
      case 'expect dirty':
        for (const f of this.vm!.expectDirty(c)) this.fail(s.line, f);
        return;
      case 'expect folio':
        for (const f of this.vm!.expectFolio(c)) this.fail(s.line, f);
        return;
      case 'expect lru':
        for (const f of this.vm!.expectLru(c)) this.fail(s.line, f);
        return;
      case 'expect data':
        for (const f of this.vm!.expectData(c)) this.fail(s.line, f);
        return;
      default: {
        if (this.vm === null) throw new Error(`assertion: verb '${s.verb}' passed validation but has no runner`);
        const rec = this.vm.step(s);
        if (rec === null) return;
        this.lastStep = s;
        this.lastRecord = rec;
        if (this.quiet) return;
        this.emit(this.opts.json ? JSON.stringify(rec) : describeVmRecord(rec));
      }
    }
  }

  /** `cpu`: register writes in dependency order (EFER, CR0, CR4, CR3), each with its TLB effect. */
  private cpu(s: Step): AccessResult {
    const m = this.machine;
    const c = s.cmd;
    const v = m.vcpu(s.vcpu);
    const r = v.mmu.res;
    r.reset();
    const efer = argLong(c, 'efer');
    if (efer !== undefined && (m.setEfer(s.vcpu, efer.low).outcome !== Outcome.Ok)) return r;
    const cr0 = argLong(c, 'cr0');
    if (cr0 !== undefined) {
      if (cr0.high !== 0) return this.gp(r);
      if (m.movCr0(s.vcpu, cr0.low).outcome !== Outcome.Ok) return r;
    }
    const cr4 = argLong(c, 'cr4');
    if (cr4 !== undefined) {
      if (cr4.high !== 0) return this.gp(r);
      if (m.movCr4(s.vcpu, cr4.low).outcome !== Outcome.Ok) return r;
    }
    const cr3 = argLong(c, 'cr3');
    if (cr3 !== undefined && m.movCr3(s.vcpu, cr3.high, cr3.low).outcome !== Outcome.Ok) return r;
    const eptp = argLong(c, 'eptp');
    if (eptp !== undefined) {
      if (eptp.high >>> 20 !== 0) {
        r.outcome = Outcome.VmFail;
        r.vmError = 7;
        return r;
      }
      if (m.setEptp(s.vcpu, eptp.toNumber()).outcome !== Outcome.Ok) return r;
    }
    const ncr3 = argLong(c, 'ncr3');
    if (ncr3 !== undefined) {
      if (ncr3.high >>> 20 !== 0 || ncr3.toNumber() >= 2 ** m.cfg.maxPhysAddr) {
        r.outcome = Outcome.VmFail; // VMRUN would refuse an nCR3 beyond MAXPHYADDR
        return r;
      }
      v.regs.ncr3 = ncr3.toNumber();
    }
    const cpl = argNum(c, 'cpl');
    if (cpl !== undefined) v.regs.cpl = cpl;
    const ac = argNum(c, 'ac');
    if (ac !== undefined) v.regs.ac = ac;
    const pkru = argLong(c, 'pkru');
    if (pkru !== undefined) v.regs.pkru = pkru.low;
    const pkrs = argLong(c, 'pkrs');
    if (pkrs !== undefined) v.regs.pkrs = pkrs.low;
    const vpid = argNum(c, 'vpid');
    if (vpid !== undefined) v.regs.vpid = vpid;
    const asid = argLong(c, 'asid');
    if (asid !== undefined) v.regs.asid = asid.low >>> 0;
    r.reset();
    return r;
  }

  private gp(r: AccessResult): AccessResult {
    r.outcome = Outcome.Gp;
    return r;
  }

  private record(s: Step, op: string, r: AccessResult, isAccess: boolean): void {
    this.lastStep = s;
    this.lastRecord = null;
    if (!isAccess) {
      this.lastGuest = null;
      this.lastExits = -1;
    }
    this.lastOp = op;
    this.lastIsAccess = isAccess;
    this.lastSrc = r;
    if (this.quiet || (!isAccess && r.outcome === Outcome.Ok)) return;
    this.printLast();
  }

  /** Prints the latest record (kept out of record() so that its quiet path inlines). */
  private printLast(): void {
    const o = this.lastFields() as Record<string, string | number>; // accesses and instructions carry no lists
    this.emit(this.opts.json ? JSON.stringify(o) : describeResult(o));
  }

  /** The latest access or instruction as contract fields (built only when needed). */
  lastFields(): VmRecord | null {
    this.settleLast();
    const s = this.lastStep;
    if (s === null) return null;
    if (this.lastRecord !== null) return this.lastRecord;
    const o: Record<string, string | number> = { line: s.line, op: this.lastOp, vcpu: s.vcpu };
    if (this.lastIsAccess) {
      o.gva = hexPair(s.laHi, s.laLo);
      o.kind = KIND_NAMES[s.kind];
    }
    accessFields(this.machine.cfg.mode, this.lastRes, o);
    if (this.vm !== null && this.lastIsAccess) {
      o.exits = this.lastExits;
      if (this.lastUserExit !== null) o.user_exit = this.lastUserExit;
    }
    return o;
  }

  private fail(line: number, message: string): void {
    this.failures.push({ line, message });
  }

  private expect(s: Step): void {
    const c = s.cmd;
    const last = this.lastFields();
    if (last === null) {
      this.fail(s.line, 'expect: no access or instruction has run yet');
      return;
    }
    const keys = ['result', 'hpa', 'gpa', 'error_code', 'cr2', 'qualification', 'gla', 'exitinfo1', 'exitinfo2'];
    for (const k of keys) {
      const a = c.args.get(k);
      if (a === undefined) continue;
      const want = k === 'result' ? (a.value as string) : hexPair((a.value as Long).high, (a.value as Long).low);
      const got = last[k];
      if (got !== want) {
        this.fail(s.line, `expect ${k}: expected ${want}, got ${got === undefined ? `no ${k} (result ${last.result})` : got} (line ${last.line})`);
      }
    }
    if (c.words.has('no_gla') && last.gla !== undefined) {
      this.fail(s.line, `expect no_gla: expected no guest-linear address, got ${last.gla} (line ${last.line})`);
    }
    const tlb = argStr(c, 'tlb');
    if (tlb !== undefined && (tlb === 'hit') !== this.lastRes.tlbHit) {
      this.fail(s.line, `expect tlb: expected ${tlb}, got ${this.lastRes.tlbHit ? 'hit' : 'miss'} (line ${last.line})`);
    }
    const refs = argNum(c, 'refs');
    if (refs !== undefined && refs !== this.lastRes.refs) {
      this.fail(s.line, `expect refs: expected ${refs}, got ${this.lastRes.refs} (line ${last.line})`);
    }
    const exits = argNum(c, 'exits');
    if (exits !== undefined && exits !== last.exits) {
      this.fail(s.line, `expect exits: expected ${exits}, got ${last.exits ?? `none (the latest command, ${last.op}, is not an access)`} (line ${last.line})`);
    }
    const userExit = argStr(c, 'user_exit');
    if (userExit !== undefined && last.exits !== undefined && userExit !== (last.user_exit ?? 'none')) {
      this.fail(s.line, `expect user_exit: expected ${userExit}, got ${last.user_exit ?? 'none'} (line ${last.line})`);
    } else if (userExit !== undefined && last.exits === undefined) {
      this.fail(s.line, `expect user_exit: expected ${userExit}, got none (the latest command, ${last.op}, is not an access) (line ${last.line})`);
    }
    const young = argNum(c, 'young');
    if (young !== undefined && young !== last.young) {
      this.fail(s.line, `expect young: expected ${young}, got ${last.young ?? `none (the latest command, ${last.op}, does not age)`} (line ${last.line})`);
    }
  }

  private expectMem(s: Step): void {
    const c = s.cmd;
    const mem = this.machine.mem;
    mem.load64(s.hpa);
    const want = argLong(c, 'value')!;
    const mask = argLong(c, 'mask');
    const mHi = mask === undefined ? -1 : mask.high;
    const mLo = mask === undefined ? -1 : mask.low;
    if (((mem.hi & mHi) | 0) !== ((want.high & mHi) | 0) || ((mem.lo & mLo) | 0) !== ((want.low & mLo) | 0)) {
      const m = mask === undefined ? '' : ` under mask ${hexPair(mHi, mLo)}`;
      this.fail(s.line, `expect_mem hpa=${hexNum(s.hpa)}: expected ${hexPair(want.high & mHi, want.low & mLo)}${m}, got ${hexPair(mem.hi & mHi, mem.lo & mLo)}`);
    }
  }
}

/** The readable line of a VM verb's result. */
function describeVmRecord(r: VmRecord): string {
  const args = Object.entries(r).filter(([k]) => k !== 'line' && k !== 'op').map(([k, v]) => `${k}=${Array.isArray(v) ? (v.length > 0 ? v.join(',') : 'none') : v}`);
  return `${r.line}: ${r.op} ${args.join(' ')}`;
}

export function runTrace(trace: Trace, opts: RunOptions = {}): RunReport {
  return new Runner(trace, opts).run();
}
