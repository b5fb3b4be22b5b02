/**
 * TLB and paging-structure-cache invalidation, one named test per row of
 * hw.md §7.3's table (and the TLB rules of §3.3 / §9 scenarios 3, 4, 37-40).
 * Each test observes the caches twice: through their contents (valid entries
 * per cache) and through behaviour (a stale translation used, or the new one
 * after the invalidation, with `tlbHit` of the raw result).
 *
 * The model is a tagged cache that drops exactly the minimum of §7.3 (hw.md
 * §7.3 "pick a deterministic TLB model"), so the counts below are exact.
 *
 * Linear layout (4-level guest; PML4/PDPT/PD indices chosen so that every
 * path lands in its own PSC set):
 *   A  0x40_1000        -> gPA 0x80_0000   PML4 0, PDPT 0, PD 2, PT 1
 *   C  0x40_2000        -> gPA 0x80_1000   same page table as A
 *   B  0x80_4020_3000   -> gPA 0x80_2000   PML4 1, PDPT 1, PD 1, PT 3
 *   GL 0x100_8000_5000  -> gPA 0x80_3000   PML4 2, PDPT 2, PD 0, PT 5, G=1 (CR4.PGE=1)
 * Guest tables: CR3 page 0x100000; A's PDPT/PD/PT 0x101000-0x103000, B's
 * 0x104000-0x106000, GL's 0x107000-0x109000.
 */
import { describe, expect, it } from 'vitest';
import { CR0_PE, CR0_PG, CR0_WP, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_SMAP, CR4_SMEP, EFER_NXE } from '../../src/hw/regs.js';
import { AccessResult, Outcome } from '../../src/hw/result.js';
import { EPT_R, EPT_RWX, EPT_WB, X86_A, X86_D, X86_G, X86_P, X86_PWU, X86_U, X86_W } from '../../src/hw/table_writer.js';
import { KindName, Setup, SetupOptions } from '../support/setup.js';
import { lo32, hi32 } from '../../src/hw/halves.js';

const A = 0x40_1000n;
const C = 0x40_2000n;
const B = 0x80_4020_3000n;
const GL = 0x100_8000_5000n;
/** Non-canonical in 4-level and in 5-level paging (bit 63 = 0, bit 56 = 1). */
const NONCANON = 0x0100_0000_0040_1000n;

const ADDR = 0x000f_ffff_ffff_f000n;

type Mode = 'native' | 'ept' | 'npt';

/** The four mappings above, CR4.PGE=1. */
function make(mode: Mode, o: SetupOptions = {}): Setup {
  const s = new Setup(mode, o);
  s.map(A, 0x80_0000);
  s.map(C, 0x80_1000);
  s.map(B, 0x80_2000);
  s.map(GL, 0x80_3000, { leafFlags: X86_PWU | X86_G });
  s.regs.cr4 |= CR4_PGE;
  return s;
}

/** Point gva's PTE at another frame, flags kept, without any invalidation. */
function setFrame(s: Setup, gva: bigint, frame: number): void {
  const pte = s.gEntry(gva, 1);
  s.write64(pte, (s.read64(pte) & ~ADDR) | BigInt(frame));
}
/** Set and clear bits of an entry in memory (a plain store: no invalidation). */
function patch(s: Setup, hpa: number, set: bigint, clear = 0n): void {
  s.write64(hpa, (s.read64(hpa) | set) & ~clear);
}

/**
 * Load context registers directly (what a VM entry or a test harness does):
 * no instruction runs, so nothing is invalidated.
 */
function at(s: Setup, c: { pcid?: number; vpid?: number; asid?: number; eptp?: number; cpl?: number }): void {
  const r = s.regs;
  if (c.pcid !== undefined) {
    r.cr4 |= CR4_PCIDE;
    r.cr3 = s.cr3 | c.pcid;
  }
  if (c.vpid !== undefined) r.vpid = c.vpid;
  if (c.asid !== undefined) r.asid = c.asid;
  if (c.eptp !== undefined) r.eptp = c.eptp;
  if (c.cpl !== undefined) r.cpl = c.cpl;
}

/** Contract fields of one access plus whether the TLB served it. */
function look(s: Setup, gva: bigint, kind: KindName = 'read'): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = { ...s.acc(gva, kind) };
  out.hit = s.m.vcpu(0).mmu.res.tlbHit;
  return out;
}
/** An ok access at page offset 0 of a frame: the expected look(). */
function ok(s: Setup, frame: number, hit: boolean): Record<string, string | boolean> {
  const h = `0x${frame.toString(16)}`;
  return s.second === null ? { result: 'ok', hpa: h, hit } : { result: 'ok', hpa: h, gpa: h, hit };
}

interface Counts {
  comb: number;
  gpa: number;
  g2: number;
  g3: number;
  g4: number;
  g5: number;
  e2: number;
  e3: number;
  e4: number;
  e5: number;
}
/** Valid entries in each cache of vCPU 0. */
function cnt(s: Setup): Counts {
  const t = s.m.vcpu(0).tlb;
  return {
    comb: t.comb.count(),
    gpa: t.gpa.count(),
    g2: t.gPsc[2].count(),
    g3: t.gPsc[3].count(),
    g4: t.gPsc[4].count(),
    g5: t.gPsc[5].count(),
    e2: t.ePsc[2].count(),
    e3: t.ePsc[3].count(),
    e4: t.ePsc[4].count(),
    e5: t.ePsc[5].count(),
  };
}
/** Expected counts: g = [PDE, PDPTE, PML4E] caches, e = the same for EPT/NPT. */
function counts(comb: number, g: [number, number, number], gpa = 0, e: [number, number, number] = [0, 0, 0]): Counts {
  return { comb, gpa, g2: g[0], g3: g[1], g4: g[2], g5: 0, e2: e[0], e3: e[1], e4: e[2], e5: 0 };
}

function expectOutcome(r: AccessResult, outcome: Outcome, vmError = 0): void {
  expect({ outcome: r.outcome, vmError: r.vmError }).toEqual({ outcome, vmError });
}

const invlpg = (s: Setup, gva: bigint): AccessResult => s.m.invlpg(0, hi32(gva), lo32(gva));
const movCr3 = (s: Setup, pcid: number, noFlush = false): AccessResult => s.m.movCr3(0, noFlush ? 0x8000_0000 | 0 : 0, s.cr3 | pcid);
const invpcid = (s: Setup, type: number, pcid: number, gva = 0n, pcidHi = 0): AccessResult =>
  s.m.invpcid(0, type, pcidHi, pcid, hi32(gva), lo32(gva));
const invvpid = (s: Setup, type: number, vpid: number, gva = 0n, vpidHi = 0): AccessResult =>
  s.m.invvpid(0, type, vpidHi, vpid, hi32(gva), lo32(gva));

