/**
 * PAE paging (SDM 4.4): the PDPTE registers loaded by MOV to CR3, their
 * reserved bits, the 3-level walk, and hw.md §9 scenario 31 (PDPTE loads
 * under EPT) with §5.2's reference counts under EPT and NPT.
 */
import { describe, expect, it } from 'vitest';
import { CR0_PE, CR0_PG, CR0_WP, CR4_PAE, EFER_NXE } from '../../src/hw/regs.js';
import { Outcome } from '../../src/hw/result.js';
import { Setup } from '../support/setup.js';

const PDPT = 0x20_0020; // 32-byte aligned, not 4K aligned: CR3[31:5] is the base
const PD = 0x20_1000;
const PT = 0x20_2000;
const DATA = 0x80_0000;
const LA = 0x4040_1123n; // PDPTE 1, PDE 2, PTE 1

/** A PAE guest: PDPTE[1] -> PD, PDE[2] -> PT, PTE[1] -> DATA (P|W|U, A=D=0). */
function paeGuest(mode: 'native' | 'ept' | 'npt', o: { eptAd?: boolean; tlb?: boolean } = {}) {
  const s = new Setup(mode, { eptAd: o.eptAd, tlb: o.tlb ?? false });
  s.write64(PDPT + 8, BigInt(PD | 1));
  s.write64(PD + 2 * 8, BigInt(PT | 7));
  s.write64(PT + 1 * 8, BigInt(DATA | 7));
  const r = s.regs;
  r.efer = EFER_NXE; // LME=LMA=0
  r.cr4 = CR4_PAE;
  r.cr0 = CR0_PG | CR0_PE | CR0_WP;
  return s;
}

function movCr3(s: Setup, v: number): Outcome {
  return s.m.movCr3(0, 0, v).outcome;
}

describe('PAE paging (SDM 4.4)', () => {
  it('MOV to CR3 loads the four PDPTE registers from CR3[31:5] and the walk reads 2 levels', () => {
    const s = paeGuest('native');
    expect(movCr3(s, PDPT)).toBe(Outcome.Ok);
    expect(Array.from(s.regs.pdpteLo)).toEqual([0, PD | 1, 0, 0]);
    const r = s.raw(LA, 'write');
    expect(r.refs).toBe(2);
    expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: '0x800123' });
    expect(s.read64(PD + 16)).toBe(BigInt(PT | 0x27));
    expect(s.read64(PT + 8)).toBe(BigInt(DATA | 0x67));
    expect(s.read64(PDPT + 8)).toBe(BigInt(PD | 1)); // PDPTEs have no A bit
  });

  it('a PDPTE change is not seen until CR3 is reloaded (the PDPTEs are registers)', () => {
    const s = paeGuest('native');
    movCr3(s, PDPT);
    s.write64(PDPT + 8, 0n);
    expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: '0x800123' });
    movCr3(s, PDPT);
    expect(s.acc(LA, 'read')).toEqual({ result: 'pf', error_code: '0x0', cr2: '0x40401123' });
  });

  for (const [name, bits] of [['bit 1', 0x2n], ['bit 2', 0x4n], ['bit 5', 0x20n], ['bit 8', 0x100n], ['bit 63', 1n << 63n], ['bit 46 (M=46)', 1n << 46n]] as const) {
    it(`a present PDPTE with reserved ${name} makes MOV to CR3 raise #GP(0) and keep CR3`, () => {
      const s = paeGuest('native');
      movCr3(s, PDPT);
      s.write64(PDPT + 24, BigInt(PD | 1) | bits);
      expect(movCr3(s, PDPT + 0x20)).toBe(Outcome.Ok); // another table, all zero
      s.write64(PDPT + 0x20 + 8, BigInt(PD | 1) | bits);
      expect(movCr3(s, PDPT + 0x20)).toBe(Outcome.Gp);
      expect(s.regs.cr3).toBe(PDPT + 0x20);
    });
  }

  it('a not-present PDPTE with reserved bits loads fine and faults with P=0 at use', () => {
    const s = paeGuest('native');
    s.write64(PDPT + 8, 0x1e6n);
    expect(movCr3(s, PDPT)).toBe(Outcome.Ok);
    expect(s.acc(LA, 'write')).toEqual({ result: 'pf', error_code: '0x2', cr2: '0x40401123' });
  });

  it('PAE reserves bits 62:52 of PDEs and PTEs (long mode ignores them)', () => {
    const s = paeGuest('native');
    movCr3(s, PDPT);
    s.write64(PT + 8, BigInt(DATA | 7) | (1n << 52n));
    expect(s.acc(LA, 'read')).toEqual({ result: 'pf', error_code: '0x9', cr2: '0x40401123' });
  });

  it('linear addresses are 32 bits: bits 63:32 of the access are ignored', () => {
    const s = paeGuest('native');
    movCr3(s, PDPT);
    expect(s.acc(0xffff_ffff_0000_0000n | LA, 'read')).toEqual({ result: 'ok', hpa: '0x800123' });
  });
});

