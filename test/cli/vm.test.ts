/**
 * VM-level traces through the CLI (docs/kvm.md): `mmulab run` output of the
 * VM verbs (exact text and JSON), `--events`, invalid VM-level input (exit 2,
 * FILE:LINE:COL before anything runs), failed `expect spte|counter|dirty`
 * (exit 1), and `walk` / `dump` on a VM trace.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dumpCommand } from '../../src/cli/dump.js';
import { walkCommand } from '../../src/cli/walk.js';
import { ROOT } from '../support/cli.js';

const BIN = join(ROOT, 'bin', 'mmulab.js');
let dir = '';

beforeAll(() => {
  execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: ROOT, stdio: 'pipe' });
  dir = mkdtempSync(join(tmpdir(), 'mmulab-vm-'));
}, 120_000);

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

interface Run {
  file: string;
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(name: string, text: string, args: string[] = []): Run {
  const file = join(dir, name);
  writeFileSync(file, text);
  const r = spawnSync(process.execPath, [BIN, 'run', ...args, file], { cwd: ROOT, encoding: 'utf8' });
  return { file, status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A 16M EPT VM: gva 0x400000 -> gfn 5; the guest's tables are gfns 0xfff..0xffc. */
const VM = [
  'vm tdp=ept memory=16M', // 1
  'guest map gva=0x400000 gpa=0x5000 size=8K', // 2
  'access gva=0x400abc read', // 3: five exits
  'age gpa=0x5000', // 4
  'test_young gpa=0x5000', // 5
  'guest map gva=0x600000 gpa=0x40000000', // 6: no memslot there
  'access gva=0x600000 write size=4', // 7: MMIO
  'dirty_log enable', // 8
  'access gva=0x401000 write', // 9
  'dirty_log get', // 10
  '',
].join('\n');

