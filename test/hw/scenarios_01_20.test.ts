/**
 * hw.md §9 scenarios 1–20, with the §9 default set-up: a 4-level guest over
 * a 4-level identity EPT (EPTP[6]=0, no VPID), every guest entry P|W|U with
 * A=D=0, every EPT entry RWX with memory type WB, CR0.WP=1, EFER.NXE=1,
 * SMEP=SMAP=PKE=0, CPL 0. Where hw.md leaves a choice, the expected values
 * are the ones trace-format.md "Where the architecture leaves latitude" fixes:
 *
 * - rule 2: a non-leaf guest entry gets A once the walk has passed its P and
 *   reserved-bit checks, even if the access then faults or exits;
 * - rule 3: the guest leaf gets A/D only when the whole access succeeds (KVM
 *   order: no leaf A/D when the final gPA exits);
 * - the TLB is a real tagged cache without random eviction, so a stale entry
 *   is used until it is invalidated.
 *
 * Every expected value below is written out literally (as the hex a kernel
 * engineer would read in a dump), and each access is checked against a
 * snapshot of all guest and EPT table memory, so that an entry changed that
 * should not have been is caught as well as one not changed.
 *
 * Layout built by the default set-up (test/support/setup.ts):
 *   guest tables from gPA 0x100000: PML4 0x100000 (= CR3), PDPT 0x101000,
 *   PD 0x102000, PT 0x103000;
 *   EPT tables from hPA 0x10000000: PML4 0x10000000, PDPT 0x10001000,
 *   PD 0x10002000, PTs 0x10003000 + 0x1000·(gPA >> 21) for gPA < 16 MiB.
 */
import { describe, expect, it } from 'vitest';
import { AccessResult } from '../../src/hw/result.js';
import { accessFields } from '../../src/trace/runner.js';
import { KindName, Setup, SetupOptions } from '../support/setup.js';
import { CR0_WP, CR4_SMEP, CR4_SMAP, CR4_PKE, EFER_NXE, LA, LA_PAGE, LA_HEX, DATA, G_PML4E, G_PDPTE, G_PDE, G_PTE, E_PML4E, E_PDPTE, E_PDE_DATA, E_PTE_DATA } from '../support/layout.js';

/** Guest entries for LA before any access: P|W|U, A=D=0. */
const G_FRESH = ['0x101007', '0x102007', '0x103007', '0x800007'];
/** After a successful read: A at every level, D nowhere. */
const G_READ = ['0x101027', '0x102027', '0x103027', '0x800027'];
/** After a fault or exit past the guest walk: upper A set (rule 2), leaf untouched (rule 3). */
const G_UPPER_A = ['0x101027', '0x102027', '0x103027', '0x800007'];

const hex = (v: bigint | number): string => '0x' + BigInt(v).toString(16);

/** The default set-up with LA -> gPA 0x800000 through a 4K page. */
function base(o: SetupOptions = {}): Setup {
  const s = new Setup('ept', o);
  s.map(LA_PAGE, DATA);
  // Guard the layout every literal below depends on.
  expect([4, 3, 2, 1].map((l) => s.gEntry(LA, l))).toEqual([G_PML4E, G_PDPTE, G_PDE, G_PTE]);
  expect([4, 3, 2, 1].map((l) => s.eEntry(DATA, l))).toEqual([E_PML4E, E_PDPTE, E_PDE_DATA, E_PTE_DATA]);
  expect(guest(s)).toEqual(G_FRESH);
  return s;
}

/** The four guest entries for LA, PML4E first. */
function guest(s: Setup): string[] {
  return [G_PML4E, G_PDPTE, G_PDE, G_PTE].map((a) => hex(s.read64(a)));
}

/** The four EPT entries that translate gpa, PML4E first. */
function ept(s: Setup, gpa: number): string[] {
  return [4, 3, 2, 1].map((l) => hex(s.read64(s.eEntry(gpa, l))));
}

