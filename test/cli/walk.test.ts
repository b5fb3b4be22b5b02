import { execFileSync, spawnSync } from 'node:child_process';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadTrace } from '../../src/cli/load.js';
import { dumpCommand } from '../../src/cli/dump.js';
import { probeWalk, walkCommand, type WalkOptions } from '../../src/cli/walk.js';
import type { Machine } from '../../src/hw/machine.js';
import { CR4_SMEP } from '../../src/hw/regs.js';
import { AccessKind, Outcome } from '../../src/hw/result.js';
import { hexPair } from '../../src/trace/hex.js';
import { Runner } from '../../src/trace/runner.js';
import { argLong } from '../../src/trace/steps.js';

import { ROOT, usage } from '../support/cli.js';
const DATA = 'test/cli/data';
const EPT = `${DATA}/ept4.trace`;
const NPT = `${DATA}/npt4.trace`;
const NATIVE = `${DATA}/native.trace`;
const NATIVE5 = `${DATA}/native5.trace`;
const PAE = `${DATA}/pae.trace`;
const PAE_NPT = `${DATA}/pae-npt.trace`;
/** ept4.trace: line 21 is the last set-up line; line 22 is `access gva=0x401008 read`. */
const BEFORE_ACCESS = '21';

function walk(file: string, o: WalkOptions): string[] {
  return walkCommand(`${ROOT}${file}`, o).map((l) => l.split(ROOT).join(''));
}

function walkJson(file: string, o: WalkOptions): Record<string, any> {
  const lines = walkCommand(`${ROOT}${file}`, { ...o, json: true });
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]);
}

/** The 24 references of the cold 4-level guest over 4-level EPT walk of 0x401008: [dim, level, entry gPA, entry hPA, value, gPA translated]. */
const COLD_24: [string, string, string | undefined, string, string, string | undefined][] = [];
{
  const ept = (pte: string, value: string, gpa: string) => {
    COLD_24.push(['ept', 'EPT PML4E', undefined, '0x10000000', '0x10001007', gpa]);
    COLD_24.push(['ept', 'EPT PDPTE', undefined, '0x10001000', '0x10002007', gpa]);
    COLD_24.push(['ept', 'EPT PDE', undefined, '0x10002000', '0x10003007', gpa]);
    COLD_24.push(['ept', 'EPT PTE', undefined, pte, value, gpa]);
  };
  ept('0x10003800', '0x2100037', '0x100000');
  COLD_24.push(['guest', 'PML4E', '0x100000', '0x2100000', '0x101007', undefined]);
  ept('0x10003808', '0x2101037', '0x101000');
  COLD_24.push(['guest', 'PDPTE', '0x101000', '0x2101000', '0x102007', undefined]);
  ept('0x10003810', '0x2102037', '0x102010');
  COLD_24.push(['guest', 'PDE', '0x102010', '0x2102010', '0x103007', undefined]);
  ept('0x10003818', '0x2103037', '0x103008');
  COLD_24.push(['guest', 'PTE', '0x103008', '0x2103008', '0x105007', undefined]);
  ept('0x10003828', '0x2105037', '0x105008');
}

/** The write-backs a read of 0x401008 would do from the cold state: [after ref, level, entry hPA, old, new, bits]. */
const COLD_WRITES = [
  [4, 'EPT PML4E', '0x10000000', '0x10001007', '0x10001107', 'A'],
  [4, 'EPT PDPTE', '0x10001000', '0x10002007', '0x10002107', 'A'],
  [4, 'EPT PDE', '0x10002000', '0x10003007', '0x10003107', 'A'],
  [4, 'EPT PTE', '0x10003800', '0x2100037', '0x2100337', 'A D'],
  [5, 'PML4E', '0x2100000', '0x101007', '0x101027', 'A'],
  [9, 'EPT PTE', '0x10003808', '0x2101037', '0x2101337', 'A D'],
  [10, 'PDPTE', '0x2101000', '0x102007', '0x102027', 'A'],
  [14, 'EPT PTE', '0x10003810', '0x2102037', '0x2102337', 'A D'],
  [15, 'PDE', '0x2102010', '0x103007', '0x103027', 'A'],
  [19, 'EPT PTE', '0x10003818', '0x2103037', '0x2103337', 'A D'],
  [24, 'EPT PTE', '0x10003828', '0x2105037', '0x2105137', 'A'],
  [24, 'PTE', '0x2103008', '0x105007', '0x105027', 'A'],
] as const;