describe('hw.md §9 scenario 31: PAE guest PDPTE load under EPT', () => {
  it('scenario 31: the CR3 page EPT read-only with EPTP[6]=1 — the load succeeds and sets EPT A, not D', () => {
    const s = paeGuest('ept', { eptAd: true });
    s.write64(s.eEntry(PDPT, 1), BigInt(0x20_0000) | 0x31n); // R, WB
    expect(movCr3(s, PDPT)).toBe(Outcome.Ok);
    expect(s.read64(s.eEntry(PDPT, 1))).toBe(0x20_0131n); // A set, no D
    expect(s.read64(s.eEntry(PDPT, 2)) & 0x300n).toBe(0x100n);
  });

  it('scenario 31: the CR3 page not present in EPT — violation with qualification bit 7 = 0', () => {
    const s = paeGuest('ept', { eptAd: true });
    s.write64(s.eEntry(PDPT, 1), 0n);
    const r = s.m.movCr3(0, 0, PDPT);
    expect(r.outcome).toBe(Outcome.EptViolation);
    expect(r.qualification).toBe(0x1); // RD only: not a paging-structure write, no GLA, bits 3-5 0
    expect(r.glaValid).toBe(false);
    expect(r.gpa).toBe(PDPT);
    expect(s.regs.cr3).toBe(0x10_0000); // MOV did not complete
  });

  it('scenario 31: a reserved bit in a loaded PDPTE — #GP(0) from MOV to CR3', () => {
    const s = paeGuest('ept');
    s.write64(PDPT + 16, BigInt(PD | 1) | 0x2n);
    expect(movCr3(s, PDPT)).toBe(Outcome.Gp);
  });

  it('hw.md 5.2: a cold PAE walk under 4-level EPT makes 2*5+4 = 14 references', () => {
    const s = paeGuest('ept');
    movCr3(s, PDPT);
    const r = s.raw(LA, 'read');
    expect(r.outcome).toBe(Outcome.Ok);
    expect(r.refs).toBe(14);
  });

  it('hw.md 5.2/6.5: under NPT the PDPTE is read on demand: 3*5+4 = 19 references', () => {
    const s = paeGuest('npt');
    movCr3(s, PDPT);
    expect(Array.from(s.regs.pdpteLo)).toEqual([0, 0, 0, 0]); // nothing loaded
    const r = s.raw(LA, 'read');
    expect(r.outcome).toBe(Outcome.Ok);
    expect(r.refs).toBe(19);
  });

  it('hw.md 6.5: under NPT a reserved PDPTE bit is a #PF(RSVD) at walk time, not #GP', () => {
    const s = paeGuest('npt');
    s.write64(PDPT + 8, BigInt(PD | 1) | 0x2n);
    expect(movCr3(s, PDPT)).toBe(Outcome.Ok);
    expect(s.acc(LA, 'read')).toEqual({ result: 'pf', error_code: '0x9', cr2: '0x40401123' });
  });
});
