import { describe, expect, it } from 'vitest';
// The built CLI (node bin/mmulab.js dump) is tested in walk.test.ts, which compiles dist/ once.
import { dumpCommand, dumpTables, type DumpOptions } from '../../src/cli/dump.js';
import { loadTrace } from '../../src/cli/load.js';
import { Runner } from '../../src/trace/runner.js';

import { ROOT, usage } from '../support/cli.js';
const DATA = 'test/cli/data';
const EPT = `${DATA}/ept4.trace`;
const NPT = `${DATA}/npt4.trace`;
const NATIVE = `${DATA}/native.trace`;
const NATIVE5 = `${DATA}/native5.trace`;
const BAD = `${DATA}/bad.trace`;
const PAE = `${DATA}/pae.trace`;
const PAE_NPT = `${DATA}/pae-npt.trace`;

function dump(file: string, o: DumpOptions): string[] {
  return dumpCommand(`${ROOT}${file}`, o).map((l) => l.split(ROOT).join(''));
}

function dumpJson(file: string, o: DumpOptions): Record<string, any> {
  const lines = dumpCommand(`${ROOT}${file}`, { ...o, json: true });
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]);
}

describe('mmulab dump --table guest', () => {
  it('under EPT: guest tables read through the EPT, gPAs and hPAs of tables and pages', () => {
    expect(dump(EPT, { table: 'guest' })).toEqual([
      'guest tables of vcpu0: CR3 0x100000, root gPA 0x100000 (hPA 0x2100000), 4-level; table and page gPAs translated through EPT; test/cli/data/ept4.trace run to the end',
      '',
      'PML4E[0]      0x0000000000000000-0x0000007fffffffff  0x0000000000101027  xd ps A pcd pwt U W P            -> table gPA 0x101000 (hPA 0x2101000)',
      '  PDPTE[0]    0x0000000000000000-0x000000003fffffff  0x0000000000102027  xd ps A pcd pwt U W P            -> table gPA 0x102000 (hPA 0x2102000)',
      '    PDE[2]    0x0000000000400000-0x00000000005fffff  0x0000000000103027  xd ps A pcd pwt U W P            -> table gPA 0x103000 (hPA 0x2103000)',
      '      PTE[1]  0x0000000000401000-0x0000000000401fff  0x0000000000105027  xd pk=0 g pat d A pcd pwt U W P  -> gPA 0x105000 4K page (hPA 0x2105000)',
      '      PTE[3]  0x0000000000403000-0x0000000000403fff  0x0000000000105005  xd pk=0 g pat d a pcd pwt U w P  -> gPA 0x105000 4K page (hPA 0x2105000)',
      '      PTE[4]  0x0000000000404000-0x0000000000404fff  0x0000000000104007  xd pk=0 g pat d a pcd pwt U W P  -> gPA 0x104000 4K page (not mapped by EPT: EPT PTE at hPA 0x10003820 is not present)',
    ]);
  });

  it('--at: the state after that line (before the access on line 22, no A bits; before line 21, no CR3)', () => {
    expect(dump(EPT, { table: 'guest', at: '21' })).toEqual([
      'guest tables of vcpu0: CR3 0x100000, root gPA 0x100000 (hPA 0x2100000), 4-level; table and page gPAs translated through EPT; test/cli/data/ept4.trace run to line 21',
      '',
      'PML4E[0]      0x0000000000000000-0x0000007fffffffff  0x0000000000101007  xd ps a pcd pwt U W P            -> table gPA 0x101000 (hPA 0x2101000)',
      '  PDPTE[0]    0x0000000000000000-0x000000003fffffff  0x0000000000102007  xd ps a pcd pwt U W P            -> table gPA 0x102000 (hPA 0x2102000)',
      '    PDE[2]    0x0000000000400000-0x00000000005fffff  0x0000000000103007  xd ps a pcd pwt U W P            -> table gPA 0x103000 (hPA 0x2103000)',
      '      PTE[1]  0x0000000000401000-0x0000000000401fff  0x0000000000105007  xd pk=0 g pat d a pcd pwt U W P  -> gPA 0x105000 4K page (hPA 0x2105000)',
      '      PTE[3]  0x0000000000403000-0x0000000000403fff  0x0000000000105005  xd pk=0 g pat d a pcd pwt U w P  -> gPA 0x105000 4K page (hPA 0x2105000)',
      '      PTE[4]  0x0000000000404000-0x0000000000404fff  0x0000000000104007  xd pk=0 g pat d a pcd pwt U W P  -> gPA 0x104000 4K page (not mapped by EPT: EPT PTE at hPA 0x10003820 is not present)',
    ]);
    // CR3 is still 0 before line 21: the root gPA 0 has no EPT mapping
    expect(dump(EPT, { table: 'guest', at: '20' })).toEqual([
      'guest tables of vcpu0: CR3 0x0, root gPA 0x0 (not mapped by EPT: EPT PML4E at hPA 0x0 is not present), 4-level; table and page gPAs translated through EPT; test/cli/data/ept4.trace run to line 20',
      '',
      '(no present entries)',
    ]);
  });

  it('native: a 2M page, XD, and the upper half in canonical form', () => {
    expect(dump(NATIVE, { table: 'guest' }).slice(2)).toEqual([
      'PML4E[0]      0x0000000000000000-0x0000007fffffffff  0x0000000000101007  xd ps a pcd pwt U W P               -> table 0x101000',
      '  PDPTE[0]    0x0000000000000000-0x000000003fffffff  0x0000000000102007  xd ps a pcd pwt U W P               -> table 0x102000',
      '    PDE[2]    0x0000000000400000-0x00000000005fffff  0x0000000000103007  xd ps a pcd pwt U W P               -> table 0x103000',
      '      PTE[1]  0x0000000000401000-0x0000000000401fff  0x0000000000800003  xd pk=0 g pat d a pcd pwt u W P     -> 0x800000 4K page',
      '    PDE[3]    0x0000000000600000-0x00000000007fffff  0x8000000000a000e7  XD pk=0 g pat D PS A pcd pwt U W P  -> 0xa00000 2M page',
      'PML4E[256]    0xffff800000000000-0xffff807fffffffff  0x0000000000104003  xd ps a pcd pwt u W P               -> table 0x104000',
    ]);
  });

  it('5-level paging of vCPU 1: PML5Es, a 1G page, bits 63:57 copy bit 56', () => {
    expect(dump(NATIVE5, { table: 'guest', vcpu: '1' })).toEqual([
      'guest tables of vcpu1: CR3 0x200000, root 0x200000, 5-level; test/cli/data/native5.trace run to the end',
      '',
      'PML5E[0]      0x0000000000000000-0x0000ffffffffffff  0x0000000000201007  xd ps a pcd pwt U W P               -> table 0x201000',
      '  PML4E[0]    0x0000000000000000-0x0000007fffffffff  0x0000000000202007  xd ps a pcd pwt U W P               -> table 0x202000',
      '    PDPTE[1]  0x0000000040000000-0x000000007fffffff  0x00000000400000e7  xd pk=0 g pat D PS A pcd pwt U W P  -> 0x40000000 1G page',
      'PML5E[511]    0xffff000000000000-0xffffffffffffffff  0x0000000000203003  xd ps a pcd pwt u W P               -> table 0x203000',
    ]);
  });

  it('marks reserved entries and tables the EPT does not map', () => {
    expect(dump(BAD, { table: 'guest' }).slice(2)).toEqual([
      'PML4E[0]      0x0000000000000000-0x0000007fffffffff  0x0000000000002087  xd PS a pcd pwt U W P  -> table gPA 0x2000 (hPA 0x2000)  [reserved bits set]',
      '  PDPTE[511]  0x0000007fc0000000-0x0000007fffffffff  0x0000000040000003  xd ps a pcd pwt u W P  -> table gPA 0x40000000 (not mapped by EPT: EPT PDPTE at hPA 0x10001008 is not present)',
    ]);
  });
});