const HEX = /^0x(0|[1-9a-f][0-9a-f]*)$/;

describe('mmulab walk: a cold 4-level guest over 4-level EPT', () => {
  it('lists exactly 24 references with their dimensions, levels and addresses', () => {
    const j = walkJson(EPT, { gva: '0x401008', at: BEFORE_ACCESS });
    expect(j.refs).toHaveLength(24);
    expect(j.refs.map((r: any) => [r.dim, r.level, r.entry_gpa, r.entry_hpa, r.value, r.gpa])).toEqual(COLD_24);
    expect(j.refs.map((r: any) => r.n)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1));
    expect(j.outcome).toEqual({ result: 'ok', hpa: '0x2105008', gpa: '0x105008', page_size: '0x1000', second_page_size: '0x1000' });
  });

  it('shows the A/D write-backs the access would do, once each, after the reference that causes them', () => {
    const j = walkJson(EPT, { gva: '0x401008', at: BEFORE_ACCESS });
    expect(j.ad_writes.map((w: any) => [w.after_ref, w.level, w.entry_hpa, w.old, w.new, w.set])).toEqual(COLD_WRITES);
    expect(j.ad_writes.filter((w: any) => w.dim === 'guest').map((w: any) => w.entry_gpa)).toEqual(['0x100000', '0x101000', '0x102010', '0x103008']);
  });

  it('predicts exactly what the real access does to memory', () => {
    // The trace's line 22 performs the access the probe above predicted.
    const m = new Runner(loadTrace(`${ROOT}${EPT}`), { quiet: true, out: () => {} }).run().machine;
    for (const [, , hpa, , now] of COLD_WRITES) expect(peek(m, Number(hpa))).toBe(now);
    // and a referenced entry without a predicted write-back is unchanged
    expect(peek(m, 0x1000_3820)).toBe('0x0');
    const after = walkJson(EPT, { gva: '0x401008' });
    expect(after.ad_writes).toEqual([]);
    expect(after.refs.map((r: any) => r.value)).toEqual(COLD_24.map(([, , , hpa, v]) => COLD_WRITES.find((w) => w[2] === hpa)?.[4] ?? v));
  });

  it('prints an aligned table, the write-backs and the outcome as text', () => {
    const out = walk(EPT, { gva: '0x401008', at: BEFORE_ACCESS });
    expect(out.slice(0, 9)).toEqual([
      'walk: vcpu0 read 0x401008 at CPL 0, test/cli/data/ept4.trace run to line 21 (probe: nothing written, TLB untouched)',
      'mode ept, CR3 0x100000 (4-level paging), EPTP 0x1000005e (4-level EPT, A/D on)',
      '',
      ' #  dim    level      entry gPA  entry hPA   value               flags                            rights      for gPA',
      ' 1  ept    EPT PML4E  -          0x10000000  0x0000000010001007  xu a X W R                       RWX         0x100000',
      ' 2  ept    EPT PDPTE  -          0x10001000  0x0000000010002007  xu a ps X W R                    RWX         0x100000',
      ' 3  ept    EPT PDE    -          0x10002000  0x0000000010003007  xu a ps X W R                    RWX         0x100000',
      ' 4  ept    EPT PTE    -          0x10003800  0x0000000002100037  xu d a ipat mt=6 X W R           RWX         0x100000',
      '    would set A in EPT PML4E at hPA 0x10000000: 0x0000000010001007 -> 0x0000000010001107',
    ]);
    expect(out).toContain('    would set A D in EPT PTE at hPA 0x10003800: 0x0000000002100037 -> 0x0000000002100337');
    expect(out).toContain(' 5  guest  PML4E      0x100000   0x2100000   0x0000000000101007  xd ps a pcd pwt U W P            R/W U/S xd');
    expect(out).toContain('    would set A in guest PML4E at gPA 0x100000 hPA 0x2100000: 0x0000000000101007 -> 0x0000000000101027');
    expect(out).toContain('20  guest  PTE        0x103008   0x2103008   0x0000000000105007  xd pk=0 g pat d a pcd pwt U W P  R/W U/S xd');
    expect(out.slice(-5)).toEqual([
      '24  ept    EPT PTE    -          0x10003828  0x0000000002105037  xu d a ipat mt=6 X W R           RWX         0x105008',
      '    would set A in EPT PTE at hPA 0x10003828: 0x0000000002105037 -> 0x0000000002105137',
      '    would set A in guest PTE at gPA 0x103008 hPA 0x2103008: 0x0000000000105007 -> 0x0000000000105027',
      '',
      'outcome: ok  gpa 0x105008 -> hpa 0x2105008  guest 4K page (PTE), EPT 4K page (EPT PTE)',
    ]);
    expect(out.filter((l) => /^\s*\d+ {2}/.test(l))).toHaveLength(24);
  });

  it('--at sees the state after that line: past the access the A/D bits are set and no write-back remains', () => {
    const out = walk(EPT, { gva: '0x401008', at: '22' });
    expect(out[0]).toBe('walk: vcpu0 read 0x401008 at CPL 0, test/cli/data/ept4.trace run to line 22 (probe: nothing written, TLB untouched)');
    expect(out).toContain(' 5  guest  PML4E      0x100000   0x2100000   0x0000000000101027  xd ps A pcd pwt U W P            R/W U/S xd');
    expect(out.some((l) => l.includes('would set'))).toBe(false);
  });

  it('a write would also set D in the guest PTE and the data page EPT PTE', () => {
    const j = walkJson(EPT, { gva: '0x401008', write: true, at: BEFORE_ACCESS });
    expect(j.kind).toBe('write');
    expect(j.ad_writes.slice(-2).map((w: any) => [w.after_ref, w.level, w.set, w.new])).toEqual([
      [24, 'EPT PTE', 'A D', '0x2105337'],
      [24, 'PTE', 'A D', '0x105067'],
    ]);
  });
});

