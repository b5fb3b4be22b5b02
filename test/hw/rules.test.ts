/**
 * One named test per paging rule of hw.md §1, §2, §4 and §6 (A/D rules are in
 * rules_ad.test.ts), each asserting exact architectural values: #PF error
 * codes, CR2, EPT exit qualifications and guest-physical addresses, NPF
 * EXITINFO1/EXITINFO2 and entry bit patterns. Where hw.md leaves a choice the
 * value is the one trace-format.md fixes ("Where the architecture leaves
 * latitude", "The modelled CPU").
 *
 * Layout (test/support/setup.ts), for LA = 0x80_4060_1123 (PML4 index 1,
 * PDPT 1, PD 3, PT 1, offset 0x123) mapped to the data page at gPA 0x800000:
 *   guest tables: PML4 0x100000 (CR3), PDPT 0x101000, PD 0x102000, PT 0x103000;
 *   guest entries: PML4E 0x100008, PDPTE 0x101008, PDE 0x102018, PTE 0x103008;
 *   EPT/NPT (identity, first 16 MiB): PML4 0x10000000, PDPT 0x10001000,
 *   PD 0x10002000, PT for the 2M region r at 0x10003000 + 0x1000*r.
 */
import { describe, expect, it } from 'vitest';
import { KindName, Setup, SetupOptions } from '../support/setup.js';
import { CR0_WP, CR4_LA57, CR4_SMEP, CR4_SMAP, CR4_PKE, CR4_PKS, EFER_NXE, LA, LA_HEX, DATA, G_PML4E, G_PDPTE, G_PDE, G_PTE } from '../support/layout.js';

// Architectural bits, written out so that the test does not trust the model's constants.

const P = 1n;
const W = 2n;
const U = 4n;
const A = 0x20n;
const PS = 0x80n;
const XD = 1n << 63n;
const pkey = (k: number): bigint => BigInt(k) << 59n;
const bit = (b: number): bigint => 1n << BigInt(b);

/** The same low 48 bits under 5-level paging, with PML5 index 511. */
const LA5 = 0xffff_0080_4060_1123n;
const LA5_HEX = '0xffff008040601123';
const DATA_1G = 0x4000_0000;

const G_ENTRY: Record<number, number> = { 4: G_PML4E, 3: G_PDPTE, 2: G_PDE, 1: G_PTE };

/** EPT/NPT entries translating the data gPA 0x800000 (2M region 4). */
const S_PML4E = 0x1000_0000;
const S_PDPTE = 0x1000_1000;
const S_PDE_DATA = 0x1000_2020;
const S_PTE_DATA = 0x1000_7000;
/** EPT/NPT PTEs mapping the guest table pages 0x100000..0x103000 (2M region 0, PT 0x10003000). */
const S_PTE_GPML4 = 0x1000_3800;
const S_PTE_GPT = 0x1000_3818;
const S_PDE_0 = 0x1000_2000;

const EPT_WB = 0x30n;
const EPT_PS = 0x80n;

const hex = (v: bigint | number): string => '0x' + BigInt(v).toString(16);
const pf = (code: number, cr2 = LA_HEX) => ({ result: 'pf', error_code: hex(code), cr2 });
const OK_NATIVE = { result: 'ok', hpa: '0x800123' };
const OK_2D = { result: 'ok', hpa: '0x800123', gpa: '0x800123' };
const GP = { result: 'gp' };

function or64(s: Setup, hpa: number, bits: bigint): void {
  s.write64(hpa, s.read64(hpa) | bits);
}
function andNot64(s: Setup, hpa: number, bits: bigint): void {
  s.write64(hpa, s.read64(hpa) & ~bits);
}

// ---------------------------------------------------------------- set-ups

interface Env {
  cpl?: 0 | 3;
  wp?: 0 | 1;
  smep?: boolean;
  smap?: boolean;
  ac?: 0 | 1;
  nxe?: boolean;
  pke?: boolean;
  pks?: boolean;
  pkru?: number;
  pkrs?: number;
  implicit?: boolean;
}

function applyEnv(s: Setup, e: Env): void {
  const r = s.regs;
  r.cpl = e.cpl ?? 0;
  if ((e.wp ?? 1) === 0) r.cr0 &= ~CR0_WP;
  if (e.smep) r.cr4 |= CR4_SMEP;
  if (e.smap) r.cr4 |= CR4_SMAP;
  r.ac = e.ac ?? 0;
  if (e.nxe === false) r.efer &= ~EFER_NXE;
  if (e.pke) r.cr4 |= CR4_PKE;
  if (e.pks) r.cr4 |= CR4_PKS;
  r.pkru = e.pkru ?? 0;
  r.pkrs = e.pkrs ?? 0;
}

/** Native machine with LA -> DATA through a 4K page (leaf flags as given, every non-leaf P|W|U). */
function native(leaf: bigint = P | W | U, o: SetupOptions = {}): Setup {
  const s = new Setup('native', o);
  s.map(LA & ~0xfffn, DATA, { leafFlags: leaf });
  expect([4, 3, 2, 1].map((l) => s.gEntry(LA, l))).toEqual([G_PML4E, G_PDPTE, G_PDE, G_PTE]);
  return s;
}

function twoD(mode: 'ept' | 'npt', o: SetupOptions = {}): Setup {
  const s = new Setup(mode, o);
  s.map(LA & ~0xfffn, DATA);
  expect([4, 3, 2, 1].map((l) => s.gEntry(LA, l))).toEqual([G_PML4E, G_PDPTE, G_PDE, G_PTE]);
  expect([4, 3, 2, 1].map((l) => s.eEntry(DATA, l))).toEqual([S_PML4E, S_PDPTE, S_PDE_DATA, S_PTE_DATA]);
  expect(s.eEntry(0x10_0000, 1)).toBe(S_PTE_GPML4);
  expect(s.eEntry(0x10_3000, 1)).toBe(S_PTE_GPT);
  expect(s.eEntry(0x10_0000, 2)).toBe(S_PDE_0);
  return s;
}

/** The four flavours of one reserved-bit fault: error code = P|RSVD plus W/U/I-D by the access. */
function expectRsvdAllAccesses(s: Setup, la: bigint, cr2: string): void {
  const r = s.regs;
  const flavours: [KindName, 0 | 3, number][] = [
    ['read', 0, 0x09], ['write', 0, 0x0b], ['read', 3, 0x0d], ['write', 3, 0x0f], ['fetch', 0, 0x19], ['fetch', 3, 0x1d],
  ];
  for (const [kind, cpl, code] of flavours) {
    r.cpl = cpl;
    expect({ kind, cpl, r: s.acc(la, kind) }).toEqual({ kind, cpl, r: pf(code, cr2) });
  }
  r.cpl = 0;
}

// ================================================================ §1.4 reserved bits

interface EntryShape {
  name: string;
  levels: 4 | 5;
  /** Level of the entry under test. */
  level: number;
  /** Leaf level of the mapping. */
  leafLevel: 1 | 2 | 3;
}
const SHAPES: readonly EntryShape[] = [
  { name: 'PML5E', levels: 5, level: 5, leafLevel: 1 },
  { name: 'PML4E', levels: 4, level: 4, leafLevel: 1 },
  { name: 'PDPTE (non-leaf)', levels: 4, level: 3, leafLevel: 1 },
  { name: 'PDE (non-leaf)', levels: 4, level: 2, leafLevel: 1 },
  { name: 'PTE (4K)', levels: 4, level: 1, leafLevel: 1 },
  { name: 'PDPTE (1G page)', levels: 4, level: 3, leafLevel: 3 },
  { name: 'PDE (2M page)', levels: 4, level: 2, leafLevel: 2 },
];

function shapeSetup(sh: EntryShape, m: number, mode: 'native' | 'ept' | 'npt' = 'native'): { s: Setup; la: bigint; cr2: string; entry: number; hpa: number } {
  const s = new Setup(mode, { maxPhysAddr: m, guestLevels: sh.levels });
  const la = sh.levels === 5 ? LA5 : LA;
  const frame = sh.leafLevel === 3 ? DATA_1G : DATA;
  s.map(la & ~0xfffn, frame, { leafLevel: sh.leafLevel });
  const off = sh.leafLevel === 3 ? Number(la & 0x3fff_ffffn) : sh.leafLevel === 2 ? Number(la & 0x1f_ffffn) : Number(la & 0xfffn);
  // The identity second dimension covers 16 MiB; map the data page of a 1G guest page too.
  if (mode !== 'native') s.map2((frame + off) - ((frame + off) % 4096), (frame + off) - ((frame + off) % 4096));
  return { s, la, cr2: sh.levels === 5 ? LA5_HEX : LA_HEX, entry: s.gEntry(la, sh.level), hpa: frame + off };
}

describe('hw.md §1.4 rule 1 / SDM 4.5: bits [51:M] are reserved in every present entry', () => {
  for (const m of [36, 39, 46, 52]) {
    for (const sh of SHAPES) {
      if (m < 52) {
        it(`M=${m}: ${sh.name} with any one bit of [51:${m}] set gives #PF P|RSVD (0x9 read, 0xb write, 0xd/0xf user, 0x19/0x1d fetch)`, () => {
          const { s, la, cr2, entry } = shapeSetup(sh, m);
          const orig = s.read64(entry);
          for (let b = m; b <= 51; b++) {
            s.write64(entry, orig | bit(b));
            expectRsvdAllAccesses(s, la, cr2);
            expect(s.read64(entry)).toBe(orig | bit(b)); // the faulting entry gets no A
          }
        });
      } else {
        it(`M=52: no address-range reserved bits — ${sh.name} bit 51 is an address bit`, () => {
          addressBitTest(sh, 52, 51);
        });
      }
      it(`M=${m}: ${sh.name} bit ${m - 1} (= M-1) is an address bit, not reserved`, () => {
        addressBitTest(sh, m, m - 1);
      });
    }
  }
});

