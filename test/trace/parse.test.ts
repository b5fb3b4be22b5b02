import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import Long from 'long';
import { parseNumber, parseSize, parseTrace } from '../../src/trace/parse.js';
import { TraceError, type Command } from '../../src/trace/ast.js';
import { VERBS } from '../../src/trace/verbs.js';
import { parseError } from '../support/trace_error.js';

const M = 'machine mode=native\n';

const err = parseError;

function numErr(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(Error);
    expect(e).not.toBeInstanceOf(TraceError);
    return (e as Error).message;
  }
  throw new Error('expected an Error');
}

function cmds(text: string): Command[] {
  return parseTrace('t.trace', text).commands;
}

function hex(v: unknown): string {
  const l = v as Long;
  expect(Long.isLong(l)).toBe(true);
  expect(l.unsigned).toBe(true);
  return '0x' + l.toString(16);
}

describe('parseNumber', () => {
  it('reads decimal', () => {
    expect(parseNumber('0').toString()).toBe('0');
    expect(parseNumber('4096').toString()).toBe('4096');
    expect(parseNumber('007').toString()).toBe('7');
    expect(parseNumber('1_000_000').toString()).toBe('1000000');
    expect(parseNumber('9007199254740993').toString()).toBe('9007199254740993'); // 2^53 + 1
    expect(parseNumber('18446744073709551615').toString()).toBe('18446744073709551615');
    expect(parseNumber('000018446744073709551615').toString()).toBe('18446744073709551615');
  });

  it('reads hex', () => {
    expect(hex(parseNumber('0x1000'))).toBe('0x1000');
    expect(hex(parseNumber('0x0'))).toBe('0x0');
    expect(hex(parseNumber('0xDEADbeef'))).toBe('0xdeadbeef');
    expect(hex(parseNumber('0xffff_8000_0000_0000'))).toBe('0xffff800000000000');
    expect(hex(parseNumber('0x8000000000000000'))).toBe('0x8000000000000000');
    expect(hex(parseNumber('0x1_0000_0000'))).toBe('0x100000000');
    expect(hex(parseNumber('0xffffffffffffffff'))).toBe('0xffffffffffffffff');
    expect(hex(parseNumber('0x0000ffffffffffffffff'))).toBe('0xffffffffffffffff');
  });

  it('returns unsigned Longs', () => {
    const n = parseNumber('0xffffffffffffffff');
    expect(n.unsigned).toBe(true);
    expect(n.equals(Long.MAX_UNSIGNED_VALUE)).toBe(true);
    expect(parseNumber('5').unsigned).toBe(true);
  });

  it('rejects values beyond 64 bits', () => {
    expect(numErr(() => parseNumber('0x1_0000_0000_0000_0000'))).toBe(
      "number '0x1_0000_0000_0000_0000' out of 64-bit range (max 0xffffffffffffffff)",
    );
    expect(numErr(() => parseNumber('0x10000000000000000'))).toBe(
      "number '0x10000000000000000' out of 64-bit range (max 0xffffffffffffffff)",
    );
    expect(numErr(() => parseNumber('18446744073709551616'))).toBe(
      "number '18446744073709551616' out of 64-bit range (max 0xffffffffffffffff)",
    );
    expect(numErr(() => parseNumber('100000000000000000000'))).toBe(
      "number '100000000000000000000' out of 64-bit range (max 0xffffffffffffffff)",
    );
  });

  it('rejects bad syntax', () => {
    expect(numErr(() => parseNumber('x'))).toBe("bad number 'x' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber(''))).toBe("bad number '' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber('0x'))).toBe("bad number '0x' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber('0X10'))).toBe("bad number '0X10' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber('12a'))).toBe("bad number '12a' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber('0xfg'))).toBe("bad number '0xfg' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber('-1'))).toBe("bad number '-1' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber('+1'))).toBe("bad number '+1' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber(' 1'))).toBe("bad number ' 1' (expected decimal or 0x hex)");
    expect(numErr(() => parseNumber('2M'))).toBe("bad number '2M' (expected decimal or 0x hex)");
  });

  it('rejects misplaced underscores', () => {
    for (const t of ['_1', '1_', '1__0', '0x_1', '0x1_', '0x1__0', '_']) {
      expect(numErr(() => parseNumber(t))).toBe(`bad number '${t}' ('_' may only separate digits)`);
    }
  });

  it('agrees with BigInt on random values', () => {
    const max = (1n << 64n) - 1n;
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 66n) }), fc.boolean(), (v, useHex) => {
        const text = useHex ? '0x' + v.toString(16) : v.toString();
        if (v > max) {
          expect(() => parseNumber(text)).toThrow('out of 64-bit range');
        } else {
          expect(parseNumber(text).toString()).toBe(v.toString());
        }
      }),
      { numRuns: 2000 },
    );
  });
});

