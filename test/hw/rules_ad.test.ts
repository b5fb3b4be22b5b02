/**
 * Accessed/dirty rules, one named test each: guest A/D (hw.md §3, SDM 4.8),
 * the compare-and-exchange restart (trace-format latitude 5), EPT A/D
 * (hw.md §4/§5.3, SDM 28.2.4) and nested A/D under NPT (hw.md §6.3,
 * trace-format "The modelled CPU"). Every check compares exact entry values,
 * and most compare a snapshot of all table memory so that an entry changed
 * that should not have been is caught too.
 *
 * Layout (test/support/setup.ts), LA = 0x80_4060_1123 -> gPA 0x800000:
 *   guest entries (hPA = gPA): PML4E 0x100008, PDPTE 0x101008, PDE 0x102018, PTE 0x103008;
 *   EPT/NPT: PML4E 0x10000000, PDPTE 0x10001000, PDE of region 0 0x10002000,
 *   PDE of region 4 (data) 0x10002020, PT of region r at 0x10003000 + 0x1000*r;
 *   the EPT/NPT PTEs of the guest table pages 0x100000..0x103000 are
 *   0x10003800..0x10003818, that of the data page 0x10007000.
 */
import { describe, expect, it } from 'vitest';
import { MemOp } from '../../src/hw/phys_mem.js';
import { Setup, SetupOptions } from '../support/setup.js';
import { CR0_WP, CR4_SMAP, CR4_PKE, LA, LA_HEX, DATA, G_PML4E, G_PDPTE, G_PDE, G_PTE } from '../support/layout.js';

const P = 1n;
const W = 2n;
const U = 4n;
const A = 0x20n;
const D = 0x40n;
const PS = 0x80n;
const XD = 1n << 63n;

const S_PML4E = 0x1000_0000;
const S_PDPTE = 0x1000_1000;
const S_PDE_0 = 0x1000_2000;
const S_PDE_DATA = 0x1000_2020;
const S_PTE_DATA = 0x1000_7000;
/** Second-dimension PTEs of the guest table pages PML4, PDPT, PD, PT. */
const S_PTE_GT = [0x1000_3800, 0x1000_3808, 0x1000_3810, 0x1000_3818];

const hex = (v: bigint | number): string => '0x' + BigInt(v).toString(16);
const pf = (code: number) => ({ result: 'pf', error_code: hex(code), cr2: LA_HEX });
const OK_NATIVE = { result: 'ok', hpa: '0x800123' };
const OK_2D = { result: 'ok', hpa: '0x800123', gpa: '0x800123' };

function or64(s: Setup, hpa: number, bits: bigint): void {
  s.write64(hpa, s.read64(hpa) | bits);
}

function native(leaf: bigint = P | W | U, o: SetupOptions = {}, leafLevel: 1 | 2 | 3 = 1, frame = DATA): Setup {
  const s = new Setup('native', o);
  s.map(LA & ~0xfffn, frame, { leafFlags: leaf, leafLevel });
  expect([4, 3].map((l) => s.gEntry(LA, l))).toEqual([G_PML4E, G_PDPTE]);
  return s;
}

function twoD(mode: 'ept' | 'npt', o: SetupOptions = {}): Setup {
  const s = new Setup(mode, o);
  s.map(LA & ~0xfffn, DATA);
  expect([4, 3, 2, 1].map((l) => s.gEntry(LA, l))).toEqual([G_PML4E, G_PDPTE, G_PDE, G_PTE]);
  expect([4, 3, 2, 1].map((l) => s.eEntry(DATA, l))).toEqual([S_PML4E, S_PDPTE, S_PDE_DATA, S_PTE_DATA]);
  expect([0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000].map((g) => s.eEntry(g, 1))).toEqual(S_PTE_GT);
  return s;
}

/** Guest entries after the walk passed the three non-leaf levels (trace-format latitude 2). */
const UPPER_A = { '0x100008': '0x101027', '0x101008': '0x102027', '0x102018': '0x103027' };

// ================================================================ §3 guest A/D