describe('mmulab walk: outcomes decoded bit by bit', () => {
  it('#PF: a user write to a read-only page', () => {
    const out = walk(EPT, { gva: '0x403000', write: true, user: true });
    expect(out[0]).toBe('walk: vcpu0 write 0x403000 at CPL 3, test/cli/data/ept4.trace run to the end (probe: nothing written, TLB untouched)');
    expect(out).toContain('20  guest  PTE        0x103018   0x2103018   0x0000000000105005  xd pk=0 g pat d a pcd pwt U w P  r/w U/S xd');
    expect(out.filter((l) => /^\s*\d+ {2}/.test(l))).toHaveLength(20);
    expect(out.slice(-10)).toEqual([
      '',
      'outcome: #PF  error code 0x7 [P W U]  CR2 0x403000',
      '    bit 0 P=1',
      '    bit 1 W=1',
      '    bit 2 U=1',
      '    bit 3 RSVD=0',
      '    bit 4 I/D=0',
      '    bit 5 PK=0',
      '    bit 6 SS=0',
      '    bit 15 SGX=0',
    ]);
    const j = walkJson(EPT, { gva: '0x403000', write: true, user: true });
    expect(j.cpl).toBe(3);
    expect(j.outcome).toEqual({ result: 'pf', error_code: '0x7', cr2: '0x403000', error_code_bits: ['P', 'W', 'U'] });
  });

  it('EPT violation on the final gPA: qualification 0x181 = RD, GLA_VALID, TRANSLATED', () => {
    const out = walk(EPT, { gva: '0x404000' });
    expect(out).toContain('24  ept    EPT PTE    -          0x10003820  0x0000000000000000  xu d a ipat mt=0 x w r           -           0x104000');
    expect(out.slice(-11)).toEqual([
      'outcome: EPT violation (exit reason 48)  qualification 0x181 [RD GLA_VALID TRANSLATED]  gpa 0x104000  gla 0x404000',
      '    bit 0 RD=1',
      '    bit 1 WR=0',
      '    bit 2 FETCH=0',
      '    bit 3 PERM_R=0',
      '    bit 4 PERM_W=0',
      '    bit 5 PERM_X=0',
      '    bit 6 PERM_XU=0',
      '    bit 7 GLA_VALID=1',
      '    bit 8 TRANSLATED=1',
      '    bit 12 NMI_UNBLOCK=0',
    ]);
    expect(walkJson(EPT, { gva: '0x404000', fetch: true }).outcome).toEqual({
      result: 'ept_violation', qualification: '0x184', gpa: '0x104000', gla: '0x404000', qualification_bits: ['FETCH', 'GLA_VALID', 'TRANSLATED'],
    });
  });

  it('#NPF on the final gPA, with the nested walk and its A/D write-backs', () => {
    const j = walkJson(NPT, { gva: '0x401008', write: true });
    expect(j.refs).toHaveLength(24);
    expect(j.refs.slice(0, 5).map((r: any) => [r.dim, r.level, r.entry_hpa, r.gpa ?? r.entry_gpa])).toEqual([
      ['npt', 'PML4E', '0x20000000', '0x100000'],
      ['npt', 'PDPTE', '0x20001000', '0x100000'],
      ['npt', 'PDE', '0x20002000', '0x100000'],
      ['npt', 'PTE', '0x20003800', '0x100000'],
      ['guest', 'PML4E', '0x3100000', '0x100000'],
    ]);
    // nested non-leaf A once, the nested leaf A and D (guest table accesses are writes)
    expect(j.ad_writes.slice(0, 5).map((w: any) => [w.after_ref, w.dim, w.level, w.set])).toEqual([
      [1, 'npt', 'PML4E', 'A'], [2, 'npt', 'PDPTE', 'A'], [3, 'npt', 'PDE', 'A'], [4, 'npt', 'PTE', 'A D'], [5, 'guest', 'PML4E', 'A'],
    ]);
    expect(j.outcome).toEqual({ result: 'npf', exitinfo1: '0x100000006', exitinfo2: '0x105008', exitinfo1_bits: ['W', 'U', 'FINAL'] });
    const out = walk(NPT, { gva: '0x401008', write: true });
    expect(out.slice(-8)).toEqual([
      'outcome: #NPF (exit code 0x400)  EXITINFO1 0x100000006 [W U FINAL]  EXITINFO2 0x105008',
      '    bit 0 P=0',
      '    bit 1 W=1',
      '    bit 2 U=1',
      '    bit 3 RSVD=0',
      '    bit 4 I/D=0',
      '    bit 32 FINAL=1',
      '    bit 33 GUEST_PAGE=0',
    ]);
  });

  it('native: a 2M page, an XD fetch fault, a 5-level 1G page, #GP', () => {
    expect(walk(NATIVE, { gva: '0x601234' }).at(-1)).toBe('outcome: ok  hpa 0xa01234  2M page (PDE)');
    const x = walkJson(NATIVE, { gva: '0x601234', fetch: true });
    expect(x.refs.map((r: any) => [r.level, r.entry_hpa, r.rights])).toEqual([
      ['PML4E', '0x100000', 'R/W U/S xd'], ['PDPTE', '0x101000', 'R/W U/S xd'], ['PDE', '0x102018', 'R/W U/S XD'],
    ]);
    expect(x.refs[0].entry_gpa).toBeUndefined();
    expect(x.outcome).toEqual({ result: 'pf', error_code: '0x11', cr2: '0x601234', error_code_bits: ['P', 'I/D'] });
    const five = walk(NATIVE5, { gva: '0x7fff1234', vcpu: '1', write: true });
    expect(five.slice(1)).toEqual([
      'mode native, CR3 0x200000 (5-level paging)',
      '',
      ' #  dim    level  entry hPA  value               flags                               rights',
      ' 1  guest  PML5E  0x200000   0x0000000000201007  xd ps a pcd pwt U W P               R/W U/S xd',
      '    would set A in guest PML5E at hPA 0x200000: 0x0000000000201007 -> 0x0000000000201027',
      ' 2  guest  PML4E  0x201000   0x0000000000202007  xd ps a pcd pwt U W P               R/W U/S xd',
      '    would set A in guest PML4E at hPA 0x201000: 0x0000000000202007 -> 0x0000000000202027',
      ' 3  guest  PDPTE  0x202008   0x00000000400000e7  xd pk=0 g pat D PS A pcd pwt U W P  R/W U/S xd',
      '',
      'outcome: ok  hpa 0x7fff1234  1G page (PDPTE)',
    ]);
    expect(walk(NATIVE, { gva: '0x800000000000' }).slice(-3)).toEqual(['(no paging-structure references)', '', 'outcome: #GP(0)  0x800000000000 is not canonical']);
  });
});

