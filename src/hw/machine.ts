/**
 * The machine: host physical memory and vCPUs, each with its registers,
 * TLBs and page walker. Accesses split at 4K boundaries after the canonical
 * check; the instructions that change translation state carry the exact
 * invalidation scope of SDM 4.10.4.1 and 28.3.3 and APM 15.16.
 */
import { PhysMem } from './phys_mem.js';
import {
  CR0_PG, CR4_LA57, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_SMEP, EFER_LMA, EFER_NXE, VcpuRegs,
} from './regs.js';
import { AccessKind, AccessResult, Outcome } from './result.js';
import { DEFAULT_GEOMETRY, TlbGeometry, VcpuTlb } from './tlb.js';
import { MachineConfig, Mmu, Mode, WalkRecorder } from './walk.js';

export interface MachineOptions {
  mode: Mode;
  vcpus?: number;
  maxPhysAddr?: number;
  tlb?: boolean;
  psc?: boolean;
  execOnly?: boolean;
  geometry?: Partial<TlbGeometry>;
}

/** VM-instruction error 28: invalid operand to INVEPT/INVVPID; 7: invalid control field at VM entry. */
export const VMERR_INVALID_OPERAND = 28;
export const VMERR_ENTRY_INVALID_CONTROL = 7;

export class Vcpu {
  readonly regs = new VcpuRegs();
  readonly tlb: VcpuTlb;
  readonly mmu: Mmu;
  constructor(readonly id: number, mem: PhysMem, cfg: MachineConfig, geometry: TlbGeometry) {
    this.tlb = new VcpuTlb(geometry, this.regs.stamp);
    this.mmu = new Mmu(mem, this.regs, cfg, this.tlb);
  }
}

/** Whether a linear address is canonical for the paging mode (SDM 3.3.7.1). */
export function isCanonical(hi: number, la57: boolean): boolean {
  const t = la57 ? hi >> 24 : hi >> 15;
  return t === 0 || t === -1;
}

/** Whether an EPTP is valid for VM entry and INVEPT (SDM 26.2.1.1, table 24-8). */
export function eptpValid(eptp: number, maxPhysAddr: number): boolean {
  const mt = eptp & 7;
  const pwl = (eptp >>> 3) & 7;
  if (mt !== 0 && mt !== 6) return false;
  if (pwl !== 3 && pwl !== 4) return false;
  if ((eptp & 0xf00) !== 0 || (eptp & 0x80) !== 0) return false; // bits 11:8 reserved; no CET supervisor shadow stacks
  return eptp < 2 ** maxPhysAddr;
}

export class Machine {
  readonly mem: PhysMem;
  readonly cfg: MachineConfig;
  readonly vcpus: Vcpu[] = [];
  /** vcpus[i].mmu, one load nearer for access(). */
  private readonly mmus: Mmu[] = [];

  constructor(opts: MachineOptions) {
    const maxPhysAddr = opts.maxPhysAddr ?? 46;
    this.mem = new PhysMem(maxPhysAddr);
    this.cfg = {
      mode: opts.mode,
      maxPhysAddr,
      tlb: opts.tlb ?? true,
      psc: opts.psc ?? true,
      execOnly: opts.execOnly ?? true,
    };
    const geometry = { ...DEFAULT_GEOMETRY, ...opts.geometry };
    const n = opts.vcpus ?? 1;
    for (let i = 0; i < n; i++) {
      const v = new Vcpu(i, this.mem, this.cfg, geometry);
      this.vcpus.push(v);
      this.mmus.push(v.mmu);
    }
  }

  vcpu(id: number): Vcpu {
    const v = this.vcpus[id];
    if (v === undefined) throw new Error(`assertion: no vCPU ${id}`);
    return v;
  }

  /**
   * One access of `size` bytes at the linear address (hi, lo). The canonical
   * check covers every byte; then each 4K piece is a complete translation,
   * low page first (trace-format.md rule 8). The result is the vCPU's reused
   * AccessResult.
   */
  access(id: number, laHi: number, laLo: number, kind: AccessKind, size: number, implicit: boolean): AccessResult {
    const mmu = this.mmus[id];
    if ((laLo & 0xfff) + size <= 4096 && mmu.l1Hit(laHi, laLo, kind, implicit)) return mmu.res;
    return this.accessMiss(id, laHi, laLo, kind, size, implicit);
  }