describe('mmulab dump --table guest: PAE', () => {
  it('native: the four PDPTE registers (not memory at CR3), 32-bit ranges', () => {
    expect(dump(PAE, { table: 'guest' })).toEqual([
      'guest tables of vcpu0: CR3 0x100000, root 0x100000, PAE; test/cli/data/pae.trace run to the end',
      'note: PAE paging: the PDPTEs shown are the PDPTE registers (loaded by the last MOV to CR3/CR0/CR4), not memory at CR3',
      '',
      'PDPTE[0]    0x0000000000000000-0x000000003fffffff  0x0000000000101001  pcd pwt P                           -> table 0x101000',
      '  PDE[1]    0x0000000000200000-0x00000000003fffff  0x0000000000103007  xd ps a pcd pwt U W P               -> table 0x103000',
      '    PTE[0]  0x0000000000200000-0x0000000000200fff  0x8000000000800007  XD pk=0 g pat d a pcd pwt U W P     -> 0x800000 4K page',
      'PDPTE[3]    0x00000000c0000000-0x00000000ffffffff  0x0000000000102001  pcd pwt P                           -> table 0x102000',
      '  PDE[511]  0x00000000ffe00000-0x00000000ffffffff  0x00000000040000e3  xd pk=0 g pat D PS A pcd pwt u W P  -> 0x4000000 2M page',
    ]);
    expect(dumpJson(PAE, { table: 'guest' })).toMatchObject({ levels: 3, pae: true, count: 5 });
  });

  it('under NPT: the PDPTEs from guest memory at CR3', () => {
    expect(dump(PAE_NPT, { table: 'guest' }).slice(1)).toEqual([
      'note: PAE paging under NPT: the PDPTEs are read from memory at CR3 on each walk',
      '',
      'PDPTE[0]    0x0000000000000000-0x000000003fffffff  0x0000000000101001  pcd pwt P                        -> table gPA 0x101000 (hPA 0x101000)',
      '  PDE[1]    0x0000000000200000-0x00000000003fffff  0x0000000000103007  xd ps a pcd pwt U W P            -> table gPA 0x103000 (hPA 0x103000)',
      '    PTE[0]  0x0000000000200000-0x0000000000200fff  0x0000000000105007  xd pk=0 g pat d a pcd pwt U W P  -> gPA 0x105000 4K page (hPA 0x105000)',
    ]);
  });
});

