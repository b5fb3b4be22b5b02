/**
 * The page walker of one vCPU: guest 4/5-level paging (SDM 4.5), EPT (SDM
 * 28.2) and NPT (APM 15.25) in two dimensions, with the TLB and
 * paging-structure caches in front. Ordering follows trace-format.md
 * "Where the architecture leaves latitude".
 *
 * Hot path: no allocation. Addresses below 2^52 are numbers; linear
 * addresses and entries are two signed 32-bit halves.
 */
import { PhysMem } from './phys_mem.js';
import {
  CR0_WP, CR4_PAE, CR4_PGE, CR4_PKE, CR4_PKS, CR4_SMAP, CR4_SMEP, EFER_LMA, VcpuRegs,
} from './regs.js';
import { AccessKind, AccessResult, Outcome, UnsupportedError } from './result.js';
import {
  RT_DIRTY, RT_EDIRTY, RT_ER, RT_EW, RT_EX, RT_E_SHIFT, RT_PKEY_SHIFT, RT_RW, RT_US, RT_XD,
} from './rights.js';
import { TagCache } from './tag_cache.js';
import { VcpuTlb } from './tlb.js';

export const enum Mode {
  Native = 0,
  Ept = 1,
  Npt = 2,
}

/** Which table a memory reference read. */
export const enum Dim {
  Guest = 0,
  Ept = 1,
  Npt = 2,
}

/** Receives every paging-structure reference of a walk when attached (the walk inspector). */
export interface WalkRecorder {
  /**
   * A load of a paging-structure entry. `entryGpa` is -1 for EPT/NPT entries
   * (they live in host memory); `target` is the gPA being translated (EPT/NPT)
   * or -1; `rights` are the rights accumulated before this entry, packed as in
   * rights.ts (guest bits for Dim.Guest, second-dimension bits otherwise).
   */
  ref(dim: Dim, level: number, entryGpa: number, entryHpa: number, lo: number, hi: number, target: number, rights: number): void;
  /** An accessed/dirty write-back (or, in a probe, the one that would happen). */
  setBits(dim: Dim, level: number, entryHpa: number, lo: number, hi: number, newLo: number, newHi: number): void;
}

export interface MachineConfig {
  mode: Mode;
  maxPhysAddr: number;
  tlb: boolean;
  psc: boolean;
  /** IA32_VMX_EPT_VPID_CAP bit 0: execute-only EPT entries. */
  execOnly: boolean;
}

/** Second-dimension access types: the EPT exit-qualification bits 0-2. */
export const T_R = 1;
export const T_W = 2;
export const T_X = 4;

/** Walk step status. */
const S_OK = 0;
const S_EXIT = 1;
const S_RESTART = 2;

/** #PF error-code bits (SDM 4.7). */
export const PF_P = 1 << 0;
export const PF_W = 1 << 1;
export const PF_U = 1 << 2;
export const PF_RSVD = 1 << 3;
export const PF_ID = 1 << 4;
export const PF_PK = 1 << 5;

/** EPT-violation exit-qualification bits (SDM table 27-7). */
export const EQ_GLA_VALID = 1 << 7;
export const EQ_TRANSLATED = 1 << 8;

/** NPF EXITINFO1 bits 32 and 33 (APM 15.25.6). */
export const NPF_FINAL = 2 ** 32;
export const NPF_GUEST_PAGE = 2 ** 33;

const TWO32 = 4294967296;
/** Exact reciprocal: multiplying is much cheaper than dividing. */
const INV_TWO32 = 1 / TWO32;
const L1_SIZE = 64;
const L1_MASK = L1_SIZE - 1;
/**
 * Words of an L1 entry: LA[31:12] with the allowed kinds of access in bits
 * 5:0 (bit kind*2+implicit), LA[63:32], and the vCPU's stamp (registers and
 * combined TLB) when it was made.
 */
const L1_WORDS = 3;
const MAX_RESTARTS = 1000;
/** EPT memory types 2, 3 and 7 are reserved (SDM 28.2.3.1), as a set of bits. */
const BAD_EPT_MEMTYPES = (1 << 2) | (1 << 3) | (1 << 7);

/** Bits 63:32 of a non-negative integer below 2^53, as the high half (truncation is the floor); the low half is x | 0. */
function hiHalf(x: number): number {
  return (x * INV_TWO32) | 0;
}

/** The address hi * 2^32 + lo from its two 32-bit halves (lo signed or not). */
function join(hi: number, lo: number): number {
  return hi * TWO32 + (lo >>> 0);
}

/** Index of the level-L entry for the address (hi, lo) (SDM 4.5, fig. 4-8). */
function indexOf(hi: number, lo: number, level: number): number {
  switch (level) {
    case 1: return (lo >>> 12) & 511;
    case 2: return (lo >>> 21) & 511;
    case 3: return ((lo >>> 30) | (hi << 2)) & 511;
    case 4: return (hi >>> 7) & 511;
    default: return (hi >>> 16) & 511;
  }
}

export class Mmu {
  readonly res = new AccessResult();
  rec: WalkRecorder | null = null;
  /** A probe reads memory only: no A/D write-back, no cache lookup or fill, no invalidation. */
  probe = false;

  // The configuration, fixed for the machine's life, one load nearer.
  private readonly mode: Mode;
  private readonly tlbOn: boolean;
  private readonly pscCfg: boolean;
  /** tlb.comb, one load nearer. */
  private readonly comb: TagCache;
  /** regs.stamp, one load nearer for the L1 hit path. */
  private readonly stamp: Int32Array;
  /** Bits [51:M] of the high half: reserved in every present entry. */
  private readonly rsvdHi: number;
  /** Address bits [M-1:32] of the high half. */
  private readonly addrHi: number;
  /** Values of EPT entry bits 2:0 that misconfigure a present entry, as a set of bits (see eptMisconfigured). */
  private readonly badRwx: number;