/** Set address bit b in the entry: a non-leaf then points at an alias table (the next entry copied there); a leaf moves the page. */
function addressBitTest(sh: EntryShape, m: number, b: number): void {
  const { s, la, entry, hpa } = shapeSetup(sh, m);
  const isLeaf = sh.level === sh.leafLevel;
  const add = 2 ** b;
  if (!isLeaf) {
    const next = s.gEntry(la, sh.level - 1);
    s.write64(next + add, s.read64(next));
  }
  or64(s, entry, bit(b));
  const want = isLeaf ? hpa + add : hpa;
  expect(s.acc(la, 'read')).toEqual({ result: 'ok', hpa: hex(want) });
}

describe('hw.md §1.4 rule 2: bit 63 is reserved in every present entry when EFER.NXE=0', () => {
  for (const sh of SHAPES) {
    it(`${sh.name} bit 63 with NXE=0: #PF 0x9 read, 0xf user write, 0x9 fetch (no I/D: NXE=0, SMEP=0), 0x19 fetch with SMEP=1`, () => {
      const { s, la, cr2, entry, hpa } = shapeSetup(sh, 46);
      or64(s, entry, XD);
      s.regs.efer &= ~EFER_NXE;
      expect(s.acc(la, 'read')).toEqual(pf(0x09, cr2));
      s.regs.cpl = 3;
      expect(s.acc(la, 'write')).toEqual(pf(0x0f, cr2));
      s.regs.cpl = 0;
      expect(s.acc(la, 'fetch')).toEqual(pf(0x09, cr2));
      s.regs.cr4 |= CR4_SMEP;
      expect(s.acc(la, 'fetch')).toEqual(pf(0x19, cr2));
      // With NXE=1 the same entry is XD, not reserved: a read succeeds.
      s.regs.cr4 &= ~CR4_SMEP;
      s.regs.efer |= EFER_NXE;
      expect(s.acc(la, 'read')).toEqual({ result: 'ok', hpa: hex(hpa) });
    });
  }
});

describe('hw.md §1.4 rule 3: PS (bit 7) is reserved in PML4Es and PML5Es', () => {
  for (const sh of SHAPES.filter((x) => x.level >= 4)) {
    it(`${sh.name} with PS=1 gives #PF P|RSVD`, () => {
      const { s, la, cr2, entry } = shapeSetup(sh, 46);
      or64(s, entry, PS);
      expectRsvdAllAccesses(s, la, cr2);
    });
  }
});

describe('hw.md §1.4 rule 5: large-page reserved bits; bit 12 is PAT', () => {
  it('1G PDPTE (PS=1): each of bits 29:13 alone gives #PF P|RSVD', () => {
    const sh = SHAPES.find((x) => x.name === 'PDPTE (1G page)')!;
    const { s, la, cr2, entry } = shapeSetup(sh, 46);
    const orig = s.read64(entry);
    for (let b = 13; b <= 29; b++) {
      s.write64(entry, orig | bit(b));
      expectRsvdAllAccesses(s, la, cr2);
    }
  });
  it('2M PDE (PS=1): each of bits 20:13 alone gives #PF P|RSVD', () => {
    const sh = SHAPES.find((x) => x.name === 'PDE (2M page)')!;
    const { s, la, cr2, entry } = shapeSetup(sh, 46);
    const orig = s.read64(entry);
    for (let b = 13; b <= 20; b++) {
      s.write64(entry, orig | bit(b));
      expectRsvdAllAccesses(s, la, cr2);
    }
  });
  it('1G PDPTE bit 12 (PAT) is not reserved and not an address bit: read ok at 0x40601123', () => {
    const { s, la, entry } = shapeSetup(SHAPES.find((x) => x.name === 'PDPTE (1G page)')!, 46);
    or64(s, entry, bit(12));
    expect(s.acc(la, 'read')).toEqual({ result: 'ok', hpa: '0x40601123' });
  });
  it('2M PDE bit 12 (PAT) is not reserved and not an address bit: read ok at 0x801123', () => {
    const { s, la, entry } = shapeSetup(SHAPES.find((x) => x.name === 'PDE (2M page)')!, 46);
    or64(s, entry, bit(12));
    expect(s.acc(la, 'read')).toEqual({ result: 'ok', hpa: '0x801123' });
  });
  it('4K PTE bit 7 (PAT) and bit 8 (G) are not reserved', () => {
    const s = native(P | W | U | PS | 0x100n);
    expect(s.acc(LA, 'read')).toEqual(OK_NATIVE);
  });
});

describe('hw.md §1.4 rule 6 / trace-format "The modelled CPU": bit 8 of non-leaf entries', () => {
  for (const sh of SHAPES.filter((x) => x.level >= 4)) {
    it(`AMD (npt mode): bit 8 in the guest ${sh.name} is reserved: #PF P|RSVD`, () => {
      const { s, la, cr2, entry } = shapeSetup(sh, 46, 'npt');
      or64(s, entry, 0x100n);
      expectRsvdAllAccesses(s, la, cr2);
    });
    for (const mode of ['native', 'ept'] as const) {
      it(`Intel (${mode} mode): bit 8 in the guest ${sh.name} is ignored`, () => {
        const { s, la, entry, hpa } = shapeSetup(sh, 46, mode);
        or64(s, entry, 0x100n);
        expect(s.acc(la, 'read')).toEqual(mode === 'native' ? { result: 'ok', hpa: hex(hpa) } : { result: 'ok', hpa: hex(hpa), gpa: hex(hpa) });
      });
    }
  }
  for (const sh of SHAPES.filter((x) => x.level === 2 || x.level === 3)) {
    it(`AMD (npt mode): bit 8 in the guest ${sh.name} is not reserved (kernel correction 5ecad245de2a)`, () => {
      const { s, la, entry, hpa } = shapeSetup(sh, 46, 'npt');
      or64(s, entry, 0x100n);
      expect(s.acc(la, 'read')).toEqual({ result: 'ok', hpa: hex(hpa), gpa: hex(hpa) });
    });
  }
});

describe('hw.md §1.4 rule 7: PK bits [62:59] (and ignored bits [58:52]) are never reserved', () => {
  for (const m of [46, 52]) {
    for (const sh of SHAPES) {
      it(`M=${m}: ${sh.name} with bits 62:52 all set translates (PKE=0, and PKE=1 with PKRU=0)`, () => {
        const { s, la, entry, hpa } = shapeSetup(sh, m);
        or64(s, entry, 0x7ff0_0000_0000_0000n);
        expect(s.acc(la, 'read')).toEqual({ result: 'ok', hpa: hex(hpa) });
        s.regs.cr4 |= CR4_PKE | CR4_PKS;
        s.regs.cpl = 3;
        expect(s.acc(la, 'write')).toEqual({ result: 'ok', hpa: hex(hpa) });
      });
    }
  }
});

describe('hw.md §1.5: canonical addresses (#GP before any walk)', () => {
  const cases4: [string, bigint, boolean][] = [
    ['0x7fffffffffff (highest lower-half)', 0x0000_7fff_ffff_ffffn, true],
    ['0x800000000000 (bit 47 set, 63:48 clear)', 0x0000_8000_0000_0000n, false],
    ['0xffff7fffffffffff (63:48 set, bit 47 clear)', 0xffff_7fff_ffff_ffffn, false],
    ['0xffff800000000000 (lowest upper-half)', 0xffff_8000_0000_0000n, true],
  ];
  for (const [name, la, ok] of cases4) {
    it(`4-level: ${name} is ${ok ? 'canonical: walked' : 'non-canonical: #GP, no walk'}`, () => {
      const s = new Setup('native');
      s.map(la & ~0xfffn, DATA);
      const r = s.raw(la, 'read');
      if (ok) {
        expect(r.refs).toBe(4);
        expect(s.acc(la, 'read')).toEqual({ result: 'ok', hpa: hex(DATA + Number(la & 0xfffn)) });
      } else {
        expect(r.refs).toBe(0);
        expect(s.acc(la, 'read')).toEqual(GP);
      }
    });
  }
  const cases5: [string, bigint, boolean][] = [
    ['0xffffffffffffff (highest lower-half)', 0x00ff_ffff_ffff_ffffn, true],
    ['0x100000000000000 (bit 56 set, 63:57 clear)', 0x0100_0000_0000_0000n, false],
    ['0xfeffffffffffffff (63:57 set, bit 56 clear)', 0xfeff_ffff_ffff_ffffn, false],
    ['0xff00000000000000 (lowest upper-half)', 0xff00_0000_0000_0000n, true],
    ['0x800000000000 (hw.md §9 scenario 13: canonical with LA57)', 0x0000_8000_0000_0000n, true],
  ];
  for (const [name, la, ok] of cases5) {
    it(`5-level: ${name} is ${ok ? 'canonical: walked' : 'non-canonical: #GP, no walk'}`, () => {
      const s = new Setup('native', { guestLevels: 5 });
      expect(s.regs.cr4 & CR4_LA57).toBe(CR4_LA57);
      s.map(la & ~0xfffn, DATA);
      const r = s.raw(la, 'read');
      if (ok) {
        expect(r.refs).toBe(5);
        expect(s.acc(la, 'read')).toEqual({ result: 'ok', hpa: hex(DATA + Number(la & 0xfffn)) });
      } else {
        expect(r.refs).toBe(0);
        expect(s.acc(la, 'read')).toEqual(GP);
      }
    });
  }
  it('trace-format rule 8: a 4-byte read at 0x7ffffffffffe (last byte 0x800000000001 non-canonical) is #GP: no walk, no A bits', () => {
    const s = new Setup('native');
    const la = 0x0000_7fff_ffff_fffen;
    s.map(la & ~0xfffn, DATA);
    const before = s.snapshotTables();
    const r = s.raw(la, 'read', { size: 4 });
    expect(r.refs).toBe(0);
    expect(s.acc(la, 'read', { size: 4 })).toEqual(GP);
    expect(s.tableChanges(before)).toEqual({});
    // The 2-byte read whose last byte is 0x7fffffffffff is canonical and is walked.
    expect(s.acc(la, 'read', { size: 2 })).toEqual({ result: 'ok', hpa: hex(DATA + 0xffe) });
  });
  it('trace-format rule 8: 5-level, a 4-byte read at 0xfffffffffffffe (crossing into bit 56) is #GP, no A bits', () => {
    const s = new Setup('native', { guestLevels: 5 });
    const la = 0x00ff_ffff_ffff_fffen;
    s.map(la & ~0xfffn, DATA);
    const before = s.snapshotTables();
    expect(s.acc(la, 'read', { size: 4 })).toEqual(GP);
    expect(s.tableChanges(before)).toEqual({});
  });
  it('hw.md §1.5: under EPT a non-canonical access does no EPT activity (no references, no A/D with EPTP[6]=1)', () => {
    const s = twoD('ept', { eptAd: true });
    const before = s.snapshotTables();
    const r = s.raw(0x0000_8000_0000_0000n, 'write');
    expect(r.refs).toBe(0);
    expect(s.acc(0x0000_8000_0000_0000n, 'write')).toEqual(GP);
    expect(s.tableChanges(before)).toEqual({});
  });
});