describe('parseSize', () => {
  it('reads plain numbers and suffixes', () => {
    expect(parseSize('4096').toString()).toBe('4096');
    expect(parseSize('0x1000').toString()).toBe('4096');
    expect(parseSize('4K').toString()).toBe('4096');
    expect(parseSize('2M').toString()).toBe('2097152');
    expect(parseSize('1G').toString()).toBe('1073741824');
    expect(parseSize('1T').toString()).toBe('1099511627776');
    expect(parseSize('1_024K').toString()).toBe('1048576');
    expect(parseSize('0x10M').toString()).toBe('16777216');
    expect(hex(parseSize('16777215T'))).toBe('0xffffff0000000000');
    expect(parseSize('2M').unsigned).toBe(true);
  });

  it('rejects overflow and bad sizes', () => {
    expect(numErr(() => parseSize('16777216T'))).toBe(
      "size '16777216T' out of 64-bit range (max 0xffffffffffffffff)",
    );
    expect(numErr(() => parseSize('0x1_0000_0000_0000_0000'))).toBe(
      "size '0x1_0000_0000_0000_0000' out of 64-bit range (max 0xffffffffffffffff)",
    );
    expect(numErr(() => parseSize('2m'))).toBe(
      "bad size '2m' (expected decimal or 0x hex, optionally followed by K, M, G or T)",
    );
    expect(numErr(() => parseSize('M'))).toBe(
      "bad size 'M' (expected decimal or 0x hex, optionally followed by K, M, G or T)",
    );
    expect(numErr(() => parseSize('2KK'))).toBe(
      "bad size '2KK' (expected decimal or 0x hex, optionally followed by K, M, G or T)",
    );
    expect(numErr(() => parseSize('2_M'))).toBe("bad size '2_M' ('_' may only separate digits)");
  });
});