describe('mmulab walk: PAE paging', () => {
  it('native: the PDPTE comes from its register (no reference), then PDE and PTE', () => {
    expect(walk(PAE, { gva: '0x200123' })).toEqual([
      'walk: vcpu0 read 0x200123 at CPL 0, test/cli/data/pae.trace run to the end (probe: nothing written, TLB untouched)',
      'mode native, CR3 0x100000 (PAE paging)',
      'PDPTE register 0 (loaded from memory by MOV to CR3/CR0/CR4, no reference now): 0x0000000000101001  pcd pwt P',
      '',
      ' #  dim    level  entry hPA  value               flags                            rights',
      ' 1  guest  PDE    0x101008   0x0000000000103007  xd ps a pcd pwt U W P            R/W U/S xd',
      '    would set A in guest PDE at hPA 0x101008: 0x0000000000103007 -> 0x0000000000103027',
      ' 2  guest  PTE    0x103000   0x8000000000800007  XD pk=0 g pat d a pcd pwt U W P  R/W U/S XD',
      '    would set A in guest PTE at hPA 0x103000: 0x8000000000800007 -> 0x8000000000800027',
      '',
      'outcome: ok  hpa 0x800123  4K page (PTE)',
    ]);
    const j = walkJson(PAE, { gva: '0xffe01234', write: true });
    expect(j.pdpte_register).toEqual({ index: 3, value: '0x102001' });
    expect(j.refs.map((r: any) => [r.level, r.entry_hpa])).toEqual([['PDE', '0x102ff8']]);
    expect(j.outcome).toEqual({ result: 'ok', hpa: '0x4001234', page_size: '0x200000' });
  });

  it('under NPT: the PDPTE is a guest reference, read through the nested tables', () => {
    const j = walkJson(PAE_NPT, { gva: '0x200123' });
    expect(j.pdpte_register).toBeUndefined();
    expect(j.refs.map((r: any) => [r.dim, r.level, r.entry_gpa ?? r.gpa])).toEqual([
      ['npt', 'PML4E', '0x100000'], ['npt', 'PDPTE', '0x100000'], ['npt', 'PDE', '0x100000'], ['guest', 'PDPTE', '0x100000'],
      ['npt', 'PML4E', '0x101008'], ['npt', 'PDPTE', '0x101008'], ['npt', 'PDE', '0x101008'], ['guest', 'PDE', '0x101008'],
      ['npt', 'PML4E', '0x103000'], ['npt', 'PDPTE', '0x103000'], ['npt', 'PDE', '0x103000'], ['guest', 'PTE', '0x103000'],
      ['npt', 'PML4E', '0x105123'], ['npt', 'PDPTE', '0x105123'], ['npt', 'PDE', '0x105123'],
    ]);
    expect(j.refs[3]).toMatchObject({ flags: 'pcd pwt P', rights: 'R/W U/S xd', value: '0x101001' });
    expect(j.outcome).toEqual({ result: 'ok', hpa: '0x105123', gpa: '0x105123', page_size: '0x1000', second_page_size: '0x200000' });
  });
});