/** The identity EPT's entries for a gPA below 16 MiB, untouched (RWX, WB leaf, A=D=0). */
function eptFresh(gpa: number): string[] {
  return ['0x10001007', '0x10002007', hex(0x1000_3007 + (gpa >>> 21) * 0x1000), hex((gpa & ~0xfff) | 0x37)];
}

function set64(s: Setup, hpa: number, v: bigint): void {
  s.write64(hpa, v);
}

// ---------------------------------------------------------------- snapshots

/** Guest tables (0x100000, 32 pages) and EPT tables (0x10000000, 32 pages). */

/** Every table qword that changed since `before`: hPA -> new value. */

/** Upper guest A bits only (rule 2). */
const CH_UPPER_A = { '0x100008': '0x101027', '0x101008': '0x102027', '0x102018': '0x103027' };
/** A complete read: A at all four levels. */
const CH_READ = { ...CH_UPPER_A, '0x103008': '0x800027' };

/** Contract JSON fields of a raw result. */
function fields(s: Setup, r: AccessResult): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  accessFields(s.mode, r, out);
  return out;
}

const OK_DATA = { result: 'ok', hpa: '0x800123', gpa: '0x800123' };

// ==========================================================================

describe('scenario 1: plain read — ok; guest A=1 at all 4 levels, leaf D=0; EPT bits 8/9 untouched', () => {
  it('read through a 4K page', () => {
    const s = base();
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(G_READ);
    // EPT A/D disabled: every EPT entry the walk used (the four guest table pages, the data page) is as written.
    for (const gpa of [0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000, DATA]) expect(ept(s, gpa)).toEqual(eptFresh(gpa));
    // Nothing else in guest or EPT table memory changed.
    expect(s.tableChanges(before)).toEqual(CH_READ);
  });
});

describe('scenario 2: plain write — ok; A=1 everywhere, leaf D=1, non-leaf bit 6 stays 0', () => {
  it('write through a 4K page', () => {
    const s = base();
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x800067']);
    for (const gpa of [0x10_0000, 0x10_1000, 0x10_2000, 0x10_3000, DATA]) expect(ept(s, gpa)).toEqual(eptFresh(gpa));
    expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, '0x103008': '0x800067' });
  });
});

describe('scenario 3: read then write (TLB D path) — the write re-walks and sets leaf D', () => {
  it('read leaves D=0; the write through the cached D=0 entry sets D=1', () => {
    const s = base();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(G_READ);
    const before = s.snapshotTables();
    const w = s.raw(LA, 'write');
    expect(w.tlbHit).toBe(false); // not served from the cached entry (rule 6)
    expect(fields(s, w)).toEqual(OK_DATA);
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x800067']);
    expect(s.tableChanges(before)).toEqual({ '0x103008': '0x800067' });
    // Now the cached entry has D=1: a second write is a TLB hit and writes nothing.
    const before2 = s.snapshotTables();
    const w2 = s.raw(LA, 'write');
    expect(w2.tlbHit).toBe(true);
    expect(fields(s, w2)).toEqual(OK_DATA);
    expect(s.tableChanges(before2)).toEqual({});
  });

  it('the re-walk reads memory: R/W cleared after the read (no INVLPG) makes the write fault #PF 0x03', () => {
    const s = base();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    set64(s, G_PTE, 0x800025n); // R/W=0, A kept
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'pf', error_code: '0x3', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x800025']);
    expect(s.tableChanges(before)).toEqual({});
  });
});

describe('scenario 4: stale A after clearing — a TLB hit does not set A; after INVLPG the read sets it', () => {
  it('clear leaf A without INVLPG: the cached translation is used and A stays 0; INVLPG then read: A=1', () => {
    const s = base();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(G_READ);
    set64(s, G_PTE, 0x800007n); // software clears A
    const before = s.snapshotTables();
    const r = s.raw(LA, 'read');
    expect(r.tlbHit).toBe(true);
    expect(fields(s, r)).toEqual(OK_DATA);
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x800007']);
    expect(s.tableChanges(before)).toEqual({});

    expect(fields(s, s.m.invlpg(0, 0x80, 0x4060_1123)).result).toBe('ok');
    const r2 = s.raw(LA, 'read');
    expect(r2.tlbHit).toBe(false);
    expect(fields(s, r2)).toEqual(OK_DATA);
    expect(guest(s)).toEqual(G_READ);
    expect(s.tableChanges(before)).toEqual({ '0x103008': '0x800027' });
  });
});

