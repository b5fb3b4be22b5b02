/**
 * The host-mm verbs through the CLI (docs/mm.md): exact `mmulab run` output
 * of reclaim and page_idle (text and JSON), passing and failing `expect
 * folio|lru|data` and the new counters, the `--stats` table, `lru_gen`, and
 * invalid input (exit 2, FILE:LINE:COL, nothing run).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lruGenCommand } from '../../src/cli/stats.js';
import { ROOT, usage } from '../support/cli.js';

const BIN = join(ROOT, 'bin', 'mmulab.js');
let dir = '';

beforeAll(() => {
  execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: ROOT, stdio: 'pipe' });
  dir = mkdtempSync(join(tmpdir(), 'mmulab-mm-'));
}, 120_000);

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

function write(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Classic LRU, paging off: two pages, page_idle around a guest touch, two reclaim passes, mprotect. */
const CLASSIC = [
  'vm tdp=ept memory=64K lru=classic tlb=off', // 1
  'cpu cr0=0x11', // 2
  'access gva=0x0 write', // 3
  'access gva=0x1000 read', // 4
  'page_idle mark gpa=0x0 size=0x2000', // 5
  'access gva=0x1000 read', // 6: the SPTE is young again
  'page_idle read gpa=0x0 size=0x4000', // 7
  'reclaim pages=2 priority=12', // 8: first look, both kept (PG_referenced)
  'reclaim pages=2 priority=12', // 9: second look, both swapped out
  'expect folio gpa=0x0 swapped=1 mapped=0 lru=none', // 10
  'expect lru active=0 inactive=0', // 11
  'expect data', // 12
  'mprotect gpa=0 size=64K ro', // 13
  'expect counter event_protection_vma=2 event_clear=4 calls_clear_young=5 evicted=2 swap_outs=2', // 14
  '',
].join('\n');

const CLASSIC_OUT = [
  '3: vcpu0 write 0x0 -> ok hpa=0x1001000 gpa=0x0  exits=1',
  '4: vcpu0 read  0x1000 -> ok hpa=0x1005000 gpa=0x1000  exits=1',
  '5: page_idle_mark gpa=0x0 size=0x2000 marked=2',
  '6: vcpu0 read  0x1000 -> ok hpa=0x1005000 gpa=0x1000  exits=0',
  '7: page_idle_read gpa=0x0 size=0x4000 resident=2 idle=1 idle_gfns=0x0',
  '8: reclaim reclaimed=0 lru_pages=2',
  '9: reclaim reclaimed=2 lru_pages=0',
];

const STATS = [
  '┌───────────────────────────────────┬───────┐',
  '│ stat                              │ value │',
  '│ guest accesses                    │     3 │',
  '│ exits                             │     2 │',
  '│ page faults fixed                 │     2 │',
  '│ guest #PF                         │     0 │',
  '│ host page faults                  │     2 │',
  '│ remote TLB flushes                │     2 │',
  '│ SPTEs aged                        │     3 │',
  '│ mmu_lock read (fault)             │     2 │', // the two first-touch faults
  '│ mmu_lock write (invalidate)       │     6 │', // start and end of the 3 invalidation pairs
  '│ mmu_lock held for read (steps)    │     0 │', // a trace runs without a scheduler: no step passes under the lock
  '│ vCPU steps waiting for mmu_lock   │     0 │',
  '│ notifier calls                    │    15 │',
  '│   clear_flush_young               │     4 │',
  '│   clear_young                     │     5 │',
  '│   invalidate_range_end            │     3 │',
  '│   invalidate_range_start          │     3 │',
  '│   event MMU_NOTIFY_CLEAR          │     4 │',
  '│   event MMU_NOTIFY_PROTECTION_VMA │     2 │',
  '│ resident guest pages (LRU)        │     0 │',
  '│ kswapd wakeups                    │     0 │',
  '│ evicted                           │     2 │',
  '│ refaults                          │     0 │',
  '│ swap outs                         │     2 │',
  '│ swap ins                          │     0 │',
  '└───────────────────────────────────┴───────┘',
];

/** MGLRU: two pages, one aging pass. */
const MGLRU = ['vm tdp=ept memory=64K lru=mglru policy=eviction-only tlb=off', 'cpu cr0=0x11', 'access gva=0x0 write', 'access gva=0x1000 read', 'lru_age', ''].join('\n');