// ================================================================ §2.2 access rights

type Want = number | 'ok';
interface Cell {
  name: string;
  kind: KindName;
  leaf: bigint;
  env: Env;
  want: Want;
}

const UPAGE = P | W | U; // user-mode, writable
const UPAGE_RO = P | U;
const SPAGE = P | W; // supervisor-mode, writable
const SPAGE_RO = P;
const user: Env = { cpl: 3 };
const sup: Env = { cpl: 0 };

/** hw.md §2.2 with CR0.WP=1, NXE=1, SMEP=SMAP=PKE=0 unless stated: every (CPL × access × page) cell. */
const TABLE: Cell[] = [
  // user-mode page, writable
  { name: 'user read of a user page succeeds', kind: 'read', leaf: UPAGE, env: user, want: 'ok' },
  { name: 'user write of a writable user page succeeds and sets D', kind: 'write', leaf: UPAGE, env: user, want: 'ok' },
  { name: 'user fetch of a user page succeeds', kind: 'fetch', leaf: UPAGE, env: user, want: 'ok' },
  { name: 'supervisor read of a user page succeeds (SMAP=0)', kind: 'read', leaf: UPAGE, env: sup, want: 'ok' },
  { name: 'supervisor write of a writable user page succeeds (SMAP=0)', kind: 'write', leaf: UPAGE, env: sup, want: 'ok' },
  { name: 'supervisor fetch of a user page succeeds (SMEP=0)', kind: 'fetch', leaf: UPAGE, env: sup, want: 'ok' },
  // user-mode page, read-only
  { name: 'user read of a read-only user page succeeds', kind: 'read', leaf: UPAGE_RO, env: user, want: 'ok' },
  { name: 'user write to a read-only user page faults 0x7 (P|W|U)', kind: 'write', leaf: UPAGE_RO, env: user, want: 0x07 },
  { name: 'user write to a read-only user page with CR0.WP=0 still faults 0x7 (WP is for supervisor accesses)', kind: 'write', leaf: UPAGE_RO, env: { cpl: 3, wp: 0 }, want: 0x07 },
  { name: 'user fetch of a read-only user page succeeds', kind: 'fetch', leaf: UPAGE_RO, env: user, want: 'ok' },
  { name: 'supervisor write to a read-only user page with CR0.WP=1 faults 0x3 (P|W)', kind: 'write', leaf: UPAGE_RO, env: sup, want: 0x03 },
  { name: 'supervisor write to a read-only user page with CR0.WP=0 succeeds and sets D', kind: 'write', leaf: UPAGE_RO, env: { wp: 0 }, want: 'ok' },
  // supervisor-mode page, writable
  { name: 'user read of a supervisor page faults 0x5 (P|U)', kind: 'read', leaf: SPAGE, env: user, want: 0x05 },
  { name: 'user write to a supervisor page faults 0x7 (P|W|U)', kind: 'write', leaf: SPAGE, env: user, want: 0x07 },
  { name: 'user fetch of a supervisor page faults 0x15 (P|U|I/D, NXE=1)', kind: 'fetch', leaf: SPAGE, env: user, want: 0x15 },
  { name: 'supervisor read of a supervisor page succeeds', kind: 'read', leaf: SPAGE, env: sup, want: 'ok' },
  { name: 'supervisor write to a writable supervisor page succeeds and sets D', kind: 'write', leaf: SPAGE, env: sup, want: 'ok' },
  { name: 'supervisor fetch of a supervisor page succeeds', kind: 'fetch', leaf: SPAGE, env: sup, want: 'ok' },
  // supervisor-mode page, read-only
  { name: 'user read of a read-only supervisor page faults 0x5', kind: 'read', leaf: SPAGE_RO, env: user, want: 0x05 },
  { name: 'user write to a read-only supervisor page faults 0x7', kind: 'write', leaf: SPAGE_RO, env: user, want: 0x07 },
  { name: 'user write to a read-only supervisor page with CR0.WP=0 faults 0x7', kind: 'write', leaf: SPAGE_RO, env: { cpl: 3, wp: 0 }, want: 0x07 },
  { name: 'supervisor read of a read-only supervisor page succeeds', kind: 'read', leaf: SPAGE_RO, env: sup, want: 'ok' },
  { name: 'supervisor write to a read-only page with CR0.WP=1 faults 0x3 (P|W)', kind: 'write', leaf: SPAGE_RO, env: sup, want: 0x03 },
  { name: 'supervisor write to a read-only page with CR0.WP=0 succeeds and sets D', kind: 'write', leaf: SPAGE_RO, env: { wp: 0 }, want: 'ok' },
  { name: 'supervisor fetch of a read-only supervisor page succeeds', kind: 'fetch', leaf: SPAGE_RO, env: sup, want: 'ok' },
  // SMEP (SDM 4.6.1)
  { name: 'SMEP: supervisor fetch of a user page faults 0x11 (P|I/D)', kind: 'fetch', leaf: UPAGE, env: { smep: true }, want: 0x11 },
  { name: 'SMEP with NXE=0: supervisor fetch of a user page faults 0x11 (I/D because SMEP=1)', kind: 'fetch', leaf: UPAGE, env: { smep: true, nxe: false }, want: 0x11 },
  { name: 'SMEP: supervisor fetch of a supervisor page succeeds', kind: 'fetch', leaf: SPAGE, env: { smep: true }, want: 'ok' },
  { name: 'SMEP: user fetch of a user page succeeds (SMEP applies only to supervisor fetches)', kind: 'fetch', leaf: UPAGE, env: { cpl: 3, smep: true }, want: 'ok' },
  { name: 'SMEP: supervisor read of a user page succeeds (SMEP is fetch-only)', kind: 'read', leaf: UPAGE, env: { smep: true }, want: 'ok' },
  { name: 'SMEP: supervisor write of a user page succeeds', kind: 'write', leaf: UPAGE, env: { smep: true }, want: 'ok' },
  { name: 'SMEP: implicit fetch at CPL3 is a supervisor fetch: a user page faults 0x11 (no U)', kind: 'fetch', leaf: UPAGE, env: { cpl: 3, smep: true, implicit: true }, want: 0x11 },
  // SMAP (SDM 4.6.1)
  { name: 'SMAP, EFLAGS.AC=0: supervisor read of a user page faults 0x1 (P)', kind: 'read', leaf: UPAGE, env: { smap: true, ac: 0 }, want: 0x01 },
  { name: 'SMAP, EFLAGS.AC=1: supervisor read of a user page succeeds', kind: 'read', leaf: UPAGE, env: { smap: true, ac: 1 }, want: 'ok' },
  { name: 'SMAP, AC=1, implicit: supervisor read of a user page faults 0x1', kind: 'read', leaf: UPAGE, env: { smap: true, ac: 1, implicit: true }, want: 0x01 },
  { name: 'SMAP, AC=0: supervisor write to a user page faults 0x3 (P|W)', kind: 'write', leaf: UPAGE, env: { smap: true, ac: 0 }, want: 0x03 },
  { name: 'SMAP, AC=1: supervisor write to a writable user page succeeds', kind: 'write', leaf: UPAGE, env: { smap: true, ac: 1 }, want: 'ok' },
  { name: 'SMAP, AC=1, implicit: supervisor write to a user page faults 0x3', kind: 'write', leaf: UPAGE, env: { smap: true, ac: 1, implicit: true }, want: 0x03 },
  { name: 'SMAP, AC=1, CR0.WP=1: supervisor write to a read-only user page faults 0x3 (needs writable)', kind: 'write', leaf: UPAGE_RO, env: { smap: true, ac: 1 }, want: 0x03 },
  { name: 'SMAP, AC=1, CR0.WP=0: supervisor write to a read-only user page succeeds', kind: 'write', leaf: UPAGE_RO, env: { smap: true, ac: 1, wp: 0 }, want: 'ok' },
  { name: 'SMAP never applies to fetches: supervisor fetch of a user page with SMAP=1, AC=0, SMEP=0 succeeds', kind: 'fetch', leaf: UPAGE, env: { smap: true }, want: 'ok' },
  { name: 'SMAP does not apply to user accesses: user read of a user page with SMAP=1, AC=0 succeeds', kind: 'read', leaf: UPAGE, env: { cpl: 3, smap: true }, want: 'ok' },
  { name: 'SMAP does not apply to supervisor pages: supervisor read with SMAP=1, AC=0 succeeds', kind: 'read', leaf: SPAGE, env: { smap: true }, want: 'ok' },
  { name: 'SMAP: implicit read at CPL3 of a user page faults 0x1 (implicit = supervisor: no U bit)', kind: 'read', leaf: UPAGE, env: { cpl: 3, smap: true, ac: 1, implicit: true }, want: 0x01 },
  // implicit supervisor accesses at CPL3
  { name: 'implicit read at CPL3 of a supervisor page succeeds (supervisor access)', kind: 'read', leaf: SPAGE, env: { cpl: 3, implicit: true }, want: 'ok' },
  { name: 'implicit write at CPL3 to a read-only page with CR0.WP=1 faults 0x3 (no U bit)', kind: 'write', leaf: SPAGE_RO, env: { cpl: 3, implicit: true }, want: 0x03 },
  { name: 'implicit write at CPL3 to a read-only page with CR0.WP=0 succeeds', kind: 'write', leaf: SPAGE_RO, env: { cpl: 3, implicit: true, wp: 0 }, want: 'ok' },
  // XD (SDM 4.6, NXE)
  { name: 'XD=1, NXE=1: supervisor fetch faults 0x11 (P|I/D)', kind: 'fetch', leaf: UPAGE | XD, env: sup, want: 0x11 },
  { name: 'XD=1, NXE=1: user fetch faults 0x15 (P|U|I/D)', kind: 'fetch', leaf: UPAGE | XD, env: user, want: 0x15 },
  { name: 'XD=1, NXE=1: supervisor read succeeds', kind: 'read', leaf: UPAGE | XD, env: sup, want: 'ok' },
  { name: 'XD=1, NXE=1: user write succeeds', kind: 'write', leaf: UPAGE | XD, env: user, want: 'ok' },
  // I/D rule (SDM 4.7): fetch AND (SMEP or NXE)
  { name: 'I/D rule: NXE=0, SMEP=0, user fetch of a supervisor page faults 0x5 (no I/D)', kind: 'fetch', leaf: SPAGE, env: { cpl: 3, nxe: false }, want: 0x05 },
  { name: 'I/D rule: NXE=0, SMEP=1, user fetch of a supervisor page faults 0x15', kind: 'fetch', leaf: SPAGE, env: { cpl: 3, nxe: false, smep: true }, want: 0x15 },
  { name: 'I/D rule: a read never has I/D: user read of a supervisor page with SMEP=1 faults 0x5', kind: 'read', leaf: SPAGE, env: { cpl: 3, smep: true }, want: 0x05 },
  // PKU (SDM 4.6.2): key 5, PKRU.AD5 = bit 10, PKRU.WD5 = bit 11
  { name: 'PKU AD: user read of a user page with key 5 faults 0x25 (P|U|PK)', kind: 'read', leaf: UPAGE | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 10 }, want: 0x25 },
  { name: 'PKU AD: user write faults 0x27 (P|W|U|PK)', kind: 'write', leaf: UPAGE | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 10 }, want: 0x27 },
  { name: 'PKU AD: supervisor read of a user page faults 0x21 (P|PK)', kind: 'read', leaf: UPAGE | pkey(5), env: { pke: true, pkru: 1 << 10 }, want: 0x21 },
  { name: 'PKU AD: supervisor write to a user page with CR0.WP=0 faults 0x23 (AD always applies)', kind: 'write', leaf: UPAGE | pkey(5), env: { pke: true, pkru: 1 << 10, wp: 0 }, want: 0x23 },
  { name: 'PKU AD is never checked for fetches: user fetch succeeds', kind: 'fetch', leaf: UPAGE | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 10 }, want: 'ok' },
  { name: 'PKU AD is never checked for fetches: supervisor fetch succeeds', kind: 'fetch', leaf: UPAGE | pkey(5), env: { pke: true, pkru: 1 << 10 }, want: 'ok' },
  { name: 'PKU WD: user write faults 0x27 (scenario 11)', kind: 'write', leaf: UPAGE | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 11 }, want: 0x27 },
  { name: 'PKU WD: user write with CR0.WP=0 still faults 0x27 (WD applies to user writes)', kind: 'write', leaf: UPAGE | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 11, wp: 0 }, want: 0x27 },
  { name: 'PKU WD: user read succeeds', kind: 'read', leaf: UPAGE | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 11 }, want: 'ok' },
  { name: 'PKU WD: supervisor write with CR0.WP=1 faults 0x23 (P|W|PK)', kind: 'write', leaf: UPAGE | pkey(5), env: { pke: true, pkru: 1 << 11 }, want: 0x23 },
  { name: 'PKU WD: supervisor write with CR0.WP=0 succeeds', kind: 'write', leaf: UPAGE | pkey(5), env: { pke: true, pkru: 1 << 11, wp: 0 }, want: 'ok' },
  { name: 'PKU WD is never checked for fetches', kind: 'fetch', leaf: UPAGE | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 11 }, want: 'ok' },
  { name: 'PKU key 15 uses PKRU bit 31 (WD15): user write faults 0x27', kind: 'write', leaf: UPAGE | pkey(15), env: { cpl: 3, pke: true, pkru: 0x8000_0000 }, want: 0x27 },
  { name: 'PKU: another key\'s bits do not apply (key 4, PKRU.AD5|WD5): user write succeeds', kind: 'write', leaf: UPAGE | pkey(4), env: { cpl: 3, pke: true, pkru: 3 << 10 }, want: 'ok' },
  { name: 'PKU only with CR4.PKE=1: PKE=0, PKRU.AD5: user read succeeds', kind: 'read', leaf: UPAGE | pkey(5), env: { cpl: 3, pkru: 1 << 10 }, want: 'ok' },
  { name: 'PKU only for user-mode addresses: supervisor read of a supervisor page with key 5 and PKRU.AD5 succeeds', kind: 'read', leaf: SPAGE | pkey(5), env: { pke: true, pkru: 1 << 10 }, want: 'ok' },
  { name: 'PKU only for user-mode addresses: user read of a supervisor page with PKRU.AD5 faults 0x5 (no PK)', kind: 'read', leaf: SPAGE | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 10 }, want: 0x05 },
  { name: 'PKU with another violation (scenario 12): key 5 AD and R/W=0, user write faults 0x27', kind: 'write', leaf: UPAGE_RO | pkey(5), env: { cpl: 3, pke: true, pkru: 1 << 10 }, want: 0x27 },
  { name: 'PKU with SMAP: AC=0 supervisor read with PKRU.AD5 faults 0x21 (PK alongside SMAP)', kind: 'read', leaf: UPAGE | pkey(5), env: { smap: true, pke: true, pkru: 1 << 10 }, want: 0x21 },
  // PKS (CR4 bit 24, IA32_PKRS): supervisor-mode addresses; key 3 => AD3 = bit 6, WD3 = bit 7
  { name: 'PKS AD: supervisor read of a supervisor page with key 3 faults 0x21 (P|PK)', kind: 'read', leaf: SPAGE | pkey(3), env: { pks: true, pkrs: 1 << 6 }, want: 0x21 },
  { name: 'PKS AD: supervisor write faults 0x23', kind: 'write', leaf: SPAGE | pkey(3), env: { pks: true, pkrs: 1 << 6 }, want: 0x23 },
  { name: 'PKS AD: supervisor write with CR0.WP=0 faults 0x23 (AD always applies)', kind: 'write', leaf: SPAGE | pkey(3), env: { pks: true, pkrs: 1 << 6, wp: 0 }, want: 0x23 },
  { name: 'PKS AD is never checked for fetches', kind: 'fetch', leaf: SPAGE | pkey(3), env: { pks: true, pkrs: 1 << 6 }, want: 'ok' },
  { name: 'PKS WD: supervisor write with CR0.WP=1 faults 0x23', kind: 'write', leaf: SPAGE | pkey(3), env: { pks: true, pkrs: 1 << 7 }, want: 0x23 },
  { name: 'PKS WD: supervisor write with CR0.WP=0 succeeds', kind: 'write', leaf: SPAGE | pkey(3), env: { pks: true, pkrs: 1 << 7, wp: 0 }, want: 'ok' },
  { name: 'PKS WD: supervisor read succeeds', kind: 'read', leaf: SPAGE | pkey(3), env: { pks: true, pkrs: 1 << 7 }, want: 'ok' },
  { name: 'PKS with CPL3: user read of a supervisor page with AD3 faults 0x25 (PK alongside the U/S violation)', kind: 'read', leaf: SPAGE | pkey(3), env: { cpl: 3, pks: true, pkrs: 1 << 6 }, want: 0x25 },
  { name: 'PKS with CPL3: user write with WD3 and CR0.WP=0 faults 0x27 (WD applies to user accesses)', kind: 'write', leaf: SPAGE | pkey(3), env: { cpl: 3, pks: true, pkrs: 1 << 7, wp: 0 }, want: 0x27 },
  { name: 'PKS with CPL3: user read with WD3 only faults 0x5 (no PK)', kind: 'read', leaf: SPAGE | pkey(3), env: { cpl: 3, pks: true, pkrs: 1 << 7 }, want: 0x05 },
  { name: 'PKS implicit at CPL3: implicit read with AD3 faults 0x21', kind: 'read', leaf: SPAGE | pkey(3), env: { cpl: 3, implicit: true, pks: true, pkrs: 1 << 6 }, want: 0x21 },
  { name: 'PKS and a R/W violation: supervisor write to a read-only page with WD3, WP=1 faults 0x23', kind: 'write', leaf: SPAGE_RO | pkey(3), env: { pks: true, pkrs: 1 << 7 }, want: 0x23 },
  { name: 'PKS only for supervisor-mode addresses: user page with key 3 and PKRS.AD3, supervisor read succeeds', kind: 'read', leaf: UPAGE | pkey(3), env: { pks: true, pkrs: 1 << 6 }, want: 'ok' },
  { name: 'PKS only with CR4.PKS=1: PKS=0, PKRS.AD3, supervisor read succeeds', kind: 'read', leaf: SPAGE | pkey(3), env: { pkrs: 1 << 6 }, want: 'ok' },
  { name: 'PKS is separate from PKU: PKE=1 with PKRU.AD3 does not apply to a supervisor page', kind: 'read', leaf: SPAGE | pkey(3), env: { pke: true, pkru: 1 << 6 }, want: 'ok' },
];

