/**
 * hw.md §9 scenarios 21–40 (31, the PAE guest, is tested elsewhere), with the
 * §9 default set-up unless a scenario says otherwise: a 4-level guest over a
 * 4-level identity EPT (EPTP[6]=0, no VPID), every guest entry P|W|U with
 * A=D=0, every EPT entry RWX with memory type WB, CR0.WP=1, EFER.NXE=1,
 * SMEP=SMAP=PKE=0, CPL 0. NPT scenarios use the same layout with an identity
 * NPT whose entries are P|W|U.
 *
 * Where hw.md leaves a choice, the expected values are the ones
 * trace-format.md fixes ("Where the architecture leaves latitude" and "The
 * modelled CPU"):
 *
 * - rule 2: a non-leaf guest entry gets A once the walk has passed its P and
 *   reserved-bit checks, even if the access then faults or exits;
 * - rule 3: the guest leaf gets A/D only when the whole access succeeds;
 * - rule 4: a successful EPT translation with EPTP[6]=1 sets A in every EPT
 *   entry used and D in its leaf for a write-type use (guest paging-structure
 *   accesses are write-type); a failed one sets nothing;
 * - the modelled Intel CPU has no advanced VM-exit information (qualification
 *   bits 9–11 are 0) and no MBEC (EPT bit 10 ignored), so every
 *   qualification below is the full value the model reports;
 * - AMD: nested non-leaf entries get A as the nested walk moves past them,
 *   the nested leaf gets A (and D for write-type uses) only when its checks
 *   pass; guest page-table accesses are write-type;
 * - the TLB is a real tagged cache without random eviction: a stale entry is
 *   used until it is invalidated.
 *
 * Layout built by the default set-up (test/support/setup.ts):
 *   guest tables from gPA 0x100000: PML4 0x100000 (= CR3), PDPT 0x101000,
 *   PD 0x102000, PT 0x103000 (for LA below);
 *   EPT/NPT tables from hPA 0x10000000: PML4 0x10000000, PDPT 0x10001000,
 *   PD 0x10002000, PTs 0x10003000 + 0x1000·(gPA >> 21) for gPA < 16 MiB;
 *   tables created later by map2 come from 0x1000b000 on.
 */
import { describe, expect, it } from 'vitest';
import { AccessResult, OUTCOME_NAMES } from '../../src/hw/result.js';
import { accessFields } from '../../src/trace/runner.js';
import { KindName, Setup, SetupOptions } from '../support/setup.js';
import { CR4_PGE, CR4_PCIDE, EFER_NXE, LA, LA_PAGE, LA_HEX, DATA, G_PML4E, G_PDPTE, G_PDE, G_PTE, E_PML4E, E_PDPTE, E_PDE_DATA, E_PTE_DATA } from '../support/layout.js';

/** Bit 63 of a MOV-to-CR3 source, as the high 32-bit half. */
const CR3_NOFLUSH_HI = 1 << 31;

/** LA (support/layout.ts) as 32-bit halves. */
const LA_HI = 0x80;
const LA_LO = 0x4060_1123;
/** A second data page, for "the PTE changed" scenarios. */
const DATA2 = 0x90_0000;

/** EPT/NPT PDE for gPA 0-2M (maps the guest table pages) and the PTEs of the four guest table pages. */
const E_PDE_PT = 0x1000_2000;
const E_PTE_PML4 = 0x1000_3800; // gPA 0x100000
const E_PTE_PDPT = 0x1000_3808; // gPA 0x101000
const E_PTE_PD = 0x1000_3810; // gPA 0x102000
const E_PTE_PT = 0x1000_3818; // gPA 0x103000

/** Guest entries for LA before any access: P|W|U, A=D=0. */
const G_FRESH = ['0x101007', '0x102007', '0x103007', '0x800007'];
/** After a successful read: A at every level, D nowhere. */
const G_READ = ['0x101027', '0x102027', '0x103027', '0x800027'];
/** After a fault or exit past the guest walk: upper A set (rule 2), leaf untouched (rule 3). */
const G_UPPER_A = ['0x101027', '0x102027', '0x103027', '0x800007'];

/** Upper guest A bits only (rule 2). */
const CH_UPPER_A = { '0x100008': '0x101027', '0x101008': '0x102027', '0x102018': '0x103027' };
/** A complete read: A at all four guest levels. */
const CH_READ = { ...CH_UPPER_A, '0x103008': '0x800027' };
/** EPTP[6]=1: the EPT entries used for the guest PML4, PDPT and PD pages (A on every level, D on the leaves). */
const CH_EPT_AD_PT3 = {
  '0x10000000': '0x10001107', '0x10001000': '0x10002107', '0x10002000': '0x10003107',
  '0x10003800': '0x100337', '0x10003808': '0x101337', '0x10003810': '0x102337',
};
/** ... and for the guest PT page as well. */
const CH_EPT_AD_PT4 = { ...CH_EPT_AD_PT3, '0x10003818': '0x103337' };