describe('parseTrace: structure', () => {
  it('parses commands with their positions, args and words', () => {
    const t = parseTrace('a.trace', M + 'access gva=0x1000 write size=8 implicit\n');
    expect(t.file).toBe('a.trace');
    expect(t.commands.length).toBe(2);
    const [m, a] = t.commands;
    expect(m.verb).toBe('machine');
    expect(m.line).toBe(1);
    expect(m.col).toBe(1);
    expect(m.args.get('mode')).toEqual({ value: 'native', line: 1, col: 9 });
    expect(a.verb).toBe('access');
    expect(a.line).toBe(2);
    expect(hex(a.args.get('gva')!.value)).toBe('0x1000');
    expect(a.args.get('gva')!.col).toBe(8);
    expect(a.args.get('size')).toEqual({ value: 8, line: 2, col: 25 });
    expect([...a.words].sort()).toEqual(['implicit', 'write']);
    expect(a.args.has('vcpu')).toBe(false);
  });

  it('ignores comments, blank lines, and extra spaces and tabs', () => {
    const text = [
      '# a scenario',
      '',
      '   ',
      '\t',
      'machine mode=ept vcpus=2   # two vCPUs',
      '  # indented comment',
      '\tpoke\thpa=0x1000  value=0x3#no space before the comment',
      'access vcpu=1 gva=0 read#',
      '#',
    ].join('\n');
    const c = cmds(text);
    expect(c.map((x) => [x.verb, x.line, x.col])).toEqual([
      ['machine', 5, 1],
      ['poke', 7, 2],
      ['access', 8, 1],
    ]);
    expect(c[0].args.get('vcpus')!.value).toBe(2);
    expect(hex(c[1].args.get('value')!.value)).toBe('0x3');
    expect(c[1].args.get('value')!.col).toBe(19);
    expect(c[2].args.get('vcpu')!.value).toBe(1);
  });

  it('accepts CRLF line ends, a byte-order mark and a missing final newline', () => {
    const c = cmds('\ufeffmachine mode=npt\r\nflush\r\npeek hpa=8');
    expect(c.map((x) => x.verb)).toEqual(['machine', 'flush', 'peek']);
    expect(c[0].args.get('mode')!.value).toBe('npt');
  });

  it('does not care about argument order', () => {
    const a = cmds(M + 'access gva=0x2000 vcpu=0 write size=4 implicit\n')[1];
    const b = cmds(M + 'access implicit size=4 write vcpu=0 gva=0x2000\n')[1];
    for (const x of [a, b]) {
      expect(hex(x.args.get('gva')!.value)).toBe('0x2000');
      expect(x.args.get('vcpu')!.value).toBe(0);
      expect(x.args.get('size')!.value).toBe(4);
      expect([...x.words].sort()).toEqual(['implicit', 'write']);
    }
    const m = cmds('machine maxphyaddr=52 tlb=off mode=ept\n')[0];
    expect(m.args.get('mode')!.value).toBe('ept');
    expect(m.args.get('maxphyaddr')!.value).toBe(52);
    expect(m.args.get('tlb')!.value).toBe('off');
  });

  it('reads int arguments in decimal or hex, with underscores', () => {
    const c = cmds(M + 'cpu cpl=0x3 vpid=0xffff ac=1\n');
    expect(c[1].args.get('cpl')!.value).toBe(3);
    expect(c[1].args.get('vpid')!.value).toBe(65535);
    expect(c[1].args.get('ac')!.value).toBe(1);
    expect(cmds('machine mode=native tlb_entries=65_536\n')[0].args.get('tlb_entries')!.value).toBe(65536);
  });

  it('reads full 64-bit values', () => {
    const c = cmds(M + 'cpu cr3=0xffffffffffffffff efer=18446744073709551615 cr4=0xffff_8000_0000_0000\n')[1];
    expect(hex(c.args.get('cr3')!.value)).toBe('0xffffffffffffffff');
    expect(hex(c.args.get('efer')!.value)).toBe('0xffffffffffffffff');
    expect(hex(c.args.get('cr4')!.value)).toBe('0xffff800000000000');
  });

  it('accepts the hardware verbs of the contract', () => {
    const text = [
      'machine mode=ept vcpus=4 maxphyaddr=52 tlb=on',
      'poke hpa=0x1000 value=0x2007',
      'peek hpa=0x1000',
      'cpu vcpu=3 cr0=0x80010001 cr3=0x1000 cr4=0x20 efer=0xd00 cpl=3 ac=1 pkru=0 pkrs=0 eptp=0x5e ncr3=0 vpid=1 asid=1',
      'access vcpu=1 gva=0x7fff_ffff_f000 fetch size=4096 implicit',
      'invlpg gva=0x1000',
      'invpcid type=0 pcid=1 gva=0x1000',
      'invvpid type=3 vpid=1 gva=0',
      'invept single eptp=0x5e',
      'invept global',
      'flush vcpu=2',
    ].join('\n');
    expect(cmds(text).length).toBe(11);
  });

  it('accepts the project extension verbs', () => {
    const text = [
      'machine mode=npt',
      'vmexit',
      'vmrun tlb_control=3',
      'invlpga gva=0x1000 asid=1',
      'access gva=0 read',
      'expect result=npf exitinfo1=0x4 exitinfo2=0 tlb=miss refs=24',
      'expect result=ept_violation no_gla',
      'expect_mem hpa=0x1000 value=0x21 mask=0xff',
    ].join('\n');
    expect(cmds(text).length).toBe(8);
  });

  it('parses a 100k-line trace into 100k+1 commands', () => {
    const lines = [M];
    for (let i = 0; i < 100_000; i++) {
      lines.push(`access vcpu=0 gva=0x${(i * 4096).toString(16)} ${i % 2 ? 'read' : 'write'} size=8 # ${i}\n`);
    }
    const c = cmds(lines.join(''));
    expect(c.length).toBe(100_001);
    expect(c[100_000].line).toBe(100_001);
  });
});