describe('hw.md §2.2 / SDM 4.6 access-rights table', () => {
  for (const c of TABLE) {
    it(`SDM 4.6 table: ${c.name}`, () => {
      const s = native(c.leaf);
      applyEnv(s, c.env);
      const leafBefore = s.read64(G_PTE);
      const r = s.acc(LA, c.kind, { implicit: c.env.implicit });
      if (c.want === 'ok') {
        expect(r).toEqual(OK_NATIVE);
        // Leaf A on success; D exactly for writes (SDM 4.8).
        expect(hex(s.read64(G_PTE))).toBe(hex(leafBefore | A | (c.kind === 'write' ? 0x40n : 0n)));
      } else {
        expect(r).toEqual(pf(c.want));
        expect(hex(s.read64(G_PTE))).toBe(hex(leafBefore)); // no leaf A/D on a fault
      }
    });
  }
});

describe('hw.md §2.1: U/S and R/W are ANDed, XD ORed across all levels', () => {
  for (const level of [4, 3, 2]) {
    const name = { 4: 'PML4E', 3: 'PDPTE', 2: 'PDE' }[level];
    it(`${name} U/S=0 makes the page supervisor-mode: user read 0x5, SMEP supervisor fetch ok, SMAP AC=0 supervisor read ok`, () => {
      const s = native();
      andNot64(s, G_ENTRY[level], U);
      s.regs.cpl = 3;
      expect(s.acc(LA, 'read')).toEqual(pf(0x05));
      s.regs.cpl = 0;
      s.regs.cr4 |= CR4_SMEP | CR4_SMAP;
      expect(s.acc(LA, 'fetch')).toEqual(OK_NATIVE);
      expect(s.acc(LA, 'read')).toEqual(OK_NATIVE);
    });
    it(`${name} R/W=0 makes the page read-only: user write 0x7, supervisor write WP=1 0x3, WP=0 ok with D in the leaf only`, () => {
      const s = native();
      andNot64(s, G_ENTRY[level], W);
      s.regs.cpl = 3;
      expect(s.acc(LA, 'write')).toEqual(pf(0x07));
      s.regs.cpl = 0;
      expect(s.acc(LA, 'write')).toEqual(pf(0x03));
      s.regs.cr0 &= ~CR0_WP;
      expect(s.acc(LA, 'write')).toEqual(OK_NATIVE);
      expect(hex(s.read64(G_PTE))).toBe('0x800067');
      expect(s.read64(G_ENTRY[level]) & 0x40n).toBe(0n);
    });
    it(`${name} XD=1 (NXE=1) makes the page execute-disabled: fetch 0x11, read ok`, () => {
      const s = native();
      or64(s, G_ENTRY[level], XD);
      expect(s.acc(LA, 'fetch')).toEqual(pf(0x11));
      expect(s.acc(LA, 'read')).toEqual(OK_NATIVE);
    });
  }
  it('a user-mode leaf under supervisor tables is a supervisor-mode address for PKU: key 5 AD does not apply to a CPL0 read', () => {
    const s = native(UPAGE | pkey(5));
    andNot64(s, G_PDPTE, U);
    applyEnv(s, { pke: true, pkru: 1 << 10 });
    expect(s.acc(LA, 'read')).toEqual(OK_NATIVE);
  });
  it('the protection key is the leaf\'s: key bits in a non-leaf entry are ignored (PDE key 5, leaf key 0, PKRU.AD5)', () => {
    const s = native(UPAGE);
    or64(s, G_PDE, pkey(5));
    applyEnv(s, { cpl: 3, pke: true, pkru: 1 << 10 });
    expect(s.acc(LA, 'read')).toEqual(OK_NATIVE);
  });
});