/** A second EPT root sharing every lower table with the first: another EP4TA, same mappings. */
function secondEptp(s: Setup): number {
  const root = s.second!.allocTable();
  for (let i = 0; i < 512; i++) s.write64(root + 8 * i, s.read64(s.root2 + 8 * i));
  return root | 0x1e; // WB, 4-level
}

// ===================================================================== INVLPG

describe('INVLPG (hw.md §7.3 row 1)', () => {
  it("drops the page's TLB entry and every PSC entry of the current PCID; other pages' TLB entries survive", () => {
    const s = make('native');
    for (const g of [A, C, B]) expect(s.acc(g, 'read').result).toBe('ok');
    expect(cnt(s)).toEqual(counts(3, [2, 2, 2]));
    setFrame(s, A, 0x90_0000);
    setFrame(s, C, 0x90_1000);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true)); // stale
    expectOutcome(invlpg(s, A), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(2, [0, 0, 0]));
    expect(look(s, C)).toEqual(ok(s, 0x80_1000, true)); // another page: still the stale entry
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, true));
    const r = s.raw(A, 'read');
    expect({ hit: r.tlbHit, refs: r.refs, hpa: r.hpa }).toEqual({ hit: false, refs: 4, hpa: 0x90_0000 }); // full walk: no PSC left
  });

  it('drops a global entry for the page whatever PCID made it, and only the current PCID\'s PSC entries', () => {
    const s = make('native');
    at(s, { pcid: 1 });
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, false));
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, false));
    at(s, { pcid: 2 });
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, false)); // PCID 1's entry does not match PCID 2
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true)); // global: matches any PCID
    expect(cnt(s)).toEqual(counts(3, [3, 3, 3]));
    setFrame(s, GL, 0x90_3000);
    expectOutcome(invlpg(s, GL), Outcome.Ok);
    // GL's global entry gone; PCID 2's 3 PSC entries gone; PCID 1's PSC entries and both B entries stay.
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2]));
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, true));
    expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
    at(s, { pcid: 1 });
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, true));
  });

  it('of a non-canonical address is a NOP (no PSC entry dropped either)', () => {
    const s = make('native');
    for (const g of [A, B]) expect(s.acc(g, 'read').result).toBe('ok');
    setFrame(s, A, 0x90_0000);
    const before = cnt(s);
    expect(before).toEqual(counts(2, [2, 2, 2]));
    expectOutcome(invlpg(s, 0x0000_8000_0040_1000n), Outcome.Ok);
    expectOutcome(invlpg(s, NONCANON), Outcome.Ok);
    expect(cnt(s)).toEqual(before);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
  });

  it('with LA57 the same address is canonical and INVLPG takes effect (control for the NOP test)', () => {
    const s = make('native', { guestLevels: 5 });
    for (const g of [A, B]) expect(s.acc(g, 'read').result).toBe('ok');
    expect(cnt(s)).toEqual({ ...counts(2, [2, 2, 2]), g5: 1 });
    expectOutcome(invlpg(s, 0x0000_8000_0040_1000n), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(2, [0, 0, 0]));
  });

  it('at CPL 3 raises #GP(0) and invalidates nothing', () => {
    const s = make('native');
    for (const g of [A, B]) expect(s.acc(g, 'read').result).toBe('ok');
    patch(s, s.gEntry(A, 1), 0n, X86_P);
    at(s, { cpl: 3 });
    expectOutcome(invlpg(s, A), Outcome.Gp);
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2]));
    at(s, { cpl: 0 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
  });

  it('under EPT drops the VPID\'s combined mappings for every EP4TA, and no guest-physical mapping', () => {
    const s = make('ept');
    const e1 = s.regs.eptp;
    const e2 = secondEptp(s);
    at(s, { vpid: 5 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    at(s, { eptp: e2 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    at(s, { vpid: 6, eptp: e1 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    // gpa: EP4TA 1: 4 table pages + data; EP4TA 2: the same 5. EPT PSC per EP4TA: PML4E, PDPTE,
    // and the PDEs of gPA 0-2M (tables) and 8-10M (data).
    expect(cnt(s)).toEqual(counts(3, [3, 3, 3], 10, [4, 2, 2]));
    at(s, { vpid: 5 });
    expectOutcome(invlpg(s, A), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1], 10, [4, 2, 2]));
    at(s, { vpid: 6 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
  });
});

// ===================================================================== MOV CR3

describe('MOV to CR3 (hw.md §7.3 rows 2-4)', () => {
  it('PCIDE=0: drops every non-global TLB entry and every PSC entry; global entries survive (hw.md §9.37)', () => {
    const s = make('native');
    for (const g of [A, B, GL]) expect(s.acc(g, 'read').result).toBe('ok');
    expect(cnt(s)).toEqual(counts(3, [3, 3, 3]));
    setFrame(s, A, 0x90_0000);
    setFrame(s, GL, 0x90_3000);
    expectOutcome(movCr3(s, 0), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(1, [0, 0, 0]));
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true)); // the global entry survived: stale
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
    expectOutcome(invlpg(s, GL), Outcome.Ok);
    expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
  });

  it('global entries survive MOV CR3 (same value), until the PGE toggle (hw.md §9.37)', () => {
    const s = make('native');
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, false));
    setFrame(s, GL, 0x90_3000);
    for (let i = 0; i < 3; i++) expectOutcome(movCr3(s, 0), Outcome.Ok);
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true));
    expectOutcome(s.m.movCr4(0, s.regs.cr4 & ~CR4_PGE), Outcome.Ok);
    expectOutcome(s.m.movCr4(0, s.regs.cr4 | CR4_PGE), Outcome.Ok);
    expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
  });

  it('PCIDE=1, bit 63 clear: drops the non-global TLB and PSC entries of the PCID in src[11:0] only', () => {
    const s = make('native');
    at(s, { pcid: 1 });
    for (const g of [A, B, GL]) expect(s.acc(g, 'read').result).toBe('ok');
    at(s, { pcid: 2 });
    for (const g of [A, C]) expect(s.acc(g, 'read').result).toBe('ok');
    // PCID 1: A, B, GL (global) and 3 paths; PCID 2: A, C and one path.
    expect(cnt(s)).toEqual(counts(5, [4, 4, 4]));
    setFrame(s, A, 0x90_0000);
    expectOutcome(movCr3(s, 1), Outcome.Ok); // from PCID 2 to PCID 1, flushing PCID 1
    expect(s.regs.cr3).toBe(s.cr3 | 1);
    expect(cnt(s)).toEqual(counts(3, [1, 1, 1])); // GL (global), PCID 2's A and C; PCID 2's path
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
    expectOutcome(movCr3(s, 2, true), Outcome.Ok);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true)); // PCID 2 untouched: stale
  });

  it('PCIDE=1, bit 63 set: invalidates nothing and bit 63 is not stored (hw.md §9.38)', () => {
    const s = make('native');
    at(s, { pcid: 1 });
    for (const g of [A, B]) expect(s.acc(g, 'read').result).toBe('ok');
    setFrame(s, A, 0x90_0000);
    expectOutcome(movCr3(s, 1, true), Outcome.Ok);
    expect(s.regs.cr3).toBe(s.cr3 | 1);
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2]));
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    expectOutcome(movCr3(s, 1), Outcome.Ok);
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
  });

  it('PCIDE=0 with bit 63 set: #GP(0) (a reserved bit), nothing invalidated', () => {
    const s = make('native');
    expect(s.acc(A, 'read').result).toBe('ok');
    expectOutcome(movCr3(s, 0, true), Outcome.Gp);
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1]));
  });
});