describe('parseTrace: errors', () => {
  it('reports an empty trace', () => {
    expect(err('', 'e.trace')).toBe("e.trace:1:1: empty trace: expected a 'machine' or 'vm' command first");
    expect(err('# only a comment\n\n   \n')).toBe("t.trace:1:1: empty trace: expected a 'machine' or 'vm' command first");
  });

  it('reports an unknown verb with the list of verbs', () => {
    const all = Object.keys(VERBS).join(', ');
    expect(all.startsWith('machine, poke, peek, cpu, access, invlpg, ')).toBe(true);
    expect(err(M + 'acess gva=0 read\n')).toBe(`t.trace:2:1: unknown verb 'acess' (expected one of: ${all})`);
    expect(err(M + '  frob\n')).toBe(`t.trace:2:3: unknown verb 'frob' (expected one of: ${all})`);
    expect(err(M + 'gva=0\n')).toBe(`t.trace:2:1: expected a verb, got 'gva=0' (expected one of: ${all})`);
  });

  it('rejects upper-case verbs, keys and words', () => {
    expect(err('MACHINE mode=native\n')).toBe("t.trace:1:1: verb 'MACHINE' must be lower case ('machine')");
    expect(err(M + 'Access gva=0 read\n')).toBe("t.trace:2:1: verb 'Access' must be lower case ('access')");
    expect(err(M + 'access GVA=0 read\n')).toBe("t.trace:2:8: access: key 'GVA' must be lower case ('gva')");
    expect(err(M + 'access gva=0 READ\n')).toBe("t.trace:2:14: access: word 'READ' must be lower case ('read')");
  });

  it('requires machine first, and only once', () => {
    expect(err('poke hpa=0 value=0\n')).toBe("t.trace:1:1: expected a 'machine' or 'vm' command first, got 'poke'");
    expect(err('# hdr\n\n  flush\nmachine mode=native\n')).toBe(
      "t.trace:3:3: expected a 'machine' or 'vm' command first, got 'flush'",
    );
    expect(err('expect result=ok\n')).toBe("t.trace:1:1: expected a 'machine' or 'vm' command first, got 'expect'");
    expect(err(M + 'flush\nmachine mode=ept\n')).toBe('t.trace:3:1: machine may appear only once (first at line 1)');
  });

  it('reports unknown keys', () => {
    expect(err(M + 'access gav=0 read\n')).toBe(
      "t.trace:2:8: access: unknown key 'gav' (expected one of: vcpu, gva, size)",
    );
    expect(err(M + 'flush cr3=0\n')).toBe("t.trace:2:7: flush: unknown key 'cr3' (expected one of: vcpu)");
    expect(err(M + 'access gva=0 read=1\n')).toBe(
      "t.trace:2:14: access: 'read' is a bare word, not a key (write it without '=')",
    );
    expect(err(M + 'access =0 read\n')).toBe("t.trace:2:8: access: expected key=value or a word, got '=0'");
  });

  it('reports duplicate keys at the second one', () => {
    expect(err(M + 'access gva=0 read gva=0x1000\n')).toBe("t.trace:2:19: access: duplicate key 'gva'");
  });

  it('reports missing required keys at the verb', () => {
    expect(err(M + 'access read\n')).toBe("t.trace:2:1: access: missing required key 'gva'");
    expect(err(M + '   poke value=1\n')).toBe("t.trace:2:4: poke: missing required key 'hpa'");
    expect(err(M + 'poke hpa=0\n')).toBe("t.trace:2:1: poke: missing required key 'value'");
    expect(err('machine vcpus=2\n')).toBe("t.trace:1:1: machine: missing required key 'mode'");
    expect(err(M + 'invpcid pcid=1\n')).toBe("t.trace:2:1: invpcid: missing required key 'type'");
  });

  it('reports a key given without a value', () => {
    expect(err(M + 'access gva read\n')).toBe("t.trace:2:8: access: key 'gva' needs a value (gva=...)");
  });

  it('reports bad u64 values', () => {
    expect(err(M + 'poke hpa=zz value=0\n')).toBe(
      "t.trace:2:6: poke: hpa: bad number 'zz' (expected decimal or 0x hex)",
    );
    expect(err(M + 'poke hpa=0 value=\n')).toBe("t.trace:2:12: poke: value: bad number '' (expected decimal or 0x hex)");
    expect(err(M + 'poke hpa=0 value=0x1_0000_0000_0000_0000\n')).toBe(
      "t.trace:2:12: poke: value: number '0x1_0000_0000_0000_0000' out of 64-bit range (max 0xffffffffffffffff)",
    );
    expect(err(M + 'cpu cr3=1__0\n')).toBe("t.trace:2:5: cpu: cr3: bad number '1__0' ('_' may only separate digits)");
    expect(err(M + 'access gva=0x1000=2 read\n')).toBe(
      "t.trace:2:8: access: gva: bad number '0x1000=2' (expected decimal or 0x hex)",
    );
  });

  it('reports bad int values with the range', () => {
    expect(err(M + 'cpu cpl=4\n')).toBe("t.trace:2:5: cpu: cpl must be an integer in 0..3, got '4'");
    expect(err(M + 'cpu cpl=-1\n')).toBe("t.trace:2:5: cpu: cpl must be an integer in 0..3, got '-1'");
    expect(err(M + 'cpu cpl=x\n')).toBe("t.trace:2:5: cpu: cpl must be an integer in 0..3, got 'x'");
    expect(err(M + 'cpu ac=0x100000001\n')).toBe("t.trace:2:5: cpu: ac must be an integer in 0..1, got '0x100000001'");
    expect(err(M + 'access gva=0 read size=0\n')).toBe(
      "t.trace:2:19: access: size must be an integer in 1..4096, got '0'",
    );
    expect(err('machine mode=native maxphyaddr=53\n')).toBe(
      "t.trace:1:21: machine: maxphyaddr must be an integer in 36..52, got '53'",
    );
    expect(err(M + 'flush vcpu=64\n')).toBe("t.trace:2:7: flush: vcpu must be an integer in 0..63, got '64'");
  });

  it('reports bad enum values with the choices', () => {
    expect(err('machine mode=vmx\n')).toBe("t.trace:1:9: machine: mode must be one of native|ept|npt, got 'vmx'");
    expect(err('machine mode=native tlb=yes\n')).toBe("t.trace:1:21: machine: tlb must be one of on|off, got 'yes'");
    expect(err(M + 'access gva=0 read\nexpect result=OK\n')).toBe(
      "t.trace:3:8: expect: result must be one of ok|pf|gp|ept_violation|ept_misconfig|npf|vmfail|ud, got 'OK'",
    );
  });

  it('reports unknown bare words', () => {
    expect(err(M + 'access gva=0 reed\n')).toBe(
      "t.trace:2:14: access: unknown word 'reed' (expected one of: read, write, fetch, implicit)",
    );
    expect(err(M + 'flush now\n')).toBe("t.trace:2:7: flush: unknown word 'now' (flush takes no bare words)");
    expect(err(M + 'invept single\ninvept local\n')).toBe(
      "t.trace:3:8: invept: unknown word 'local' (expected one of: single, global)",
    );
  });

  it('reports two words from the same group', () => {
    expect(err(M + 'access gva=0 read write\n')).toBe(
      "t.trace:2:19: access: 'read' and 'write' exclude each other (give one of read|write|fetch)",
    );
    expect(err(M + 'invept global single\n')).toBe(
      "t.trace:2:15: invept: 'global' and 'single' exclude each other (give one of single|global)",
    );
    expect(err(M + 'access gva=0 read read\n')).toBe("t.trace:2:19: access: duplicate word 'read'");
    expect(err(M + 'access gva=0 read implicit implicit\n')).toBe("t.trace:2:28: access: duplicate word 'implicit'");
  });

  it('reports a missing required word group at the verb', () => {
    expect(err(M + 'access gva=0\n')).toBe('t.trace:2:1: access: expected one of the words read|write|fetch');
    expect(err(M + ' access gva=0 implicit\n')).toBe('t.trace:2:2: access: expected one of the words read|write|fetch');
    expect(err(M + 'invept eptp=0\n')).toBe('t.trace:2:1: invept: expected one of the words single|global');
  });

  it('checks vcpu against the machine', () => {
    expect(err(M + 'access vcpu=1 gva=0 read\n')).toBe(
      't.trace:2:8: access: vcpu 1 does not exist (machine has 1 vcpu: 0..0)',
    );
    expect(err('machine mode=ept vcpus=2\ncpu vcpu=1\nflush vcpu=2\n')).toBe(
      't.trace:3:7: flush: vcpu 2 does not exist (machine has 2 vcpus: 0..1)',
    );
    expect(cmds('machine mode=ept vcpus=64\nflush vcpu=63\n').length).toBe(2);
  });

  it('checks hpa alignment and maxphyaddr for poke, peek and expect_mem', () => {
    expect(err(M + 'poke hpa=0x1004 value=0\n')).toBe('t.trace:2:6: poke: hpa 0x1004 must be 8-byte aligned');
    expect(err(M + 'peek hpa=1\n')).toBe('t.trace:2:6: peek: hpa 0x1 must be 8-byte aligned');
    expect(err(M + 'expect_mem value=0 hpa=0x7\n')).toBe('t.trace:2:20: expect_mem: hpa 0x7 must be 8-byte aligned');
    expect(err(M + 'peek hpa=0x4000_0000_0000\n')).toBe(
      't.trace:2:6: peek: hpa 0x400000000000 is beyond maxphyaddr 46 (must be below 0x400000000000)',
    );
    expect(err('machine mode=native maxphyaddr=36\npoke hpa=0x1000000000 value=1\n')).toBe(
      't.trace:2:6: poke: hpa 0x1000000000 is beyond maxphyaddr 36 (must be below 0x1000000000)',
    );
    expect(err(M + 'peek hpa=0xffff_ffff_ffff_fff8\n')).toBe(
      't.trace:2:6: peek: hpa 0xfffffffffffffff8 is beyond maxphyaddr 46 (must be below 0x400000000000)',
    );
    const ok = cmds(M + 'peek hpa=0x3fff_ffff_fff8\n');
    expect(hex(ok[1].args.get('hpa')!.value)).toBe('0x3ffffffffff8');
    expect(cmds('machine mode=native maxphyaddr=52\npeek hpa=0xf_ffff_ffff_fff8\n').length).toBe(2);
    // expect's hpa is an expected value, not a memory address
    expect(cmds(M + 'access gva=0 read\nexpect hpa=0x1234567\n').length).toBe(3);
  });

  it('requires something before expect other than machine', () => {
    expect(err(M + 'expect result=ok\n')).toBe(
      't.trace:2:1: expect: nothing to check yet (expect must follow the command whose result it checks)',
    );
    expect(err(M + '# c\n\n  expect result=ok\naccess gva=0 read\n')).toBe(
      't.trace:4:3: expect: nothing to check yet (expect must follow the command whose result it checks)',
    );
    expect(cmds(M + 'access gva=0 read\nexpect result=ok\nexpect tlb=miss\n').length).toBe(4);
  });

  it('reports the first error only, after checking earlier lines', () => {
    expect(err(M + 'access gva=0 reed\nfrob\n')).toBe(
      "t.trace:2:14: access: unknown word 'reed' (expected one of: read, write, fetch, implicit)",
    );
  });

  it('escapes control characters in messages', () => {
    expect(err(M + 'flush\rx\n')).toMatch(/^t\.trace:2:1: unknown verb 'flush\\x0dx' /);
  });

  it('throws TraceError with its parts', () => {
    try {
      parseTrace('p.trace', M + 'cpu cpl=9\n');
      expect.unreachable();
    } catch (e) {
      const te = e as TraceError;
      expect(te).toBeInstanceOf(TraceError);
      expect([te.file, te.line, te.col, te.detail]).toEqual([
        'p.trace',
        2,
        5,
        "cpu: cpl must be an integer in 0..3, got '9'",
      ]);
    }
  });
});