describe('hw.md §2.4: not-present faults carry W/U/I-D but not P', () => {
  const cases: [string, KindName, Env, number][] = [
    ['supervisor read', 'read', sup, 0x00],
    ['supervisor write', 'write', sup, 0x02],
    ['user read', 'read', user, 0x04],
    ['user write', 'write', user, 0x06],
    ['supervisor fetch, NXE=1', 'fetch', sup, 0x10],
    ['user fetch, NXE=1', 'fetch', user, 0x14],
    ['supervisor fetch, NXE=0, SMEP=0 (no I/D)', 'fetch', { nxe: false }, 0x00],
    ['supervisor fetch, NXE=0, SMEP=1', 'fetch', { nxe: false, smep: true }, 0x10],
    ['implicit read at CPL3 (no U)', 'read', { cpl: 3, implicit: true }, 0x00],
  ];
  for (const [name, kind, env, code] of cases) {
    it(`PTE P=0, ${name}: #PF ${hex(code)}`, () => {
      const s = native(W | U);
      applyEnv(s, env);
      expect(s.acc(LA, kind, { implicit: env.implicit })).toEqual(pf(code));
    });
  }
});

// ================================================================ §2.3 priority

describe('hw.md §2.3: fault priority inside one walk', () => {
  it('P=0 at a higher level beats a reserved bit lower: PDPTE P=0, PTE bit 51 set: #PF 0x0', () => {
    const s = native();
    or64(s, G_PTE, bit(51));
    andNot64(s, G_PDPTE, P);
    expect(s.acc(LA, 'read')).toEqual(pf(0x00));
  });
  it('P=0 at a higher level beats a reserved bit lower: PML4E P=0, PDE PS=1 with bit 13: user write #PF 0x6', () => {
    const s = native();
    s.write64(G_PDE, BigInt(DATA) | PS | bit(13) | P | W | U);
    andNot64(s, G_PML4E, P);
    s.regs.cpl = 3;
    expect(s.acc(LA, 'write')).toEqual(pf(0x06));
  });
  it('a reserved bit at a higher level beats P=0 lower: PDPTE bit 51, PTE P=0: #PF 0x9', () => {
    const s = native();
    andNot64(s, G_PTE, P);
    or64(s, G_PDPTE, bit(51));
    expect(s.acc(LA, 'read')).toEqual(pf(0x09));
  });
  it('reserved bits in a not-present entry are ignored: PTE with P=0, bit 51 and bit 63 (NXE=0) gives #PF 0x0 (not RSVD)', () => {
    const s = native();
    s.write64(G_PTE, bit(51) | XD | BigInt(DATA) | W | U);
    s.regs.efer &= ~EFER_NXE;
    expect(s.acc(LA, 'read')).toEqual(pf(0x00));
  });
  it('RSVD beats permission: user read of a supervisor page whose PTE has bit 51: #PF 0xd (no separate U/S fault)', () => {
    const s = native(SPAGE | bit(51));
    s.regs.cpl = 3;
    expect(s.acc(LA, 'read')).toEqual(pf(0x0d));
  });
  it('RSVD beats permission and PK is never reported with RSVD: PKRU.AD5, key 5, bit 51: user write #PF 0xf', () => {
    const s = native(UPAGE | pkey(5) | bit(51));
    applyEnv(s, { cpl: 3, pke: true, pkru: 1 << 10 });
    expect(s.acc(LA, 'write')).toEqual(pf(0x0f));
  });
  it('RSVD beats XD: XD=1 in the PML4E and bit 51 in the PTE: fetch #PF 0x19', () => {
    const s = native(UPAGE | bit(51));
    or64(s, G_PML4E, XD);
    expect(s.acc(LA, 'fetch')).toEqual(pf(0x19));
  });
  it('trace-format latitude 1: a guest entry\'s gPA is EPT-translated before its P bit is examined (PTE P=0, PT page EPT not present: EPT violation Q=0x81)', () => {
    const s = twoD('ept');
    andNot64(s, G_PTE, P);
    s.write64(S_PTE_GPT, 0n);
    expect(s.acc(LA, 'read')).toEqual({ result: 'ept_violation', qualification: '0x81', gpa: '0x103008', gla: LA_HEX });
  });
  it('trace-format latitude 1 / hw.md §9 scenario 28: guest #PF beats a final EPT violation (R/W=0, WP=1, data not in EPT: #PF 0x3)', () => {
    const s = twoD('ept');
    andNot64(s, G_PTE, W);
    s.write64(S_PTE_DATA, 0n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(pf(0x03));
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x102027', '0x102018': '0x103027' });
  });
  it('trace-format latitude 1: guest #PF beats a final NPT fault (R/W=0, WP=1, data NPT P=0: #PF 0x3)', () => {
    const s = twoD('npt');
    andNot64(s, G_PTE, W);
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(LA, 'write')).toEqual(pf(0x03));
  });
});

// ================================================================ §4 EPT