  /**
   * L1 TLB: a direct-mapped memo of combined-TLB entries with the kinds of
   * access already checked under registers of one generation and a TLB of
   * one epoch (see L1_WORDS); l1Addr holds the entry's page hPA and gPA. It
   * only short-cuts the TLB hit path; it has no behaviour of its own. Packed
   * in two arrays so that a hit is a few loads.
   */
  private readonly l1 = new Int32Array(L1_SIZE * L1_WORDS);
  private readonly l1Addr = new Float64Array(L1_SIZE * 2);

  /** A PAE PDPTE load is in progress: its EPT exits carry no guest-linear address. */
  private pdpteLoad = false;
  // Output of xlateGpa: the host address as two halves.
  private xHi = 0;
  private xLo = 0;
  private xRights = 0;
  /** Whether xRights came (wholly or partly) from a cache rather than memory. */
  private xCached = false;

  /**
   * The gPA page and EP4TA of the last EPT violation, whose guest-physical
   * mappings and EPT paging-structure-cache entries it dropped (any VPID),
   * and tlb.gpEpoch after the drop. While that epoch stands nothing was
   * inserted there since, so a lookup for the page (the retry's final
   * translation) must miss and is skipped.
   */
  private goneEpoch = 0;
  private goneHi = 0;
  private goneLo = -1; // no page yet: never a page address
  private goneEp4ta = 0;

  // Context tags of the current access.
  private cVpid = 0;
  private cPcid = 0;
  private cEp4ta = 0;
  private gVpid = 0; // tag of guest-physical mappings (ASID under NPT)

  // Per-level scratch of the guest walk, for paging-structure-cache fills.
  private readonly lvTableGpa = new Float64Array(6);
  private readonly lvTableHpa = new Float64Array(6);
  private readonly lvTableRt = new Int32Array(6);
  private readonly lvRights = new Int32Array(6);
  // Per-level scratch of the EPT/NPT walk, for A/D write-back and fills.
  private readonly eAddrHi = new Int32Array(6);
  private readonly eAddrLo = new Int32Array(6);
  private readonly eLo = new Int32Array(6);
  private readonly eHi = new Int32Array(6);
  private readonly eRights = new Int32Array(6);

  constructor(
    readonly mem: PhysMem,
    readonly regs: VcpuRegs,
    readonly cfg: MachineConfig,
    readonly tlb: VcpuTlb,
  ) {
    this.mode = cfg.mode;
    this.tlbOn = cfg.tlb;
    this.pscCfg = cfg.psc;
    this.comb = tlb.comb;
    this.stamp = regs.stamp;
    if (tlb.comb.epoch !== regs.stamp) throw new Error('assertion: the combined TLB must share the registers\' stamp');
    const m = cfg.maxPhysAddr;
    this.rsvdHi = m >= 52 ? 0 : (((1 << (52 - m)) - 1) << (m - 32)) | 0;
    this.addrHi = m >= 52 ? 0xfffff : (1 << (m - 32)) - 1;
    this.badRwx = (1 << 2) | (1 << 6) | (cfg.execOnly ? 0 : 1 << 4);
    for (let e = 0; e < this.l1.length; e += L1_WORDS) this.l1[e + 2] = -1; // no stamp yet
  }

  /**
   * Whether the TLB is looked up and filled: it is on and this is no probe.
   * Strict comparisons, as V8 compiles a plain truth test of a field into a
   * generic ToBoolean, and this is asked several times a walk.
   */
  private cachesOn(): boolean {
    return this.tlbOn === true && this.probe === false;
  }

  /** Whether the paging-structure caches are looked up and filled too. */
  private pscOn(): boolean {
    return this.pscCfg === true && this.cachesOn();
  }

  /** Physical address in an entry, bits [M-1:shift]. */
  private addrOf(lo: number, hi: number, shift: number): number {
    const loMask = shift === 12 ? 0xfffff000 : shift === 21 ? 0xffe00000 : 0xc0000000;
    return (hi & this.addrHi) * TWO32 + ((lo & loMask) >>> 0);
  }

  private setContext(): void {
    const r = this.regs;
    this.cPcid = r.pcid;
    switch (this.mode) {
      case Mode.Native:
        this.cVpid = 0;
        this.cEp4ta = 0;
        this.gVpid = 0;
        break;
      case Mode.Ept:
        this.cVpid = r.vpid;
        this.cEp4ta = r.ep4ta;
        this.gVpid = 0;
        break;
      default:
        this.cVpid = r.asid;
        this.cEp4ta = 0;
        this.gVpid = r.asid;
    }
  }

  /**
   * The L1 memo's short cut for an access within one page: on a hit the
   * result is complete (as reset() plus an Ok TLB hit) and true is returned.
   * A memo entry exists only for an address that passed the canonical check
   * under the same registers, so the caller may skip that check on a hit;
   * and only with the TLB on and outside probes (fillL1's caller), so the
   * hit needs no cachesOn() test.
   */
  l1Hit(laHi: number, laLo: number, kind: AccessKind, implicit: boolean): boolean {
    const j = (laLo >>> 12) & L1_MASK;
    const e = j * L1_WORDS;
    const l1 = this.l1;
    const key = l1[e];
    if (
      ((key ^ laLo) & ~0xfff) !== 0 || (key & (1 << (kind * 2 + (implicit ? 1 : 0)))) === 0 || l1[e + 1] !== laHi ||
      l1[e + 2] !== this.stamp[0]
    ) {
      return false;
    }
    const r = this.res;
    const off = laLo & 0xfff;
    r.outcome = Outcome.Ok;
    r.vmError = 0;
    r.refs = 0;
    r.hpa = this.l1Addr[j * 2] + off;
    r.gpa = this.l1Addr[j * 2 + 1] + off;
    r.tlbHit = true;
    return true;
  }