describe('mmulab dump --table ept|npt', () => {
  it('EPT from the EPTP', () => {
    expect(dump(EPT, { table: 'ept' })).toEqual([
      'EPT tables of vcpu0: EPTP 0x1000005e, root hPA 0x10000000, 4-level, A/D on; test/cli/data/ept4.trace run to the end',
      '',
      'EPT PML4E[0]        0x0000000000000000-0x0000007fffffffff  0x0000000010001107  xu A X W R              -> table 0x10001000',
      '  EPT PDPTE[0]      0x0000000000000000-0x000000003fffffff  0x0000000010002107  xu A ps X W R           -> table 0x10002000',
      '    EPT PDE[0]      0x0000000000000000-0x00000000001fffff  0x0000000010003107  xu A ps X W R           -> table 0x10003000',
      '      EPT PTE[256]  0x0000000000100000-0x0000000000100fff  0x0000000002100337  xu D A ipat mt=6 X W R  -> 0x2100000 4K page',
      '      EPT PTE[257]  0x0000000000101000-0x0000000000101fff  0x0000000002101337  xu D A ipat mt=6 X W R  -> 0x2101000 4K page',
      '      EPT PTE[258]  0x0000000000102000-0x0000000000102fff  0x0000000002102337  xu D A ipat mt=6 X W R  -> 0x2102000 4K page',
      '      EPT PTE[259]  0x0000000000103000-0x0000000000103fff  0x0000000002103337  xu D A ipat mt=6 X W R  -> 0x2103000 4K page',
      '      EPT PTE[261]  0x0000000000105000-0x0000000000105fff  0x0000000002105137  xu d A ipat mt=6 X W R  -> 0x2105000 4K page',
    ]);
  });

  it('EPT: a 1G page and a misconfigured entry', () => {
    expect(dump(BAD, { table: 'ept' }).slice(2)).toEqual([
      'EPT PML4E[0]    0x0000000000000000-0x0000007fffffffff  0x0000000010001007  xu a X W R                 -> table 0x10001000',
      '  EPT PDPTE[0]  0x0000000000000000-0x000000003fffffff  0x00000000000000b7  xu d a PS ipat mt=6 X W R  -> 0x0 1G page',
      'EPT PML4E[1]    0x0000008000000000-0x000000ffffffffff  0x0000000010004002  xu a x W r                 -> table 0x10004000  [EPT misconfiguration]',
    ]);
  });

  it('NPT from nCR3, and the guest tables through it', () => {
    expect(dump(NPT, { table: 'npt' })).toEqual([
      'NPT tables of vcpu0: nCR3 0x20000000, root hPA 0x20000000, 4-level; test/cli/data/npt4.trace run to the end',
      '',
      'PML4E[0]        0x0000000000000000-0x0000007fffffffff  0x0000000020001007  xd ps a pcd pwt U W P       -> table 0x20001000',
      '  PDPTE[0]      0x0000000000000000-0x000000003fffffff  0x0000000020002007  xd ps a pcd pwt U W P       -> table 0x20002000',
      '    PDE[0]      0x0000000000000000-0x00000000001fffff  0x0000000020003007  xd ps a pcd pwt U W P       -> table 0x20003000',
      '      PTE[256]  0x0000000000100000-0x0000000000100fff  0x0000000003100007  xd g pat d a pcd pwt U W P  -> 0x3100000 4K page',
      '      PTE[257]  0x0000000000101000-0x0000000000101fff  0x0000000003101007  xd g pat d a pcd pwt U W P  -> 0x3101000 4K page',
      '      PTE[258]  0x0000000000102000-0x0000000000102fff  0x0000000003102007  xd g pat d a pcd pwt U W P  -> 0x3102000 4K page',
      '      PTE[259]  0x0000000000103000-0x0000000000103fff  0x0000000003103007  xd g pat d a pcd pwt U W P  -> 0x3103000 4K page',
    ]);
    expect(dump(NPT, { table: 'guest' }).at(-1)).toBe(
      '      PTE[1]  0x0000000000401000-0x0000000000401fff  0x0000000000105007  xd pk=0 g pat d a pcd pwt U W P  -> gPA 0x105000 4K page (not mapped by NPT: NPT PTE at hPA 0x20003828 is not present)',
    );
  });
});