describe('mmulab run: host-mm verbs', () => {
  it('prints reclaim and page_idle results; every expectation holds (exit 0)', () => {
    const r = cli(['run', write('classic.trace', CLASSIC)]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(CLASSIC_OUT.join('\n') + '\n');
  });

  it('--json: one object per host-mm verb with a result', () => {
    const r = cli(['run', '--json', write('classic.trace', CLASSIC)]);
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines[2]).toEqual({ line: 5, op: 'page_idle_mark', gpa: '0x0', size: '0x2000', marked: 2 });
    expect(lines[4]).toEqual({ line: 7, op: 'page_idle_read', gpa: '0x0', size: '0x4000', resident: 2, idle: 1, idle_gfns: ['0x0'] });
    expect(lines[6]).toEqual({ line: 9, op: 'reclaim', reclaimed: 2, lru_pages: 0 });
  });

  it('--stats: the summary table after the run', () => {
    const r = cli(['run', '--stats', write('classic.trace', CLASSIC)]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe([...CLASSIC_OUT, ...STATS].join('\n') + '\n');
  });

  it('--stats --json: one stats object last', () => {
    const r = cli(['run', '--stats', '--json', write('classic.trace', CLASSIC)]);
    const last = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { op: string; stats: Record<string, number> };
    expect(last.op).toBe('stats');
    expect(last.stats['notifier calls']).toBe(15);
    expect(last.stats['swap outs']).toBe(2);
  });

  it('MGLRU: lru_age prints the new max_seq and min_seq', () => {
    const r = cli(['run', write('mglru.trace', MGLRU)]);
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n').at(-1)).toBe('5: lru_age max_seq=4 min_seq=1');
  });

  it('failed expect folio / lru / data / counter: exit 1 with what was found', () => {
    const text = CLASSIC.replace('expect folio gpa=0x0 swapped=1 mapped=0 lru=none', 'expect folio gpa=0x0 lru=active referenced=1')
      .replace('expect lru active=0 inactive=0', 'expect lru inactive=3')
      .replace('expect counter event_protection_vma=2', 'expect counter event_protection_vma=1');
    const r = cli(['run', write('fail.trace', text)]);
    expect(r.status).toBe(1);
    const f = join(dir, 'fail.trace');
    expect(r.stderr).toBe(
      [
        `${f}:10: expect folio lru: expected active, got none (gpa 0x0: mapped=0 swapped=1 lru=none)`,
        `${f}:10: expect folio referenced: expected 1, got no resident folio at gpa 0x0 (mapped=0 swapped=1 lru=none)`,
        `${f}:11: expect lru inactive: expected 3, got 0 (active=0 inactive=0)`,
        `${f}:14: expect counter event_protection_vma: expected 1, got 2`,
        '',
      ].join('\n'),
    );
  });

  it('expect data names the page whose content is not its last write', () => {
    // madvise(DONTNEED) discards page 0's data: its expected token becomes 0, and it reads 0 -> holds.
    const ok = cli(['run', write('d.trace', 'vm tdp=ept memory=64K tlb=off\ncpu cr0=0x11\naccess gva=0x0 write\nmadvise_dontneed gpa=0 size=4K\nexpect data gpa=0\nexpect data\n')]);
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
  });
});

describe('mmulab lru_gen', () => {
  it('prints the debugfs layout at the end of an MGLRU run, or at --at', () => {
    const file = write('mglru.trace', MGLRU);
    const r = cli(['lru_gen', file]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(
      'memcg     0 /\n node     0\n          1          0          0           0 \n          2          0          2           0 \n          3          0          0           0 \n          4          0          0           0 \n',
    );
    expect(lruGenCommand(file, { at: '4' })).toEqual([
      'memcg     0 /', ' node     0',
      '          0          0          0           0 ', '          1          0          0           0 ',
      '          2          0          2           0 ', '          3          0          0           0 ',
    ]);
  });

  it('refuses a trace without MGLRU, and a bad --at (exit 2)', () => {
    const file = write('classic.trace', CLASSIC);
    const r = cli(['lru_gen', file]);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`lru_gen: ${file} does not use MGLRU: its first line must be 'vm ... lru=mglru'\n`);
    expect(usage(() => lruGenCommand(write('mglru.trace', MGLRU), { at: 'x' }))).toBe("--at: expected a decimal or 0x hex number, got 'x'");
  });
});

describe('bad host-mm input: exit 2, FILE:LINE:COL, nothing run', () => {
  const cases: [string, string, string][] = [
    ['policy without MGLRU', 'vm tdp=ept policy=current\n', "1:12: vm: policy= chooses how MGLRU asks KVM about young pages; it needs lru=mglru"],
    ['lru_age on the classic LRU', 'vm tdp=ept\naccess gva=0 read\nlru_age\n', '3:1: lru_age: an MGLRU aging pass needs lru=mglru on the vm line'],
    ['MGLRU keys on the classic LRU', 'vm tdp=ept\nexpect lru gen0=1\n', "2:12: expect lru: gen0= is MGLRU's; with the classic LRU check active=, inactive="],
    ['mprotect over a hole', 'vm tdp=ept memory=64K\nmprotect gpa=0x8000 size=64K ro\n', '2:10: mprotect: ENOMEM: gpa 0x10000 of the range 0x8000+0x10000 is not mapped'],
    ['host_memory not page sized', 'vm tdp=ept host_memory=5\n', '1:12: vm: host_memory 0x5 is not a non-zero multiple of 4K'],
    ['host-mm with 2M host pages', 'vm tdp=ept host_page=2m lru=classic\n', '1:25: vm: lru= needs host_page=4k (the host-mm layer reclaims 4K folios only)'],
    ['mremap growing into a memslot', 'vm tdp=ept memory=64K\nmemslot slot=1 gpa=0x10000 size=64K\nmremap gpa=0x8000 size=32K new_size=64K\n', '3:28: mremap: ENOMEM: 0x7f0000008000+0x8000 cannot grow to 0x10000 in place and MREMAP_MAYMOVE is not set'],
    ['mremap past its area', 'vm tdp=ept memory=64K\nmunmap gpa=0x8000 size=4K\nmremap gpa=0 size=64K to=0x100000000\n', '3:8: mremap: EFAULT: 0x7f0000000000+0x10000 runs past the area 0x7f0000000000..0x7f0000008000'],
    ['mremap of an hva with no area', 'vm tdp=ept memory=64K\nmremap hva=0x100000000 size=4K to=0x200000000\n', '2:8: mremap: EFAULT: no area at 0x100000000'],
    ['mremap with gpa= and hva=', 'vm tdp=ept memory=64K\nmremap gpa=0 hva=0x7f0000000000 size=4K\n', '2:1: mremap: give the old address as gpa= (guest memory) or hva= (an area moved away before), one of them'],
    ['mremap onto itself', 'vm tdp=ept memory=64K\nmremap gpa=0 size=64K to=0x7f0000008000\n', '2:23: mremap: EINVAL: new range 0x7f0000008000+0x10000 overlaps the old range 0x7f0000000000+0x10000'],
    ['madvise_free after mremap', 'vm tdp=ept memory=64K\nmremap gpa=0 size=64K to=0x100000000\nmadvise_free gpa=0 size=4K\n', '3:14: madvise_free: ENOMEM: gpa 0x0 of the range 0x0+0x1000 is unmapped at line 2'],
    ['migrate with MGLRU', 'vm tdp=ept lru=mglru\nmigrate gpa=0\n', '2:1: migrate: not modelled with lru=mglru (lazyfree and migrated folios on MGLRU lists); use the classic LRU'],
    ['migrate outside memory', 'vm tdp=ept memory=64K\nmigrate gpa=0x20000\n', '2:9: migrate: gpa 0x20000 is not in a memslot'],
  ];
  for (const [name, text, msg] of cases) {
    it(name, () => {
      const file = write('bad.trace', text);
      const r = cli(['run', file]);
      expect(r.status).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toBe(`${file}:${msg}\n`);
    });
  }

  it('--stats on a hardware-level trace', () => {
    const file = write('hw.trace', 'machine mode=native\n');
    const r = cli(['run', '--stats', file]);
    expect(r.status).toBe(2);
    expect(r.stderr).toBe(`--stats: ${file} is a hardware-level trace ('machine'); the summary is of VM-level traces ('vm')\n`);
  });
});

describe('mmulab run: fork', () => {
  const FORK = [
    'vm tdp=ept memory=64K tlb=off', // 1
    'cpu cr0=0x11', // 2
    'access gva=0x0 write', // 3
    'access gva=0x1000 write', // 4
    'fork', // 5
    'child_write gpa=0x1000', // 6
    'child_write hva=0x10000', // 7: nothing mapped there
    'access gva=0x0 write', // 8: COW copy in the VMM
    'child_exit', // 9
    '',
  ].join('\n');

  it('--json --stats: the fork and child_write records, and the fork rows of the summary', () => {
    const r = cli(['run', '--json', '--stats', write('fork.trace', FORK)]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const ops = lines.filter((l) => l.op !== 'access');
    expect(ops[0]).toEqual({ line: 5, op: 'fork', vmas: 1, cow_vmas: 1, ptes: 2, swap_entries: 0 });
    expect(ops[1]).toMatchObject({ line: 6, op: 'child_write', gpa: '0x1000', segv: 0, copied: 1 });
    expect(ops[2]).toEqual({ line: 7, op: 'child_write', hva: '0x10000', segv: 1 });
    const stats = (ops.at(-1) as { stats: Record<string, number> }).stats;
    expect(stats['forks']).toBe(1);
    expect(stats['PTEs shared copy-on-write']).toBe(2);
    expect(stats['swap entries shared']).toBe(0);
    expect(stats['COW copies by the VMM (wp_page_copy)']).toBe(1);
    expect(stats['shared folios kept by reclaim']).toBe(0);
    expect(stats['event MMU_NOTIFY_PROTECTION_PAGE']).toBe(2);
    expect(stats['event MMU_NOTIFY_CLEAR']).toBe(2);
  });

  it('a second fork while the child lives: exit 2, FILE:LINE:COL, nothing run', () => {
    const file = write('fork2.trace', 'vm tdp=ept memory=64K\nfork\nfork\n');
    const r = cli(['run', file]);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`${file}:3:1: fork: the child forked at line 2 is still alive; one child at a time ('child_exit' first)\n`);
  });
});