describe('hw.md §3.1 / SDM 4.8: guest accessed and dirty flags on success', () => {
  it('a read sets A in every entry used (PML4E..PTE) and no D anywhere', () => {
    const s = native();
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_NATIVE);
    expect(s.tableChanges(before)).toEqual({ ...UPPER_A, '0x103008': '0x800027' });
  });
  it('a write sets A everywhere and D in the leaf only (non-leaf bit 6 stays 0)', () => {
    const s = native();
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_NATIVE);
    expect(s.tableChanges(before)).toEqual({ ...UPPER_A, '0x103008': '0x800067' });
  });
  it('a fetch sets A everywhere and no D', () => {
    const s = native();
    const before = s.snapshotTables();
    expect(s.acc(LA, 'fetch')).toEqual(OK_NATIVE);
    expect(s.tableChanges(before)).toEqual({ ...UPPER_A, '0x103008': '0x800027' });
  });
  it('a write through a 2M page sets D in the PDE leaf (0x8000e7)', () => {
    const s = native(P | W | U, {}, 2);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'ok', hpa: '0x801123' });
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x102027', '0x102018': '0x8000e7' });
  });
  it('a write through a 1G page sets A/D in the PDPTE leaf (0x400000e7), A in the PML4E', () => {
    const s = native(P | W | U, {}, 3, 0x4000_0000);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'ok', hpa: '0x40601123' });
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x400000e7' });
  });
  it('a supervisor write to a read-only page with CR0.WP=0 sets D (0x800065)', () => {
    const s = native(P | U);
    s.regs.cr0 &= ~CR0_WP;
    expect(s.acc(LA, 'write')).toEqual(OK_NATIVE);
    expect(hex(s.read64(G_PTE))).toBe('0x800065');
  });
  it('D is never set in non-leaf entries, even when they are the ones with R/W=0 (WP=0 write)', () => {
    const s = native();
    for (const a of [G_PML4E, G_PDPTE, G_PDE]) s.write64(a, s.read64(a) & ~W);
    s.regs.cr0 &= ~CR0_WP;
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_NATIVE);
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101025', '0x101008': '0x102025', '0x102018': '0x103025', '0x103008': '0x800067' });
  });
  it('A and D are sticky: a read of a page whose leaf has A=D=1 leaves D=1; nothing is written', () => {
    const s = native(P | W | U | A | D);
    for (const a of [G_PML4E, G_PDPTE, G_PDE]) or64(s, a, A);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_NATIVE);
    expect(s.tableChanges(before)).toEqual({});
  });
  it('entries whose A (and D) are already set are not written at all: no locked operation', () => {
    const s = native(P | W | U | A | D);
    for (const a of [G_PML4E, G_PDPTE, G_PDE]) or64(s, a, A);
    const ops: MemOp[] = [];
    s.m.mem.preempt = { point: (op) => { if (op !== MemOp.Load) ops.push(op); } };
    expect(s.acc(LA, 'write')).toEqual(OK_NATIVE);
    s.m.mem.preempt = null;
    expect(ops).toEqual([]);
  });
  it('a leaf with A=1, D=0: a write sets D (and keeps A): 0x800067', () => {
    const s = native(P | W | U | A);
    expect(s.acc(LA, 'write')).toEqual(OK_NATIVE);
    expect(hex(s.read64(G_PTE))).toBe('0x800067');
  });
  it('trace-format latitude 6 (scenario 3): read then write — the write through the cached D=0 entry re-walks and sets D', () => {
    const s = native();
    expect(s.acc(LA, 'read')).toEqual(OK_NATIVE);
    const r = s.raw(LA, 'write');
    expect(r.tlbHit).toBe(false);
    expect(r.refs).toBeGreaterThan(0);
    expect(hex(s.read64(G_PTE))).toBe('0x800067');
  });
});