  /**
   * Translate one access that does not cross a 4K boundary; the outcome is
   * left in `res` (which the caller reset). The canonical check is the caller's.
   */
  translate(laHi: number, laLo: number, kind: AccessKind, implicit: boolean): void {
    const r = this.res;
    const regs = this.regs;
    const useTlb = this.cachesOn();
    const keyLo = laLo & ~0xfff;
    const j = (laLo >>> 12) & L1_MASK;
    const allowBit = 1 << (kind * 2 + (implicit ? 1 : 0));
    const comb = this.comb;
    this.setContext();
    if (!regs.paging) {
      this.translateUnpaged(laLo, kind);
      return;
    }
    if ((regs.efer & EFER_LMA) === 0) {
      // Outside long mode linear addresses are 32 bits; only PAE paging is modelled.
      if ((regs.cr4 & CR4_PAE) === 0) throw new UnsupportedError('32-bit (non-PAE) paging is not modelled: set CR4.PAE');
      laHi = 0;
    }
    if (useTlb) {
      const i = comb.lookup(laHi, keyLo, this.cVpid, this.cPcid, this.cEp4ta);
      if (i >= 0) {
        const rt = comb.rightsOf(i);
        // A write through an entry whose D is clear re-walks (SDM 4.8; trace-format.md rule 6).
        if (kind !== AccessKind.Write || (rt & RT_DIRTY) !== 0) {
          const err = this.permissionFault(rt & RT_RW, (rt & RT_US) >>> 1, (rt & RT_XD) >>> 2, (rt >>> RT_PKEY_SHIFT) & 15, kind, implicit);
          if (err !== 0) {
            // A fault from cached rights (a "spurious" #PF is allowed); it invalidates the entry (SDM 4.10.4.1).
            r.tlbHit = true;
            this.pageFault(laHi, laLo, err);
            return;
          }
          const need = kind === AccessKind.Write ? RT_EW : kind === AccessKind.Fetch ? RT_EX : RT_ER;
          if (this.mode === Mode.Native || (rt & need) !== 0) {
            const off = laLo & 0xfff;
            r.outcome = Outcome.Ok;
            r.hpa = comb.hpaOf(i) + off;
            r.gpa = comb.gpaOf(i) + off;
            r.tlbHit = true;
            this.fillL1(j, keyLo, laHi, i, allowBit);
            return;
          }
          // Second-dimension rights deny: re-walk so the exit comes from memory.
        }
      }
    }
    for (let n = 0; ; n++) {
      if (n > MAX_RESTARTS) throw new Error('assertion: page walk restarted more than 1000 times');
      if (this.walkOnce(laHi, laLo, kind, implicit) !== S_RESTART) return;
    }
  }

  /** Remember that TLB entry i allows this kind of access under the current registers. */
  private fillL1(j: number, keyLo: number, laHi: number, i: number, allowBit: number): void {
    const stamp = this.stamp[0];
    const e = j * L1_WORDS;
    const l1 = this.l1;
    if ((l1[e] & ~0xfff) === keyLo && l1[e + 1] === laHi && l1[e + 2] === stamp) {
      l1[e] |= allowBit;
      return;
    }
    l1[e] = keyLo | allowBit;
    l1[e + 1] = laHi;
    l1[e + 2] = stamp;
    this.l1Addr[j * 2] = this.comb.hpaOf(i);
    this.l1Addr[j * 2 + 1] = this.comb.gpaOf(i);
  }

  /** CR0.PG=0: the linear address is the (guest-)physical address. */
  private translateUnpaged(laLo: number, kind: AccessKind): void {
    const r = this.res;
    const pa = laLo >>> 0;
    if (this.mode === Mode.Native) {
      r.outcome = Outcome.Ok;
      r.hpa = pa;
      r.gpa = pa;
      return;
    }
    for (let n = 0; ; n++) {
      if (n > MAX_RESTARTS) throw new Error('assertion: page walk restarted more than 1000 times');
      const s = this.xlateGpa(0, laLo, kind === AccessKind.Write ? T_W : kind === AccessKind.Fetch ? T_X : T_R, true, 0, laLo);
      if (s === S_RESTART) continue;
      if (s === S_OK) {
        r.outcome = Outcome.Ok;
        r.hpa = join(this.xHi, this.xLo);
        r.gpa = pa;
      }
      return;
    }
  }