  /** access() past the L1 memo; kept apart so that the hit path stays small enough to inline. */
  private accessMiss(id: number, laHi: number, laLo: number, kind: AccessKind, size: number, implicit: boolean): AccessResult {
    const v = this.vcpus[id];
    const mmu = v.mmu;
    const r = mmu.res;
    r.reset();
    const la57 = v.regs.la57;
    const lastLo = (laLo >>> 0) + size - 1;
    const lastHi = lastLo >= 4294967296 ? (laHi + 1) | 0 : laHi;
    if (v.regs.paging && (v.regs.efer & EFER_LMA) !== 0 && (!isCanonical(laHi, la57) || !isCanonical(lastHi, la57))) {
      r.outcome = Outcome.Gp;
      return r;
    }
    mmu.translate(laHi, laLo, kind, implicit);
    if (r.outcome !== Outcome.Ok || ((laLo & 0xfff) + size <= 4096)) return r;
    // Second piece: the next page's first byte.
    const hpa = r.hpa;
    const gpa = r.gpa;
    const hit = r.tlbHit;
    const nextLo = ((laLo | 0xfff) + 1) | 0;
    const nextHi = nextLo === 0 ? (laHi + 1) | 0 : laHi;
    mmu.translate(nextHi, nextLo, kind, implicit);
    if (r.outcome === Outcome.Ok) {
      r.hpa = hpa;
      r.gpa = gpa;
      r.tlbHit = hit;
    }
    return r;
  }

  /**
   * The walk inspector's probe: the same walk, from memory, with no side
   * effects (no A/D write-back, no TLB lookup, fill or invalidation),
   * optionally at another CPL.
   */
  probe(id: number, laHi: number, laLo: number, kind: AccessKind, implicit: boolean, rec: WalkRecorder | null, cpl?: number): AccessResult {
    const mmu = this.vcpu(id).mmu;
    const regs = mmu.regs;
    const savedCpl = regs.cpl;
    const savedStamp = regs.stamp[0];
    mmu.probe = true;
    mmu.rec = rec;
    if (cpl !== undefined) regs.cpl = cpl;
    try {
      const r = mmu.res;
      r.reset();
      if (regs.paging && (regs.efer & EFER_LMA) !== 0 && !isCanonical(laHi, regs.la57)) {
        r.outcome = Outcome.Gp;
        return r;
      }
      mmu.translate(laHi, laLo, kind, implicit);
      return r;
    } finally {
      mmu.probe = false;
      mmu.rec = null;
      regs.cpl = savedCpl;
      regs.stamp[0] = savedStamp; // registers and TLB are as they were, so memos made under them still hold
    }
  }

  // ------------------------------------------------------------ instructions
  // Each returns the vCPU's AccessResult with outcome Ok, Gp, Ud or VmFail.

  private begin(id: number): AccessResult {
    const r = this.vcpu(id).mmu.res;
    r.reset();
    return r;
  }

  private fail(r: AccessResult, outcome: Outcome, vmError = 0): AccessResult {
    r.outcome = outcome;
    r.vmError = vmError;
    return r;
  }

  /** Tag of linear/combined mappings for the vCPU: VPID under EPT, ASID under NPT, 0 native. */
  private linearTag(v: Vcpu): number {
    return this.cfg.mode === Mode.Ept ? v.regs.vpid : this.cfg.mode === Mode.Npt ? v.regs.asid : 0;
  }

  /** Drop linear/combined entries of one VPID/ASID tag: all PCIDs, `keepGlobal` or not, PSCs too. */
  private dropTag(v: Vcpu, tag: number, keepGlobal: boolean, pcid = -1): void {
    v.tlb.dropLinear(
      (c, i) => c.vpidOf(i) === tag && (pcid < 0 || c.pcidOf(i) === pcid) && !(keepGlobal && c.isGlobal(i)),
      (c, i) => c.vpidOf(i) === tag && (pcid < 0 || c.pcidOf(i) === pcid),
    );
  }

  /** MOV to CR0 (SDM 4.10.4.1: PG 1->0 invalidates everything). */
  movCr0(id: number, value: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    const old = v.regs.cr0;
    if ((old & CR0_PG) !== 0 && (value & CR0_PG) === 0 && (v.regs.cr4 & CR4_PCIDE) !== 0) return this.fail(r, Outcome.Gp);
    v.regs.cr0 = value | 0;
    if ((old & CR0_PG) === 0 && (value & CR0_PG) !== 0 && v.regs.paePaging && !v.mmu.loadPdptes(v.regs.cr3)) {
      v.regs.cr0 = old; // entering PAE paging loads the PDPTEs; a bad one fails the MOV
      return r;
    }
    if ((old & CR0_PG) !== 0 && (value & CR0_PG) === 0) this.dropTag(v, this.linearTag(v), false);
    return r;
  }

  /**
   * MOV to CR3 with the 64-bit source (hi, lo): bit 63 is the no-flush hint
   * when CR4.PCIDE=1 and is not stored; reserved bits [62:M] give #GP.
   */
  movCr3(id: number, hi: number, lo: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    const pcide = (v.regs.cr4 & CR4_PCIDE) !== 0;
    const noFlush = pcide && hi < 0;
    const h = pcide ? hi & 0x7fffffff : hi;
    const m = this.cfg.maxPhysAddr;
    const value = (h >>> 0) * 4294967296 + (lo >>> 0);
    if (h < 0 || value >= 2 ** m) return this.fail(r, Outcome.Gp);
    if (v.regs.paePaging && !v.mmu.loadPdptes(value)) return r;
    v.regs.cr3 = value;
    if (!noFlush) this.dropTag(v, this.linearTag(v), true, pcide ? lo & 0xfff : 0);
    return r;
  }