describe('hw.md §3.2 / trace-format latitude 2 and 3: A/D on faulting accesses', () => {
  it('PTE P=0: the PML4E, PDPTE and PDE get A as the walk passes them; the PTE is untouched (#PF 0x0)', () => {
    const s = native(W | U);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(pf(0x00));
    expect(s.tableChanges(before)).toEqual(UPPER_A);
  });
  it('PDPTE P=0: only the PML4E gets A', () => {
    const s = native();
    s.write64(G_PDPTE, s.read64(G_PDPTE) & ~P);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(pf(0x00));
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027' });
  });
  it('scenario 6: 2M PDE with bit 13 (RSVD): PML4E and PDPTE get A, the PDE gets no A/D (#PF 0x9)', () => {
    const s = native(P | W | U, {}, 2);
    or64(s, G_PDE, 1n << 13n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(pf(0x09));
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x102027' });
  });
  it('reserved bit in the PTE: the three upper entries get A, the PTE none', () => {
    const s = native(P | W | U | (1n << 51n));
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(pf(0x0b));
    expect(s.tableChanges(before)).toEqual(UPPER_A);
  });
  const faults: [string, bigint, (s: Setup) => void, 'read' | 'write' | 'fetch', number][] = [
    ['U/S violation (user read of a supervisor page)', P | W, (s) => { s.regs.cpl = 3; }, 'read', 0x05],
    ['R/W violation with CR0.WP=1 (supervisor write)', P | U, () => undefined, 'write', 0x03],
    ['XD violation (fetch, NXE=1)', P | W | U | XD, () => undefined, 'fetch', 0x11],
    ['SMAP violation (AC=0)', P | W | U, (s) => { s.regs.cr4 |= CR4_SMAP; }, 'write', 0x03],
    ['PKU violation (PKRU.AD5)', P | W | U | (5n << 59n), (s) => { s.regs.cr4 |= CR4_PKE; s.regs.pkru = 1 << 10; s.regs.cpl = 3; }, 'read', 0x25],
  ];
  for (const [name, leaf, env, kind, code] of faults) {
    it(`${name}: #PF ${hex(code)}; the non-leaf entries get A, the leaf gets neither A nor D`, () => {
      const s = native(leaf);
      env(s);
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual(pf(code));
      expect(s.tableChanges(before)).toEqual(UPPER_A);
    });
  }
  it('latitude 3 under EPT (scenario 16): final EPT violation — the guest leaf keeps A=D=0 on a write', () => {
    const s = twoD('ept');
    s.write64(S_PTE_DATA, 0n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x182', gpa: '0x800123', gla: LA_HEX });
    expect(s.tableChanges(before)).toEqual(UPPER_A);
  });
  it('latitude 3 under NPT: final #NPF — the guest leaf keeps A=D=0 on a write', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(LA, 'write')).toEqual({ result: 'npf', exitinfo1: '0x100000006', exitinfo2: '0x800123' });
    expect(hex(s.read64(G_PTE))).toBe('0x800007');
    expect([G_PML4E, G_PDPTE, G_PDE].map((a) => hex(s.read64(a)))).toEqual(['0x101027', '0x102027', '0x103027']);
  });
});

// ================================================================ latitude 5: cmpxchg + restart

interface Op { op: MemOp; hpa: number }

/**
 * Installs a preempt hook that logs every memory operation and, the first
 * time `op` reaches `at`, runs `race` (another CPU's plain store) between the
 * walk's load of the entry and its compare-and-exchange.
 */
function race(s: Setup, at: number, op: MemOp, fn: () => void): Op[] {
  const mem = s.m.mem;
  const log: Op[] = [];
  let fired = false;
  let inside = false;
  mem.preempt = {
    point(o: MemOp, hpa: number): void {
      if (inside) return;
      log.push({ op: o, hpa });
      if (!fired && o === op && hpa === at) {
        fired = true;
        inside = true;
        fn();
        inside = false;
      }
    },
  };
  return log;
}