const hex = (v: bigint | number): string => '0x' + BigInt(v).toString(16);
const KINDS: KindName[] = ['read', 'write', 'fetch'];

/** The default set-up with LA -> gPA 0x800000 through a 4K page. */
function base(o: SetupOptions = {}, mode: 'ept' | 'npt' = 'ept'): Setup {
  const s = new Setup(mode, o);
  s.map(LA_PAGE, DATA);
  // Guard the layout every literal below depends on.
  expect([4, 3, 2, 1].map((l) => s.gEntry(LA, l))).toEqual([G_PML4E, G_PDPTE, G_PDE, G_PTE]);
  expect([4, 3, 2, 1].map((l) => s.eEntry(DATA, l))).toEqual([E_PML4E, E_PDPTE, E_PDE_DATA, E_PTE_DATA]);
  expect([0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000].map((g) => s.eEntry(g, 1))).toEqual([E_PTE_PML4, E_PTE_PDPT, E_PTE_PD, E_PTE_PT]);
  expect(s.eEntry(0x10_0000, 2)).toBe(E_PDE_PT);
  expect(guest(s)).toEqual(G_FRESH);
  return s;
}

/** The four guest entries for LA, PML4E first. */
function guest(s: Setup): string[] {
  return [G_PML4E, G_PDPTE, G_PDE, G_PTE].map((a) => hex(s.read64(a)));
}

// ---------------------------------------------------------------- snapshots

/** Guest tables (0x100000, 32 pages) and EPT/NPT tables (0x10000000, 32 pages). */

/** Every table qword that changed since `before`: hPA -> new value. */

/** Contract JSON fields of a raw result (of an access or an instruction). */
function fields(s: Setup, r: AccessResult): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  accessFields(s.mode, r, out);
  return out;
}

const OK_DATA = { result: 'ok', hpa: '0x800123', gpa: '0x800123' };
const OK_DATA2 = { result: 'ok', hpa: '0x900123', gpa: '0x900123' };

/** What an instruction ended in: its outcome and VM-instruction error number (0 unless VMfail). */
function insn(r: AccessResult): { result: string; vm_error: number } {
  return { result: OUTCOME_NAMES[r.outcome], vm_error: r.vmError };
}
const OK_INSN = { result: 'ok', vm_error: 0 };
const GP_INSN = { result: 'gp', vm_error: 0 };
const VMFAIL_28 = { result: 'vmfail', vm_error: 28 };

/** An access, with whether it was served by the TLB. */
function accHit(s: Setup, gva: bigint, kind: KindName): [Record<string, string | number>, boolean] {
  const r = s.raw(gva, kind);
  return [fields(s, r), r.tlbHit];
}

// ==========================================================================