describe('mmulab walk --json', () => {
  it('has one object with refs, ad_writes and the outcome, 64-bit numbers as contract hex strings', () => {
    const j = walkJson(EPT, { gva: '0x401008', at: BEFORE_ACCESS });
    expect(Object.keys(j)).toEqual(['file', 'at', 'mode', 'vcpu', 'gva', 'kind', 'cpl', 'refs', 'ad_writes', 'outcome']);
    expect(j).toMatchObject({ at: 21, mode: 'ept', vcpu: 0, gva: '0x401008', kind: 'read', cpl: 0 });
    expect(j.refs[0]).toEqual({
      n: 1, dim: 'ept', level: 'EPT PML4E', entry_hpa: '0x10000000', value: '0x10001007', flags: 'xu a X W R', rights: 'RWX', gpa: '0x100000',
    });
    expect(j.refs[4]).toEqual({
      n: 5, dim: 'guest', level: 'PML4E', entry_gpa: '0x100000', entry_hpa: '0x2100000', value: '0x101007', flags: 'xd ps a pcd pwt U W P', rights: 'R/W U/S xd',
    });
    expect(j.ad_writes[4]).toEqual({
      after_ref: 5, dim: 'guest', level: 'PML4E', entry_gpa: '0x100000', entry_hpa: '0x2100000', set: 'A', old: '0x101007', new: '0x101027',
    });
    for (const r of j.refs) for (const k of ['entry_gpa', 'entry_hpa', 'value', 'gpa']) if (r[k] !== undefined) expect(r[k]).toMatch(HEX);
    for (const w of j.ad_writes) for (const k of ['entry_gpa', 'entry_hpa', 'old', 'new']) if (w[k] !== undefined) expect(w[k]).toMatch(HEX);
    for (const k of ['hpa', 'gpa', 'page_size', 'second_page_size']) expect(j.outcome[k]).toMatch(HEX);
  });
});