describe('scenario 5: not present at the PDE — user read: #PF 0x04, CR2 = LA', () => {
  it('PDE.P=0, CPL 3 read: leaf untouched, PML4E/PDPTE get A (rule 2), PDE unchanged', () => {
    const s = base();
    set64(s, G_PDE, 0x103006n);
    s.regs.cpl = 3;
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'pf', error_code: '0x4', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103006', '0x800007']);
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x102027' });
  });

  it('same PDE, CPL 3: a user write gives #PF 0x06; an implicit (supervisor) read gives #PF 0x00', () => {
    const s = base();
    set64(s, G_PDE, 0x103006n);
    s.regs.cpl = 3;
    expect(s.acc(LA, 'write')).toEqual({ result: 'pf', error_code: '0x6', cr2: LA_HEX });
    expect(s.acc(LA, 'read', { implicit: true })).toEqual({ result: 'pf', error_code: '0x0', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103006', '0x800007']);
  });
});

describe('scenario 6: reserved bit in a 2M PDE — #PF 0x09, no A/D on the PDE', () => {
  const LA2M = 0x0000_0080_4071_2345n; // PD index 3, offset 0x112345 in the 2M page
  const setup2m = (pde: bigint): Setup => {
    const s = new Setup('ept');
    s.map(LA2M, DATA, { leafLevel: 2 });
    expect(s.gEntry(LA2M, 2)).toBe(G_PDE);
    expect(s.read64(G_PDE)).toBe(0x800087n);
    set64(s, G_PDE, pde);
    return s;
  };
  const g3 = (s: Setup): string[] => [G_PML4E, G_PDPTE, G_PDE].map((a) => hex(s.read64(a)));

  it('PS=1 with bit 13 set, supervisor read: #PF 0x09; PML4E/PDPTE A=1 (rule 2), PDE unchanged', () => {
    const s = setup2m(0x802087n);
    const before = s.snapshotTables();
    expect(s.acc(LA2M, 'read')).toEqual({ result: 'pf', error_code: '0x9', cr2: '0x8040712345' });
    expect(g3(s)).toEqual(['0x101027', '0x102027', '0x802087']);
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x102027' });
  });

  it('control: bit 12 (PAT) is not reserved — the read succeeds at PDE[51:21] | LA[20:0], PDE gets A only', () => {
    const s = setup2m(0x801087n);
    const before = s.snapshotTables();
    expect(s.acc(LA2M, 'read')).toEqual({ result: 'ok', hpa: '0x912345', gpa: '0x912345' });
    expect(g3(s)).toEqual(['0x101027', '0x102027', '0x8010a7']);
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x102027', '0x102018': '0x8010a7' });
  });
});

describe('scenario 7: NX with NXE=0 — #PF 0x09 (RSVD)', () => {
  const XD = 1n << 63n;

  it('EFER.NXE=0, PTE bit 63=1, read: #PF 0x09; upper A set, PTE unchanged', () => {
    const s = base();
    s.regs.efer &= ~EFER_NXE;
    set64(s, G_PTE, XD | 0x800007n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'pf', error_code: '0x9', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x8000000000800007']);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('EFER.NXE=1: the read succeeds (leaf gets A)', () => {
    const s = base();
    set64(s, G_PTE, XD | 0x800007n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x8000000000800027']);
    expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, '0x103008': '0x8000000000800027' });
  });

  it('EFER.NXE=1: a fetch gives #PF 0x11 (P|I/D); leaf A not set', () => {
    const s = base();
    set64(s, G_PTE, XD | 0x800007n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'fetch')).toEqual({ result: 'pf', error_code: '0x11', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x8000000000800007']);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });
});

describe('scenario 8: CR0.WP — supervisor write to a R/W=0 page', () => {
  it('WP=1: #PF 0x03; leaf A/D not set', () => {
    const s = base();
    set64(s, G_PTE, 0x800005n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'pf', error_code: '0x3', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x800005']);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('WP=0: success, and D is set although R/W=0', () => {
    const s = base();
    s.regs.cr0 &= ~CR0_WP;
    set64(s, G_PTE, 0x800005n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x800065']);
    expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, '0x103008': '0x800065' });
  });
});

describe('scenario 9: SMEP — supervisor fetch from a user-mode page: #PF 0x11', () => {
  it('CR4.SMEP=1, NXE=1: #PF 0x11 (P|I/D); leaf A not set', () => {
    const s = base();
    s.regs.cr4 |= CR4_SMEP;
    const before = s.snapshotTables();
    expect(s.acc(LA, 'fetch')).toEqual({ result: 'pf', error_code: '0x11', cr2: LA_HEX });
    expect(guest(s)).toEqual(G_UPPER_A);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('CR4.SMEP=1 with EFER.NXE=0: I/D is still set, #PF 0x11', () => {
    const s = base();
    s.regs.cr4 |= CR4_SMEP;
    s.regs.efer &= ~EFER_NXE;
    const before = s.snapshotTables();
    expect(s.acc(LA, 'fetch')).toEqual({ result: 'pf', error_code: '0x11', cr2: LA_HEX });
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('control: U/S=0 in the PML4E makes it a supervisor-mode page — the fetch succeeds', () => {
    const s = base();
    s.regs.cr4 |= CR4_SMEP;
    set64(s, G_PML4E, 0x101003n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'fetch')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(['0x101023', '0x102027', '0x103027', '0x800027']);
    expect(s.tableChanges(before)).toEqual({ ...CH_READ, '0x100008': '0x101023' });
  });
});

describe('scenario 10: SMAP with AC — supervisor read of a user page', () => {
  const smap = (ac: number, cpl = 0): Setup => {
    const s = base();
    s.regs.cr4 |= CR4_SMAP;
    s.regs.ac = ac;
    s.regs.cpl = cpl;
    return s;
  };

  it('EFLAGS.AC=0: #PF 0x01; leaf A not set', () => {
    const s = smap(0);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'pf', error_code: '0x1', cr2: LA_HEX });
    expect(guest(s)).toEqual(G_UPPER_A);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('EFLAGS.AC=1: success', () => {
    const s = smap(1);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(s.tableChanges(before)).toEqual(CH_READ);
  });

  it('implicit supervisor access with AC=1: #PF 0x01', () => {
    const s = smap(1);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read', { implicit: true })).toEqual({ result: 'pf', error_code: '0x1', cr2: LA_HEX });
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('implicit access at CPL 3 is a supervisor access: #PF 0x01 (U/S bit 0)', () => {
    const s = smap(1, 3);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read', { implicit: true })).toEqual({ result: 'pf', error_code: '0x1', cr2: LA_HEX });
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });
});

describe('scenario 11: PKU — CR4.PKE=1, PKRU.WD[5]=1, user page with key 5', () => {
  const KEY5 = 5n << 59n; // leaf bits 62:59
  const PTE_K5 = KEY5 | 0x800007n;
  const pku = (pkru: number, cpl: number): Setup => {
    const s = base();
    s.regs.cr4 |= CR4_PKE;
    s.regs.pkru = pkru;
    s.regs.cpl = cpl;
    set64(s, G_PTE, PTE_K5);
    return s;
  };
  const WD5 = 1 << 11;
  const AD5 = 1 << 10;

  it('user write: #PF 0x27 (P|W|U|PK); leaf A/D not set', () => {
    const s = pku(WD5, 3);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'pf', error_code: '0x27', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x2800000000800007']);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('supervisor write with CR0.WP=1: #PF 0x23 (P|W|PK)', () => {
    const s = pku(WD5, 0);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'pf', error_code: '0x23', cr2: LA_HEX });
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('supervisor write with CR0.WP=0: success (leaf A|D)', () => {
    const s = pku(WD5, 0);
    s.regs.cr0 &= ~CR0_WP;
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual(OK_DATA);
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x2800000000800067']);
    expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, '0x103008': '0x2800000000800067' });
  });

  it('user read: success', () => {
    const s = pku(WD5, 3);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual(OK_DATA);
    expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, '0x103008': '0x2800000000800027' });
  });

  it('fetch: PK is never checked — succeeds even with AD[5]=WD[5]=1, at CPL 3 and CPL 0', () => {
    for (const cpl of [3, 0]) {
      const s = pku(AD5 | WD5, cpl);
      const before = s.snapshotTables();
      expect(s.acc(LA, 'fetch')).toEqual(OK_DATA);
      expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, '0x103008': '0x2800000000800027' });
    }
  });
});

describe('scenario 12: PK and R/W together — PK is reported alongside the R/W violation', () => {
  it('key 5 AD=1, leaf R/W=0, user write: #PF 0x27', () => {
    const s = base();
    s.regs.cr4 |= CR4_PKE;
    s.regs.pkru = 1 << 10; // AD[5]
    s.regs.cpl = 3;
    set64(s, G_PTE, (5n << 59n) | 0x800005n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'write')).toEqual({ result: 'pf', error_code: '0x27', cr2: LA_HEX });
    expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', '0x2800000000800005']);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });
});

describe('scenario 13: non-canonical — #GP(0), no walk, no A bits, no CR2', () => {
  const NC = 0x0000_8000_0000_0000n;

  it('4-level: read of 0x0000_8000_0000_0000 is #GP with zero paging-structure references', () => {
    const s = new Setup('ept');
    // Map the canonical twin (same PML4 index 256), so that a walk that ignored
    // canonicality would succeed and set A bits.
    s.map(0xffff_8000_0000_0000n, DATA);
    const before = s.snapshotTables();
    const r = s.raw(NC, 'read');
    expect(r.refs).toBe(0);
    expect(fields(s, r)).toEqual({ result: 'gp' });
    expect(s.tableChanges(before)).toEqual({});
    // control: the canonical twin is walked
    expect(s.acc(0xffff_8000_0000_0123n, 'read')).toEqual(OK_DATA);
    expect(s.tableChanges(before)).toEqual({ '0x100800': '0x101027', '0x101000': '0x102027', '0x102000': '0x103027', '0x103000': '0x800027' });
  });

  it('4-level: an access whose last byte is non-canonical is #GP before the first page is walked', () => {
    const s = new Setup('ept');
    s.map(0x7fff_ffff_f000n, 0x80_1000);
    const before = s.snapshotTables();
    const r = s.raw(0x7fff_ffff_fffcn, 'read', { size: 8 });
    expect(r.refs).toBe(0);
    expect(fields(s, r)).toEqual({ result: 'gp' });
    expect(s.tableChanges(before)).toEqual({});
    // control: the same address with size 4 stays in the canonical page
    expect(s.acc(0x7fff_ffff_fffcn, 'read', { size: 4 })).toEqual({ result: 'ok', hpa: '0x801ffc', gpa: '0x801ffc' });
  });

  it('LA57=1: the same address is canonical and is walked (5 levels)', () => {
    const s = new Setup('ept', { guestLevels: 5 });
    s.map(NC, DATA);
    const before = s.snapshotTables();
    expect(s.acc(NC | 0x123n, 'read')).toEqual(OK_DATA);
    // PML5E[0], PML4E[256], PDPTE[0], PDE[0], PTE[0]
    expect(s.tableChanges(before)).toEqual({
      '0x100000': '0x101027', '0x101800': '0x102027', '0x102000': '0x103027', '0x103000': '0x104027', '0x104000': '0x800027',
    });
  });
});

describe('scenario 14: 1G guest page — PA = PDPTE[51:30] | LA[29:0]', () => {
  const GPA_1G = 0x4060_1123; // 0x40000000 | LA[29:0]
  const setup1g = (pdpte: bigint): Setup => {
    const s = new Setup('ept');
    s.map(LA_PAGE, 0x4000_0000, { leafLevel: 3 });
    // EPT: put the one gPA page the access touches at hPA 0x900000.
    s.map2(GPA_1G & ~0xfff, 0x90_0000);
    expect(s.gEntry(LA, 3)).toBe(G_PDPTE);
    expect(s.read64(G_PDPTE)).toBe(0x4000_0087n);
    set64(s, G_PDPTE, pdpte);
    return s;
  };
  const g2 = (s: Setup): string[] => [G_PML4E, G_PDPTE].map((a) => hex(s.read64(a)));

  it('PS=1, bits 29:13 clear, read: ok at gPA 0x40601123; A on PML4E and PDPTE, no D', () => {
    const s = setup1g(0x4000_0087n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: '0x900123', gpa: '0x40601123' });
    expect(g2(s)).toEqual(['0x101027', '0x400000a7']);
    expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027', '0x101008': '0x400000a7' });
  });

  it('bit 12 (PAT) is not reserved: ok, same address', () => {
    const s = setup1g(0x4000_1087n);
    expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: '0x900123', gpa: '0x40601123' });
    expect(g2(s)).toEqual(['0x101027', '0x400010a7']);
  });

  for (const bit of [13, 20, 29]) {
    it(`bit ${bit} set in the PDPTE: #PF 0x09 (RSVD); PML4E A=1, PDPTE unchanged`, () => {
      const pdpte = 0x4000_0087n | (1n << BigInt(bit));
      const s = setup1g(pdpte);
      const before = s.snapshotTables();
      expect(s.acc(LA, 'read')).toEqual({ result: 'pf', error_code: '0x9', cr2: LA_HEX });
      expect(g2(s)).toEqual(['0x101027', hex(pdpte)]);
      expect(s.tableChanges(before)).toEqual({ '0x100008': '0x101027' });
    });
  }
});

describe('scenario 15: 5-level walk — LA[56:48]=0x1FF uses PML5 index 511', () => {
  const LA5 = 0xffff_0080_4060_1123n; // PML5 511, PML4 1, PDPT 1, PD 3, PT 1
  const E5 = [0x10_0ff8, 0x10_1008, 0x10_2008, 0x10_3018, 0x10_4008];
  const setup5 = (): Setup => {
    const s = new Setup('ept', { guestLevels: 5, tlb: false });
    s.map(LA5 & ~0xfffn, DATA);
    expect([5, 4, 3, 2, 1].map((l) => s.gEntry(LA5, l))).toEqual(E5);
    return s;
  };

  it('cold read: ok, 5 guest reads + 5×4+4 EPT reads = 29 references, A at all 5 levels', () => {
    const s = setup5();
    const before = s.snapshotTables();
    const r = s.raw(LA5, 'read');
    expect(r.refs).toBe(29);
    expect(fields(s, r)).toEqual(OK_DATA);
    expect(E5.map((a) => hex(s.read64(a)))).toEqual(['0x101027', '0x102027', '0x103027', '0x104027', '0x800027']);
    expect(s.tableChanges(before)).toEqual({
      '0x100ff8': '0x101027', '0x101008': '0x102027', '0x102008': '0x103027', '0x103018': '0x104027', '0x104008': '0x800027',
    });
  });

  it('PML5E.PS=1: #PF 0x09 (RSVD) after one guest read (and its 4 EPT reads); no A anywhere', () => {
    const s = setup5();
    set64(s, E5[0], 0x101087n);
    const before = s.snapshotTables();
    const r = s.raw(LA5, 'read');
    expect(r.refs).toBe(5);
    expect(fields(s, r)).toEqual({ result: 'pf', error_code: '0x9', cr2: '0xffff008040601123' });
    expect(s.tableChanges(before)).toEqual({});
  });
});

describe('scenario 16: EPT leaf not present, final read — violation Q=0x181 at the exact data gPA', () => {
  it('EPT PTE RWX=000: Q=0x181, gpa = data byte, gla = LA; guest leaf keeps A=0 (KVM order)', () => {
    const s = base();
    set64(s, E_PTE_DATA, 0x800030n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'ept_violation', qualification: '0x181', gpa: '0x800123', gla: LA_HEX });
    expect(guest(s)).toEqual(G_UPPER_A);
    expect(ept(s, DATA)).toEqual(['0x10001007', '0x10002007', '0x10007007', '0x800030']);
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });
});

describe('scenario 17: EPT read-only data page, guest write — Q=0x18A', () => {
  // The data page's EPT leaf is R=1 W=0 X=0 and maps to a non-identity hPA,
  // so that the read control also checks the large-leaf address composition.
  const cases: { name: string; gpa: number; entry: number; value: bigint; gpaHex: string; hpaHex: string }[] = [
    { name: '4K EPT leaf', gpa: DATA, entry: E_PTE_DATA, value: 0xa0_0031n, gpaHex: '0x800123', hpaHex: '0xa00123' },
    // EPT PDE[4] as a 2M leaf: hPA = 0xa00000 | gPA[20:0]
    { name: '2M EPT leaf', gpa: 0x8a_b000, entry: E_PDE_DATA, value: 0xa0_00b1n, gpaHex: '0x8ab123', hpaHex: '0xaab123' },
    // EPT PDPTE[1] as a 1G leaf: hPA = 0x80000000 | gPA[29:0]
    { name: '1G EPT leaf', gpa: 0x40ab_c000, entry: 0x1000_1008, value: 0x8000_00b1n, gpaHex: '0x40abc123', hpaHex: '0x80abc123' },
  ];
  const setup17 = (c: (typeof cases)[number]): Setup => {
    const s = new Setup('ept');
    s.map(LA_PAGE, c.gpa);
    set64(s, c.entry, c.value);
    return s;
  };
  for (const c of cases) {
    it(`${c.name} R=1 W=0 X=0, write: ept_violation Q=0x18a at gPA ${c.gpaHex}; guest leaf A/D not set`, () => {
      const s = setup17(c);
      const before = s.snapshotTables();
      expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x18a', gpa: c.gpaHex, gla: LA_HEX });
      expect(guest(s)).toEqual(['0x101027', '0x102027', '0x103027', hex(c.gpa | 7)]);
      expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
    });

    it(`${c.name} R=1 W=0 X=0, fetch: ept_violation Q=0x18c (FETCH|PERM_RD|7|8)`, () => {
      const s = setup17(c);
      const before = s.snapshotTables();
      expect(s.acc(LA, 'fetch')).toEqual({ result: 'ept_violation', qualification: '0x18c', gpa: c.gpaHex, gla: LA_HEX });
      expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
    });

    it(`${c.name} R=1 W=0 X=0, control: read succeeds at hPA ${c.hpaHex}`, () => {
      const s = setup17(c);
      const before = s.snapshotTables();
      expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: c.hpaHex, gpa: c.gpaHex });
      expect(s.tableChanges(before)).toEqual({ ...CH_UPPER_A, '0x103008': hex(c.gpa | 0x27) });
    });
  }
});