  /** MOV to CR4 (SDM 4.10.4.1). */
  movCr4(id: number, value: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    const old = v.regs.cr4;
    const changed = old ^ value;
    // SDM 4.1.2: IA-32e paging cannot be left by clearing CR4.PAE.
    if ((value & CR4_PAE) === 0 && (v.regs.efer & EFER_LMA) !== 0 && v.regs.paging) return this.fail(r, Outcome.Gp);
    if ((value & CR4_PCIDE) !== 0 && (old & CR4_PCIDE) === 0 && ((v.regs.efer & EFER_LMA) === 0 || (v.regs.cr3 & 0xfff) !== 0)) {
      return this.fail(r, Outcome.Gp);
    }
    const pcid = v.regs.pcid;
    v.regs.cr4 = value | 0;
    if ((changed & (CR4_PAE | CR4_PGE | CR4_SMEP)) !== 0 && v.regs.paePaging && !v.mmu.loadPdptes(v.regs.cr3)) {
      v.regs.cr4 = old; // SDM 4.4.1: this MOV to CR4 loads the PDPTEs in PAE mode
      return r;
    }
    const tag = this.linearTag(v);
    if ((changed & (CR4_PGE | CR4_LA57)) !== 0 || ((old & CR4_PCIDE) !== 0 && (value & CR4_PCIDE) === 0)) {
      this.dropTag(v, tag, false);
    } else if ((changed & CR4_PAE) !== 0 || ((value & CR4_SMEP) !== 0 && (old & CR4_SMEP) === 0)) {
      this.dropTag(v, tag, false, pcid);
    }
    return r;
  }

  /** WRMSR IA32_EFER: a change of NXE or LMA drops the vCPU's linear mappings (the model caches XD as NXE saw it). */
  setEfer(id: number, value: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    if (((v.regs.efer ^ value) & (EFER_NXE | EFER_LMA)) !== 0) this.dropTag(v, this.linearTag(v), false);
    v.regs.efer = value | 0;
    return r;
  }

  /** VMWRITE of the EPT pointer; an invalid one would fail VM entry, so it is refused. */
  setEptp(id: number, eptp: number): AccessResult {
    const r = this.begin(id);
    if (this.cfg.mode !== Mode.Ept) return this.fail(r, Outcome.Ud);
    if (!eptpValid(eptp, this.cfg.maxPhysAddr)) return this.fail(r, Outcome.VmFail, VMERR_ENTRY_INVALID_CONTROL);
    this.vcpu(id).regs.eptp = eptp;
    return r;
  }

  /** INVLPG (SDM vol. 2): the page for the current PCID and global entries, all PSC entries of the current PCID. */
  invlpg(id: number, laHi: number, laLo: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    if (v.regs.cpl !== 0) return this.fail(r, Outcome.Gp);
    if (!isCanonical(laHi, v.regs.la57)) return r; // a NOP
    const tag = this.linearTag(v);
    const pcid = v.regs.pcid;
    v.tlb.dropLinear(
      (c, i) => c.vpidOf(i) === tag && (c.pcidOf(i) === pcid || c.isGlobal(i)) && c.covers(i, laHi, laLo),
      (c, i) => c.vpidOf(i) === tag && c.pcidOf(i) === pcid,
    );
    return r;
  }

  /** INVPCID types 0-3 (SDM vol. 2). */
  invpcid(id: number, type: number, pcidHi: number, pcidLo: number, laHi: number, laLo: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    if (v.regs.cpl !== 0 || type > 3) return this.fail(r, Outcome.Gp);
    if (pcidHi !== 0 || (pcidLo & ~0xfff) !== 0) return this.fail(r, Outcome.Gp); // descriptor bits 63:12
    const pcid = pcidLo & 0xfff;
    if (type === 0 && !isCanonical(laHi, v.regs.la57)) return this.fail(r, Outcome.Gp);
    if ((v.regs.cr4 & CR4_PCIDE) === 0 && type <= 1 && pcid !== 0) return this.fail(r, Outcome.Gp);
    const tag = this.linearTag(v);
    switch (type) {
      case 0:
        v.tlb.dropLinear(
          (c, i) => c.vpidOf(i) === tag && c.pcidOf(i) === pcid && !c.isGlobal(i) && c.covers(i, laHi, laLo),
          (c, i) => c.vpidOf(i) === tag && c.pcidOf(i) === pcid,
        );
        break;
      case 1:
        this.dropTag(v, tag, true, pcid);
        break;
      case 2:
        this.dropTag(v, tag, false);
        break;
      default:
        this.dropTag(v, tag, true);
    }
    return r;
  }

