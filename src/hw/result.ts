/** What one access or instruction ended in, reused per vCPU so nothing is allocated per access. */

export const enum AccessKind {
  Read = 0,
  Write = 1,
  Fetch = 2,
}

export const enum Outcome {
  Ok = 0,
  /** guest #PF */
  Pf = 1,
  /** #GP(0), e.g. a non-canonical address */
  Gp = 2,
  /** VM exit, reason 48 */
  EptViolation = 3,
  /** VM exit, reason 49 */
  EptMisconfig = 4,
  /** #VMEXIT(NPF), exit code 0x400 */
  Npf = 5,
  /** VMX instruction failed, VMfailValid with an instruction error number */
  VmFail = 6,
  /** #UD */
  Ud = 7,
}

export const KIND_NAMES = ['read', 'write', 'fetch'] as const;

export const OUTCOME_NAMES = ['ok', 'pf', 'gp', 'ept_violation', 'ept_misconfig', 'npf', 'vmfail', 'ud'] as const;

export class AccessResult {
  outcome: Outcome = Outcome.Ok;
  /** Host physical address of the first byte (Ok). */
  hpa = 0;
  /** Guest-physical address: of the first byte (Ok), or the faulting one (exits). */
  gpa = 0;
  /** #PF error code. */
  errorCode = 0;
  /** CR2 / guest-linear address as two 32-bit halves. */
  laHi = 0;
  laLo = 0;
  /** EPT-violation exit qualification (bits < 32 suffice: bits 17 and up are 0). */
  qualification = 0;
  /** Whether the exit's guest-linear address field is valid (qualification bit 7). */
  glaValid = false;
  /** NPF EXITINFO1 (bits up to 36: exact in a double). */
  exitinfo1 = 0;
  /** VMfail instruction error number. */
  vmError = 0;
  /** Whether the first piece was served by the TLB. */
  tlbHit = false;
  /** Paging-structure loads made (guest entries and EPT/NPT entries). */
  refs = 0;

  /**
   * Ready for the next access. Only the fields every outcome relies on are
   * cleared: each outcome sets the fields it reports.
   */
  reset(): void {
    this.outcome = Outcome.Ok;
    this.vmError = 0;
    this.tlbHit = false;
    this.refs = 0;
  }

  copyFrom(o: AccessResult): void {
    this.outcome = o.outcome;
    this.hpa = o.hpa;
    this.gpa = o.gpa;
    this.errorCode = o.errorCode;
    this.laHi = o.laHi;
    this.laLo = o.laLo;
    this.qualification = o.qualification;
    this.glaValid = o.glaValid;
    this.exitinfo1 = o.exitinfo1;
    this.vmError = o.vmError;
    this.tlbHit = o.tlbHit;
    this.refs = o.refs;
  }
}

/** The trace asked for hardware behaviour the model does not have (reported as bad input, never as a result). */
export class UnsupportedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsupportedError';
  }
}