const eptMis = (gpa: number) => ({ result: 'ept_misconfig', gpa: hex(gpa) });
const eptVio = (q: number, gpa: number) => ({ result: 'ept_violation', qualification: hex(q), gpa: hex(gpa), gla: LA_HEX });
/** Exact gPA of the final access, and of the guest PML4E (the first guest-table access). */
const FINAL = 0x80_0123;
const FIRST_PT = G_PML4E;

/** EPT entry values of the identity set-up: non-leaf RWX (no memory type), leaf RWX|WB. */
const EPT_PML4E_V = 0x1000_1007n;
const EPT_PDPTE_V = 0x1000_2007n;
const EPT_PDE4_V = 0x1000_7007n;
const EPT_PTE_V = 0x80_0037n;

describe('hw.md §4.3 / SDM 28.2.3.1: EPT misconfiguration conditions', () => {
  for (const rwx of [0b010, 0b110]) {
    it(`rule 1: leaf bits 2:0 = ${rwx.toString(2).padStart(3, '0')}b (W without R) is a misconfiguration for read, write and fetch`, () => {
      const s = twoD('ept');
      s.write64(S_PTE_DATA, BigInt(DATA) | EPT_WB | BigInt(rwx));
      for (const k of ['read', 'write', 'fetch'] as const) expect(s.acc(LA, k)).toEqual(eptMis(FINAL));
    });
    it(`rule 1: non-leaf PDE bits 2:0 = ${rwx.toString(2).padStart(3, '0')}b is a misconfiguration`, () => {
      const s = twoD('ept');
      s.write64(S_PDE_DATA, 0x1000_7000n | BigInt(rwx));
      expect(s.acc(LA, 'read')).toEqual(eptMis(FINAL));
    });
    it(`rule 1: PML4E bits 2:0 = ${rwx.toString(2).padStart(3, '0')}b is a misconfiguration on the first guest-table access (gPA 0x100008)`, () => {
      const s = twoD('ept');
      s.write64(S_PML4E, 0x1000_1000n | BigInt(rwx));
      expect(s.acc(LA, 'read')).toEqual(eptMis(FIRST_PT));
    });
  }
  it('rule 2: execute-only leaf (100b) without the capability (execOnly:false) is a misconfiguration for read, write and fetch', () => {
    const s = twoD('ept', { execOnly: false });
    s.write64(S_PTE_DATA, BigInt(DATA) | EPT_WB | 4n);
    for (const k of ['read', 'write', 'fetch'] as const) expect(s.acc(LA, k)).toEqual(eptMis(FINAL));
  });
  it('rule 2: execute-only non-leaf PDE without the capability is a misconfiguration', () => {
    const s = twoD('ept', { execOnly: false });
    s.write64(S_PDE_DATA, 0x1000_7000n | 4n);
    expect(s.acc(LA, 'fetch')).toEqual(eptMis(FINAL));
  });
  it('rule 2 / hw.md §9 scenario 18: with the capability an execute-only leaf allows fetches; read Q=0x1a1, write Q=0x1a2', () => {
    const s = twoD('ept', { execOnly: true });
    s.write64(S_PTE_DATA, BigInt(DATA) | EPT_WB | 4n);
    expect(s.acc(LA, 'fetch')).toEqual(OK_2D);
    expect(s.acc(LA, 'read')).toEqual(eptVio(0x1a1, FINAL));
    expect(s.acc(LA, 'write')).toEqual(eptVio(0x1a2, FINAL));
  });
  it('R-only (001b), RW (011b), RX (101b), RWX (111b) leaves are not misconfigurations', () => {
    for (const rwx of [1, 3, 5, 7]) {
      const s = twoD('ept');
      s.write64(S_PTE_DATA, BigInt(DATA) | EPT_WB | BigInt(rwx));
      expect(s.acc(LA, 'read')).toEqual(OK_2D);
    }
  });

  // rule 3: reserved bits
  const levels: [string, number, bigint, number][] = [
    ['PML4E', S_PML4E, EPT_PML4E_V, FIRST_PT],
    ['PDPTE', S_PDPTE, EPT_PDPTE_V, FIRST_PT],
    ['PDE (non-leaf)', S_PDE_DATA, EPT_PDE4_V, FINAL],
    ['PTE', S_PTE_DATA, EPT_PTE_V, FINAL],
  ];
  for (const m of [36, 46]) {
    for (const [name, addr, v, gpa] of levels) {
      it(`rule 3, M=${m}: EPT ${name} with any one bit of [51:${m}] set is a misconfiguration (gPA ${hex(gpa)})`, () => {
        for (let b = m; b <= 51; b++) {
          const s = twoD('ept', { maxPhysAddr: m, tlb: false });
          s.write64(addr, v | bit(b));
          expect({ b, r: s.acc(LA, 'read') }).toEqual({ b, r: eptMis(gpa) });
        }
      });
    }
  }
  it('M=52: EPT PTE bit 51 is an address bit (hpa 0x8000000800123)', () => {
    const s = twoD('ept', { maxPhysAddr: 52 });
    s.write64(S_PTE_DATA, EPT_PTE_V | bit(51));
    expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: '0x8000000800123', gpa: '0x800123' });
  });
  for (let b = 3; b <= 7; b++) {
    it(`rule 3: EPT PML4E bit ${b} (bits 7:3 reserved) is a misconfiguration`, () => {
      const s = twoD('ept');
      s.write64(S_PML4E, EPT_PML4E_V | bit(b));
      expect(s.acc(LA, 'read')).toEqual(eptMis(FIRST_PT));
    });
  }
  for (let b = 3; b <= 6; b++) {
    it(`rule 3: non-leaf EPT PDPTE bit ${b} (bits 6:3 reserved) is a misconfiguration`, () => {
      const s = twoD('ept');
      s.write64(S_PDPTE, EPT_PDPTE_V | bit(b));
      expect(s.acc(LA, 'read')).toEqual(eptMis(FIRST_PT));
    });
    it(`rule 3: non-leaf EPT PDE bit ${b} (bits 6:3 reserved) is a misconfiguration`, () => {
      const s = twoD('ept');
      s.write64(S_PDE_DATA, EPT_PDE4_V | bit(b));
      expect(s.acc(LA, 'read')).toEqual(eptMis(FINAL));
    });
  }
  it('EPT PTE bit 7 is ignored, bit 6 (IPAT) and bit 11 are not reserved', () => {
    const s = twoD('ept');
    s.write64(S_PTE_DATA, EPT_PTE_V | 0x80n | 0x40n | 0x800n);
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
  });
  it('EPT non-leaf bits 8, 9, 11 and 52-63 are ignored (A/D off)', () => {
    const s = twoD('ept');
    for (const a of [S_PML4E, S_PDPTE, S_PDE_DATA]) or64(s, a, 0x300n | 0x800n | 0xfff0_0000_0000_0000n);
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
  });

  // rule 4: memory type of a leaf
  const leaves: [string, (s: Setup) => void, number, bigint, string][] = [
    ['4K PTE', () => undefined, S_PTE_DATA, BigInt(DATA) | 7n, '0x800123'],
    ['2M PDE', (s) => s.write64(S_PDE_DATA, BigInt(DATA) | EPT_PS | EPT_WB | 7n), S_PDE_DATA, BigInt(DATA) | EPT_PS | 7n, '0x800123'],
    ['1G PDPTE', (s) => s.write64(S_PDPTE, EPT_PS | EPT_WB | 7n), S_PDPTE, EPT_PS | 7n, '0x800123'],
  ];
  for (const [name, prep, addr, base, hpa] of leaves) {
    for (let mt = 0; mt <= 7; mt++) {
      const bad = mt === 2 || mt === 3 || mt === 7;
      it(`rule 4: EPT ${name} leaf memory type ${mt} ${bad ? 'is a misconfiguration' : 'is valid'}`, () => {
        const s = twoD('ept');
        prep(s);
        expect(s.acc(LA, 'read')).toEqual(OK_2D); // the large leaf itself works
        s.m.flush(0);
        s.write64(addr, base | (BigInt(mt) << 3n));
        const gpa = name === '1G PDPTE' ? FIRST_PT : FINAL;
        expect(s.acc(LA, 'read')).toEqual(bad ? eptMis(gpa) : { result: 'ok', hpa, gpa: '0x800123' });
      });
    }
  }
  it('rule 3: a 2M EPT leaf with any one of bits 20:12 set (misaligned) is a misconfiguration', () => {
    for (let b = 12; b <= 20; b++) {
      const s = twoD('ept');
      s.write64(S_PDE_DATA, BigInt(DATA) | EPT_PS | EPT_WB | 7n | bit(b));
      expect({ b, r: s.acc(LA, 'read') }).toEqual({ b, r: eptMis(FINAL) });
    }
  });
  it('rule 3: a 1G EPT leaf with any one of bits 29:12 set (misaligned) is a misconfiguration (hw.md §9 scenario 30)', () => {
    for (let b = 12; b <= 29; b++) {
      const s = twoD('ept');
      s.write64(S_PDPTE, EPT_PS | EPT_WB | 7n | bit(b));
      expect({ b, r: s.acc(LA, 'read') }).toEqual({ b, r: eptMis(FIRST_PT) });
    }
  });
  it('a 2M EPT leaf maps hPA = PDE[51:21] | gPA[20:0]: PDE -> 0x1000000 gives hpa 0x1000123', () => {
    const s = twoD('ept');
    s.write64(S_PDE_DATA, 0x100_0000n | EPT_PS | EPT_WB | 7n);
    expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: '0x1000123', gpa: '0x800123' });
  });
});