  /**
   * One walk from the root (or from a paging-structure-cache hit) (SDM 4.5).
   * Addresses travel as two 32-bit halves: gPA (tgHi, tgLo) of the current
   * table, and its hPA (thHi, thLo) when known without a second-dimension
   * walk (native, or from a paging-structure cache).
   */
  private walkOnce(laHi: number, laLo: number, kind: AccessKind, implicit: boolean): number {
    const r = this.res;
    const regs = this.regs;
    const mem = this.mem;
    const mode = this.mode;
    const addrHi = this.addrHi;
    const pae = (regs.efer & EFER_LMA) === 0;
    // PAE: the PDPTE (level 3) comes from a register or, under NPT, from memory; walks below start at the PD.
    const levels = pae ? 2 : regs.la57 ? 5 : 4;
    const nxe = regs.nxe;
    const walkType = mode === Mode.Ept ? (regs.eptAd ? T_R | T_W : T_R) : T_R | T_W;
    // The per-level scratch is only read to fill the paging-structure caches.
    const fill = this.pscOn();

    let level = levels;
    const cr3 = regs.cr3;
    let tgHi = hiHalf(cr3) & addrHi;
    let tgLo = cr3 & ~0xfff;
    let known = mode === Mode.Native;
    let thHi = tgHi;
    let thLo = tgLo;
    let tableRt = mode === Mode.Native ? RT_ER | RT_EW | RT_EX | RT_EDIRTY : 0;
    let rw = 1;
    let us = 1;
    let xd = 0;
    let pscHit = false;

    if (fill) {
      for (let k = 2; k <= levels; k++) {
        const c = this.tlb.gPsc[k];
        if (c.count() === 0) continue; // nothing to find: skip the key computation too
        const i = c.lookup(laHi & c.hiMask, laLo & c.loMask, this.cVpid, this.cPcid, this.cEp4ta);
        if (i >= 0) {
          pscHit = true;
          level = k - 1;
          // A guest PSC entry always holds its table's gPA (never -1).
          const g = c.gpaOf(i);
          const h = c.hpaOf(i);
          tgHi = hiHalf(g);
          tgLo = g | 0;
          known = true;
          thHi = hiHalf(h);
          thLo = h | 0;
          const rt = c.rightsOf(i);
          rw = rt & RT_RW;
          us = (rt & RT_US) >>> 1;
          xd = (rt & RT_XD) >>> 2;
          tableRt = rt & (RT_ER | RT_EW | RT_EX | RT_EDIRTY);
          break;
        }
      }
    }
    if (pae && !pscHit) {
      // No PDE-cache hit: find the PD through the PDPTE.
      const s = this.paePdpte(laLo, walkType, implicit, kind);
      if (s !== S_OK) return s;
      tgHi = this.xHi;
      tgLo = this.xLo;
      thHi = tgHi;
      thLo = tgLo;
    }
    const top = level;

    let lo = 0;
    let hi = 0;
    let egLo = 0; // entry gPA: (tgHi, egLo)
    let ehHi = 0; // entry hPA: (ehHi, ehLo)
    let ehLo = 0;
    let entryRt = 0;
    let entryCached = false;
    for (;;) {
      const idx8 = indexOf(laHi, laLo, level) << 3;
      egLo = tgLo | idx8;
      if (known) {
        ehHi = thHi;
        ehLo = thLo | idx8;
        entryRt = tableRt;
        entryCached = mode !== Mode.Native;
      } else {
        const s = this.xlateGpa(tgHi, egLo, walkType, false, laHi, laLo);
        if (s !== S_OK) return s;
        ehHi = this.xHi;
        ehLo = this.xLo;
        entryRt = this.xRights;
        entryCached = this.xCached;
      }
      if (fill && level !== top) {
        // Read for the fill of the level above only: the top level's table is never needed.
        this.lvTableGpa[level] = join(tgHi, tgLo);
        this.lvTableHpa[level] = join(ehHi, ehLo) - idx8;
        this.lvTableRt[level] = entryRt;
      }
      mem.load64Halves(ehHi, ehLo);
      lo = mem.lo;
      hi = mem.hi;
      r.refs++;
      if (this.rec !== null) this.rec.ref(Dim.Guest, level, join(tgHi, egLo), join(ehHi, ehLo), lo, hi, -1, rw | (us << 1) | (xd << 2));
      if ((lo & 1) === 0) {
        this.pageFault(laHi, laLo, this.userBit(implicit) | (kind === AccessKind.Write ? PF_W : 0) | this.fetchBit(kind));
        return S_EXIT;
      }
      // PAE reserves bits 62:52 too (SDM 4.4.2); long mode ignores or uses them.
      if ((pae && (hi & 0x7ff00000) !== 0) || this.guestReserved(lo, hi, level, nxe, mode === Mode.Npt)) {
        this.pageFault(laHi, laLo, PF_P | PF_RSVD | this.userBit(implicit) | (kind === AccessKind.Write ? PF_W : 0) | this.fetchBit(kind));
        return S_EXIT;
      }
      rw &= lo >>> 1;
      us &= lo >>> 2;
      if (nxe) xd |= hi >>> 31;
      if (level === 1 || (level <= 3 && (lo & 0x80) !== 0)) break;
      // A non-leaf entry gets A as the walk moves past it (trace-format.md rule 2).
      if ((lo & 0x20) === 0) {
        const s = this.guestSetBits(level, join(tgHi, egLo), join(ehHi, ehLo), entryRt, entryCached, lo, hi, 0x20, laHi, laLo);
        if (s !== S_OK) return s;
        lo |= 0x20;
      }
      if (fill) this.lvRights[level] = rw | (us << 1) | (xd << 2);
      tgHi = hi & addrHi;
      tgLo = lo & ~0xfff;
      known = mode === Mode.Native;
      thHi = tgHi;
      thLo = tgLo;
      level--;
    }

    // Leaf: compose the final address, leaf[M-1:shift] | LA[shift-1:0].
    const shift = level === 3 ? 30 : level === 2 ? 21 : 12;
    const offMask = level === 3 ? 0x3fffffff : level === 2 ? 0x1fffff : 0xfff;
    const fgHi = hi & addrHi;
    const fgLo = (lo & ~offMask) | (laLo & offMask);
    const pkey = (hi >>> 27) & 15;
    const err = this.permissionFault(rw, us, xd, pkey, kind, implicit);
    if (err !== 0) {
      this.pageFault(laHi, laLo, err);
      return S_EXIT;
    }
    let hHi = fgHi;
    let hLo = fgLo;
    let finalRt = RT_ER | RT_EW | RT_EX | RT_EDIRTY;
    if (mode !== Mode.Native) {
      const s = this.xlateGpa(fgHi, fgLo, kind === AccessKind.Write ? T_W : kind === AccessKind.Fetch ? T_X : T_R, true, laHi, laLo);
      if (s !== S_OK) return s;
      hHi = this.xHi;
      hLo = this.xLo;
      finalRt = this.xRights;
    }
    // The leaf's A/D only once the whole access succeeds (trace-format.md rule 3).
    const need = kind === AccessKind.Write ? 0x60 : 0x20;
    if ((lo & need) !== need) {
      const s = this.guestSetBits(level, join(tgHi, egLo), join(ehHi, ehLo), entryRt, entryCached, lo, hi, need, laHi, laLo);
      if (s !== S_OK) return s;
      lo |= need;
    }
    r.outcome = Outcome.Ok;
    r.hpa = join(hHi, hLo);
    r.gpa = join(fgHi, fgLo);
    if (this.cachesOn()) {
      const dirty = (lo & 0x40) !== 0 && (finalRt & RT_EDIRTY) !== 0 ? RT_DIRTY : 0;
      const global = (lo & 0x100) !== 0 && (regs.cr4 & CR4_PGE) !== 0;
      this.tlb.comb.insert(
        laHi, laLo & ~0xfff, this.cVpid, this.cPcid, this.cEp4ta, global, shift,
        join(hHi, hLo & ~0xfff), join(fgHi, fgLo & ~0xfff),
        rw | (us << 1) | (xd << 2) | dirty | (pkey << RT_PKEY_SHIFT) | (finalRt & (RT_ER | RT_EW | RT_EX | RT_EDIRTY)),
      );
      if (this.pscCfg === true) {
        for (let k = top; k > level; k--) {
          const c = this.tlb.gPsc[k];
          c.insert(laHi & c.hiMask, laLo & c.loMask, this.cVpid, this.cPcid, this.cEp4ta, false, c.granule,
            this.lvTableHpa[k - 1], this.lvTableGpa[k - 1], this.lvRights[k] | this.lvTableRt[k - 1]);
        }
      }
    }
    return S_OK;
  }