describe('scenario 21: misconfiguration vs violation precedence', () => {
  describe('an execute-only EPT PDPTE above a misconfigured PTE: misconfiguration, not a read violation', () => {
    // Data gPA in the second GiB so that its EPT PDPTE (index 1) maps no guest table.
    const GPA = 0x4080_0000;
    const E_PDPTE1 = 0x1000_1008;
    const E_PTE1 = 0x1000_c000;
    const setup = (pte: bigint): Setup => {
      const s = new Setup('ept');
      s.map(LA_PAGE, GPA);
      s.map2(GPA, DATA2);
      expect([4, 3, 2, 1].map((l) => s.eEntry(GPA, l))).toEqual([E_PML4E, E_PDPTE1, 0x1000_b020, E_PTE1]);
      expect(s.read64(E_PDPTE1)).toBe(0x1000_b007n);
      s.write64(E_PDPTE1, 0x1000_b004n); // bits 2:0 = 100b: execute-only (cap bit 0 = 1)
      s.write64(E_PTE1, pte);
      return s;
    };

    for (const kind of KINDS) {
      it(`PTE bit 51 set (M=46), ${kind}: ept_misconfig at the data gPA; guest leaf untouched`, () => {
        const s = setup((1n << 51n) | 0x90_0037n);
        const before = s.snapshotTables();
        expect(s.acc(LA, kind)).toEqual({ result: 'ept_misconfig', gpa: '0x40800123' });
        expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x40800007']);
        expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
      });
    }

    it('control: without bit 51 the walk completes and the read is a violation Q=0x1a1 (RD|PERM_X|7|8)', () => {
      const s = setup(0x90_0037n);
      const before = s.snapshotTables();
      expect(s.acc(LA, 'read')).toEqual({ result: 'ept_violation', qualification: '0x1a1', gpa: '0x40800123', gla: LA_HEX });
      expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
    });

    it('control: without bit 51 a fetch succeeds through the execute-only PDPTE', () => {
      const s = setup(0x90_0037n);
      expect(s.acc(LA, 'fetch')).toEqual({ result: 'ok', hpa: '0x900123', gpa: '0x40800123' });
      expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x40800027']);
    });
  });

  describe('a not-present EPT PML4E above a misconfigured PTE: violation', () => {
    // Data gPA 0x80_0000_0000 (512 GiB): EPT PML4 index 1, which maps no guest table.
    const GPA = 0x80_0000_0000;
    const E_PML4E1 = 0x1000_0008;
    const E_PTE1 = 0x1000_d000;
    const setup = (pml4e: bigint): Setup => {
      const s = new Setup('ept');
      s.map(LA_PAGE, GPA);
      s.map2(GPA, DATA2);
      expect([4, 3, 2, 1].map((l) => s.eEntry(GPA, l))).toEqual([E_PML4E1, 0x1000_b000, 0x1000_c000, E_PTE1]);
      s.write64(E_PTE1, (1n << 51n) | 0x90_0037n); // misconfigured: reserved bit 51
      s.write64(E_PML4E1, pml4e);
      return s;
    };

    for (const [kind, q] of [['read', '0x181'], ['write', '0x182'], ['fetch', '0x184']] as const) {
      it(`PML4E RWX=000, ${kind}: ept_violation Q=${q} (no permission bits: not present), gpa = data byte`, () => {
        const s = setup(0x1000_b000n);
        const before = s.snapshotTables();
        expect(s.acc(LA, kind)).toEqual({ result: 'ept_violation', qualification: q, gpa: '0x8000000123', gla: LA_HEX });
        expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x8000000007']);
        expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
      });
    }

    it('control: with the PML4E present the same read is the misconfiguration', () => {
      const s = setup(0x1000_b007n);
      expect(s.acc(LA, 'read')).toEqual({ result: 'ept_misconfig', gpa: '0x8000000123' });
    });
  });
});

describe('scenario 22: guest PT page not in EPT, A/D off — Q=0x081 at the gPA of the guest PTE', () => {
  for (const kind of KINDS) {
    it(`EPT PTE of gPA 0x103000 RWX=000, ${kind}: Q=0x81 (RD|7, bit 8=0), gpa 0x103008, gla = LA`, () => {
      const s = base();
      s.write64(E_PTE_PT, 0x10_3030n);
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual({ result: 'ept_violation', qualification: '0x81', gpa: '0x103008', gla: LA_HEX });
      // The PML4E, PDPTE and PDE were passed before the PTE's gPA was translated (rule 2); no EPT A/D.
      expect(guest(s)).toEqual(G_UPPER_A);
      expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
    });
  }
});

describe('scenario 23: guest PT page not in EPT, EPTP[6]=1 — Q=0x083 (RD|WR|7)', () => {
  for (const kind of KINDS) {
    it(`${kind}: Q=0x83, gpa 0x103008; EPT A/D set for the three PT pages translated before`, () => {
      const s = base({ eptAd: true });
      s.write64(E_PTE_PT, 0x10_3030n);
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual({ result: 'ept_violation', qualification: '0x83', gpa: '0x103008', gla: LA_HEX });
      expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, ...CH_EPT_AD_PT3 });
    });
  }
});

describe('scenario 24: guest PT page EPT read-only, A/D off — the guest A/D update fails with Q=0x08B', () => {
  /** Upper guest entries already have A; the EPT mapping of the guest PT page (gPA 0x103000) is R only. */
  const setup = (pte: bigint): Setup => {
    const s = base();
    s.write64(G_PML4E, 0x10_1027n);
    s.write64(G_PDPTE, 0x10_2027n);
    s.write64(G_PDE, 0x10_3027n);
    s.write64(G_PTE, pte);
    s.write64(E_PTE_PT, 0x10_3031n);
    return s;
  };
  const VIOL = { result: 'ept_violation', qualification: '0x8b', gpa: '0x103008', gla: LA_HEX };

  for (const kind of KINDS) {
    it(`guest PTE A=0, ${kind}: Q=0x8b (RD|WR|PERM_RD|7), gpa 0x103008; nothing written`, () => {
      const s = setup(0x80_0007n);
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual(VIOL);
      expect(s.tableChanges(before)).toEqual({});
    });
  }

  for (const [kind, want] of [['read', OK_DATA], ['fetch', OK_DATA], ['write', VIOL]] as const) {
    it(`guest PTE A=1, ${kind}: ${want.result === 'ok' ? 'succeeds (nothing to write)' : 'Q=0x8b (the D update fails)'}`, () => {
      const s = setup(0x80_0027n);
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual(want);
      expect(s.tableChanges(before)).toEqual({});
    });
  }

  for (const kind of KINDS) {
    it(`guest PTE A=D=1, ${kind}: succeeds; nothing written`, () => {
      const s = setup(0x80_0067n);
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual(OK_DATA);
      expect(s.tableChanges(before)).toEqual({});
    });
  }
});

