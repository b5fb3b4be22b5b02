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
  cr0 = CR0_PG | CR0_PE | CR0_WP;
  /** CR3 as stored (bit 63, the no-flush hint, is never stored). */
  cr3 = 0;
  cr4 = CR4_PAE;
  efer = EFER_LME | EFER_LMA | EFER_NXE;
  cpl = 0;
  /** EFLAGS.AC */
  ac = 0;
  pkru = 0;
  pkrs = 0;
  /** EPT pointer: walk length in [5:3], A/D enable in bit 6, root in [M-1:12]. */
  eptp = 0x1e; // WB, 4-level, A/D off, root 0
  /** Nested CR3 (SVM). */
  ncr3 = 0;
  vpid = 0;
  asid = 1;
  /** PAE PDPTE registers (SDM 4.4.1), loaded by MOV to CR3/CR0/CR4 in PAE mode. */
  readonly pdpteLo = new Int32Array(4);
  readonly pdpteHi = new Int32Array(4);

  /** PAE paging: CR0.PG=1, CR4.PAE=1, EFER.LMA=0. */
  get paePaging(): boolean {
    return (this.cr0 & CR0_PG) !== 0 && (this.cr4 & CR4_PAE) !== 0 && (this.efer & EFER_LMA) === 0;
  }

  get pcid(): number {
    return this.cr4 & CR4_PCIDE ? this.cr3 & 0xfff : 0;
  }
  get la57(): boolean {
    return (this.cr4 & CR4_LA57) !== 0 && (this.efer & EFER_LMA) !== 0;
  }
  get paging(): boolean {
    return (this.cr0 & CR0_PG) !== 0;
  }
  get nxe(): boolean {
    return (this.efer & EFER_NXE) !== 0;
  }
  /** EPT A/D enabled (EPTP bit 6). */
  get eptAd(): boolean {
    return (this.eptp & EPTP_AD) !== 0;
  }
  /** EPT walk length: EPTP[5:3] + 1. */
  get eptLevels(): number {
    return ((this.eptp >>> 3) & 7) + 1;
  }
  /** EP4TA: EPTP[51:12], the tag of guest-physical and combined mappings. */
  get ep4ta(): number {
    return this.eptp - (this.eptp & 0xfff);
  }
}