  /**
   * The PAE PDPTE for the address (SDM 4.4.1): from the PDPTE registers, or
   * under NPT read on demand from guest memory (hw.md 6.5), so its faults come
   * at walk time. On S_OK xHi/xLo hold the page-directory address.
   */
  private paePdpte(laLo: number, walkType: number, implicit: boolean, kind: AccessKind): number {
    const regs = this.regs;
    const idx = (laLo >>> 30) & 3;
    let lo = regs.pdpteLo[idx];
    let hi = regs.pdpteHi[idx];
    if (this.mode === Mode.Npt) {
      const entryGpa = ((regs.cr3 & 0xffffffe0) >>> 0) + idx * 8;
      const s = this.xlateGpa(0, entryGpa | 0, walkType, false, 0, laLo);
      if (s !== S_OK) return s;
      const entryHpa = join(this.xHi, this.xLo);
      this.mem.load64(entryHpa);
      lo = this.mem.lo;
      hi = this.mem.hi;
      this.res.refs++;
      if (this.rec !== null) this.rec.ref(Dim.Guest, 3, entryGpa, entryHpa, lo, hi, -1, RT_RW | RT_US);
    }
    const err = this.userBit(implicit) | (kind === AccessKind.Write ? PF_W : 0) | this.fetchBit(kind);
    if ((lo & 1) === 0) {
      this.pageFault(0, laLo, err);
      return S_EXIT;
    }
    if (this.paePdpteReserved(lo, hi)) {
      this.pageFault(0, laLo, err | PF_P | PF_RSVD);
      return S_EXIT;
    }
    this.xHi = hi & this.addrHi;
    this.xLo = lo & ~0xfff;
    return S_OK;
  }

  /** Reserved bits of a present PAE PDPTE: 2:1, 8:5 and 63:M (SDM 4.4.1, table 4-8). */
  paePdpteReserved(lo: number, hi: number): boolean {
    return (lo & 0x1e6) !== 0 || (hi & (this.rsvdHi | 0xfff00000)) !== 0;
  }

  /**
   * Load the four PDPTE registers from the 32-byte-aligned table at CR3
   * (SDM 4.4.1; under EPT through EPT as reads with no guest-linear address,
   * hw.md 5.5). Under NPT nothing is loaded (hw.md 6.5). Returns false with
   * `res` holding #GP (reserved bit) or the VM exit.
   */
  loadPdptes(cr3: number): boolean {
    const regs = this.regs;
    const r = this.res;
    if (this.mode === Mode.Npt) return true;
    this.setContext();
    const base = (cr3 & 0xffffffe0) >>> 0;
    const lo = [0, 0, 0, 0];
    const hi = [0, 0, 0, 0];
    for (let i = 0; i < 4; i++) {
      let hpa = base + i * 8;
      if (this.mode === Mode.Ept) {
        this.pdpteLoad = true;
        let s = S_RESTART;
        try {
          for (let n = 0; s === S_RESTART; n++) {
            if (n > MAX_RESTARTS) throw new Error('assertion: PDPTE load restarted more than 1000 times');
            s = this.xlateGpa(0, hpa | 0, T_R, false, 0, 0);
          }
        } finally {
          this.pdpteLoad = false;
        }
        if (s !== S_OK) return false;
        hpa = join(this.xHi, this.xLo);
      }
      this.mem.load64(hpa);
      lo[i] = this.mem.lo;
      hi[i] = this.mem.hi;
      if ((lo[i] & 1) !== 0 && this.paePdpteReserved(lo[i], hi[i])) {
        r.outcome = Outcome.Gp;
        return false;
      }
    }
    for (let i = 0; i < 4; i++) {
      regs.pdpteLo[i] = lo[i];
      regs.pdpteHi[i] = hi[i];
    }
    return true;
  }

  /**
   * Set A (and D) in a guest entry with a compare-and-exchange. Under EPT/NPT
   * that is a write to the guest page-table page, which its translation must
   * allow (SDM 28.2.3.2: guest A/D updates are data writes).
   */
  private guestSetBits(level: number, entryGpa: number, entryHpa: number, entryRt: number, cached: boolean, lo: number, hi: number, bits: number, laHi: number, laLo: number): number {
    if (this.mode !== Mode.Native && (entryRt & RT_EW) === 0 && cached) {
      // Cached rights deny the write-back: re-walk the second dimension from memory, as the TLB-hit path does.
      const gHi = hiHalf(entryGpa);
      const gLo = entryGpa | 0;
      this.tlb.dropGuestPhysicalCovering(gHi, gLo, this.gVpid, this.cEp4ta);
      const s = this.xlateGpa(gHi, gLo, T_R | T_W, false, laHi, laLo);
      if (s !== S_OK) return s;
      entryRt = this.xRights;
    }
    if (this.mode !== Mode.Native && (entryRt & RT_EW) === 0) {
      if (this.mode === Mode.Ept) this.eptViolation(hiHalf(entryGpa), entryGpa | 0, T_R | T_W, (entryRt >>> RT_E_SHIFT) & 7, false, laHi, laLo);
      else this.npf(entryGpa, PF_P | PF_W | PF_U, false);
      return S_EXIT;
    }
    if (this.rec !== null) this.rec.setBits(Dim.Guest, level, entryHpa, lo, hi, lo | bits, hi);
    if (this.probe) return S_OK;
    return this.mem.cmpxchg64(entryHpa, lo, hi, lo | bits, hi) ? S_OK : S_RESTART;
  }

  private userBit(implicit: boolean): number {
    return this.regs.cpl === 3 && !implicit ? PF_U : 0;
  }