// ===================================================================== MOV CR4

describe('MOV to CR4 (hw.md §7.3 rows 5-6)', () => {
  /** PCID 1: A, GL (global); PCID 2: B, C. Current PCID 2. */
  function twoPcids(): Setup {
    const s = make('native');
    at(s, { pcid: 1 });
    for (const g of [A, GL]) expect(s.acc(g, 'read').result).toBe('ok');
    at(s, { pcid: 2 });
    for (const g of [B, C]) expect(s.acc(g, 'read').result).toBe('ok');
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4]));
    return s;
  }

  for (const dir of ['1->0', '0->1'] as const) {
    it(`toggling PGE ${dir} drops everything: global entries, all PCIDs, all PSCs`, () => {
      const s = twoPcids();
      if (dir === '0->1') {
        expectOutcome(s.m.movCr4(0, s.regs.cr4 & ~CR4_PGE), Outcome.Ok);
        at(s, { pcid: 1 });
        for (const g of [A, GL]) expect(s.acc(g, 'read').result).toBe('ok'); // GL is not global now
        at(s, { pcid: 2 });
        for (const g of [B, C]) expect(s.acc(g, 'read').result).toBe('ok');
        expect(cnt(s)).toEqual(counts(4, [4, 4, 4]));
      }
      setFrame(s, GL, 0x90_3000);
      const cr4 = dir === '1->0' ? s.regs.cr4 & ~CR4_PGE : s.regs.cr4 | CR4_PGE;
      expectOutcome(s.m.movCr4(0, cr4), Outcome.Ok);
      expect(cnt(s)).toEqual(counts(0, [0, 0, 0]));
      expect(look(s, B)).toEqual(ok(s, 0x80_2000, false));
      at(s, { pcid: 1 });
      expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
    });
  }

  it('clearing PCIDE drops everything (all PCIDs, global too); setting it with CR3[11:0] != 0 is #GP', () => {
    const s = twoPcids();
    setFrame(s, GL, 0x90_3000);
    expectOutcome(s.m.movCr4(0, s.regs.cr4 & ~CR4_PCIDE), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0]));
    expect(s.regs.pcid).toBe(0);
    expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
    // CR3[11:0] = 2 (left from PCID 2): setting PCIDE now is #GP(0) (hw.md §1.2) and changes nothing.
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1]));
    expectOutcome(s.m.movCr4(0, s.regs.cr4 | CR4_PCIDE), Outcome.Gp);
    expect(s.regs.cr4 & CR4_PCIDE).toBe(0);
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1]));
  });

  it("setting SMEP drops the current PCID's TLB and PSC entries; other PCIDs' survive", () => {
    const s = twoPcids();
    setFrame(s, B, 0x90_2000);
    setFrame(s, A, 0x90_0000);
    expectOutcome(s.m.movCr4(0, s.regs.cr4 | CR4_SMEP), Outcome.Ok);
    // PCID 2's B, C and both its paths gone. PCID 1's A, GL and paths kept (GL is global but
    // was made under PCID 1: it is PCID 1's entry, as for MOV CR3 "entries associated with the PCID").
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2]));
    expect(look(s, B)).toEqual(ok(s, 0x90_2000, false));
    at(s, { pcid: 1 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
  });

  it('clearing SMEP, and toggling SMAP, invalidate nothing (hw.md §7.2: rights are re-checked at use)', () => {
    const s = twoPcids();
    expectOutcome(s.m.movCr4(0, s.regs.cr4 | CR4_SMEP), Outcome.Ok);
    for (const g of [B, C]) expect(s.acc(g, 'read').result).toBe('ok');
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4]));
    expectOutcome(s.m.movCr4(0, s.regs.cr4 & ~CR4_SMEP), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4]));
    expectOutcome(s.m.movCr4(0, s.regs.cr4 | CR4_SMAP), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4]));
    // SMAP now applies to the cached user page B (CPL 0, AC=0): #PF P from the cached rights.
    expect(look(s, B)).toEqual({ result: 'pf', error_code: '0x1', cr2: '0x8040203000', hit: true });
    expectOutcome(s.m.movCr4(0, s.regs.cr4 & ~CR4_SMAP), Outcome.Ok);
    expect(look(s, C)).toEqual(ok(s, 0x80_1000, true));
  });

  it('clearing PAE while IA-32e paging is active is #GP(0) and invalidates nothing (SDM 4.1.2, MOV CR4)', () => {
    const s = make('native');
    for (const g of [A, GL]) expect(s.acc(g, 'read').result).toBe('ok');
    expectOutcome(s.m.movCr4(0, s.regs.cr4 & ~CR4_PAE), Outcome.Gp);
    expect(s.regs.cr4 & CR4_PAE).toBe(CR4_PAE);
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2]));
  });

  it('changing PAE (PAE paging -> 32-bit paging) drops all TLB and PSC entries of the current PCID, global ones too', () => {
    // A PAE guest (EFER.LME=LMA=0): PDPTE[1] -> PD, PDE[2] -> PT; PT[1] -> 0x800000, PT[2] -> 0x801000 (G=1).
    const s = new Setup('native');
    const PDPT = 0x20_0020;
    const PD = 0x20_1000;
    const PT = 0x20_2000;
    s.write64(PDPT + 8, BigInt(PD | 1));
    s.write64(PD + 16, BigInt(PT) | X86_PWU);
    s.write64(PT + 8, 0x80_0000n | X86_PWU);
    s.write64(PT + 16, 0x80_1000n | X86_PWU | X86_G);
    const r = s.regs;
    r.efer = EFER_NXE;
    r.cr4 = CR4_PAE | CR4_PGE;
    r.cr0 = CR0_PG | CR0_PE | CR0_WP;
    expectOutcome(s.m.movCr3(0, 0, PDPT), Outcome.Ok);
    expect(look(s, 0x4040_1000n)).toEqual(ok(s, 0x80_0000, false));
    expect(look(s, 0x4040_2000n)).toEqual(ok(s, 0x80_1000, false));
    expect(look(s, 0x4040_2000n)).toEqual(ok(s, 0x80_1000, true));
    expect(cnt(s)).toEqual(counts(2, [1, 0, 0])); // two TLB entries (one global), the PDE cache entry
    expectOutcome(s.m.movCr4(0, r.cr4 & ~CR4_PAE), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0]));
  });
});

