/** Control-register and EFER bits the paging model reads (SDM vol. 3 ch. 2, 4). */
export const CR0_PE = 1 << 0;
export const CR0_WP = 1 << 16;
export const CR0_PG = 1 << 31;

export const CR4_PAE = 1 << 5;
export const CR4_PGE = 1 << 7;
export const CR4_LA57 = 1 << 12;
export const CR4_PCIDE = 1 << 17;
export const CR4_SMEP = 1 << 20;
export const CR4_SMAP = 1 << 21;
export const CR4_PKE = 1 << 22;
export const CR4_PKS = 1 << 24;

export const EFER_LME = 1 << 8;
export const EFER_LMA = 1 << 10;
export const EFER_NXE = 1 << 11;

/** EPTP bits (SDM table 24-8). */
export const EPTP_AD = 1 << 6;

/**
 * Architectural state of one vCPU that the paging model reads. Physical
 * addresses (CR3, EPTP, nCR3) are numbers below 2^52; the rest are 32-bit.
 */
export class VcpuRegs {
  /**
   * Bumped by every register write and (shared with the combined TLB) by
   * every TLB change, so a cache of permission verdicts (the walker's L1
   * TLB) knows when CPL, CR0/CR4, EFER, PKRU/PKRS, AC, a tag or the TLB changed.
   */
  readonly stamp = new Int32Array(1);
  private _cr0 = CR0_PG | CR0_PE | CR0_WP;
  private _cr3 = 0;
  private _cr4 = CR4_PAE;
  private _efer = EFER_LME | EFER_LMA | EFER_NXE;
  private _cpl = 0;
  private _ac = 0;
  private _pkru = 0;
  private _pkrs = 0;
  private _eptp = 0x1e; // WB, 4-level, A/D off, root 0
  private _ncr3 = 0;
  private _vpid = 0;
  private _asid = 1;
  get cr0(): number {
    return this._cr0;
  }
  set cr0(v: number) {
    this._cr0 = v;
    this.stamp[0]++;
  }
  /** CR3 as stored (bit 63, the no-flush hint, is never stored). */
  get cr3(): number {
    return this._cr3;
  }
  set cr3(v: number) {
    this._cr3 = v;
    this.stamp[0]++;
  }
  get cr4(): number {
    return this._cr4;
  }
  set cr4(v: number) {
    this._cr4 = v;
    this.stamp[0]++;
  }
  get efer(): number {
    return this._efer;
  }
  set efer(v: number) {
    this._efer = v;
    this.stamp[0]++;
  }
  get cpl(): number {
    return this._cpl;
  }
  set cpl(v: number) {
    this._cpl = v;
    this.stamp[0]++;
  }
  /** EFLAGS.AC */
  get ac(): number {
    return this._ac;
  }
  set ac(v: number) {
    this._ac = v;
    this.stamp[0]++;
  }
  get pkru(): number {
    return this._pkru;
  }
  set pkru(v: number) {
    this._pkru = v;
    this.stamp[0]++;
  }
  get pkrs(): number {
    return this._pkrs;
  }
  set pkrs(v: number) {
    this._pkrs = v;
    this.stamp[0]++;
  }
  /** EPT pointer: walk length in [5:3], A/D enable in bit 6, root in [M-1:12]. */
  get eptp(): number {
    return this._eptp;
  }
  set eptp(v: number) {
    this._eptp = v;
    this.stamp[0]++;
  }
  /** Nested CR3 (SVM). */
  get ncr3(): number {
    return this._ncr3;
  }
  set ncr3(v: number) {
    this._ncr3 = v;
    this.stamp[0]++;
  }
  get vpid(): number {
    return this._vpid;
  }
  set vpid(v: number) {
    this._vpid = v;
    this.stamp[0]++;
  }
  get asid(): number {
    return this._asid;
  }
  set asid(v: number) {
    this._asid = v;
    this.stamp[0]++;
  }
  /** PAE PDPTE registers (SDM 4.4.1), loaded by MOV to CR3/CR0/CR4 in PAE mode. */
  readonly pdpteLo = new Int32Array(4);
  readonly pdpteHi = new Int32Array(4);

  /** PAE paging: CR0.PG=1, CR4.PAE=1, EFER.LMA=0. */
  get paePaging(): boolean {
    return (this.cr0 & CR0_PG) !== 0 && (this.cr4 & CR4_PAE) !== 0 && (this.efer & EFER_LMA) === 0;
  }

  // The derived registers read the fields, not the getters: small enough that V8 always inlines them into the walker.
  get pcid(): number {
    return this._cr4 & CR4_PCIDE ? this._cr3 & 0xfff : 0;
  }
  get la57(): boolean {
    return (this._cr4 & CR4_LA57) !== 0 && (this._efer & EFER_LMA) !== 0;
  }
  get paging(): boolean {
    return (this._cr0 & CR0_PG) !== 0;
  }
  get nxe(): boolean {
    return (this._efer & EFER_NXE) !== 0;
  }
  /** EPT A/D enabled (EPTP bit 6). */
  get eptAd(): boolean {
    return (this._eptp & EPTP_AD) !== 0;
  }
  /** EPT walk length: EPTP[5:3] + 1. */
  get eptLevels(): number {
    return ((this._eptp >>> 3) & 7) + 1;
  }
  /** EP4TA: EPTP[51:12], the tag of guest-physical and combined mappings. */
  get ep4ta(): number {
    return this._eptp - (this._eptp & 0xfff);
  }
}