describe('scenario 25: guest PT page EPT read-only, EPTP[6]=1 — Q=0x08B whatever the guest A/D state', () => {
  for (const [state, pte] of [['A=0', 0x80_0007n], ['A=1', 0x80_0027n], ['A=D=1', 0x80_0067n]] as const) {
    for (const kind of KINDS) {
      it(`guest PTE ${state}, ${kind}: Q=0x8b, gpa 0x103008; the R-only EPT leaf gets no A`, () => {
        const s = base({ eptAd: true });
        s.write64(G_PTE, pte);
        s.write64(E_PTE_PT, 0x10_3031n);
        const before = s.snapshotTables();
        expect(s.acc(LA, kind)).toEqual({ result: 'ept_violation', qualification: '0x8b', gpa: '0x103008', gla: LA_HEX });
        expect(s.read64(E_PTE_PT)).toBe(0x10_3031n);
        expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, ...CH_EPT_AD_PT3 });
      });
    }
  }
});

describe('scenario 26: EPT A/D bookkeeping — EPTP[6]=1, cold read then write', () => {
  it('read: each guest PT page has A at all EPT levels and D in the EPT leaf; data page A only; non-leaf D=0', () => {
    const s = base({ eptAd: true });
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(G_READ);
    expect(s.tableChanges(before)).toEqual({
      ...CH_READ,
      ...CH_EPT_AD_PT4,
      '0x10002020': '0x10007107', // EPT PDE of the data page: A
      '0x10007000': '0x800137', // EPT PTE of the data page: A, D=0
    });

    // Then a write: the data page's EPT leaf gets D (and the guest leaf D); nothing else changes.
    // (The model has no PML, so no log is written.)
    const before2 = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_DATA);
    expect(s.tableChanges(before2)).toEqual({ '0x103008': '0x800067', '0x10007000': '0x800337' });
  });
});

describe('scenario 27: EPT A/D kept on a final violation — EPTP[6]=1, data EPT leaf not present, write: Q=0x182', () => {
  it('the PT pages keep EPT A/D; the data gPA\'s EPT entries keep A=D=0', () => {
    const s = base({ eptAd: true });
    s.write64(E_PTE_DATA, 0x80_0030n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x182', gpa: '0x800123', gla: LA_HEX });
    expect(guest(s)).toEqual(G_UPPER_A);
    expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, ...CH_EPT_AD_PT4 });
    expect(hex(s.read64(E_PDE_DATA))).toBe('0x10007007');
    expect(hex(s.read64(E_PTE_DATA))).toBe('0x800030');
  });
});