// ===================================================================== MOV CR0

describe('MOV to CR0 (hw.md §7.3 row 7)', () => {
  it('clearing PG drops everything, global entries too', () => {
    const s = make('native');
    for (const g of [A, B, GL]) expect(s.acc(g, 'read').result).toBe('ok');
    setFrame(s, GL, 0x90_3000);
    expectOutcome(s.m.movCr0(0, s.regs.cr0 & ~CR0_PG), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0]));
    expect(look(s, A)).toEqual(ok(s, 0x40_1000, false)); // no paging: LA = PA
    expectOutcome(s.m.movCr0(0, s.regs.cr0 | CR0_PG), Outcome.Ok);
    expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
  });

  it('clearing PG while PCIDE=1 is #GP(0) and invalidates nothing (hw.md §1.2)', () => {
    const s = make('native');
    at(s, { pcid: 1 });
    for (const g of [A, GL]) expect(s.acc(g, 'read').result).toBe('ok');
    expectOutcome(s.m.movCr0(0, s.regs.cr0 & ~CR0_PG), Outcome.Gp);
    expect(s.regs.paging).toBe(true);
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2]));
  });

  it('toggling WP invalidates nothing; the cached rights are re-checked against the new WP (hw.md §7.2)', () => {
    const s = make('native');
    // A read-only, already dirty: a supervisor write with WP=0 is allowed and served by the TLB.
    patch(s, s.gEntry(A, 1), X86_D | X86_A, X86_W);
    expectOutcome(s.m.movCr0(0, s.regs.cr0 & ~CR0_WP), Outcome.Ok);
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, false));
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, true));
    expectOutcome(s.m.movCr0(0, s.regs.cr0 | CR0_WP), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1]));
    expect(look(s, A, 'write')).toEqual({ result: 'pf', error_code: '0x3', cr2: '0x401000', hit: true });
  });
});

// ===================================================================== INVPCID

describe('INVPCID (hw.md §7.3 rows 9-12)', () => {
  /** PCID 1: A, C, GL (global); PCID 2: A, B. Current PCID 2. */
  function setup(): Setup {
    const s = make('native');
    at(s, { pcid: 1 });
    for (const g of [A, C, GL]) expect(s.acc(g, 'read').result).toBe('ok');
    at(s, { pcid: 2 });
    for (const g of [A, B]) expect(s.acc(g, 'read').result).toBe('ok');
    // PSC: PCID 1 has A's path (shared by C) and GL's; PCID 2 has A's and B's.
    expect(cnt(s)).toEqual(counts(5, [4, 4, 4]));
    return s;
  }

  it("type 0: drops the non-global entry of (PCID, LA) and the PCID's PSC entries only", () => {
    const s = setup();
    setFrame(s, A, 0x90_0000);
    expectOutcome(invpcid(s, 0, 1, A), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(4, [2, 2, 2]));
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true)); // PCID 2's A: stale
    at(s, { pcid: 1 });
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
    expect(look(s, C)).toEqual(ok(s, 0x80_1000, true));
  });

  it('type 0: a global entry for the LA is not dropped', () => {
    const s = setup();
    setFrame(s, GL, 0x90_3000);
    expectOutcome(invpcid(s, 0, 1, GL), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(5, [2, 2, 2]));
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true));
  });

  it("type 1: drops every non-global entry and PSC entry of the PCID; globals and other PCIDs' survive", () => {
    const s = setup();
    setFrame(s, C, 0x90_1000);
    expectOutcome(invpcid(s, 1, 1), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(3, [2, 2, 2])); // GL, PCID 2's A and B
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true));
    at(s, { pcid: 1 });
    expect(look(s, C)).toEqual(ok(s, 0x90_1000, false));
  });

  it('type 2: drops everything, global entries too, all PCIDs', () => {
    const s = setup();
    setFrame(s, GL, 0x90_3000);
    expectOutcome(invpcid(s, 2, 0), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0]));
    expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
  });

  it('type 3: drops everything except global entries, all PCIDs', () => {
    const s = setup();
    setFrame(s, GL, 0x90_3000);
    setFrame(s, B, 0x90_2000);
    expectOutcome(invpcid(s, 3, 0), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(1, [0, 0, 0]));
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true));
    expect(look(s, B)).toEqual(ok(s, 0x90_2000, false));
  });

  const gpCases: [string, (s: Setup) => AccessResult][] = [
    ['type > 3', (s) => invpcid(s, 4, 1)],
    ['descriptor bits 63:12 set (bit 12)', (s) => invpcid(s, 1, 0x1001)],
    ['descriptor bits 63:32 set', (s) => invpcid(s, 1, 1, 0n, 1)],
    ['type 0 with a non-canonical linear address', (s) => invpcid(s, 0, 1, NONCANON)],
    ['CPL 3', (s) => {
      at(s, { cpl: 3 });
      const r = invpcid(s, 2, 0);
      at(s, { cpl: 0 });
      return r;
    }],
  ];
  for (const [name, run] of gpCases) {
    it(`#GP(0), nothing invalidated: ${name}`, () => {
      const s = setup();
      expectOutcome(run(s), Outcome.Gp);
      expect(cnt(s)).toEqual(counts(5, [4, 4, 4]));
    });
  }

  it('type 1 ignores the linear address: a non-canonical one is not #GP (control)', () => {
    const s = setup();
    expectOutcome(invpcid(s, 1, 1, NONCANON), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(3, [2, 2, 2]));
  });

  for (const type of [0, 1]) {
    it(`#GP(0) with CR4.PCIDE=0, type ${type} and PCID != 0; PCID 0 is allowed`, () => {
      const s = make('native');
      for (const g of [A, B]) expect(s.acc(g, 'read').result).toBe('ok');
      expectOutcome(invpcid(s, type, 1, A), Outcome.Gp);
      expect(cnt(s)).toEqual(counts(2, [2, 2, 2]));
      expectOutcome(invpcid(s, type, 0, A), Outcome.Ok);
      expect(cnt(s)).toEqual(type === 0 ? counts(1, [0, 0, 0]) : counts(0, [0, 0, 0]));
    });
  }
});