describe('mmulab dump --json', () => {
  it('nests entries under their tables; leaves carry page_size and target (and target_hpa under EPT)', () => {
    const j = dumpJson(EPT, { table: 'guest' });
    expect(Object.keys(j)).toEqual(['file', 'at', 'mode', 'table', 'vcpu', 'levels', 'root', 'root_hpa', 'count', 'truncated', 'entries']);
    expect(j).toMatchObject({ at: null, mode: 'ept', table: 'guest', vcpu: 0, levels: 4, root: '0x100000', root_hpa: '0x2100000', count: 6, truncated: false });
    const pml4e = j.entries[0];
    expect(pml4e).toMatchObject({ level: 'PML4E', index: 0, start: '0x0', end: '0x7fffffffff', value: '0x101027', table: '0x101000', table_hpa: '0x2101000' });
    const pdes = pml4e.entries[0].entries;
    expect(pdes).toHaveLength(1);
    expect(pdes[0].entries).toEqual([
      { level: 'PTE', index: 1, start: '0x401000', end: '0x401fff', value: '0x105027', flags: 'xd pk=0 g pat d A pcd pwt U W P', page_size: '0x1000', target: '0x105000', target_hpa: '0x2105000' },
      { level: 'PTE', index: 3, start: '0x403000', end: '0x403fff', value: '0x105005', flags: 'xd pk=0 g pat d a pcd pwt U w P', page_size: '0x1000', target: '0x105000', target_hpa: '0x2105000' },
      {
        level: 'PTE', index: 4, start: '0x404000', end: '0x404fff', value: '0x104007', flags: 'xd pk=0 g pat d a pcd pwt U W P', page_size: '0x1000', target: '0x104000',
        error: 'not mapped by EPT: EPT PTE at hPA 0x10003820 is not present',
      },
    ]);
    const n = dumpJson(NATIVE, { table: 'guest' });
    expect(n.entries.map((e: any) => [e.index, e.start, e.end])).toEqual([[0, '0x0', '0x7fffffffff'], [256, '0xffff800000000000', '0xffff807fffffffff']]);
    expect(n.entries[0].entries[0].entries[1]).toEqual({
      level: 'PDE', index: 3, start: '0x600000', end: '0x7fffff', value: '0x8000000000a000e7', flags: 'XD pk=0 g pat D PS A pcd pwt U W P', page_size: '0x200000', target: '0xa00000',
    });
    expect(n.root_hpa).toBeUndefined();
  });
});