describe('scenario 18: EPT execute-only leaf (RWX=100b)', () => {
  it('cap bit 0=1, fetch: success; guest leaf gets A', () => {
    const s = base();
    set64(s, E_PTE_DATA, 0x800034n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'fetch')).toEqual(OK_DATA);
    expect(s.tableChanges(before)).toEqual(CH_READ);
  });

  it('cap bit 0=1, read: Q=0x1A1 (RD|PERM_EX|7|8)', () => {
    const s = base();
    set64(s, E_PTE_DATA, 0x800034n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'ept_violation', qualification: '0x1a1', gpa: '0x800123', gla: LA_HEX });
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('cap bit 0=1, write: Q=0x1A2 (WR|PERM_EX|7|8)', () => {
    const s = base();
    set64(s, E_PTE_DATA, 0x800034n);
    expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x1a2', gpa: '0x800123', gla: LA_HEX });
    expect(guest(s)).toEqual(G_UPPER_A);
  });

  for (const kind of ['read', 'write', 'fetch'] as KindName[]) {
    it(`cap bit 0=0, ${kind}: EPT misconfiguration at the data gPA`, () => {
      const s = base({ execOnly: false });
      set64(s, E_PTE_DATA, 0x800034n);
      const before = s.snapshotTables();
      expect(s.acc(LA, kind)).toEqual({ result: 'ept_misconfig', gpa: '0x800123' });
      expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
    });
  }
});