describe('scenario 28: guest #PF beats a final EPT violation — #PF 0x03, no exit', () => {
  it('guest PTE R/W=0, WP=1, data page not present in EPT, supervisor write: #PF 0x03; leaf A/D not set', () => {
    const s = base();
    s.write64(G_PTE, 0x80_0005n);
    s.write64(E_PTE_DATA, 0x80_0030n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'pf', error_code: '0x3', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x800005']);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('control: with guest R/W=1 the same write reaches EPT: Q=0x182', () => {
    const s = base();
    s.write64(E_PTE_DATA, 0x80_0030n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x182', gpa: '0x800123', gla: LA_HEX });
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });
});

describe('scenario 29 (modelled CPU has no MBEC: EPT bit 10 ignored) — XU does not grant execute or presence', () => {
  const XU = 0x400n;
  /** Bit 10 (XU) set in the upper EPT entries of the data page (they also map the guest tables) and the given leaf. */
  const setup = (leaf: bigint, o: SetupOptions = {}): Setup => {
    const s = base(o);
    s.write64(E_PML4E, 0x1000_1007n | XU);
    s.write64(E_PDPTE, 0x1000_2007n | XU);
    s.write64(E_PDE_DATA, 0x1000_7007n | XU);
    s.write64(E_PTE_DATA, leaf);
    return s;
  };

  it('leaf R=1 W=0 X=0 XU=1, supervisor fetch from a supervisor-mode page: Q=0x18c (FETCH|PERM_RD|7|8; MBEC would give 0x1cc)', () => {
    const s = setup(0x80_0431n);
    s.write64(G_PML4E, 0x10_1003n); // U/S=0: supervisor-mode address
    const before = s.snapshotTables();
    expect(s.acc(LA, 'fetch')).toEqual({ result: 'ept_violation', qualification: '0x18c', gpa: '0x800123', gla: LA_HEX });
    expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, '0x100008': '0x101023' });
  });

  for (const cpl of [0, 3]) {
    it(`leaf R=1 W=0 X=0 XU=1, fetch from a user-mode page at CPL ${cpl}: Q=0x18c (MBEC would allow it)`, () => {
      const s = setup(0x80_0431n);
      s.regs.cpl = cpl;
      const before = s.snapshotTables();
      expect(s.acc(LA, 'fetch')).toEqual({ result: 'ept_violation', qualification: '0x18c', gpa: '0x800123', gla: LA_HEX });
      expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
    });
  }

  it('control: the same leaf allows a read (R=1); upper entries with bit 10 set translate the guest tables normally', () => {
    const s = setup(0x80_0431n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(s.tableChanges(before)).toEqual(CH_READ);
  });

  for (const execOnly of [true, false]) {
    for (const [kind, q] of [['fetch', '0x184'], ['read', '0x181']] as const) {
      it(`leaf with only XU set (bits 2:0=000b), execOnly=${execOnly}, ${kind}: not present — violation Q=${q}, not a misconfiguration`, () => {
        const s = setup(0x80_0430n, { execOnly });
        const before = s.snapshotTables();
        expect(s.acc(LA, kind)).toEqual({ result: 'ept_violation', qualification: q, gpa: '0x800123', gla: LA_HEX });
        expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
      });
    }
  }
});

describe('scenario 30: 1G EPT/NPT page under a 2M guest page', () => {
  /** LA with PML4 1, PDPT 1, PD 3, offset 0x112345 in the 2M page. */
  const LA2M = 0x0000_0080_4071_2345n;
  /** The guest PDE maps the 2M page at gPA 0x40600000: gPA = 0x40712345 (PDPT index 1 in EPT/NPT). */
  const GPA2M = 0x4060_0000;
  const E_PDPTE1 = 0x1000_1008;
  const setup = (mode: 'ept' | 'npt', pdpte: bigint, o: SetupOptions = {}): Setup => {
    const s = new Setup(mode, o);
    s.map(LA2M, GPA2M, { leafLevel: 2 });
    expect(s.gEntry(LA2M, 2)).toBe(G_PDE);
    expect(s.read64(G_PDE)).toBe(0x4060_0087n);
    expect(s.read64(E_PDPTE1)).toBe(0n); // identity covers only the first 16 MiB
    s.write64(E_PDPTE1, pdpte);
    return s;
  };
  const G3 = ['0x101027', '0x102027', '0x406000a7'];
  const g3 = (s: Setup): string[] => [G_PML4E, G_PDPTE, G_PDE].map((a) => hex(s.read64(a)));

  it('EPT PDPTE 1G leaf at hPA 0x80000000: hPA = 0x80000000 | gPA[29:0]; cold: 3×5 + 2 = 17 references', () => {
    const s = setup('ept', 0x8000_00b7n, { tlb: false }); // PS | WB | RWX
    const r = s.raw(LA2M, 'read');
    expect(r.refs).toBe(17);
    expect(fields(s, r)).toEqual({ result: 'ok', hpa: '0x80712345', gpa: '0x40712345' });
    expect(g3(s)).toEqual(G3);
  });

  for (const bit of [12, 13, 21, 29]) {
    it(`EPT PDPTE 1G leaf with bit ${bit} set ([29:12] reserved): ept_misconfig at the data gPA`, () => {
      const s = setup('ept', 0x8000_00b7n | (1n << BigInt(bit)));
      const before = s.snapshotTables();
      expect(s.acc(LA2M, 'read')).toEqual({ result: 'ept_misconfig', gpa: '0x40712345' });
      expect(g3(s)).toEqual(['0x101027', '0x102027', '0x40600087']);
      expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x102027' });
    });
  }

  it('NPT PDPTE 1G leaf: ok at 0x80712345 (cold: 17 references); the nested leaf gets A only', () => {
    const s = setup('npt', 0x8000_0087n, { tlb: false }); // P|W|U|PS
    const r = s.raw(LA2M, 'read');
    expect(r.refs).toBe(17);
    expect(fields(s, r)).toEqual({ result: 'ok', hpa: '0x80712345', gpa: '0x40712345' });
    expect(g3(s)).toEqual(G3);
    expect(hex(s.read64(E_PDPTE1))).toBe('0x800000a7');
  });

  it('NPT: bit 12 of a 1G PDPTE is PAT, not reserved — ok, same hPA', () => {
    const s = setup('npt', 0x8000_1087n);
    expect(s.acc(LA2M, 'read')).toEqual({ result: 'ok', hpa: '0x80712345', gpa: '0x40712345' });
  });

  it('NPT: bit 13 of a 1G PDPTE is reserved — #NPF EXITINFO1 0x10000000d (P|U|RSVD|FINAL), EXITINFO2 = gPA', () => {
    const s = setup('npt', 0x8000_2087n);
    const before = s.snapshotTables();
    expect(s.acc(LA2M, 'read')).toEqual({ result: 'npf', exitinfo1: '0x10000000d', exitinfo2: '0x40712345' });
    expect(g3(s)).toEqual(['0x101027', '0x102027', '0x40600087']);
    expect(hex(s.read64(E_PDPTE1))).toBe('0x80002087');
    const ch = s.tableChanges(before);
    // Guest: upper A only. Nested: only A/D on entries that translated guest table pages and the
    // data walk's PML4E (non-leaf A); the faulting PDPTE is untouched.
    expect(ch['0x102018']).toBeUndefined();
    expect(ch['0x10001008']).toBeUndefined();
    expect(ch['0x100008']).toBe('0x101027');
    expect(ch['0x101008']).toBe('0x102027');
  });
});

describe('scenario 32: NPT basic faults [KUT svm_npt]', () => {
  /** Nested A/D after the guest walk: non-leaf A, leaves of the four guest table pages A|D (write-type), data PDE A. */
  const CH_NPT_WALK = {
    '0x10000000': '0x10001027', '0x10001000': '0x10002027', '0x10002000': '0x10003027',
    '0x10003800': '0x100067', '0x10003808': '0x101067', '0x10003810': '0x102067', '0x10003818': '0x103067',
    '0x10002020': '0x10007027',
  };
  const cases = [
    { name: 'NPT PTE P=0, data read', pte: 0x80_0006n, kind: 'read', ei1: '0x100000004' },
    { name: 'NPT PTE U=0, read', pte: 0x80_0003n, kind: 'read', ei1: '0x100000005' },
    { name: 'NPT PTE W=0, write', pte: 0x80_0005n, kind: 'write', ei1: '0x100000007' },
  ] as const;
  // The §9 set-up (TLB and paging-structure caches on), and the same with the
  // nested paging-structure caches off: the results must not depend on them.
  const setups = [['', {}], [' (PSCs off)', { psc: false }]] as const;
  for (const [tag, o] of setups) {
    for (const c of cases) {
      it(`${c.name}${tag}: EXITINFO1 ${c.ei1}, EXITINFO2 = data gPA 0x800123`, () => {
        const s = base(o, 'npt');
        s.write64(E_PTE_DATA, c.pte);
        const before = s.snapshotTables();
        expect(s.acc(LA, c.kind)).toEqual({ result: 'npf', exitinfo1: c.ei1, exitinfo2: '0x800123' });
        expect(guest(s)).toEqual(G_UPPER_A);
        expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, ...CH_NPT_WALK });
      });
    }

    it(`control${tag}: the default NPT read succeeds; the nested data leaf gets A, no D`, () => {
      const s = base(o, 'npt');
      const before = s.snapshotTables();
      expect(s.acc(LA, 'read')).toEqual(OK_DATA);
      expect(s.tableChanges(before)).toEqual({ ...CH_READ, ...CH_NPT_WALK, '0x10007000': '0x800027' });
    });
  }
});