  /** INVVPID types 0-3 (SDM 30.3): linear and combined mappings only. */
  invvpid(id: number, type: number, vpidHi: number, vpidLo: number, laHi: number, laLo: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    if (this.cfg.mode !== Mode.Ept) return this.fail(r, Outcome.Ud);
    if (v.regs.cpl !== 0) return this.fail(r, Outcome.Gp);
    if (type > 3 || vpidHi !== 0 || (vpidLo & ~0xffff) !== 0) return this.fail(r, Outcome.VmFail, VMERR_INVALID_OPERAND);
    const vpid = vpidLo & 0xffff;
    if (vpid === 0 && type !== 2) return this.fail(r, Outcome.VmFail, VMERR_INVALID_OPERAND);
    if (type === 0 && !isCanonical(laHi, false) && !isCanonical(laHi, true)) return this.fail(r, Outcome.VmFail, VMERR_INVALID_OPERAND);
    switch (type) {
      case 0:
        v.tlb.dropLinear(
          (c, i) => c.vpidOf(i) === vpid && c.covers(i, laHi, laLo),
          (c, i) => c.vpidOf(i) === vpid && c.covers(i, laHi, laLo),
        );
        break;
      case 1:
        this.dropTag(v, vpid, false);
        break;
      case 2:
        v.tlb.dropLinear((c, i) => c.vpidOf(i) !== 0, (c, i) => c.vpidOf(i) !== 0);
        break;
      default:
        this.dropTag(v, vpid, true);
    }
    return r;
  }

  /** INVEPT single-context (type 1, with eptp or the current EPTP) or all-context (type 2) (SDM 30.3). */
  invept(id: number, single: boolean, eptp: number | null): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    if (this.cfg.mode !== Mode.Ept) return this.fail(r, Outcome.Ud);
    if (v.regs.cpl !== 0) return this.fail(r, Outcome.Gp);
    if (!single) {
      // Every mapping of an EPT machine is guest-physical or combined, whatever its EP4TA (0 included).
      v.tlb.flushAll();
      return r;
    }
    const e = eptp ?? v.regs.eptp;
    if (!eptpValid(e, this.cfg.maxPhysAddr)) return this.fail(r, Outcome.VmFail, VMERR_INVALID_OPERAND);
    const ep4ta = e - (e & 0xfff);
    v.tlb.dropGuestPhysical((c, i) => c.ep4taOf(i) === ep4ta);
    v.tlb.dropLinear((c, i) => c.ep4taOf(i) === ep4ta, (c, i) => c.ep4taOf(i) === ep4ta);
    return r;
  }

  /** Drop everything the vCPU caches. */
  flush(id: number): AccessResult {
    const r = this.begin(id);
    this.vcpu(id).tlb.flushAll();
    return r;
  }

  /**
   * A VM exit followed by a VM entry (VMX). Without VPID (VPID 0) each
   * invalidates the linear and combined mappings of VPID 0 (SDM 28.3.3.3).
   */
  vmexit(id: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    if (this.cfg.mode === Mode.Native) return this.fail(r, Outcome.Ud);
    if (this.cfg.mode === Mode.Ept && v.regs.vpid === 0) this.dropTag(v, 0, false);
    return r;
  }

  /** VMRUN with TLB_CONTROL (APM 15.16.2): 1 all ASIDs, 3 this ASID, 7 this ASID's non-global entries. */
  vmrun(id: number, tlbControl: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    if (this.cfg.mode !== Mode.Npt) return this.fail(r, Outcome.Ud);
    if (v.regs.asid === 0) return this.fail(r, Outcome.VmFail); // VMEXIT_INVALID
    const asid = v.regs.asid;
    if (tlbControl === 1) v.tlb.flushAll();
    else if (tlbControl === 3 || tlbControl === 7) {
      this.dropTag(v, asid, tlbControl === 7);
      v.tlb.dropGuestPhysical((c, i) => c.vpidOf(i) === asid);
    }
    return r;
  }

  /** INVLPGA (APM): the page at the linear address for one ASID, global entries included. */
  invlpga(id: number, laHi: number, laLo: number, asid: number): AccessResult {
    const v = this.vcpu(id);
    const r = this.begin(id);
    if (this.cfg.mode !== Mode.Npt) return this.fail(r, Outcome.Ud);
    if (v.regs.cpl !== 0) return this.fail(r, Outcome.Gp);
    v.tlb.dropLinear(
      (c, i) => c.vpidOf(i) === asid && c.covers(i, laHi, laLo),
      (c, i) => c.vpidOf(i) === asid,
    );
    return r;
  }
}