describe('trace-format "The modelled CPU": Intel without MBEC', () => {
  it('EPT bit 10 (XU) alone does not make an entry present: PTE = 0x800430 (RWX=000), read: violation Q=0x181', () => {
    const s = twoD('ept');
    s.write64(S_PTE_DATA, BigInt(DATA) | EPT_WB | 0x400n);
    expect(s.acc(LA, 'read')).toEqual(eptVio(0x181, FINAL));
  });
  it('EPT bit 10 is ignored in present entries: PTE R-only with bit 10, fetch: Q=0x18c (no PERM_XU bit 6, no bits 9-11)', () => {
    const s = twoD('ept');
    s.write64(S_PDE_DATA, EPT_PDE4_V | 0x400n);
    s.write64(S_PTE_DATA, BigInt(DATA) | EPT_WB | 0x400n | 1n);
    expect(s.acc(LA, 'fetch')).toEqual(eptVio(0x18c, FINAL));
  });
});

describe('hw.md §4.5 / SDM 28.2.3.3: order of EPT checks', () => {
  it('a not-present entry beats a misconfiguration lower: PDE RWX=000, PTE W-only: violation Q=0x181', () => {
    const s = twoD('ept');
    s.write64(S_PTE_DATA, BigInt(DATA) | EPT_WB | 2n);
    s.write64(S_PDE_DATA, 0x1000_7000n);
    expect(s.acc(LA, 'read')).toEqual(eptVio(0x181, FINAL));
  });
  it('reserved bits in a not-present entry are ignored (scenario 20): PTE RWX=000 with MT=2 and bit 51: violation Q=0x181', () => {
    const s = twoD('ept');
    s.write64(S_PTE_DATA, BigInt(DATA) | (2n << 3n) | bit(51));
    expect(s.acc(LA, 'read')).toEqual(eptVio(0x181, FINAL));
  });
  it('a not-present PML4E beats a misconfigured entry lower (scenario 21): violation on the first guest-table access', () => {
    const s = twoD('ept');
    s.write64(S_PDPTE, EPT_PDPTE_V | 0x8n);
    s.write64(S_PML4E, 0x1000_1000n);
    expect(s.acc(LA, 'read')).toEqual(eptVio(0x81, FIRST_PT));
  });
  it('a misconfiguration beats a permission failure from above (scenario 21): PDE execute-only, PTE bit 51: read is a misconfiguration', () => {
    const s = twoD('ept');
    s.write64(S_PDE_DATA, 0x1000_7000n | 4n);
    s.write64(S_PTE_DATA, EPT_PTE_V | bit(51));
    expect(s.acc(LA, 'read')).toEqual(eptMis(FINAL));
  });
  it('a misconfiguration beats a permission failure: PDE read-only, PTE memory type 7: write is a misconfiguration', () => {
    const s = twoD('ept');
    s.write64(S_PDE_DATA, 0x1000_7000n | 1n);
    s.write64(S_PTE_DATA, BigInt(DATA) | (7n << 3n) | 7n);
    expect(s.acc(LA, 'write')).toEqual(eptMis(FINAL));
  });
});

describe('hw.md §4.6 / SDM table 27-7: EPT-violation exit qualification', () => {
  const cases: [string, bigint | null, bigint | null, KindName, number][] = [
    // [name, PDE rwx (null = RWX), PTE rwx (null = not present), access, Q]
    ['final read, PTE not present: RD|GLA|TRANSLATED', 7n, 0n, 'read', 0x181],
    ['final write, PTE not present: WR|7|8', 7n, 0n, 'write', 0x182],
    ['final fetch, PTE not present: FETCH|7|8', 7n, 0n, 'fetch', 0x184],
    ['final write, PTE R: WR|PERM_R|7|8 (scenario 17)', 7n, 1n, 'write', 0x18a],
    ['final fetch, PTE RW: FETCH|PERM_R|PERM_W|7|8', 7n, 3n, 'fetch', 0x19c],
    ['final write, PTE RX: WR|PERM_R|PERM_X|7|8', 7n, 5n, 'write', 0x1aa],
    ['final read, PTE X (exec-only capable): RD|PERM_X|7|8', 7n, 4n, 'read', 0x1a1],
    ['AND over levels: PDE R, PTE RWX, write: WR|PERM_R|7|8', 1n, 7n, 'write', 0x18a],
    ['AND over levels: PDE RX, PTE RW, fetch: FETCH|PERM_R|7|8', 5n, 3n, 'fetch', 0x18c],
    ['AND over levels: PDE RW, PTE RX, fetch: FETCH|PERM_R|7|8', 3n, 5n, 'fetch', 0x18c],
    ['AND over levels: PDE RX, PTE RWX, write: WR|PERM_R|PERM_X|7|8', 5n, 7n, 'write', 0x1aa],
    ['AND over levels: PDE X, PTE RWX, read: RD|PERM_X|7|8', 4n, 7n, 'read', 0x1a1],
    ['bits 3-5 are 0 when an entry is not present, even with permissive upper levels: PDE RWX, PTE 0, write', 7n, 0n, 'write', 0x182],
  ];
  for (const [name, pde, pte, kind, q] of cases) {
    it(`${name}: Q=${hex(q)}, gPA = exact byte 0x800123, GLA = LA`, () => {
      const s = twoD('ept');
      if (pde !== null) s.write64(S_PDE_DATA, 0x1000_7000n | pde);
      if (pte !== null) s.write64(S_PTE_DATA, pte === 0n ? 0n : BigInt(DATA) | EPT_WB | pte);
      expect(s.acc(LA, kind)).toEqual(eptVio(q, FINAL));
    });
  }
  it('the gPA of a final exit is the exact byte: fetch at offset 0x8 reports gPA 0x800008', () => {
    const s = twoD('ept');
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(0x80_4060_1008n, 'fetch')).toEqual({ result: 'ept_violation', qualification: '0x184', gpa: '0x800008', gla: '0x8040601008' });
  });
  it('the permissions passed (R, W, X all 1) are reported when allowed: PTE RW, fetch via 1G EPT leaf RW: Q=0x19c', () => {
    const s = twoD('ept');
    s.write64(S_PDPTE, EPT_PS | EPT_WB | 3n);
    expect(s.acc(LA, 'fetch')).toEqual(eptVio(0x19c, FINAL));
  });
  for (const kind of ['read', 'write', 'fetch'] as const) {
    it(`walk access (bit 8 = 0, scenario 22): guest PT page not in EPT, A/D off, ${kind}: Q=0x81, gPA = guest PTE 0x103008`, () => {
      const s = twoD('ept');
      s.write64(S_PTE_GPT, 0n);
      expect(s.acc(LA, kind)).toEqual(eptVio(0x81, 0x10_3008));
    });
    it(`walk access with EPTP[6]=1 (scenario 23), ${kind}: Q=0x83 (RD|WR|7)`, () => {
      const s = twoD('ept', { eptAd: true });
      s.write64(S_PTE_GPT, 0n);
      expect(s.acc(LA, kind)).toEqual(eptVio(0x83, 0x10_3008));
    });
  }
  it('walk access: the guest PML4 page not in EPT gives Q=0x81 at gPA 0x100008 (= CR3 | index 1 << 3)', () => {
    const s = twoD('ept');
    s.write64(S_PTE_GPML4, 0n);
    expect(s.acc(LA, 'read')).toEqual(eptVio(0x81, 0x10_0008));
  });
  it('walk access, AND over levels in bits 3-5: EPT PDE of region 0 RX over RWX PTEs, EPTP[6]=1 (walk = write): Q=0xab (RD|WR|PERM_R|PERM_X|7) at 0x100008', () => {
    // The walk access is a write with EPTP[6]=1; the AND of R/W/X over PML4E, PDPTE, PDE (RX) and PTE (RWX) is RX.
    const s = twoD('ept', { eptAd: true });
    s.write64(S_PDE_0, 0x1000_3000n | 5n);
    expect(s.acc(LA, 'read')).toEqual(eptVio(0xab, 0x10_0008));
  });
  for (const kind of ['read', 'write', 'fetch'] as const) {
    it(`scenario 24: guest PT page EPT read-only, A/D off, guest PTE A=0, ${kind}: the A update fails, Q=0x8b (RD|WR|PERM_R|7)`, () => {
      const s = twoD('ept');
      for (const a of [G_PML4E, G_PDPTE, G_PDE]) or64(s, a, A);
      s.write64(S_PTE_GPT, 0x10_3000n | EPT_WB | 1n);
      expect(s.acc(LA, kind)).toEqual(eptVio(0x8b, 0x10_3008));
      expect(hex(s.read64(G_PTE))).toBe('0x800007');
    });
  }
  it('scenario 24: with guest PTE A=1 reads and fetches succeed, a write (D needed) gives Q=0x8b', () => {
    const s = twoD('ept');
    for (const a of [G_PML4E, G_PDPTE, G_PDE, G_PTE]) or64(s, a, A);
    s.write64(S_PTE_GPT, 0x10_3000n | EPT_WB | 1n);
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
    expect(s.acc(LA, 'fetch')).toEqual(OK_2D);
    expect(s.acc(LA, 'write')).toEqual(eptVio(0x8b, 0x10_3008));
  });
  it('scenario 24: with guest PTE A=D=1 every access succeeds', () => {
    const s = twoD('ept');
    for (const a of [G_PML4E, G_PDPTE, G_PDE]) or64(s, a, A);
    or64(s, G_PTE, A | 0x40n);
    s.write64(S_PTE_GPT, 0x10_3000n | EPT_WB | 1n);
    for (const k of ['read', 'write', 'fetch'] as const) expect(s.acc(LA, k)).toEqual(OK_2D);
  });
  for (const kind of ['read', 'write', 'fetch'] as const) {
    it(`scenario 25: guest PT page EPT read-only with EPTP[6]=1 and guest A=D=1, ${kind}: Q=0x8b`, () => {
      const s = twoD('ept', { eptAd: true });
      for (const a of [G_PML4E, G_PDPTE, G_PDE]) or64(s, a, A);
      or64(s, G_PTE, A | 0x40n);
      s.write64(S_PTE_GPT, 0x10_3000n | EPT_WB | 1n);
      expect(s.acc(LA, kind)).toEqual(eptVio(0x8b, 0x10_3008));
    });
  }
});