describe('mmulab walk: bad options exit 2 with a message', () => {
  it.each([
    [{ gva: 'zz' }, "--gva: expected a decimal or 0x hex number, got 'zz'"],
    [{ gva: '0x1_0000_0000_0000_0000' }, "--gva: '0x1_0000_0000_0000_0000' is out of 64-bit range"],
    [{ gva: '-1' }, "--gva: expected a decimal or 0x hex number, got '-1'"],
    [{}, "walk: required option '--gva <addr>' not specified"],
    [{ gva: '0', read: true, write: true }, 'walk: --read and --write are exclusive: give at most one of --read, --write, --fetch'],
    [{ gva: '0', write: true, fetch: true }, 'walk: --write and --fetch are exclusive: give at most one of --read, --write, --fetch'],
    [{ gva: '0', at: '23' }, '--at: line 23 is not in test/cli/data/ept4.trace (lines 1..22)'],
    [{ gva: '0', at: '0' }, '--at: line 0 is not in test/cli/data/ept4.trace (lines 1..22)'],
    [{ gva: '0', at: 'x' }, "--at: expected a decimal or 0x hex number, got 'x'"],
    [{ gva: '0', vcpu: '1' }, '--vcpu: 1 is out of range: the machine in test/cli/data/ept4.trace has 1 vCPU (0..0)'],
  ] as [WalkOptions, string][])('%j', (o, msg) => {
    expect(usage(() => walk(EPT, o))).toBe(msg);
  });
  it('32-bit non-PAE paging is not modelled: bad input', () => {
    expect(usage(() => walk(`${DATA}/nonpae.trace`, { gva: '0x1000' }))).toBe('walk: 32-bit (non-PAE) paging is not modelled: set CR4.PAE');
  });
  it('vcpu in range of a 2-vCPU machine; 2 is not', () => {
    expect(walk(NATIVE5, { gva: '0', vcpu: '1' })[0]).toContain('vcpu1');
    expect(usage(() => walk(NATIVE5, { gva: '0', vcpu: '2' }))).toBe('--vcpu: 2 is out of range: the machine in test/cli/data/native5.trace has 2 vCPUs (0..1)');
  });
});

// ---------------------------------------------------------------------------
// The probe changes nothing.

interface Snapshot {
  frames: Map<number, string[]>;
  frameCount: number;
  entries: string[];
  caches: { valid: number[]; rights: number[]; keyHi: number[]; keyLo: number[]; hpa: number[]; gpa: number[]; fills: number }[];
  regs: string;
}

