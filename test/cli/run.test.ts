/**
 * `mmulab run` as a process (trace-format.md): exit status 0/1/2, the JSON
 * lines of `--json` (exact text, so key order too), the `FILE:LINE:` message
 * of a failed expect, and `FILE:LINE:COL: message` for invalid input, which
 * must stop the run before the first command executes.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VERBS } from '../../src/trace/verbs.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const BIN = join(REPO, 'bin', 'mmulab.js');

let dir = '';

beforeAll(() => {
  execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO, stdio: 'pipe' });
  dir = mkdtempSync(join(tmpdir(), 'mmulab-cli-'));
}, 120_000);

afterAll(() => {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Write `text` to a trace file named `name` and run `mmulab run [args] FILE`. */
function run(name: string, text: string, args: string[] = []): Run & { file: string } {
  const file = join(dir, name);
  writeFileSync(file, text);
  return { file, ...runFile(file, args) };
}

function runFile(file: string, args: string[] = []): Run {
  const r = spawnSync(process.execPath, [BIN, 'run', ...args, file], { cwd: REPO, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** 4-level native tables: LA 0x80_4020_1000 -> 0x5000 (indices 1,1,1,1), PTE[2] not present. */
const NATIVE = [
  'machine mode=native', // 1
  'cpu cr3=0x1000', // 2
  'poke hpa=0x1008 value=0x2007', // 3
  'poke hpa=0x2008 value=0x3007', // 4
  'poke hpa=0x3008 value=0x4007', // 5
  'poke hpa=0x4008 value=0x5007', // 6
  'access gva=0x8040201abc read', // 7: ok, A set in all four entries
  'peek hpa=0x4008', // 8: 0x5027
  'access gva=0x8040202000 write', // 9: PTE[2] not present -> #PF W
  'access gva=0x800000000000 fetch', // 10: non-canonical -> #GP
  '',
].join('\n');

/** EPT (A/D off): gPA page N -> hPA 0x1000_0000 + N*0x1000; data gPA 0x6000 unmapped, 0x7000 write-only. */
const EPT = [
  'machine mode=ept', // 1
  'cpu cr3=0x1000 eptp=0x10001e', // 2
  'poke hpa=0x100000 value=0x101007', // 3
  'poke hpa=0x101000 value=0x102007', // 4
  'poke hpa=0x102000 value=0x103007', // 5
  'poke hpa=0x103008 value=0x10001037', // 6
  'poke hpa=0x103010 value=0x10002037', // 7
  'poke hpa=0x103018 value=0x10003037', // 8
  'poke hpa=0x103020 value=0x10004037', // 9
  'poke hpa=0x103028 value=0x10005037', // 10
  'poke hpa=0x103038 value=0x10007032', // 11: W only -> misconfigured
  'poke hpa=0x10001008 value=0x2007', // 12
  'poke hpa=0x10002008 value=0x3007', // 13
  'poke hpa=0x10003008 value=0x4007', // 14
  'poke hpa=0x10004008 value=0x5007', // 15
  'poke hpa=0x10004010 value=0x6007', // 16
  'poke hpa=0x10004018 value=0x7007', // 17
  'access gva=0x8040201abc read', // 18: ok
  'access gva=0x8040202008 write', // 19: EPT violation, Q = WR|7|8
  'access gva=0x8040203000 fetch', // 20: misconfiguration
  '',
].join('\n');

/** NPT with empty nested tables: the first guest-PT access (guest PML4E[1], gPA 0x1008) faults. */
const NPT = ['machine mode=npt', 'cpu cr3=0x1000 ncr3=0x100000', 'access vcpu=0 gva=0x8040201abc read', ''].join('\n');

describe('mmulab run --json', () => {
  it('prints the contract JSON lines for accesses and peeks and exits 0', () => {
    const r = run('native.trace', NATIVE, ['--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(
      [
        '{"line":7,"op":"access","vcpu":0,"gva":"0x8040201abc","kind":"read","result":"ok","hpa":"0x5abc"}',
        '{"line":8,"op":"peek","hpa":"0x4008","value":"0x5027"}',
        '{"line":9,"op":"access","vcpu":0,"gva":"0x8040202000","kind":"write","result":"pf","error_code":"0x2","cr2":"0x8040202000"}',
        '{"line":10,"op":"access","vcpu":0,"gva":"0x800000000000","kind":"fetch","result":"gp"}',
        '',
      ].join('\n'),
    );
  });

  it('prints gpa, EPT-violation and misconfiguration fields in ept mode', () => {
    const r = run('ept.trace', EPT, ['--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe(
      [
        '{"line":18,"op":"access","vcpu":0,"gva":"0x8040201abc","kind":"read","result":"ok","hpa":"0x10005abc","gpa":"0x5abc"}',
        '{"line":19,"op":"access","vcpu":0,"gva":"0x8040202008","kind":"write","result":"ept_violation","qualification":"0x182","gpa":"0x6008","gla":"0x8040202008"}',
        '{"line":20,"op":"access","vcpu":0,"gva":"0x8040203000","kind":"fetch","result":"ept_misconfig","gpa":"0x7000"}',
        '',
      ].join('\n'),
    );
  });

  it('prints EXITINFO1/EXITINFO2 in npt mode', () => {
    const r = run('npt.trace', NPT, ['--json']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    // W|U (guest-PT accesses are writes, nested accesses are user) | bit 33 (guest page); EXITINFO2 = gPA of the entry.
    expect(r.stdout).toBe(
      '{"line":3,"op":"access","vcpu":0,"gva":"0x8040201abc","kind":"read","result":"npf","exitinfo1":"0x200000006","exitinfo2":"0x1008"}\n',
    );
  });

  it('orders keys line, op, vcpu, gva, kind, result, then the result fields', () => {
    const resultFields: Record<string, string[]> = {
      ok: ['hpa'],
      pf: ['error_code', 'cr2'],
      gp: [],
      ept_violation: ['qualification', 'gpa', 'gla'],
      ept_misconfig: ['gpa'],
      npf: ['exitinfo1', 'exitinfo2'],
    };
    const seen = new Set<string>();
    for (const [name, text] of [['n.trace', NATIVE], ['e.trace', EPT], ['p.trace', NPT]] as const) {
      const r = run(name, text, ['--json']);
      expect(r.status).toBe(0);
      for (const line of r.stdout.trim().split('\n')) {
        const o = JSON.parse(line) as Record<string, unknown>;
        if (o.op !== 'access') {
          expect(Object.keys(o)).toEqual(['line', 'op', 'hpa', 'value']);
          continue;
        }
        const result = o.result as string;
        seen.add(result);
        let fields = resultFields[result];
        if (result === 'ok' && name !== 'n.trace') fields = ['hpa', 'gpa'];
        expect(Object.keys(o)).toEqual(['line', 'op', 'vcpu', 'gva', 'kind', 'result', ...fields]);
        expect(typeof o.line).toBe('number');
        expect(typeof o.vcpu).toBe('number');
        for (const k of ['gva', ...fields]) expect(o[k]).toMatch(/^0x(0|[1-9a-f][0-9a-f]*)$/);
      }
    }
    expect([...seen].sort()).toEqual(Object.keys(resultFields).sort());
  });
});

describe('mmulab run: a failed expect', () => {
  it('exits 1 with FILE:LINE: expect ... on stderr', () => {
    const text = [
      NATIVE.trimEnd(),
      'access gva=0x8040201abc read', // 11: ok
      'expect result=pf', // 12: fails
      'expect result=ok hpa=0x5abd', // 13: fails
      'expect_mem hpa=0x4008 value=0x5067', // 14: fails (A only)
      'expect result=ok hpa=0x5abc tlb=hit', // 15: holds
      '',
    ].join('\n');
    const r = run('fail.trace', text);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(
      [
        `${r.file}:12: expect result: expected pf, got ok (line 11)`,
        `${r.file}:13: expect hpa: expected 0x5abd, got 0x5abc (line 11)`,
        `${r.file}:14: expect_mem hpa=0x4008: expected 0x5067, got 0x5027`,
        '',
      ].join('\n'),
    );
    // The run itself went to the end.
    expect(r.stdout.trim().split('\n')).toHaveLength(5);
  });
});

describe('mmulab run: invalid input', () => {
  const verbs = Object.keys(VERBS).join(', ');
  // An access comes before each bad line: nothing may be printed, since the run must not start.
  const head = 'machine mode=native vcpus=2\naccess gva=0x1000 read\npeek hpa=0x0\n';
  const cases: [string, string, string][] = [
    ['unknown verb', head + 'frob gva=0x1000\n', `4:1: unknown verb 'frob' (expected one of: ${verbs})`],
    ['bad number', head + 'poke hpa=0x10g0 value=1\n', `4:6: poke: hpa: bad number '0x10g0' (expected decimal or 0x hex)`],
    ['number out of range', head + 'poke hpa=0x1000 value=0x1_0000_0000_0000_0000\n', `4:17: poke: value: number '0x1_0000_0000_0000_0000' out of 64-bit range (max 0xffffffffffffffff)`],
    ['missing key', head + 'poke hpa=0x1000\n', `4:1: poke: missing required key 'value'`],
    ['vcpu out of range', head + 'access vcpu=2 gva=0x1000 read\n', `4:8: access: vcpu 2 does not exist (machine has 2 vcpus: 0..1)`],
    ['machine not first', 'cpu cr3=0x1000\nmachine mode=native\naccess gva=0x1000 read\n', `1:1: expected a 'machine' or 'vm' command first, got 'cpu'`],
    ['tlb set count not a power of two', 'machine mode=native tlb_entries=96 tlb_ways=4\naccess gva=0x1000 read\n', `1:21: machine: tlb_entries (96) / tlb_ways (4) must be a power of two`],
    ['tlb_ways not dividing the default entries', 'machine mode=native tlb_ways=5\naccess gva=0x1000 read\n', `1:21: machine: tlb_entries (1536) / tlb_ways (5) must be a power of two`],
  ];
  for (const [what, text, message] of cases) {
    for (const args of [[], ['--json']]) {
      it(`${what}${args.length ? ' (--json)' : ''}: exit 2, FILE:LINE:COL: message, nothing on stdout`, () => {
        const r = run(`bad-${what.replace(/ /g, '-')}.trace`, text, args);
        expect(r.stderr).toBe(`${r.file}:${message}\n`);
        expect(r.status).toBe(2);
        expect(r.stdout).toBe('');
        expect(r.stderr).not.toContain('    at ');
      });
    }
  }

  it('a file that is not UTF-8: exit 2 naming the line and column of the first bad byte', () => {
    const file = join(dir, 'latin1.trace');
    writeFileSync(file, Buffer.concat([Buffer.from(head + '# caf'), Buffer.from([0xe9]), Buffer.from('\n')]));
    const r = runFile(file);
    expect(r.stderr).toBe(`${file}:4:6: not UTF-8 text (a trace is UTF-8, trace-format.md)\n`);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
  });

  it('a long bad token is cut in the message', () => {
    const r = run('long-token.trace', head + 'x'.repeat(100) + ' gva=0x1000\n');
    expect(r.stderr).toBe(`${r.file}:4:1: unknown verb '${'x'.repeat(40)}... (100 characters)' (expected one of: ${verbs})\n`);
    expect(r.status).toBe(2);
  });

  it('a missing file: exit 2 with a one-line message', () => {
    const file = join(dir, 'no-such.trace');
    const r = runFile(file);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.startsWith(`${file}: `)).toBe(true);
    expect(r.stderr.endsWith('\n')).toBe(true);
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).not.toContain('    at ');
  });
});