// ================================================================ §6 NPT

const npf = (e1: bigint, e2: number) => ({ result: 'npf', exitinfo1: hex(e1), exitinfo2: hex(e2) });
const FINAL_BIT = 1n << 32n;
const GPT_BIT = 1n << 33n;
const N_PML4E_V = 0x1000_1007n;
const N_PDPTE_V = 0x1000_2007n;
const N_PDE4_V = 0x1000_7007n;
const N_PTE_V = 0x80_0007n;

describe('hw.md §6.3 / §6.4: NPT permission checks and EXITINFO1', () => {
  it('scenario 32: NPT PTE P=0, data read: EXITINFO1 0x100000004 (U|FINAL), EXITINFO2 = exact data gPA', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(LA, 'read')).toEqual(npf(FINAL_BIT | 0x4n, FINAL));
  });
  it('NPT PTE P=0, data write: 0x100000006', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(LA, 'write')).toEqual(npf(FINAL_BIT | 0x6n, FINAL));
  });
  it('NPT PTE P=0, fetch: 0x100000014 (I/D: host NXE=1)', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(LA, 'fetch')).toEqual(npf(FINAL_BIT | 0x14n, FINAL));
  });
  it('every nested access is user: NPT PTE U=0, read at guest CPL0: 0x100000005 (P|U|FINAL)', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, N_PTE_V & ~U);
    expect(s.acc(LA, 'read')).toEqual(npf(FINAL_BIT | 0x5n, FINAL));
  });
  it('every nested access is user: U=0 in the non-leaf NPT PDE of the data page: read 0x100000005', () => {
    const s = twoD('npt');
    s.write64(S_PDE_DATA, N_PDE4_V & ~U);
    expect(s.acc(LA, 'read')).toEqual(npf(FINAL_BIT | 0x5n, FINAL));
  });
  it('every nested access is user: U=0 in the NPT PML4E faults on the first guest-table access: 0x200000007, EXITINFO2 0x100008', () => {
    const s = twoD('npt');
    s.write64(S_PML4E, N_PML4E_V & ~U);
    expect(s.acc(LA, 'read')).toEqual(npf(GPT_BIT | 0x7n, G_PML4E));
  });
  it('scenario 32: NPT PTE W=0, data write: 0x100000007; read succeeds', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, N_PTE_V & ~W);
    expect(s.acc(LA, 'write')).toEqual(npf(FINAL_BIT | 0x7n, FINAL));
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
  });
  it('NPT W is ANDed: W=0 in the non-leaf NPT PDE of the data page, write: 0x100000007', () => {
    const s = twoD('npt');
    s.write64(S_PDE_DATA, N_PDE4_V & ~W);
    expect(s.acc(LA, 'write')).toEqual(npf(FINAL_BIT | 0x7n, FINAL));
  });
  for (const kind of ['read', 'write'] as const) {
    it(`scenario 33: the NPT PTE mapping the guest PML4 page has W=0, guest ${kind}: 0x200000007, EXITINFO2 = guest PML4E gPA 0x100008; guest A bits untouched`, () => {
      const s = twoD('npt');
      s.write64(S_PTE_GPML4, 0x10_0005n);
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual(npf(GPT_BIT | 0x7n, G_PML4E));
      const ch = s.tableChanges(before);
      for (const a of ['0x100008', '0x101008', '0x102018', '0x103008']) expect(ch[a]).toBeUndefined();
    });
  }
  it('guest page-table accesses are writes: the guest PT page (holding the PTE) NPT W=0: read 0x200000007 at gPA 0x103008', () => {
    const s = twoD('npt');
    s.write64(S_PTE_GPT, 0x10_3005n);
    expect(s.acc(LA, 'read')).toEqual(npf(GPT_BIT | 0x7n, 0x10_3008));
  });
  it('a guest page-table page not present in NPT: read 0x200000006 (W|U|GUEST_PAGE, P=0)', () => {
    const s = twoD('npt');
    s.write64(S_PTE_GPT, 0n);
    expect(s.acc(LA, 'read')).toEqual(npf(GPT_BIT | 0x6n, 0x10_3008));
  });
  it('scenario 34: NPT PTE NX=1 (host NXE=1), guest EFER.NXE=0, guest fetch: 0x100000015; read succeeds', () => {
    const s = twoD('npt');
    s.regs.efer &= ~EFER_NXE;
    s.write64(S_PTE_DATA, N_PTE_V | XD);
    expect(s.acc(LA, 'fetch')).toEqual(npf(FINAL_BIT | 0x15n, FINAL));
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
  });
  it('NPT NX is ORed over levels: NX=1 in the non-leaf NPT PDE, fetch: 0x100000015', () => {
    const s = twoD('npt');
    s.write64(S_PDE_DATA, N_PDE4_V | XD);
    expect(s.acc(LA, 'fetch')).toEqual(npf(FINAL_BIT | 0x15n, FINAL));
  });
  it('NX on the NPT entry of a guest page-table page does not affect the walk (data access): fetch succeeds', () => {
    const s = twoD('npt');
    s.write64(S_PTE_GPT, 0x10_3007n | XD);
    expect(s.acc(LA, 'fetch')).toEqual(OK_2D);
  });
  it('EXITINFO2 is the exact byte: fetch at offset 8 of an NPT-absent page reports 0x800008', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(0x80_4060_1008n, 'fetch')).toEqual(npf(FINAL_BIT | 0x14n, 0x80_0008));
  });
});

describe('hw.md §6.2 / §9 scenario 36: the nested walk uses the host\'s 4-level mode', () => {
  it('a cold 5-level guest over NPT makes 5*5 + 4 = 29 references', () => {
    const s = new Setup('npt', { tlb: false, guestLevels: 5 });
    s.map(LA5 & ~0xfffn, DATA);
    const r = s.raw(LA5, 'read');
    expect(r.refs).toBe(29);
    expect(s.acc(LA5, 'read')).toEqual(OK_2D);
  });
});

describe('hw.md §6.2 / §1.4: NPT reserved bits (RSVD #NPF)', () => {
  it('scenario 35: bit 8 in the NPT PML4E: 0x20000000f on the first guest-table access (EXITINFO2 0x100008)', () => {
    const s = twoD('npt');
    s.write64(S_PML4E, N_PML4E_V | 0x100n);
    expect(s.acc(LA, 'read')).toEqual(npf(GPT_BIT | 0xfn, G_PML4E));
  });
  it('PS (bit 7) in the NPT PML4E is reserved: 0x20000000f', () => {
    const s = twoD('npt');
    s.write64(S_PML4E, N_PML4E_V | PS);
    expect(s.acc(LA, 'read')).toEqual(npf(GPT_BIT | 0xfn, G_PML4E));
  });
  it('bit 8 in a non-leaf NPT PDPTE or PDE is ignored (AMD correction)', () => {
    const s = twoD('npt');
    or64(s, S_PDPTE, 0x100n);
    or64(s, S_PDE_DATA, 0x100n);
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
  });
  for (const m of [36, 46]) {
    it(`M=${m}: NPT data PTE with bit ${m}: read 0x10000000d, write 0x10000000f, fetch 0x10000001d`, () => {
      for (const [kind, e1] of [['read', 0xdn], ['write', 0xfn], ['fetch', 0x1dn]] as const) {
        const s = twoD('npt', { maxPhysAddr: m });
        s.write64(S_PTE_DATA, N_PTE_V | bit(m));
        expect(s.acc(LA, kind)).toEqual(npf(FINAL_BIT | e1, FINAL));
      }
    });
    it(`M=${m}: NPT PDPTE with bit 51 (hit on a guest PT access): 0x20000000f`, () => {
      const s = twoD('npt', { maxPhysAddr: m });
      s.write64(S_PDPTE, N_PDPTE_V | bit(51));
      expect(s.acc(LA, 'fetch')).toEqual(npf(GPT_BIT | 0xfn, G_PML4E));
    });
  }
  it('NPT 2M leaf with bit 13 set: 0x10000000d', () => {
    const s = twoD('npt');
    s.write64(S_PDE_DATA, BigInt(DATA) | PS | 7n | bit(13));
    expect(s.acc(LA, 'read')).toEqual(npf(FINAL_BIT | 0xdn, FINAL));
  });
  it('scenario 30 (NPT): a 1G NPT leaf with bit 12 (PAT) is fine, bit 13 gives RSVD (on the first guest PT access)', () => {
    const s = twoD('npt');
    s.write64(S_PDPTE, PS | 7n | bit(12));
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
    s.m.flush(0);
    s.write64(S_PDPTE, PS | 7n | bit(13));
    expect(s.acc(LA, 'read')).toEqual(npf(GPT_BIT | 0xfn, G_PML4E));
  });
  it('bit 63 of an NPT entry is NX, not reserved (host EFER.NXE=1): read through NX entries succeeds', () => {
    const s = twoD('npt');
    for (const a of [S_PML4E, S_PDPTE, S_PDE_DATA, S_PTE_DATA]) or64(s, a, XD);
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
  });
  it('PK bits 62:59 of an NPT entry are not reserved', () => {
    const s = twoD('npt');
    for (const a of [S_PML4E, S_PDPTE, S_PDE_DATA, S_PTE_DATA]) or64(s, a, 0x7800_0000_0000_0000n);
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
  });
});