function peek(m: Machine, hpa: number): string {
  m.mem.load64(hpa);
  return hexPair(m.mem.hi, m.mem.lo);
}

/** The frames the trace's pokes created: with frameCount equal to their number, every frame that exists. */
function pokedFrames(file: string): number[] {
  const frames = new Set<number>();
  for (const c of loadTrace(`${ROOT}${file}`).commands) {
    if (c.verb === 'poke') frames.add(Math.floor((argLong(c, 'hpa')!.toNumber()) / 4096));
  }
  return [...frames].sort((a, b) => a - b);
}

/**
 * Every memory frame that exists (all 512 entries of each; frameCount shows
 * there are no others), the referenced entries, every cache array, the registers.
 */
function snapshot(m: Machine, frameNumbers: number[], refHpas: number[]): Snapshot {
  expect(m.mem.frameCount).toBe(frameNumbers.length);
  const frames = new Map<number, string[]>();
  for (const fn of frameNumbers) frames.set(fn, Array.from({ length: 512 }, (_, i) => peek(m, fn * 4096 + i * 8)));
  const v = m.vcpu(0);
  return {
    frames,
    frameCount: m.mem.frameCount,
    entries: refHpas.map((a) => peek(m, a)),
    caches: v.tlb.all().map((c) => {
      const each = (f: (i: number) => number) => Array.from({ length: c.size }, (_, i) => f(i));
      return {
        valid: each((i) => (c.isValid(i) ? 1 : 0)), rights: each((i) => c.rightsOf(i)), keyHi: each((i) => c.keyHiOf(i)), keyLo: each((i) => c.keyLoOf(i)),
        hpa: each((i) => c.hpaOf(i)), gpa: each((i) => c.gpaOf(i)), fills: c.fills,
      };
    }),
    regs: JSON.stringify({ ...v.regs }),
  };
}

function machineAt(file: string, line?: number): Machine {
  return new Runner(loadTrace(`${ROOT}${file}`), { quiet: true, out: () => {}, ...(line === undefined ? {} : { upToLine: line }) }).run().machine;
}

describe('the probe has no side effects', () => {
  it('a cold walk that would set A/D bits and fill the TLB writes nothing and fills nothing; the real access does', () => {
    const m = machineAt(EPT, 21);
    const fills = (mm: Machine) => mm.vcpu(0).tlb.all().reduce((n, c) => n + c.fills, 0);
    expect(fills(m)).toBe(0);
    const p = probeWalk(m, 0, 0x401008n, AccessKind.Write, true);
    expect(p.refs).toHaveLength(24);
    expect(p.writes.length).toBeGreaterThan(0);
    const hpas = p.refs.map((r) => r.entryHpa);
    const frames = pokedFrames(EPT);
    expect(frames).toHaveLength(8); // 4 EPT tables, 4 guest tables
    const before = snapshot(m, frames, hpas);
    for (const kind of [AccessKind.Read, AccessKind.Write, AccessKind.Fetch]) {
      for (const user of [false, true]) {
        const q = probeWalk(m, 0, 0x401008n, kind, user);
        expect(q.result.outcome).toBe(Outcome.Ok);
        expect(q.cpl).toBe(user ? 3 : 0);
      }
    }
    probeWalk(m, 0, 0x404000n, AccessKind.Read, false); // an EPT violation
    probeWalk(m, 0, 0x403000n, AccessKind.Write, true); // a #PF
    expect(snapshot(m, frames, hpas)).toEqual(before);

    // The same access for real: A/D set in memory, the TLB and paging-structure caches filled.
    expect(m.access(0, 0, 0x401008, AccessKind.Write, 1, false).outcome).toBe(Outcome.Ok);
    const after = snapshot(m, frames, hpas);
    expect(after.entries).not.toEqual(before.entries);
    expect(after.caches).not.toEqual(before.caches);
    expect(fills(m)).toBeGreaterThan(0);
    for (const w of p.writes) expect(peek(m, w.entryHpa)).toBe(hexPair(w.newHi, w.newLo));
  });

  it('a probe that faults on a cached address leaves the TLB entry the real fault would drop', () => {
    const m = machineAt(EPT); // line 22 cached 0x401008
    const v = m.vcpu(0);
    v.regs.cr4 |= CR4_SMEP; // a supervisor fetch from the user page now faults
    const frames = pokedFrames(EPT);
    const before = snapshot(m, frames, []);
    const p = probeWalk(m, 0, 0x401008n, AccessKind.Fetch, false);
    expect(p.result.outcome).toBe(Outcome.Pf);
    expect(p.result.errorCode).toBe(0x11);
    expect(p.refs).toHaveLength(20); // a probe never uses the TLB; the #PF comes before the final EPT walk
    expect(snapshot(m, frames, [])).toEqual(before);
    // The real fetch hits the TLB, faults and drops the entry.
    const r = m.access(0, 0, 0x401008, AccessKind.Fetch, 1, false);
    expect(r.outcome).toBe(Outcome.Pf);
    expect(snapshot(m, frames, []).caches).not.toEqual(before.caches);
  });

  it('--user restores CPL even when the probe faults', () => {
    const m = machineAt(EPT);
    m.vcpu(0).regs.cpl = 0;
    probeWalk(m, 0, 0x403000n, AccessKind.Write, true);
    expect(m.vcpu(0).regs.cpl).toBe(0);
  });
});