// ===================================================================== #PF

describe('#PF (hw.md §7.3 row 13, §2.3 item 4)', () => {
  it("a fault from cached rights drops the page's TLB entry and the PSC entries for its address; the next access walks", () => {
    const s = make('native');
    patch(s, s.gEntry(A, 1), 0n, X86_U); // A: supervisor page
    for (const g of [A, C, B]) expect(s.acc(g, 'read').result).toBe('ok');
    expect(cnt(s)).toEqual(counts(3, [2, 2, 2]));
    patch(s, s.gEntry(A, 1), X86_U); // U/S 0->1: no invalidation required (at most one spurious #PF)
    at(s, { cpl: 3 });
    expect(look(s, A)).toEqual({ result: 'pf', error_code: '0x5', cr2: '0x401000', hit: true });
    // A's entry and A's path (PDE, PDPTE, PML4E caches) gone; C's TLB entry and B's path kept.
    expect(cnt(s)).toEqual(counts(2, [1, 1, 1]));
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    expect(look(s, C)).toEqual(ok(s, 0x80_1000, true));
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, true));
  });

  it("drops the faulting page's entry of the current PCID only; another PCID's entry for the page survives", () => {
    const s = make('native');
    patch(s, s.gEntry(A, 1), 0n, X86_U);
    at(s, { pcid: 1 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    at(s, { pcid: 2 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2]));
    patch(s, s.gEntry(A, 1), X86_U);
    at(s, { cpl: 3 });
    expect(look(s, A)).toEqual({ result: 'pf', error_code: '0x5', cr2: '0x401000', hit: true });
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1]));
    at(s, { pcid: 1 });
    expect(look(s, A)).toEqual({ result: 'pf', error_code: '0x5', cr2: '0x401000', hit: true }); // PCID 1's stale rights
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0]));
  });

  it('a fault found by a re-walk (write with D clear, R/W cleared in memory) drops the stale entry and the PSC entries for the address', () => {
    const s = make('native');
    for (const g of [A, C, B]) expect(s.acc(g, 'read').result).toBe('ok');
    patch(s, s.gEntry(A, 1), 0n, X86_W);
    expect(look(s, A, 'write')).toEqual({ result: 'pf', error_code: '0x3', cr2: '0x401000', hit: false });
    expect(cnt(s)).toEqual(counts(2, [1, 1, 1]));
    expect(s.read64(s.gEntry(A, 1)) & (X86_A | X86_D)).toBe(X86_A); // no D left behind
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
  });
});

// ===================================================================== VM exit / entry

describe('VM exit and VM entry (hw.md §7.3 rows 14-15)', () => {
  it('with VPID 0: drop the linear/combined mappings of VPID 0 (all PCIDs, all EP4TAs); guest-physical mappings and other VPIDs survive', () => {
    const s = make('ept');
    const e1 = s.regs.eptp;
    const e2 = secondEptp(s);
    at(s, { vpid: 0, pcid: 1, eptp: e1 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    at(s, { pcid: 2 });
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, false));
    at(s, { eptp: e2 });
    expect(look(s, C)).toEqual(ok(s, 0x80_1000, false));
    at(s, { vpid: 5, eptp: e1 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    // gpa: EP4TA 1: 7 table pages + 2 data pages; EP4TA 2: 4 table pages + 1 data page.
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4], 14, [4, 2, 2]));
    setFrame(s, A, 0x90_0000);
    at(s, { vpid: 0, pcid: 1 });
    expectOutcome(s.m.vmexit(0), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1], 14, [4, 2, 2]));
    const r = s.raw(A, 'read');
    // New translation; only the 4 guest entries are read: every nested translation hits the
    // surviving guest-physical mappings except the new data gPA, whose EPT PDE is cached (1 read).
    expect({ ok: r.outcome, hpa: r.hpa, hit: r.tlbHit, refs: r.refs }).toEqual({ ok: Outcome.Ok, hpa: 0x90_0000, hit: false, refs: 5 });
    at(s, { vpid: 5, pcid: 2 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true)); // VPID 5: stale
  });

  it('with VPID != 0: invalidate nothing (hw.md §9.39), until INVVPID type 0', () => {
    const s = make('ept');
    at(s, { vpid: 5 });
    for (const g of [A, B]) expect(s.acc(g, 'read').result).toBe('ok');
    const before = cnt(s);
    expect(before).toEqual(counts(2, [2, 2, 2], 9, [2, 1, 1]));
    setFrame(s, A, 0x90_0000);
    expectOutcome(s.m.vmexit(0), Outcome.Ok);
    expect(cnt(s)).toEqual(before);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    expectOutcome(invvpid(s, 0, 5, A), Outcome.Ok);
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
  });
});

// ===================================================================== INVVPID

/**
 * EPT, CR4.PCIDE=1, entries for (VPID, PCID, EP4TA): (5,1,E1) A, B, GL (global); (5,2,E1) A;
 * (5,1,E2) A; (6,1,E1) A; (0,1,E1) B. Guest-physical mappings: E1 10 table pages + 3 data
 * pages, E2 4 + 1; EPT PSC per EP4TA: PML4E, PDPTE, PDEs of gPA 0-2M and 8-10M.
 * Ends in (0,1,E1).
 */
function vpidSetup(): { s: Setup; e1: number; e2: number } {
  const s = make('ept');
  const e1 = s.regs.eptp;
  const e2 = secondEptp(s);
  at(s, { vpid: 5, pcid: 1, eptp: e1 });
  for (const g of [A, B, GL]) expect(s.acc(g, 'read').result).toBe('ok');
  at(s, { pcid: 2 });
  expect(s.acc(A, 'read').result).toBe('ok');
  at(s, { pcid: 1, eptp: e2 });
  expect(s.acc(A, 'read').result).toBe('ok');
  at(s, { vpid: 6, eptp: e1 });
  expect(s.acc(A, 'read').result).toBe('ok');
  at(s, { vpid: 0 });
  expect(s.acc(B, 'read').result).toBe('ok');
  expect(cnt(s)).toEqual(VPID_SETUP_COUNTS);
  return { s, e1, e2 };
}
const VPID_SETUP_COUNTS = counts(7, [7, 7, 7], 18, [4, 2, 2]);