describe('scenario 33: NPT walk treated as write — EXITINFO1 0x200000007', () => {
  const CH_NPT_UPPER = { '0x10000000': '0x10001027', '0x10001000': '0x10002027', '0x10002000': '0x10003027' };
  for (const kind of KINDS) {
    it(`NPT PTE of the guest PML4 page W=0, ${kind}: EXITINFO1 0x200000007, EXITINFO2 0x100008; guest A untouched`, () => {
      const s = base({}, 'npt');
      s.write64(E_PTE_PML4, 0x10_0005n); // P|U, W=0
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual({ result: 'npf', exitinfo1: '0x200000007', exitinfo2: '0x100008' });
      expect(guest(s)).toEqual(G_FRESH);
      // Nested non-leaf A as the nested walk moved past them; the W=0 leaf gets nothing.
      expect(s.tableChanges(before)).toEqual(CH_NPT_UPPER);
    });
  }

  it('PML4 index 0: EXITINFO2 = guest CR3 (0x100000)', () => {
    const LA0 = 0x4060_1123n;
    const s = base({}, 'npt');
    s.map(LA0 & ~0xfffn, DATA);
    s.write64(E_PTE_PML4, 0x10_0005n);
    expect(s.acc(LA0, 'read')).toEqual({ result: 'npf', exitinfo1: '0x200000007', exitinfo2: '0x100000' });
  });
});