  /** I/D is reported for fetches when SMEP or (PAE and NXE) is on (SDM 4.7). */
  private fetchBit(kind: AccessKind): number {
    return kind === AccessKind.Fetch && ((this.regs.cr4 & CR4_SMEP) !== 0 || this.regs.nxe) ? PF_ID : 0;
  }

  /** Reserved bits of a present guest (or NPT) entry at this level (SDM 4.5 table 4-20; APM: bit 8 of PML4E/PML5E). */
  guestReserved(lo: number, hi: number, level: number, nxe: boolean, amd: boolean): boolean {
    if ((hi & this.rsvdHi) !== 0) return true;
    if (!nxe && hi < 0) return true;
    if (level >= 4) return (lo & 0x80) !== 0 || (amd && (lo & 0x100) !== 0);
    if ((lo & 0x80) !== 0) {
      if (level === 3) return (lo & 0x3fffe000) !== 0;
      if (level === 2) return (lo & 0x1fe000) !== 0;
    }
    return false;
  }

  /**
   * The access-rights rules of SDM 4.6 (U/S, R/W with CR0.WP, XD, SMEP, SMAP
   * with EFLAGS.AC and implicit accesses, PKU/PKS). Returns the #PF error
   * code, or 0 when the access is allowed.
   */
  permissionFault(rw: number, us: number, xd: number, pkey: number, kind: AccessKind, implicit: boolean): number {
    const regs = this.regs;
    const user = regs.cpl === 3 && !implicit;
    const write = kind === AccessKind.Write;
    const fetch = kind === AccessKind.Fetch;
    const wp = (regs.cr0 & CR0_WP) !== 0;
    let fault = false;
    if (user) {
      if (us === 0) fault = true;
      else if (write && rw === 0) fault = true;
    } else {
      if (us !== 0) {
        if (fetch) {
          if ((regs.cr4 & CR4_SMEP) !== 0) fault = true;
        } else if ((regs.cr4 & CR4_SMAP) !== 0 && (regs.ac === 0 || implicit)) {
          fault = true;
        }
      }
      if (write && wp && rw === 0) fault = true;
    }
    if (fetch && xd !== 0) fault = true;
    let pk = false;
    if (!fetch && (regs.efer & EFER_LMA) !== 0) {
      const keys = us !== 0 ? ((regs.cr4 & CR4_PKE) !== 0 ? regs.pkru : -1) : (regs.cr4 & CR4_PKS) !== 0 ? regs.pkrs : -1;
      if (keys !== -1) {
        const ad = (keys >>> (2 * pkey)) & 1;
        const wd = (keys >>> (2 * pkey + 1)) & 1;
        if (ad !== 0 || (write && wd !== 0 && (user || wp))) pk = true;
      }
    }
    if (!fault && !pk) return 0;
    return PF_P | (write ? PF_W : 0) | (user ? PF_U : 0) | this.fetchBit(kind) | (pk ? PF_PK : 0);
  }

  private pageFault(laHi: number, laLo: number, err: number): void {
    const r = this.res;
    r.outcome = Outcome.Pf;
    r.errorCode = err;
    r.laHi = laHi;
    r.laLo = laLo;
    if (this.cachesOn()) this.dropForLinear(laHi, laLo);
  }

  /** A #PF (SDM 4.10.4.1) or EPT violation drops the TLB entry for the page and the PSC entries for the address. */
  private dropForLinear(laHi: number, laLo: number): void {
    const vpid = this.cVpid;
    const pcid = this.cPcid;
    const ep4ta = this.cEp4ta;
    this.tlb.dropLinearCovering(laHi, laLo, vpid, pcid, ep4ta);
  }

  // ---------------------------------------------------------------- dimension 2

  /**
   * Translate the guest-physical address (gHi, gLo) through EPT or NPT for an
   * access of `type` (T_R/T_W/T_X bits). On S_OK, xHi/xLo and xRights hold
   * the result.
   */
  private xlateGpa(gHi: number, gLo: number, type: number, final: boolean, laHi: number, laLo: number): number {
    if (this.cachesOn() && !this.gpaGone(gHi, gLo)) {
      const c = this.tlb.gpa;
      const i = c.lookup(gHi, gLo & ~0xfff, this.gVpid, 0, this.cEp4ta);
      if (i >= 0) {
        const rt = c.rightsOf(i);
        if (((rt >>> RT_E_SHIFT) & type) === type && ((type & T_W) === 0 || (rt & RT_EDIRTY) !== 0)) {
          const h = c.hpaOf(i);
          this.xHi = hiHalf(h);
          this.xLo = (h | 0) | (gLo & 0xfff);
          this.xRights = rt;
          this.xCached = true;
          return S_OK;
        }
      }
    }
    this.xCached = false; // set by the walk if it starts from a paging-structure-cache entry
    return this.mode === Mode.Ept ? this.eptWalk(gHi, gLo, type, final, laHi, laLo) : this.nptWalk(gHi, gLo, type, final);
  }

  /** Whether the guest-physical caches are known to hold nothing for the page of (gHi, gLo) under the current EP4TA (see goneEpoch). */
  private gpaGone(gHi: number, gLo: number): boolean {
    return this.goneEpoch === this.tlb.gpEpoch[0] && this.goneLo === (gLo & ~0xfff) && this.goneHi === gHi && this.goneEp4ta === this.cEp4ta;
  }

  /** EPT misconfiguration conditions of a present entry (SDM 28.2.3.1). */
  eptMisconfigured(lo: number, hi: number, level: number): boolean {
    // Bits 2:0 that misconfigure (W without R; X only, without the capability), as a set.
    if (((this.badRwx >>> (lo & 7)) & 1) !== 0 || (hi & this.rsvdHi) !== 0) return true;
    if (level >= 4) return (lo & 0xf8) !== 0;
    const leaf = level === 1 || (lo & 0x80) !== 0;
    if (!leaf) return (lo & 0x78) !== 0;
    if (((BAD_EPT_MEMTYPES >>> ((lo >>> 3) & 7)) & 1) !== 0) return true;
    if (level === 3) return (lo & 0x3ffff000) !== 0;
    if (level === 2) return (lo & 0x1ff000) !== 0;
    return false;
  }