describe('INVVPID (hw.md §7.3 rows 16-19)', () => {
  it('type 0: drops the (VPID, LA) mappings in every PCID and EP4TA and the PSC entries for the LA', () => {
    const { s, e1, e2 } = vpidSetup();
    setFrame(s, A, 0x90_0000);
    expectOutcome(invvpid(s, 0, 5, A), Outcome.Ok);
    // VPID 5's A in (PCID 1, E1), (PCID 2, E1), (PCID 1, E2) gone with A's path in those contexts;
    // VPID 5's B and GL, VPID 6's A, VPID 0's B and their paths kept; guest-physical untouched.
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4], 18, [4, 2, 2]));
    at(s, { vpid: 5, pcid: 1, eptp: e2 });
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
    at(s, { pcid: 2, eptp: e1 });
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
  });

  it('type 0: VPID 6 and other pages of VPID 5 keep their stale entries; a global entry for the LA is dropped', () => {
    const { s, e1 } = vpidSetup();
    setFrame(s, A, 0x90_0000);
    setFrame(s, GL, 0x90_3000);
    expectOutcome(invvpid(s, 0, 5, A), Outcome.Ok);
    at(s, { vpid: 6, pcid: 1, eptp: e1 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    at(s, { vpid: 5 });
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, true));
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true));
    expectOutcome(invvpid(s, 0, 5, GL), Outcome.Ok);
    expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
  });

  it("type 1: drops all of the VPID's mappings, global ones too; other VPIDs and guest-physical mappings survive", () => {
    const { s, e1 } = vpidSetup();
    setFrame(s, B, 0x90_2000);
    expectOutcome(invvpid(s, 1, 5), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2], 18, [4, 2, 2]));
    at(s, { vpid: 0, pcid: 1, eptp: e1 });
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, true));
    at(s, { vpid: 5 });
    expect(look(s, B)).toEqual(ok(s, 0x90_2000, false));
  });

  it('type 2: drops the mappings of every VPID except 0', () => {
    const { s, e1 } = vpidSetup();
    setFrame(s, B, 0x90_2000);
    expectOutcome(invvpid(s, 2, 0), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1], 18, [4, 2, 2]));
    at(s, { vpid: 0, pcid: 1, eptp: e1 });
    expect(look(s, B)).toEqual(ok(s, 0x80_2000, true));
  });

  it("type 3: like type 1 but the VPID's global entries are kept", () => {
    const { s, e1 } = vpidSetup();
    setFrame(s, GL, 0x90_3000);
    setFrame(s, B, 0x90_2000);
    expectOutcome(invvpid(s, 3, 5), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(3, [2, 2, 2], 18, [4, 2, 2]));
    at(s, { vpid: 5, pcid: 2, eptp: e1 });
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true));
    at(s, { pcid: 1 });
    expect(look(s, B)).toEqual(ok(s, 0x90_2000, false));
  });

  const failCases: [string, (s: Setup) => AccessResult][] = [
    ['unsupported type (4)', (s) => invvpid(s, 4, 5)],
    ['descriptor bits 63:16 set (bit 16)', (s) => invvpid(s, 1, 0x1_0005)],
    ['descriptor bits 63:32 set', (s) => invvpid(s, 1, 5, 0n, 1)],
    ['VPID 0 with type 0', (s) => invvpid(s, 0, 0, A)],
    ['VPID 0 with type 1', (s) => invvpid(s, 1, 0)],
    ['VPID 0 with type 3', (s) => invvpid(s, 3, 0)],
    ['type 0 with a non-canonical linear address', (s) => invvpid(s, 0, 5, NONCANON)],
  ];
  for (const [name, run] of failCases) {
    it(`VMfail(28), nothing invalidated: ${name}`, () => {
      const { s } = vpidSetup();
      expectOutcome(run(s), Outcome.VmFail, 28);
      expect(cnt(s)).toEqual(VPID_SETUP_COUNTS);
    });
  }

  it('type 2 with VPID 0 in the descriptor is allowed (control), and INVVPID is #GP(0) at CPL 3', () => {
    const { s } = vpidSetup();
    at(s, { cpl: 3 });
    expectOutcome(invvpid(s, 2, 0), Outcome.Gp);
    expect(cnt(s)).toEqual(VPID_SETUP_COUNTS);
    at(s, { cpl: 0 });
    expectOutcome(invvpid(s, 2, 0), Outcome.Ok);
  });
});

// ===================================================================== INVEPT

describe('INVEPT (hw.md §7.3 rows 20-21)', () => {
  it('single-context with a given EPTP: drops guest-physical and combined mappings of that EP4TA only (all VPIDs, PCIDs)', () => {
    const { s, e1, e2 } = vpidSetup();
    expect(s.regs.eptp).toBe(e1);
    expectOutcome(s.m.invept(0, true, e2), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(6, [6, 6, 6], 13, [2, 1, 1]));
    at(s, { vpid: 6 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    at(s, { vpid: 5, eptp: e2 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
  });

  it("single-context without a descriptor EPTP: the current EPTP's EP4TA", () => {
    const { s, e1, e2 } = vpidSetup();
    setFrame(s, A, 0x90_0000);
    expectOutcome(s.m.invept(0, true, null), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1], 5, [2, 1, 1]));
    at(s, { vpid: 5, pcid: 1, eptp: e2 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    at(s, { vpid: 6, eptp: e1 });
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
  });

  it('all-context: drops every guest-physical and combined mapping', () => {
    const { s, e2 } = vpidSetup();
    setFrame(s, B, 0x90_2000);
    expectOutcome(s.m.invept(0, false, null), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0], 0, [0, 0, 0]));
    expect(look(s, B)).toEqual(ok(s, 0x90_2000, false));
    at(s, { vpid: 5, eptp: e2 });
    const r = s.raw(A, 'read');
    // Cold under E2 again: 4 guest entries; the CR3 page's EPT walk (4) refills E2's EPT PSC, the
    // other 3 table pages need their EPT PTE only (1 each), the data page its EPT PDE and PTE (2).
    expect({ hit: r.tlbHit, refs: r.refs }).toEqual({ hit: false, refs: 4 + 4 + 3 * 1 + 2 });
  });

  const bad: [string, (root: number) => number][] = [
    ['memory type 2', (root) => root | 0x1a],
    ['walk length EPTP[5:3] = 7 (hw.md §9.40)', (root) => root | 0x3e],
    ['walk length EPTP[5:3] = 2', (root) => root | 0x16],
    ['reserved bit 8', (root) => root | 0x11e],
    ['reserved bit 11', (root) => root | 0x81e],
    ['root beyond MAXPHYADDR', () => 2 ** 46 + 0x1e],
  ];
  for (const [name, eptp] of bad) {
    it(`single-context with a bad EPTP (${name}): VMfail(28), nothing invalidated`, () => {
      const { s } = vpidSetup();
      expectOutcome(s.m.invept(0, true, eptp(s.root2)), Outcome.VmFail, 28);
      expect(cnt(s)).toEqual(VPID_SETUP_COUNTS);
    });
  }

  it('a stale RW EPT mapping is used for a cached write until INVEPT; then EPT violation 0x18a (hw.md §9.40)', () => {
    const s = make('ept');
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, false));
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, true));
    s.write64(s.eEntry(0x80_0000, 1), 0x80_0000n | EPT_R | EPT_WB);
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, true)); // stale
    expect(look(s, A, 'read')).toEqual(ok(s, 0x80_0000, true));
    expectOutcome(s.m.invept(0, true, s.regs.eptp), Outcome.Ok);
    expect(look(s, A, 'write')).toEqual({ result: 'ept_violation', qualification: '0x18a', gpa: '0x800000', gla: '0x401000', hit: false });
  });
});