describe('scenario 34: NPT NX — host NXE=1, guest NXE=0, nested NX=1, guest fetch: EXITINFO1 0x100000015', () => {
  const setup = (): Setup => {
    const s = base({}, 'npt');
    s.regs.efer &= ~EFER_NXE;
    s.write64(E_PTE_DATA, (1n << 63n) | 0x80_0007n);
    return s;
  };

  it('fetch: #NPF P|U|I/D|FINAL, EXITINFO2 = data gPA; guest leaf A not set', () => {
    const s = setup();
    expect(s.acc(LA, 'fetch')).toEqual({ result: 'npf', exitinfo1: '0x100000015', exitinfo2: '0x800123' });
    expect(guest(s)).toEqual(G_UPPER_A);
    expect(hex(s.read64(E_PTE_DATA))).toBe('0x8000000000800007');
  });

  it('control: a read of the same page succeeds (nested bit 63 is NX, not reserved)', () => {
    const s = setup();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(G_READ);
  });
});

describe('scenario 35: NPT reserved bit 8 in the PML4E mapping the guest page tables — EXITINFO1 0x20000000f', () => {
  for (const kind of KINDS) {
    it(`${kind}: #NPF P|W|U|RSVD|GUEST_PAGE at the first guest PT access (gPA 0x100008, 1 reference); nothing written`, () => {
      const s = base({}, 'npt');
      s.write64(E_PML4E, 0x1000_1107n);
      const before = s.snapshotTables();
      const r = s.raw(LA, kind);
      expect(r.refs).toBe(1);
      expect(fields(s, r)).toEqual({ result: 'npf', exitinfo1: '0x20000000f', exitinfo2: '0x100008' });
      expect(s.tableChanges(before)).toEqual({});
    });
  }

  for (const [name, hpa, value] of [['PDPTE', E_PDPTE, 0x1000_2107n], ['PDE', E_PDE_PT, 0x1000_3107n]] as const) {
    it(`control: bit 8 in the NPT ${name} is ignored — the read succeeds`, () => {
      const s = base({}, 'npt');
      s.write64(hpa, value);
      expect(s.acc(LA, 'read')).toEqual(OK_DATA);
      expect(guest(s)).toEqual(G_READ);
    });
  }
});

describe('scenario 36: NPT paging mode — 5-level guest over the 4-level host mode', () => {
  it('cold read: 5 guest entries × (4 nested + 1) + 4 final = 29 references (not 35)', () => {
    const LA5 = 0xffff_0080_4060_1123n; // PML5 511, PML4 1, PDPT 1, PD 3, PT 1
    const E5 = [0x10_0ff8, 0x10_1008, 0x10_2008, 0x10_3018, 0x10_4008];
    const s = new Setup('npt', { guestLevels: 5, tlb: false });
    s.map(LA5 & ~0xfffn, DATA);
    expect([5, 4, 3, 2, 1].map((l) => s.gEntry(LA5, l))).toEqual(E5);
    const r = s.raw(LA5, 'read');
    expect(r.refs).toBe(29);
    expect(fields(s, r)).toEqual(OK_DATA);
    expect(E5.map((a) => hex(s.read64(a)))).toEqual(['0x101027', '0x102027', '0x103027', '0x104027', '0x800027']);
  });
});

describe('scenario 37: global page survives MOV CR3', () => {
  /** CR4.PGE=1, leaf G=1; LA cached; then the PTE is pointed at DATA2 without INVLPG. */
  const setup = (pge: boolean, leaf: bigint): Setup => {
    const s = new Setup('ept');
    if (pge) s.regs.cr4 |= CR4_PGE;
    s.map(LA_PAGE, DATA, { leafFlags: leaf });
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(hex(s.read64(G_PTE))).toBe(hex(BigInt(DATA) | leaf | 0x20n));
    s.write64(G_PTE, BigInt(DATA2) | leaf | 0x20n);
    expect(insn(s.m.movCr3(0, 0, s.cr3))).toEqual(OK_INSN);
    return s;
  };

  it('MOV CR3 (same value, no-flush clear) keeps the global entry: the old translation is used; after INVLPG the new one', () => {
    const s = setup(true, 0x107n);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA, true]);
    expect(insn(s.m.invlpg(0, LA_HI, LA_LO))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA2, false]);
  });

  it('toggling CR4.PGE (1 -> 0 -> 1) drops the global entry: the new translation is used', () => {
    const s = setup(true, 0x107n);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA, true]);
    const cr4 = s.regs.cr4;
    expect(insn(s.m.movCr4(0, cr4 & ~CR4_PGE))).toEqual(OK_INSN);
    expect(insn(s.m.movCr4(0, cr4))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA2, false]);
  });

  it('control: a non-global leaf (G=0) is dropped by the MOV CR3', () => {
    const s = setup(true, 0x7n);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA2, false]);
  });

  it('control: G=1 with CR4.PGE=0 is not global — dropped by the MOV CR3', () => {
    const s = setup(false, 0x107n);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA2, false]);
  });
});