describe('mmulab run: VM-level traces', () => {
  it('prints accesses with their exit count and user exit, and the results of host operations', () => {
    const r = run('vm.trace', VM);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(
      [
        '3: vcpu0 read  0x400abc -> ok hpa=0x1008abc gpa=0x5abc  exits=5',
        '4: age start=0x7f0000005000 end=0x7f0000006000 young=1',
        '5: test_young hva=0x7f0000005000 young=0',
        '7: vcpu0 write 0x600000 -> EPT violation qualification=0x182 [WR GLA_VALID TRANSLATED] gpa=0x40000000 gla=0x600000  exits=2 user_exit=mmio',
        // The table pages read by the walk are write-protected too: with EPT A/D the walk's reads are EPT writes.
        '9: vcpu0 write 0x401000 -> ok hpa=0x100d000 gpa=0x6000  exits=5',
        '10: dirty_log slot=0 dirty=0x6,0xffc,0xffd,0xffe,0xfff',
        '',
      ].join('\n'),
    );
  });

  it('--json: contract fields, then exits and user_exit; host operations as their own ops', () => {
    const r = run('vm-json.trace', VM, ['--json']);
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual([
      '{"line":3,"op":"access","vcpu":0,"gva":"0x400abc","kind":"read","result":"ok","hpa":"0x1008abc","gpa":"0x5abc","exits":5}',
      '{"line":4,"op":"age","start":"0x7f0000005000","end":"0x7f0000006000","young":1}',
      '{"line":5,"op":"test_young","hva":"0x7f0000005000","young":0}',
      '{"line":7,"op":"access","vcpu":0,"gva":"0x600000","kind":"write","result":"ept_violation","qualification":"0x182","gpa":"0x40000000","gla":"0x600000","exits":2,"user_exit":"mmio"}',
      '{"line":9,"op":"access","vcpu":0,"gva":"0x401000","kind":"write","result":"ok","hpa":"0x100d000","gpa":"0x6000","exits":5}',
      '{"line":10,"op":"dirty_log","slot":0,"dirty":["0x6","0xffc","0xffd","0xffe","0xfff"]}',
    ]);
  });

  it('NPT and huge pages: a 2M SPTE from a 2M host page, checked by expect spte and expect counter', () => {
    const text = [
      'vm tdp=npt memory=64M host_page=2m',
      'guest map gva=0x40000000 gpa=0x200000 size=2M page=2m',
      'access gva=0x40000010 read',
      'expect result=ok exits=2',
      'expect spte gfn=0x3ff level=2 p=1 w=1 u=1 nx=0 large=1 a=1 d=1 pfn=0x1400',
      'expect counter pages_2m=2 pages_4k=0',
      '',
    ].join('\n');
    const r = run('npt2m.trace', text, ['--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('{"line":3,"op":"access","vcpu":0,"gva":"0x40000010","kind":"read","result":"ok","hpa":"0x1400010","gpa":"0x200010","exits":2}\n');
  });
});

describe('mmulab run --events', () => {
  const text = ['vm tdp=ept memory=16M', 'guest map gva=0x400000 gpa=0x5000', 'access gva=0x400000 read', 'age gpa=0x5000', ''].join('\n');

  it('prints the enabled events in order with the lines of the command that caused them', () => {
    const r = run('ev.trace', text, ['--events', 'kvm_age_hva,kvm_tdp_mmu_spte_changed']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    // Three non-leaf SPTEs and the leaf of gfn 0xfff (the PML4 page), then the other table pages and the data page;
    // page-table pages start out filled with SHADOW_NONPRESENT_VALUE.
    expect(lines.slice(0, 4)).toEqual([
      '3: kvm_tdp_mmu_spte_changed: as_id=0 gfn=0x0 level=4 old_spte=0x8000000000000000 new_spte=0x8000000001005907',
      '3: kvm_tdp_mmu_spte_changed: as_id=0 gfn=0x0 level=3 old_spte=0x8000000000000000 new_spte=0x8000000001006907',
      '3: kvm_tdp_mmu_spte_changed: as_id=0 gfn=0xe00 level=2 old_spte=0x8000000000000000 new_spte=0x8000000001007907',
      '3: kvm_tdp_mmu_spte_changed: as_id=0 gfn=0xfff level=1 old_spte=0x8000000000000000 new_spte=0x8600000001001b77',
    ]);
    expect(lines.slice(-4)).toEqual([
      '3: vcpu0 read  0x400000 -> ok hpa=0x1008000 gpa=0x5000  exits=5',
      '4: kvm_age_hva: start=0x7f0000005000 end=0x7f0000006000',
      '4: kvm_tdp_mmu_spte_changed: as_id=0 gfn=0x5 level=1 old_spte=0x8600000001008b77 new_spte=0x8600000001008a77',
      '4: age start=0x7f0000005000 end=0x7f0000006000 young=1',
    ]);
    expect(lines.filter((l) => l.includes('kvm_tdp_mmu_spte_changed'))).toHaveLength(10);
  });

  it('--json: one object per event, "op":"event"', () => {
    const r = run('ev-json.trace', text, ['--json', '--events', 'kvm_age_hva,fast_page_fault']);
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual([
      '{"line":3,"op":"access","vcpu":0,"gva":"0x400000","kind":"read","result":"ok","hpa":"0x1008000","gpa":"0x5000","exits":5}',
      '{"line":4,"op":"event","event":"kvm_age_hva","start":"0x7f0000005000","end":"0x7f0000006000"}',
      '{"line":4,"op":"age","start":"0x7f0000005000","end":"0x7f0000006000","young":1}',
    ]);
  });

  it('an unknown event name, or events on a hardware-level trace: exit 2, nothing run', () => {
    const bad = run('ev-bad.trace', text, ['--events', 'kvm_age_hva,kvm_mmu_frob']);
    expect(bad.status).toBe(2);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toMatch(/^--events: unknown event 'kvm_mmu_frob' \(expected 'all' or some of: kvm_unmap_hva_range, kvm_age_hva, /);
    const hw = run('ev-hw.trace', 'machine mode=ept\n', ['--events', 'all']);
    expect(hw.status).toBe(2);
    expect(hw.stderr).toBe(`--events: ${hw.file} is a hardware-level trace ('machine'); KVM events come from VM-level traces ('vm')\n`);
  });
});

describe('mmulab run: invalid VM-level input', () => {
  const head = 'vm tdp=ept memory=16M\nguest map gva=0x400000 gpa=0x5000\naccess gva=0x400000 read\n';
  const cases: [string, string, string][] = [
    ['VM verb in a hardware trace', 'machine mode=ept\nage\n', `2:1: age: only in VM-level traces (ones that start with 'vm'); this one starts with 'machine'`],
    ['machine after vm', head + 'machine mode=ept\n', `4:1: machine: a trace is either hardware-level ('machine') or VM-level ('vm'); this one started with 'vm' at line 1`],
    ['VM expect key in a hardware trace', 'machine mode=ept\naccess gva=0 read\nexpect exits=0\n', `3:8: expect: 'exits' is only for VM-level traces (ones that start with 'vm')`],
    ['eptp in a VM trace', head + 'cpu eptp=0x1e\n', `4:5: cpu: 'eptp' is only for hardware-level traces: in a VM-level trace KVM loads the EPTP`],
    ['implicit in a VM trace', head + 'access gva=0x400000 read implicit\n', `4:26: access: 'implicit' is only for hardware-level traces: in a VM-level trace KVM runs the guest access as an explicit one`],
    ['guest without a sub-verb', head + 'guest gva=0x1000\n', `4:7: guest: expected one of: map, identity`],
    ['misaligned guest page', head + 'guest map gva=0x600000 gpa=0x1000 page=2m\n', `4:24: guest map: gpa 0x1000 is not aligned to the 2M page`],
    ['2M page over 4K pages', head + 'guest map gva=0x400000 gpa=0x200000 page=2m\n', `4:11: guest map: gva 0x400000: a 2M page would replace a table of smaller pages mapped before`],
    ['4K page inside a 2M page', 'vm tdp=ept\nguest map gva=0x200000 gpa=0 page=2m\nguest map gva=0x201000 gpa=0x1000\n', `3:11: guest map: gva 0x201000 is already mapped by a 2M page (line 2)`],
    ['NPT bit on an EPT VM', head + 'expect spte gfn=5 nx=0\n', `4:19: expect spte: 'nx' is an NPT bit; this VM's SPTEs are EPT (r, w, x)`],
    ['overlapping memslot', head + 'memslot slot=1 gpa=0xff0000 size=1M\n', `4:16: memslot: gpa range overlaps memslot 0 (gpa 0x0, size 0x1000000)`],
    ['unaligned munmap', head + 'munmap gpa=0x800 size=8K\n', `4:8: munmap: gpa 0x800 is not aligned to the 4K host page`],
    ['dirty_log get before enable', head + 'dirty_log slot=0 get\n', `4:11: dirty_log get: memslot 0 does not log dirty pages (no 'dirty_log enable' for it before)`],
    ['madvise of part of a 2M host page', 'vm tdp=npt host_page=2m\nmadvise_dontneed gpa=0x1000 size=4K\n', `2:18: madvise_dontneed: gpa 0x1000 is not aligned to the 2M host page`],
    ['memory not a multiple of the host page', 'vm tdp=ept memory=3M host_page=2m\n', `1:12: vm: memory 0x300000 is not a multiple of the 2M host page`],
    ['guest tables in unmapped memory', head + 'munmap gpa=0 size=16M\nguest map gva=0x800000 gpa=0x6000\n', `5:11: guest map: the guest page-table entry at gpa 0xffd020 is in memory unmapped at line 4`],
  ];
  for (const [what, text, message] of cases) {
    it(`${what}: exit 2, FILE:LINE:COL: message, nothing on stdout`, () => {
      const r = run(`bad-${what.replace(/ /g, '-')}.trace`, text);
      expect(r.stderr).toBe(`${r.file}:${message}\n`);
      expect(r.status).toBe(2);
      expect(r.stdout).toBe('');
    });
  }
});

describe('mmulab run: failed VM-level expectations', () => {
  it('exit 1, FILE:LINE: expect KEY: expected X, got Y, with the SPTE decoded', () => {
    const text = [
      'vm tdp=ept memory=16M', // 1
      'guest map gva=0x400000 gpa=0x5000', // 2
      'access gva=0x400000 read', // 3
      'expect exits=4 user_exit=mmio', // 4: both fail
      'expect spte gfn=5 a=0 w=1', // 5: a fails
      'expect spte gfn=6 level=1 present=0', // 6: holds (no table there is fine for present=0)
      'expect spte gfn=0x200 level=1 present=1', // 7: the walk ends at level 2
      'expect counter exits=5 pages_4k=4', // 8: pages_4k fails
      'age', // 9
      'expect young=0', // 10
      '',
    ].join('\n');
    const r = run('vm-fail.trace', text);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(
      [
        `${r.file}:4: expect exits: expected 4, got 5 (line 3)`,
        `${r.file}:4: expect user_exit: expected mmio, got none (line 3)`,
        `${r.file}:5: expect spte a: expected 0, got 1 (gfn 0x5: level 1 0x8600000001008b77 present r w x a d mmu_writable host_writable pfn=0x1008)`,
        `${r.file}:7: expect spte present: expected 1, got no SPTE at gfn 0x200 level 1 (the walk ends at level 2: 0x8000000000000000)`,
        `${r.file}:8: expect counter pages_4k: expected 4, got 5`,
        `${r.file}:10: expect young: expected 0, got 1 (line 9)`,
        '',
      ].join('\n'),
    );
  });
});

describe('walk and dump on a VM-level trace', () => {
  const FIXTURE = 'fixtures/kvm/ept-ad-on.trace';

  it('walk probes kvm.machine with the EPTP KVM loaded and the guest CR3', () => {
    const lines = walkCommand(`${ROOT}${FIXTURE}`, { gva: '0x400abc', at: '14' }).map((l) => l.split(ROOT).join(''));
    expect(lines[1]).toBe('mode ept, CR3 0xfff000 (4-level paging), EPTP 0x100005e (4-level EPT, A/D on)');
    expect(lines[lines.length - 1]).toBe('outcome: ok  gpa 0x5abc -> hpa 0x1008abc  guest 4K page (PTE), EPT 4K page (EPT PTE)');
    // Before the first access KVM has mapped nothing: the walk exits on the PML4 page.
    const cold = walkCommand(`${ROOT}${FIXTURE}`, { gva: '0x400abc', at: '10' });
    expect(cold.find((l) => l.startsWith('outcome:'))).toBe('outcome: EPT violation (exit reason 48)  qualification 0x83 [RD WR GLA_VALID]  gpa 0xfff000  gla 0x400abc');
  });

  it('dump --table ept shows the SPTEs KVM made; --table guest the tables `guest map` built', () => {
    const ept = dumpCommand(`${ROOT}${FIXTURE}`, { table: 'ept', at: '14' }).map((l) => l.split(ROOT).join(''));
    expect(ept[0]).toBe('EPT tables of vcpu0: EPTP 0x100005e, root hPA 0x1000000, 4-level, A/D on; fixtures/kvm/ept-ad-on.trace run to line 14');
    expect(ept.filter((l) => l.includes('EPT PTE['))).toHaveLength(5);
    expect(ept).toContain('      EPT PTE[5]    0x0000000000005000-0x0000000000005fff  0x8600000001008b77  xu D A IPAT mt=6 X W R  -> 0x1008000 4K page');
    const guest = dumpCommand(`${ROOT}${FIXTURE}`, { table: 'guest', json: true });
    const g = JSON.parse(guest[0]);
    expect(g.root).toBe('0xfff000');
    expect(g.root_hpa).toBe('0x1001000');
    expect(g.count).toBe(5);
  });
});