describe('scenario 19: EPT write-only entry (bits 2:0 = 010b or 110b) — misconfiguration at any level', () => {
  // Level 4/3 entries also map the guest tables: the first guest-PT access
  // (the PML4E at gPA 0x100008) is the one that hits the misconfiguration.
  const levels: { level: number; hpa: number; value: bigint; gpa: string; guest: string[]; ch: Record<string, string> }[] = [
    { level: 4, hpa: E_PML4E, value: 0x1000_1000n, gpa: '0x100008', guest: G_FRESH, ch: {} },
    { level: 3, hpa: E_PDPTE, value: 0x1000_2000n, gpa: '0x100008', guest: G_FRESH, ch: {} },
    { level: 2, hpa: E_PDE_DATA, value: 0x1000_7000n, gpa: '0x800123', guest: G_UPPER_A, ch: CH_UPPER_A },
    { level: 1, hpa: E_PTE_DATA, value: 0x80_0030n, gpa: '0x800123', guest: G_UPPER_A, ch: CH_UPPER_A },
  ];
  for (const l of levels) {
    for (const rwx of [2n, 6n]) {
      for (const kind of ['read', 'write', 'fetch'] as KindName[]) {
        it(`level ${l.level}, bits 2:0=${rwx.toString(2).padStart(3, '0')}b, ${kind}: ept_misconfig gpa ${l.gpa}`, () => {
          const s = base();
          set64(s, l.hpa, l.value | rwx);
          const before = s.snapshotTables();
          expect(s.acc(LA, kind)).toEqual({ result: 'ept_misconfig', gpa: l.gpa });
          expect(guest(s)).toEqual(l.guest);
          expect(s.tableChanges(before)).toEqual(l.ch);
        });
      }
    }
  }
});