describe('scenario 38: PCID no-flush', () => {
  const CR3_P1 = 0x10_0001; // PML4 at 0x100000, PCID 1
  /** PCIDE=1, PCID 1; LA cached; the PTE pointed at DATA2 without invalidation. */
  const setup = (): Setup => {
    const s = base();
    s.regs.cr4 |= CR4_PCIDE;
    s.regs.cr3 = CR3_P1;
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    s.write64(G_PTE, BigInt(DATA2) | 0x27n);
    return s;
  };

  it('MOV CR3 with bit 63=1, same PCID: the old translation is used; bit 63 is not stored', () => {
    const s = setup();
    expect(insn(s.m.movCr3(0, CR3_NOFLUSH_HI, CR3_P1))).toEqual(OK_INSN);
    expect(s.regs.cr3).toBe(CR3_P1);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA, true]);
  });

  it('MOV CR3 with bit 63=0: the new translation is used', () => {
    const s = setup();
    expect(insn(s.m.movCr3(0, CR3_NOFLUSH_HI, CR3_P1))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA, true]);
    expect(insn(s.m.movCr3(0, 0, CR3_P1))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA2, false]);
  });

  it('INVPCID type 0 (PCID 1, LA): the new translation is used; type 0 for PCID 2 leaves the stale one', () => {
    const s = setup();
    expect(insn(s.m.invpcid(0, 0, 0, 2, LA_HI, LA_LO))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA, true]);
    expect(insn(s.m.invpcid(0, 0, 0, 1, LA_HI, LA_LO))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA2, false]);
  });

  it('INVPCID type 0 with PCID 1 while PCIDE=0: #GP(0); with PCID 0 it is allowed', () => {
    const s = base();
    expect(insn(s.m.invpcid(0, 0, 0, 1, LA_HI, LA_LO))).toEqual(GP_INSN);
    expect(insn(s.m.invpcid(0, 0, 0, 0, LA_HI, LA_LO))).toEqual(OK_INSN);
  });
});

describe('scenario 39: VPID-tagged survival', () => {
  /** VPID as given; LA cached; the VMM points the guest PTE at DATA2; VM exit and VM entry. */
  const setup = (vpid: number): Setup => {
    const s = base();
    s.regs.vpid = vpid;
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    s.write64(G_PTE, BigInt(DATA2) | 0x27n);
    expect(insn(s.m.vmexit(0))).toEqual(OK_INSN);
    return s;
  };

  it('VPID 5: the stale combined mapping survives the VM exit/entry; INVVPID type 0 (VPID 5, LA) drops it', () => {
    const s = setup(5);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA, true]);
    expect(insn(s.m.invvpid(0, 0, 0, 6, LA_HI, LA_LO))).toEqual(OK_INSN); // another VPID: no effect
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA, true]);
    expect(insn(s.m.invvpid(0, 0, 0, 5, LA_HI, LA_LO))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA2, false]);
  });

  it('control: without VPID (VPID 0) the VM exit/entry drops the mapping', () => {
    const s = setup(0);
    expect(accHit(s, LA, 'read')).toEqual([OK_DATA2, false]);
  });

  it('INVVPID type 1 with VPID 0: VMfail, VM-instruction error 28', () => {
    const s = base();
    expect(insn(s.m.invvpid(0, 1, 0, 0, 0, 0))).toEqual(VMFAIL_28);
  });
});

describe('scenario 40: INVEPT single-context', () => {
  it('EPT leaf RW -> R without INVEPT: the cached write succeeds; after INVEPT type 1 the write exits Q=0x18a', () => {
    const s = base();
    expect(s.acc(LA, 'write')).toEqual(OK_DATA); // cached with guest D=1
    s.write64(E_PTE_DATA, 0x80_0031n); // R only
    expect(accHit(s, LA, 'write')).toEqual([OK_DATA, true]);

    // INVLPG drops the combined mapping but not the guest-physical one: still the stale EPT rights.
    expect(insn(s.m.invlpg(0, LA_HI, LA_LO))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'write')).toEqual([OK_DATA, false]);

    // INVEPT for another (valid) EPTP: no effect.
    expect(insn(s.m.invept(0, true, 0x2000_001e))).toEqual(OK_INSN);
    expect(accHit(s, LA, 'write')).toEqual([OK_DATA, true]);

    // INVEPT type 1 with EPTP[5:3]=7: VMfail(28), nothing invalidated.
    const bad = (s.regs.eptp & ~0x38) | 0x38;
    expect(insn(s.m.invept(0, true, bad))).toEqual(VMFAIL_28);
    expect(accHit(s, LA, 'write')).toEqual([OK_DATA, true]);

    expect(insn(s.m.invept(0, true, s.regs.eptp))).toEqual(OK_INSN);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x18a', gpa: '0x800123', gla: LA_HEX });
    expect(s.tableChanges(before)).toEqual({});
    // Reads are still allowed by the R-only leaf.
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
  });
});