  /** The EPT walk (SDM 28.2.2, 28.2.3): every entry is checked as it is read, rights and A/D once the walk completed. */
  private eptWalk(gHi: number, gLo: number, type: number, final: boolean, laHi: number, laLo: number): number {
    const regs = this.regs;
    const mem = this.mem;
    const r = this.res;
    const addrHi = this.addrHi;
    let level = regs.eptLevels;
    const eptp = regs.eptp;
    let tHi = hiHalf(eptp) & addrHi;
    let tLo = eptp & ~0xfff;
    let rights = 7;
    if (this.pscOn() && !this.gpaGone(gHi, gLo)) {
      for (let k = 2; k <= level; k++) {
        const c = this.tlb.ePsc[k];
        if (c.count() === 0) continue; // nothing to find: skip the key computation too
        const i = c.lookup(gHi & c.hiMask, gLo & c.loMask, this.gVpid, 0, this.cEp4ta);
        if (i >= 0) {
          this.xCached = true;
          level = k - 1;
          const h = c.hpaOf(i);
          tHi = hiHalf(h);
          tLo = h | 0;
          rights = (c.rightsOf(i) >>> RT_E_SHIFT) & 7;
          break;
        }
      }
    }
    const top = level;
    const ad = regs.eptAd;
    const write = (type & T_W) !== 0;
    // The per-level scratch is only read for A/D write-backs and paging-structure-cache fills.
    const keep = this.pscOn();
    let pending = 0; // bit k: the level-k entry needs its A (leaf: and D) set
    const rec = this.rec;
    let lo = 0;
    let hi = 0;
    // res.refs grows by top - level + 1 (the loads made) where the walk ends.
    for (;;) {
      const aLo = tLo | (indexOf(gHi, gLo, level) << 3);
      mem.load64Halves(tHi, aLo);
      lo = mem.lo;
      hi = mem.hi;
      if (rec !== null) rec.ref(Dim.Ept, level, -1, join(tHi, aLo), lo, hi, join(gHi, gLo), rights << RT_E_SHIFT);
      if ((lo & 7) === 0) {
        r.refs += top - level + 1;
        this.eptViolation(gHi, gLo, type, 0, final, laHi, laLo);
        return S_EXIT;
      }
      if (this.eptMisconfigured(lo, hi, level)) {
        r.refs += top - level + 1;
        r.outcome = Outcome.EptMisconfig;
        r.gpa = join(gHi, gLo);
        return S_EXIT;
      }
      rights &= lo & 7;
      const leaf = level === 1 || (lo & 0x80) !== 0;
      const need = leaf && write ? 0x300 : 0x100;
      const missing = ad && (lo & need) !== need;
      if (keep || missing) {
        if (missing) pending |= 1 << level;
        this.eAddrHi[level] = tHi;
        this.eAddrLo[level] = aLo;
        this.eLo[level] = lo;
        this.eHi[level] = hi;
        this.eRights[level] = rights << RT_E_SHIFT;
      }
      if (leaf) break;
      tHi = hi & addrHi;
      tLo = lo & ~0xfff;
      level--;
    }
    r.refs += top - level + 1;
    // Permissions are judged only once the walk completed (SDM 28.2.3.3).
    if ((rights & type) !== type) {
      this.eptViolation(gHi, gLo, type, rights, final, laHi, laLo);
      return S_EXIT;
    }
    // EPT A/D (EPTP bit 6): A in every entry used, D in the leaf for a write (SDM 28.2.4).
    let dirty = RT_EDIRTY;
    if (ad && pending !== 0) {
      for (let k = top; k >= level; k--) {
        if ((pending & (1 << k)) === 0) continue;
        const need = k === level && write ? 0x300 : 0x100;
        const elo = this.eLo[k];
        const ehi = this.eHi[k];
        const at = join(this.eAddrHi[k], this.eAddrLo[k]);
        if (rec !== null) rec.setBits(Dim.Ept, k, at, elo, ehi, elo | need, ehi);
        if (!this.probe && !mem.cmpxchg64(at, elo, ehi, elo | need, ehi)) return S_RESTART;
        this.eLo[k] = elo | need;
        if (k === level) lo = elo | need;
      }
    }
    if (ad && (lo & 0x200) === 0) dirty = 0;
    this.leafOutput(lo, hi, level, gLo);
    this.xRights = (rights << RT_E_SHIFT) | dirty;
    if (this.cachesOn()) this.fillGuestPhysical(gHi, gLo, top, level);
    return S_OK;
  }

  /** xHi/xLo: the host address a second-dimension leaf at `level` maps the gPA (low half gLo) to. */
  private leafOutput(lo: number, hi: number, level: number, gLo: number): void {
    const off = level === 3 ? 0x3fffffff : level === 2 ? 0x1fffff : 0xfff;
    this.xHi = hi & this.addrHi;
    this.xLo = (lo & ~off) | (gLo & off);
  }

  /** Cache the finished second-dimension walk: the guest-physical mapping and the paging-structure entries above its leaf. */
  private fillGuestPhysical(gHi: number, gLo: number, top: number, leafLevel: number): void {
    const shift = leafLevel === 3 ? 30 : leafLevel === 2 ? 21 : 12;
    this.tlb.gpa.insert(gHi, gLo & ~0xfff, this.gVpid, 0, this.cEp4ta, false, shift, join(this.xHi, this.xLo & ~0xfff), join(gHi, gLo & ~0xfff), this.xRights);
    if (this.pscCfg === false) return;
    for (let k = top; k > leafLevel; k--) {
      const c = this.tlb.ePsc[k];
      const next = this.addrOf(this.eLo[k], this.eHi[k], 12);
      c.insert(gHi & c.hiMask, gLo & c.loMask, this.gVpid, 0, this.cEp4ta, false, c.granule, next, -1, this.eRights[k]);
    }
  }