describe('mmulab dump: refusals and bad options exit 2', () => {
  it.each([
    [EPT, { table: 'npt' }, 'dump: --table npt: test/cli/data/ept4.trace runs a mode=ept machine, which has no NPT tables'],
    [NPT, { table: 'ept' }, 'dump: --table ept: test/cli/data/npt4.trace runs a mode=npt machine, which has no EPT tables'],
    [NATIVE, { table: 'ept' }, 'dump: --table ept: test/cli/data/native.trace runs a mode=native machine, which has no EPT tables'],
    [NATIVE, { table: 'npt' }, 'dump: --table npt: test/cli/data/native.trace runs a mode=native machine, which has no NPT tables'],
    [NATIVE, { table: 'host' }, 'dump: --table host: expected guest, ept or npt'],
    [`${DATA}/nonpae.trace`, { table: 'guest' }, 'dump: 32-bit (non-PAE) paging is not modelled: set CR4.PAE'],
    [NATIVE, {}, "dump: required option '--table <which>' not specified (guest, ept or npt)"],
    [NATIVE, { table: 'guest', vcpu: '1' }, '--vcpu: 1 is out of range: the machine in test/cli/data/native.trace has 1 vCPU (0..0)'],
    [NATIVE, { table: 'guest', at: '10' }, '--at: line 10 is not in test/cli/data/native.trace (lines 1..9)'],
  ] as [string, DumpOptions, string][])('%s %j', (file, o, msg) => {
    expect(usage(() => dump(file, o))).toBe(msg);
  });
});

describe('dump reads without side effects', () => {
  it('leaves every A bit and every cache as it was', () => {
    const m = new Runner(loadTrace(`${ROOT}${EPT}`), { quiet: true, out: () => {}, upToLine: 21 }).run().machine;
    const state = () => JSON.stringify({ f: m.mem.frameCount, c: m.vcpu(0).tlb.all().map((c) => [Array.from({ length: c.size }, (_, i) => c.isValid(i)), c.fills]) });
    const before = state();
    const d = dumpTables(m, 0, 'guest');
    expect(d.count).toBe(6);
    dumpTables(m, 0, 'ept');
    expect(state()).toBe(before);
    m.mem.load64(0x2100000);
    expect(m.mem.lo).toBe(0x101007); // A still clear
  });
});