describe('hw.md §3.1 / trace-format latitude 5: A/D updates are compare-and-exchange; a changed entry restarts the walk', () => {
  it('the leaf A update is a cmpxchg (not a store) on the PTE; non-leaf A updates likewise', () => {
    const s = native();
    const log = race(s, -1, MemOp.Cmpxchg, () => undefined);
    expect(s.acc(LA, 'write')).toEqual(OK_NATIVE);
    s.m.mem.preempt = null;
    expect(log.filter((o) => o.op !== MemOp.Load)).toEqual(
      [G_PML4E, G_PDPTE, G_PDE, G_PTE].map((hpa) => ({ op: MemOp.Cmpxchg, hpa })),
    );
  });
  it('PTE redirected to 0x900000 between load and cmpxchg: the walk restarts from the root and uses the new frame (refs 4 -> 8)', () => {
    const s = native(P | W | U, { tlb: false });
    const log = race(s, G_PTE, MemOp.Cmpxchg, () => s.write64(G_PTE, 0x90_0007n));
    const r = s.raw(LA, 'read');
    s.m.mem.preempt = null;
    expect(r.refs).toBe(8);
    expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: '0x900123' });
    expect(hex(s.read64(G_PTE))).toBe('0x900027');
    // After the failed cmpxchg at the PTE, the next operation is the reload of the PML4E: a restart from the root.
    const i = log.findIndex((o) => o.op === MemOp.Cmpxchg && o.hpa === G_PTE);
    expect(log.slice(i + 1, i + 5)).toEqual([G_PML4E, G_PDPTE, G_PDE, G_PTE].map((hpa) => ({ op: MemOp.Load, hpa })));
    expect(log.slice(i + 5)).toEqual([{ op: MemOp.Cmpxchg, hpa: G_PTE }]);
  });
  it('PTE made read-only between load and cmpxchg: the restarted walk honours it (user write #PF 0x7, leaf without A)', () => {
    const s = native(P | W | U, { tlb: false });
    race(s, G_PTE, MemOp.Cmpxchg, () => s.write64(G_PTE, 0x80_0005n));
    s.regs.cpl = 3;
    const r = s.raw(LA, 'write');
    s.m.mem.preempt = null;
    expect(r.refs).toBe(8);
    expect(s.acc(LA, 'write')).toEqual(pf(0x07));
    expect(hex(s.read64(G_PTE))).toBe('0x800005');
  });
  it('another CPU sets A itself between load and cmpxchg: still a restart (refs 8), and the final PTE is 0x800027', () => {
    const s = native(P | W | U, { tlb: false });
    race(s, G_PTE, MemOp.Cmpxchg, () => s.write64(G_PTE, 0x80_0027n));
    const r = s.raw(LA, 'read');
    s.m.mem.preempt = null;
    expect(r.refs).toBe(8);
    expect(hex(s.read64(G_PTE))).toBe('0x800027');
  });
  it('a write whose D update races with a store clearing P: the restart sees P=0 (#PF 0x2), PTE keeps the racing value', () => {
    const s = native(P | W | U | A, { tlb: false });
    race(s, G_PTE, MemOp.Cmpxchg, () => s.write64(G_PTE, 0x80_0006n));
    const r = s.raw(LA, 'write');
    s.m.mem.preempt = null;
    expect(r.refs).toBe(8);
    expect(s.acc(LA, 'write')).toEqual(pf(0x02));
    expect(hex(s.read64(G_PTE))).toBe('0x800006');
  });
  it('a non-leaf A update (PDE) races with a store clearing P: restart, #PF 0x0 at the PDE (refs 3 + 3)', () => {
    const s = native(P | W | U, { tlb: false });
    race(s, G_PDE, MemOp.Cmpxchg, () => s.write64(G_PDE, 0x10_3006n));
    const r = s.raw(LA, 'read');
    s.m.mem.preempt = null;
    expect(r.outcome).toBe(1);
    expect(r.errorCode).toBe(0);
    expect(r.refs).toBe(6);
    expect([G_PML4E, G_PDPTE, G_PDE, G_PTE].map((a) => hex(s.read64(a)))).toEqual(['0x101027', '0x102027', '0x103006', '0x800007']);
  });
  it('EPT A/D update (EPTP[6]=1) on the data page\'s EPT PTE races with a redirect to 0x900000: restart, 48 refs, new hPA, EPT PTE 0x900337', () => {
    const s = twoD('ept', { tlb: false, eptAd: true });
    race(s, S_PTE_DATA, MemOp.Cmpxchg, () => s.write64(S_PTE_DATA, 0x90_0037n));
    const r = s.raw(LA, 'write');
    s.m.mem.preempt = null;
    expect(r.refs).toBe(48);
    expect({ outcome: r.outcome, hpa: hex(r.hpa), gpa: hex(r.gpa) }).toEqual({ outcome: 0, hpa: '0x900123', gpa: '0x800123' });
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x900337');
    expect(hex(s.read64(G_PTE))).toBe('0x800067');
  });
  it('EPT A/D update races with the EPT PTE becoming read-only: the restarted walk exits with Q=0x18a; the EPT PTE gets no A/D', () => {
    const s = twoD('ept', { eptAd: true });
    race(s, S_PTE_DATA, MemOp.Cmpxchg, () => s.write64(S_PTE_DATA, 0x80_0031n));
    const r = s.acc(LA, 'write');
    s.m.mem.preempt = null;
    expect(r).toEqual({ result: 'ept_violation', qualification: '0x18a', gpa: '0x800123', gla: LA_HEX });
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x800031');
    expect(hex(s.read64(G_PTE))).toBe('0x800007');
  });
  it('guest A update under EPT: the guest PTE cmpxchg races with a redirect; restart uses the new gPA 0x900000', () => {
    const s = twoD('ept', { tlb: false });
    race(s, G_PTE, MemOp.Cmpxchg, () => s.write64(G_PTE, 0x90_0007n));
    const r = s.raw(LA, 'read');
    s.m.mem.preempt = null;
    expect(r.refs).toBe(48);
    expect({ hpa: hex(r.hpa), gpa: hex(r.gpa) }).toEqual({ hpa: '0x900123', gpa: '0x900123' });
    expect(hex(s.read64(G_PTE))).toBe('0x900027');
  });
  it('NPT leaf A/D update races with W being cleared: the restarted walk gives #NPF 0x100000007; the NPT PTE gets no A/D', () => {
    const s = twoD('npt', { tlb: false });
    race(s, S_PTE_DATA, MemOp.Cmpxchg, () => s.write64(S_PTE_DATA, 0x80_0005n));
    const r = s.raw(LA, 'write');
    s.m.mem.preempt = null;
    expect(r.refs).toBe(48);
    expect(s.acc(LA, 'write')).toEqual({ result: 'npf', exitinfo1: '0x100000007', exitinfo2: '0x800123' });
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x800005');
    expect(hex(s.read64(G_PTE))).toBe('0x800007');
  });
  it('NPT non-leaf A update races with P being cleared in the data page\'s NPT PDE: restart, #NPF 0x100000004', () => {
    const s = twoD('npt', { tlb: false });
    race(s, S_PDE_DATA, MemOp.Cmpxchg, () => s.write64(S_PDE_DATA, 0x1000_7006n));
    expect(s.acc(LA, 'read')).toEqual({ result: 'npf', exitinfo1: '0x100000004', exitinfo2: '0x800123' });
    s.m.mem.preempt = null;
    expect(hex(s.read64(S_PDE_DATA))).toBe('0x10007006');
  });
});