// ===================================================================== EPT violation

describe('EPT violation (hw.md §7.3 row 22, §4.4)', () => {
  it('drops the guest-physical mappings for the gPA and the combined mappings for the LA; others survive', () => {
    const s = make('ept');
    s.write64(s.eEntry(0x80_0000, 1), 0x80_0000n | EPT_R | EPT_WB); // A's data page read-only in EPT
    for (const g of [A, C, B]) expect(s.acc(g, 'read').result).toBe('ok');
    // gpa: 7 table pages + 3 data pages; EPT PSC: PML4E, PDPTE, and the PDEs of 0-2M and 8-10M.
    expect(cnt(s)).toEqual(counts(3, [2, 2, 2], 10, [2, 1, 1]));
    expect(look(s, A, 'write')).toEqual({ result: 'ept_violation', qualification: '0x18a', gpa: '0x800000', gla: '0x401000', hit: false });
    // Dropped: gPA 0x800000's TLB entry and every EPT PSC entry that would translate it (PML4E,
    // PDPTE, the 8-10M PDE); A's combined entry and A's guest path (shared with C).
    expect(cnt(s)).toEqual(counts(2, [1, 1, 1], 9, [1, 0, 0]));
    expect(look(s, C)).toEqual(ok(s, 0x80_1000, true));
    // B's data gPA mapping survived: B's write (D clear: re-walk) reads only its PTE (PSC hit).
    const r = s.raw(B, 'write');
    expect({ outcome: r.outcome, hit: r.tlbHit, refs: r.refs }).toEqual({ outcome: Outcome.Ok, hit: false, refs: 1 });
    // R -> RW needs no invalidation: the violation flushed the stale read-only mapping.
    s.write64(s.eEntry(0x80_0000, 1), 0x80_0000n | EPT_RWX | EPT_WB);
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, false));
  });

  it('drops guest-physical mappings of the current EP4TA only: another EP4TA keeps its mapping of the same gPA', () => {
    const s = make('ept');
    const e1 = s.regs.eptp;
    const e2 = secondEptp(s); // shares E1's lower EPT tables, so A's data page is read-only under both
    s.write64(s.eEntry(0x80_0000, 1), 0x80_0000n | EPT_R | EPT_WB);
    at(s, { eptp: e2 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    at(s, { eptp: e1 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2], 10, [4, 2, 2]));
    expect(look(s, A, 'write')).toEqual({ result: 'ept_violation', qualification: '0x18a', gpa: '0x800000', gla: '0x401000', hit: false });
    // E1: the data gPA's mapping and its PML4E/PDPTE/PDE cache entries; E1's combined A and A's path.
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1], 9, [3, 1, 1]));
    at(s, { eptp: e2 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    // Without the combined entry, E2's walk takes every gPA, the violating one too, from its guest-physical mappings.
    expectOutcome(invlpg(s, A), Outcome.Ok);
    const r = s.raw(A, 'read');
    expect({ outcome: r.outcome, hit: r.tlbHit, refs: r.refs }).toEqual({ outcome: Outcome.Ok, hit: false, refs: 4 });
  });

  it('a mapping of the violating gPA made afterwards (through another LA) serves the next walk to it', () => {
    const s = make('ept');
    const D = 0x40_3000n; // same page table as A, same data page
    s.map(D, 0x80_0000);
    s.write64(s.eEntry(0x80_0000, 1), 0x80_0000n | EPT_R | EPT_WB);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    expect(look(s, A, 'write')).toEqual({ result: 'ept_violation', qualification: '0x18a', gpa: '0x800000', gla: '0x401000', hit: false });
    s.write64(s.eEntry(0x80_0000, 1), 0x80_0000n | EPT_RWX | EPT_WB);
    // D's walk translates gPA 0x800000 from memory and caches it (and A's guest path again) ...
    expect(look(s, D)).toEqual(ok(s, 0x80_0000, false));
    // ... so A's write reads only its PTE (PDE-cache hit) and takes the gPA from the TLB.
    const r = s.raw(A, 'write');
    expect({ outcome: r.outcome, hit: r.tlbHit, refs: r.refs }).toEqual({ outcome: Outcome.Ok, hit: false, refs: 1 });
  });

  it('on a guest page-table access: drops the mapping of that guest-table gPA', () => {
    const s = make('ept');
    for (const g of [A, B]) expect(s.acc(g, 'read').result).toBe('ok');
    expect(cnt(s)).toEqual(counts(2, [2, 2, 2], 9, [2, 1, 1]));
    // A's guest PT page (gPA 0x103000) made not present in EPT; the stale mappings still serve A.
    s.write64(s.eEntry(0x10_3000, 1), 0n);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    expectOutcome(s.m.invlpg(0, hi32(A), lo32(A)), Outcome.Ok); // drop A's TLB entry and the guest PSCs
    expect(cnt(s)).toEqual(counts(1, [0, 0, 0], 9, [2, 1, 1]));
    // The walk re-reads the PTE through the (stale) gPA mapping of 0x103000: still served.
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    expectOutcome(s.m.invept(0, true, null), Outcome.Ok);
    expect(look(s, A)).toEqual({ result: 'ept_violation', qualification: '0x81', gpa: '0x103008', gla: '0x401000', hit: false });
    // EPT PSC entries for 0x103008 dropped (PML4E, PDPTE, 0-2M PDE); the gPAs walked before it stay.
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0], 3, [0, 0, 0]));
  });
});

// ===================================================================== AMD: VMRUN and INVLPGA