describe('scenario 20: EPT bad memory type', () => {
  for (const mt of [2, 3, 7]) {
    it(`leaf MT=${mt}: ept_misconfig at the data gPA`, () => {
      const s = base();
      set64(s, E_PTE_DATA, BigInt(0x80_0007 | (mt << 3)));
      const before = s.snapshotTables();
      expect(s.acc(LA, 'read')).toEqual({ result: 'ept_misconfig', gpa: '0x800123' });
      expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
    });
  }

  it('control: leaf MT 0, 1, 4, 5, 6 are valid — the read succeeds', () => {
    for (const mt of [0, 1, 4, 5, 6]) {
      const s = base();
      set64(s, E_PTE_DATA, BigInt(0x80_0007 | (mt << 3)));
      expect(s.acc(LA, 'read')).toEqual(OK_DATA);
      expect(guest(s)).toEqual(G_READ);
    }
  });

  it('MT=2 in a non-leaf EPT entry (PDE, bits 5:3 reserved there): ept_misconfig', () => {
    const s = base();
    set64(s, E_PDE_DATA, 0x1000_7017n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'ept_misconfig', gpa: '0x800123' });
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });

  it('MT=2 in an entry with RWX=000: a plain violation Q=0x181 (reserved bits ignored when not present)', () => {
    const s = base();
    set64(s, E_PTE_DATA, 0x80_0010n);
    const before = s.snapshotTables();
    expect(s.acc(LA, 'read')).toEqual({ result: 'ept_violation', qualification: '0x181', gpa: '0x800123', gla: LA_HEX });
    expect(s.tableChanges(before)).toEqual(CH_UPPER_A);
  });
});