  /** An EPT violation at the gPA (gHi, gLo) (SDM 28.2.3.3), with its exit qualification (SDM table 27-7). */
  private eptViolation(gHi: number, gLo: number, type: number, rights: number, final: boolean, laHi: number, laLo: number): void {
    const r = this.res;
    r.outcome = Outcome.EptViolation;
    r.gpa = join(gHi, gLo);
    r.glaValid = !this.pdpteLoad;
    r.qualification = type | (rights << 3) | (r.glaValid ? EQ_GLA_VALID : 0) | (final ? EQ_TRANSLATED : 0);
    r.laHi = laHi;
    r.laLo = laLo;
    if (this.cachesOn()) {
      // SDM 28.3.3.1: drop guest-physical mappings for the gPA and combined mappings for the LA.
      const ep4ta = this.cEp4ta;
      this.tlb.dropGuestPhysicalCovering(gHi, gLo, -1, ep4ta);
      this.goneEpoch = this.tlb.gpEpoch[0];
      this.goneHi = gHi;
      this.goneLo = gLo & ~0xfff;
      this.goneEp4ta = ep4ta;
      if (this.regs.paging && r.glaValid) this.dropForLinear(laHi, laLo);
    }
  }

  /**
   * The nested walk (APM 15.25.5): host-format tables from nCR3 in the host's
   * 4-level mode with EFER.NXE=1; every access is a user access; guest
   * page-table accesses are writes.
   */
  private nptWalk(gHi: number, gLo: number, type: number, final: boolean): number {
    const mem = this.mem;
    const r = this.res;
    const addrHi = this.addrHi;
    const ncr3 = this.regs.ncr3;
    let level = 4;
    let tHi = hiHalf(ncr3) & addrHi;
    let tLo = ncr3 & ~0xfff;
    let u = 1;
    let w = 1;
    let nx = 0;
    if (this.pscOn()) {
      for (let k = 2; k <= 4; k++) {
        const c = this.tlb.ePsc[k];
        if (c.count() === 0) continue; // nothing to find: skip the key computation too
        const i = c.lookup(gHi & c.hiMask, gLo & c.loMask, this.gVpid, 0, 0);
        if (i >= 0) {
          this.xCached = true;
          level = k - 1;
          const h = c.hpaOf(i);
          tHi = hiHalf(h);
          tLo = h | 0;
          const rt = c.rightsOf(i);
          u = (rt & RT_ER) !== 0 ? 1 : 0;
          w = (rt & RT_EW) !== 0 ? 1 : 0;
          nx = (rt & RT_EX) !== 0 ? 0 : 1;
          break;
        }
      }
    }
    const top = level;
    // The per-level scratch is only read for paging-structure-cache fills.
    const keep = this.pscOn();
    const wr = (type & T_W) !== 0 ? PF_W : 0;
    const id = (type & T_X) !== 0 ? PF_ID : 0;
    let lo = 0;
    let hi = 0;
    let aLo = 0;
    for (;;) {
      aLo = tLo | (indexOf(gHi, gLo, level) << 3);
      mem.load64Halves(tHi, aLo);
      lo = mem.lo;
      hi = mem.hi;
      r.refs++;
      if (this.rec !== null) this.rec.ref(Dim.Npt, level, -1, join(tHi, aLo), lo, hi, join(gHi, gLo), this.nptRights(u, w, nx));
      if ((lo & 1) === 0) {
        this.npf(join(gHi, gLo), wr | PF_U | id, final);
        return S_EXIT;
      }
      if (this.guestReserved(lo, hi, level, true, true)) {
        this.npf(join(gHi, gLo), PF_P | wr | PF_U | PF_RSVD | id, final);
        return S_EXIT;
      }
      u &= lo >>> 2;
      w &= lo >>> 1;
      nx |= hi >>> 31;
      if (keep) {
        this.eLo[level] = lo;
        this.eHi[level] = hi;
        this.eRights[level] = this.nptRights(u, w, nx);
      }
      if (level === 1 || (lo & 0x80) !== 0) break;
      // Nested non-leaf A as the walk moves past the entry (trace-format.md, the modelled CPU).
      if ((lo & 0x20) === 0) {
        const at = join(tHi, aLo);
        if (this.rec !== null) this.rec.setBits(Dim.Npt, level, at, lo, hi, lo | 0x20, hi);
        if (!this.probe && !mem.cmpxchg64(at, lo, hi, lo | 0x20, hi)) return S_RESTART;
        lo |= 0x20;
        if (keep) this.eLo[level] = lo;
      }
      tHi = hi & addrHi;
      tLo = lo & ~0xfff;
      level--;
    }
    if (u === 0 || (wr !== 0 && w === 0) || (id !== 0 && nx !== 0)) {
      this.npf(join(gHi, gLo), PF_P | wr | PF_U | id, final);
      return S_EXIT;
    }
    const need = wr !== 0 ? 0x60 : 0x20;
    if ((lo & need) !== need) {
      const at = join(tHi, aLo);
      if (this.rec !== null) this.rec.setBits(Dim.Npt, level, at, lo, hi, lo | need, hi);
      if (!this.probe && !mem.cmpxchg64(at, lo, hi, lo | need, hi)) return S_RESTART;
      lo |= need;
    }
    this.leafOutput(lo, hi, level, gLo);
    this.xRights = this.nptRights(u, w, nx) | ((lo & 0x40) !== 0 ? RT_EDIRTY : 0);
    if (this.cachesOn()) this.fillGuestPhysical(gHi, gLo, top, level);
    return S_OK;
  }

  /** NPT rights in the second-dimension slots: readable = user, writable = user and R/W, executable = user and not NX. */
  private nptRights(u: number, w: number, nx: number): number {
    return u === 0 ? 0 : RT_ER | (w !== 0 ? RT_EW : 0) | (nx === 0 ? RT_EX : 0);
  }

  private npf(gpa: number, err: number, final: boolean): void {
    const r = this.res;
    r.outcome = Outcome.Npf;
    r.exitinfo1 = err + (final ? NPF_FINAL : NPF_GUEST_PAGE);
    r.gpa = gpa;
  }
}