// ---------------------------------------------------------------------------
// The command line, through bin/mmulab.js (which runs dist/).

describe('node bin/mmulab.js walk and dump', () => {
  beforeAll(() => {
    const tsc = `${ROOT}node_modules/typescript/bin/tsc`;
    try {
      execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: ROOT, stdio: 'pipe' });
    } catch (e) {
      // tsc emits even when some other file has a type error; the outputs below are what matter.
      process.stderr.write(`tsc -p tsconfig.json: ${String((e as { stdout?: Buffer }).stdout ?? e)}\n`);
    }
  }, 120_000);

  const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/mmulab.js', ...args], { cwd: ROOT, encoding: 'utf8' });

  it('prints what walkCommand returns, exit 0', () => {
    const r = cli('walk', EPT, '--gva', '0x401008', '--at', '21');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(walk(EPT, { gva: '0x401008', at: '21' }).join('\n') + '\n');
    const j = cli('walk', EPT, '--gva', '0x404000', '--json');
    expect(j.status).toBe(0);
    expect(JSON.parse(j.stdout).outcome.qualification).toBe('0x181');
  });

  it('bad options: a message on stderr, no stack trace, exit 2', () => {
    const r = cli('walk', EPT, '--gva', '0x1000', '--read', '--fetch');
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('walk: --read and --fetch are exclusive: give at most one of --read, --write, --fetch\n');
    const a = cli('walk', EPT, '--gva', '0x1000', '--at', '99');
    expect(a.status).toBe(2);
    expect(a.stderr).toBe('--at: line 99 is not in test/cli/data/ept4.trace (lines 1..22)\n');
    const g = cli('walk', EPT);
    expect(g.status).toBe(2);
    expect(g.stderr).toMatch(/^error: required option '--gva <addr>' not specified\n/);
    expect(g.stderr).not.toMatch(/at .*\.js:\d+/);
  });

  it('dump: prints the tree (exit 0); refuses --table ept on an npt machine (exit 2, no stack trace)', () => {
    const r = cli('dump', EPT, '--table', 'ept');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(dumpCommand(`${ROOT}${EPT}`, { table: 'ept' }).join('\n').split(ROOT).join('') + '\n');
    const n = cli('dump', NPT, '--table', 'ept');
    expect(n.status).toBe(2);
    expect(n.stdout).toBe('');
    expect(n.stderr).toBe('dump: --table ept: test/cli/data/npt4.trace runs a mode=npt machine, which has no EPT tables\n');
    const c = cli('dump', NPT, '--table', 'host');
    expect(c.status).toBe(2);
    expect(c.stderr).toMatch(/^error: option '--table <which>' argument 'host' is invalid\. Allowed choices are guest, ept, npt\.\n/);
  });
});