describe('AMD VMRUN TLB_CONTROL and INVLPGA (hw.md §6.5, §7.3 last row)', () => {
  /** ASID 1: A, B, GL (global); ASID 2: A. Current ASID 1. */
  function setup(): Setup {
    const s = make('npt');
    at(s, { asid: 1 });
    for (const g of [A, B, GL]) expect(s.acc(g, 'read').result).toBe('ok');
    at(s, { asid: 2 });
    expect(s.acc(A, 'read').result).toBe('ok');
    at(s, { asid: 1 });
    // gpa (tagged by ASID): ASID 1 10 table pages + 3 data pages; ASID 2 4 + 1. NPT PSC likewise per ASID.
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4], 18, [4, 2, 2]));
    return s;
  }

  it('TLB_CONTROL=0: nothing is flushed', () => {
    const s = setup();
    setFrame(s, A, 0x90_0000);
    expectOutcome(s.m.vmrun(0, 0), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4], 18, [4, 2, 2]));
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
  });

  it('TLB_CONTROL=1: everything, all ASIDs', () => {
    const s = setup();
    setFrame(s, A, 0x90_0000);
    expectOutcome(s.m.vmrun(0, 1), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0], 0, [0, 0, 0]));
    at(s, { asid: 2 });
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
  });

  it("TLB_CONTROL=3: this ASID's entries (global, nested too); other ASIDs survive", () => {
    const s = setup();
    setFrame(s, A, 0x90_0000);
    expectOutcome(s.m.vmrun(0, 3), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(1, [1, 1, 1], 5, [2, 1, 1]));
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
    at(s, { asid: 2 });
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
  });

  it("TLB_CONTROL=7: this ASID's non-global entries; its global entry and other ASIDs survive", () => {
    const s = setup();
    setFrame(s, GL, 0x90_3000);
    setFrame(s, B, 0x90_2000);
    expectOutcome(s.m.vmrun(0, 7), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(2, [1, 1, 1], 5, [2, 1, 1]));
    expect(look(s, GL)).toEqual(ok(s, 0x80_3000, true));
    expect(look(s, B)).toEqual(ok(s, 0x90_2000, false));
  });

  it('ASID 0: VMRUN fails (VMEXIT_INVALID) and flushes nothing', () => {
    const s = setup();
    at(s, { asid: 0 });
    expect(s.m.vmrun(0, 1).outcome).toBe(Outcome.VmFail);
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4], 18, [4, 2, 2]));
  });

  // Which PSC entries and whether nested mappings go is UNCONFIRMED (hw.md §6.5); the model treats
  // INVLPGA as INVLPG for that ASID: the page's TLB entries, all the ASID's guest PSC entries.
  it("INVLPGA: drops that page for the given ASID (and that ASID's guest PSC entries); the current ASID and nested mappings survive", () => {
    const s = setup();
    setFrame(s, A, 0x90_0000);
    expectOutcome(s.m.invlpga(0, hi32(A), lo32(A), 2), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(3, [3, 3, 3], 18, [4, 2, 2]));
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true)); // ASID 1: stale
    at(s, { asid: 2 });
    expect(look(s, A)).toEqual(ok(s, 0x90_0000, false));
  });

  it('INVLPGA: a global entry of the page is dropped too; at CPL 3 it is #GP(0)', () => {
    const s = setup();
    setFrame(s, GL, 0x90_3000);
    at(s, { cpl: 3 });
    expectOutcome(s.m.invlpga(0, hi32(GL), lo32(GL), 1), Outcome.Gp);
    expect(cnt(s)).toEqual(counts(4, [4, 4, 4], 18, [4, 2, 2]));
    at(s, { cpl: 0 });
    expectOutcome(s.m.invlpga(0, hi32(GL), lo32(GL), 1), Outcome.Ok);
    expect(cnt(s)).toEqual(counts(3, [1, 1, 1], 18, [4, 2, 2]));
    expect(look(s, GL)).toEqual(ok(s, 0x90_3000, false));
  });
});

// ===================================================================== A/D and stale entries

describe('TLB and the accessed/dirty flags, stale entries (hw.md §3.3, §9 scenarios 3 and 4)', () => {
  it('clearing A without a flush: accesses through the TLB do not set A again until INVLPG (SDM 4.10.4.3)', () => {
    const s = make('native');
    const pte = s.gEntry(A, 1);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    expect(s.read64(pte) & (X86_A | X86_D)).toBe(X86_A);
    patch(s, pte, 0n, X86_A);
    for (let i = 0; i < 2; i++) expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    expect(s.read64(pte) & X86_A).toBe(0n);
    expectOutcome(invlpg(s, A), Outcome.Ok);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    expect(s.read64(pte)).toBe(0x80_0000n | X86_PWU | X86_A);
  });

  it('clearing D without a flush: writes through an entry that cached D=1 do not set D again', () => {
    const s = make('native');
    const pte = s.gEntry(A, 1);
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, false));
    expect(s.read64(pte)).toBe(0x80_0000n | X86_PWU | X86_A | X86_D);
    patch(s, pte, 0n, X86_D);
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, true));
    expect(s.read64(pte)).toBe(0x80_0000n | X86_PWU | X86_A);
  });

  it('a write through a cached entry with D clear re-walks (from the PSC) and sets D; the next write hits', () => {
    const s = make('native');
    const pte = s.gEntry(A, 1);
    expect(look(s, A, 'read')).toEqual(ok(s, 0x80_0000, false));
    expect(look(s, A, 'read')).toEqual(ok(s, 0x80_0000, true));
    const w = s.raw(A, 'write');
    expect({ hit: w.tlbHit, refs: w.refs }).toEqual({ hit: false, refs: 1 });
    expect(s.read64(pte)).toBe(0x80_0000n | X86_PWU | X86_A | X86_D);
    const w2 = s.raw(A, 'write');
    expect({ hit: w2.tlbHit, refs: w2.refs }).toEqual({ hit: true, refs: 0 });
  });

  it('EPT A/D on: a write after a read re-walks and sets the guest D and the EPT leaf D of the data page', () => {
    const s = make('ept', { eptAd: true });
    const pte = s.gEntry(A, 1);
    const ept = s.eEntry(0x80_0000, 1);
    expect(look(s, A, 'read')).toEqual(ok(s, 0x80_0000, false));
    expect(s.read64(ept)).toBe(0x80_0000n | EPT_RWX | EPT_WB | 0x100n);
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, false));
    expect(s.read64(pte)).toBe(0x80_0000n | X86_PWU | X86_A | X86_D);
    expect(s.read64(ept)).toBe(0x80_0000n | EPT_RWX | EPT_WB | 0x300n);
    expect(look(s, A, 'write')).toEqual(ok(s, 0x80_0000, true));
  });

  it('a stale entry after P 1->0 is used until INVLPG; then #PF not-present', () => {
    const s = make('native');
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, false));
    patch(s, s.gEntry(A, 1), 0n, X86_P);
    expect(look(s, A)).toEqual(ok(s, 0x80_0000, true));
    expect(look(s, A, 'fetch')).toEqual(ok(s, 0x80_0000, true));
    expectOutcome(invlpg(s, A), Outcome.Ok);
    expect(look(s, A)).toEqual({ result: 'pf', error_code: '0x0', cr2: '0x401000', hit: false });
    expect(cnt(s)).toEqual(counts(0, [0, 0, 0])); // a faulting walk caches nothing
  });
});