// ================================================================ EPT A/D

/** EPT entries: non-leaf RWX (+A 0x100), leaf RWX|WB (+A 0x100, +D 0x200). */
const E_PML4E = (a: boolean) => hex(0x1000_1007 + (a ? 0x100 : 0));
const E_PDPTE = (a: boolean) => hex(0x1000_2007 + (a ? 0x100 : 0));

describe('hw.md §4/§5.3 / SDM 28.2.4: EPT accessed and dirty flags (EPTP bit 6)', () => {
  it('scenario 26: a cold read sets A in every EPT entry used; D in the EPT leaf of each guest table page; data leaf A only', () => {
    const s = twoD('ept', { eptAd: true });
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
    expect(s.tableChanges(before)).toEqual({
      ...UPPER_A, '0x103008': '0x800027',
      [hex(S_PML4E)]: E_PML4E(true), [hex(S_PDPTE)]: E_PDPTE(true),
      [hex(S_PDE_0)]: '0x10003107', [hex(S_PDE_DATA)]: '0x10007107',
      // guest table pages: written (walk accesses are writes with EPTP[6]=1): A|D
      '0x10003800': '0x100337', '0x10003808': '0x101337', '0x10003810': '0x102337', '0x10003818': '0x103337',
      // data page, read: A only
      '0x10007000': '0x800137',
    });
  });
  it('scenario 26: then a write sets D in the data page\'s EPT leaf only (0x800337); non-leaf EPT entries never get D', () => {
    const s = twoD('ept', { eptAd: true });
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    expect(s.tableChanges(before)).toEqual({ '0x103008': '0x800067', '0x10007000': '0x800337' });
  });
  it('a cold write: data EPT leaf A|D (0x800337); EPT non-leaf A only', () => {
    const s = twoD('ept', { eptAd: true });
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    expect([S_PML4E, S_PDPTE, S_PDE_0, S_PDE_DATA, S_PTE_DATA].map((a) => hex(s.read64(a)))).toEqual(
      ['0x10001107', '0x10002107', '0x10003107', '0x10007107', '0x800337'],
    );
  });
  it('a fetch sets A (no D) in the data page\'s EPT leaf', () => {
    const s = twoD('ept', { eptAd: true });
    expect(s.acc(LA, 'fetch')).toEqual(OK_2D);
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x800137');
  });
  it('a 2M EPT leaf gets A|D on a write (0x8003b7)', () => {
    const s = twoD('ept', { eptAd: true });
    s.write64(S_PDE_DATA, BigInt(DATA) | 0x80n | 0x30n | 7n);
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    expect(hex(s.read64(S_PDE_DATA))).toBe('0x8003b7');
  });
  it('scenario 27: final EPT violation (data EPT PTE not present), write: Q=0x182; guest-table EPT entries keep A|D; the data gPA\'s EPT entries get nothing', () => {
    const s = twoD('ept', { eptAd: true });
    s.write64(S_PTE_DATA, 0n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x182', gpa: '0x800123', gla: LA_HEX });
    expect(s.tableChanges(before)).toEqual({
      ...UPPER_A,
      [hex(S_PML4E)]: E_PML4E(true), [hex(S_PDPTE)]: E_PDPTE(true), [hex(S_PDE_0)]: '0x10003107',
      '0x10003800': '0x100337', '0x10003808': '0x101337', '0x10003810': '0x102337', '0x10003818': '0x103337',
    });
    expect(hex(s.read64(S_PDE_DATA))).toBe('0x10007007');
  });
  it('EPT A/D of a successful guest-table translation are kept when the guest walk then #PFs (PTE P=0)', () => {
    const s = twoD('ept', { eptAd: true });
    s.write64(G_PTE, 0x80_0006n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(pf(0x00));
    expect(s.tableChanges(before)).toEqual({
      ...UPPER_A,
      [hex(S_PML4E)]: E_PML4E(true), [hex(S_PDPTE)]: E_PDPTE(true), [hex(S_PDE_0)]: '0x10003107',
      '0x10003800': '0x100337', '0x10003808': '0x101337', '0x10003810': '0x102337', '0x10003818': '0x103337',
    });
  });
  it('an EPT translation that fails on permissions sets no EPT A/D (data EPT PTE read-only, write: Q=0x18a)', () => {
    const s = twoD('ept', { eptAd: true });
    s.write64(S_PTE_DATA, 0x80_0031n);
    expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x18a', gpa: '0x800123', gla: LA_HEX });
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x800031');
    expect(hex(s.read64(S_PDE_DATA))).toBe('0x10007007');
  });
  it('EPTP[6]=0: EPT bits 8/9 are never set (scenario 1/2: table memory changes only in guest entries)', () => {
    const s = twoD('ept', { eptAd: false });
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    expect(s.tableChanges(before)).toEqual({ ...UPPER_A, '0x103008': '0x800067' });
  });
  it('EPTP[6]=0: EPT bits 8 and 9 already set are ignored (not reserved, no effect) at every level', () => {
    const s = twoD('ept', { eptAd: false });
    for (const a of [S_PML4E, S_PDPTE, S_PDE_0, S_PDE_DATA, S_PTE_DATA, ...S_PTE_GT]) or64(s, a, 0x300n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    expect(s.tableChanges(before)).toEqual({ ...UPPER_A, '0x103008': '0x800067' });
  });
  it('EPTP[6]=1: EPT entries that already have A (and D) are not rewritten', () => {
    const s = twoD('ept', { eptAd: true });
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    s.m.flush(0);
    const before = s.snapshotTables();
    const ops: MemOp[] = [];
    s.m.mem.preempt = { point: (op) => { if (op !== MemOp.Load) ops.push(op); } };
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    s.m.mem.preempt = null;
    expect(ops).toEqual([]);
    expect(s.tableChanges(before)).toEqual({});
  });
});

// ================================================================ NPT A/D

describe('hw.md §6.3 / trace-format "The modelled CPU": nested A/D under NPT', () => {
  it('a cold read: nested non-leaf A; nested leaves of guest table pages A|D (walk = write); data leaf A only', () => {
    const s = twoD('npt');
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_2D);
    expect(s.tableChanges(before)).toEqual({
      ...UPPER_A, '0x103008': '0x800027',
      [hex(S_PML4E)]: '0x10001027', [hex(S_PDPTE)]: '0x10002027', [hex(S_PDE_0)]: '0x10003027', [hex(S_PDE_DATA)]: '0x10007027',
      '0x10003800': '0x100067', '0x10003808': '0x101067', '0x10003810': '0x102067', '0x10003818': '0x103067',
      '0x10007000': '0x800027',
    });
  });
  it('a write sets A|D in the data page\'s nested leaf (0x800067); nested non-leaf entries never get D', () => {
    const s = twoD('npt');
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    expect([S_PML4E, S_PDPTE, S_PDE_0, S_PDE_DATA, S_PTE_DATA].map((a) => hex(s.read64(a)))).toEqual(
      ['0x10001027', '0x10002027', '0x10003027', '0x10007027', '0x800067'],
    );
  });
  it('nested A on a non-leaf entry as the walk passes it: data NPT PTE P=0 — the data PDE gets A, the PTE stays 0', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(LA, 'read')).toEqual({ result: 'npf', exitinfo1: '0x100000004', exitinfo2: '0x800123' });
    expect(hex(s.read64(S_PDE_DATA))).toBe('0x10007027');
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x0');
  });
  it('nested leaf A/D only on success: data NPT PTE W=0, write: #NPF 0x100000007 and the PTE keeps A=D=0', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0x80_0005n);
    expect(s.acc(LA, 'write')).toEqual({ result: 'npf', exitinfo1: '0x100000007', exitinfo2: '0x800123' });
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x800005');
    expect(hex(s.read64(S_PDE_DATA))).toBe('0x10007027');
  });
  it('nested leaf A/D only on success: data NPT PTE U=0, read: #NPF 0x100000005 and the PTE keeps A=0', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0x80_0003n);
    expect(s.acc(LA, 'read')).toEqual({ result: 'npf', exitinfo1: '0x100000005', exitinfo2: '0x800123' });
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x800003');
  });
  it('scenario 33: the guest PML4 page\'s NPT PTE W=0: #NPF 0x200000007; that PTE gets no A, the PDE of region 0 gets A', () => {
    const s = twoD('npt');
    s.write64(S_PTE_GT[0], 0x10_0005n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'npf', exitinfo1: '0x200000007', exitinfo2: '0x100008' });
    expect(s.tableChanges(before)).toEqual({
      [hex(S_PML4E)]: '0x10001027', [hex(S_PDPTE)]: '0x10002027', [hex(S_PDE_0)]: '0x10003027',
    });
  });
  it('a nested translation that succeeded keeps its flags when the final access faults (data NPT PTE P=0)', () => {
    const s = twoD('npt');
    s.write64(S_PTE_DATA, 0n);
    expect(s.acc(LA, 'write')).toEqual({ result: 'npf', exitinfo1: '0x100000006', exitinfo2: '0x800123' });
    expect(S_PTE_GT.map((a) => hex(s.read64(a)))).toEqual(['0x100067', '0x101067', '0x102067', '0x103067']);
  });
  it('a nested translation that succeeded keeps its flags when the guest walk #PFs (guest PTE P=0)', () => {
    const s = twoD('npt');
    s.write64(G_PTE, 0x80_0006n);
    expect(s.acc(LA, 'read')).toEqual(pf(0x00));
    expect(S_PTE_GT.map((a) => hex(s.read64(a)))).toEqual(['0x100067', '0x101067', '0x102067', '0x103067']);
    expect(hex(s.read64(S_PTE_DATA))).toBe('0x800007');
  });
  it('a nested 2M leaf gets A|D on a write (0x8000e7)', () => {
    const s = twoD('npt');
    s.write64(S_PDE_DATA, BigInt(DATA) | PS | 7n);
    expect(s.acc(LA, 'write')).toEqual(OK_2D);
    expect(hex(s.read64(S_PDE_DATA))).toBe('0x8000e7');
  });
});
