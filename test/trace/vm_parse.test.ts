/** Parsing VM-level traces: sub-verbs, scope of verbs and keys, and the whole-file VM checks (vm_check.ts). */
import { describe, expect, it } from 'vitest';
import { parseTrace } from '../../src/trace/parse.js';
import { parseError } from '../support/trace_error.js';

const err = parseError;

const VM = 'vm tdp=ept memory=16M\n';

describe('VM-level parsing', () => {
  it('names sub-verbs by their word and reads their own keys', () => {
    const t = parseTrace('t.trace', VM + 'guest map gva=0x1000 gpa=0x2000 ro user\nexpect spte gfn=2 r=1 w=0\nexpect counter exits=0\n');
    expect(t.commands.map((c) => c.verb)).toEqual(['vm', 'guest map', 'expect spte', 'expect counter']);
    expect([...t.commands[1].words]).toEqual(['ro', 'user']);
    expect(t.commands[2].args.get('r')!.value).toBe(1);
    expect(t.commands[2].args.get('r')!.col).toBe(19);
  });

  it('expect without a sub-verb is the hardware expect, and still needs a subject', () => {
    expect(err(VM + 'expect exits=0\n')).toBe('t.trace:2:1: expect: nothing to check yet (expect must follow the command whose result it checks)');
    expect(parseTrace('t.trace', VM + 'expect counter exits=0\n').commands[1].verb).toBe('expect counter');
  });

  it('sub-verb keys are checked against the sub-verb schema', () => {
    expect(err(VM + 'expect counter frobs=1\n')).toMatch(/^t\.trace:2:16: expect counter: unknown key 'frobs' \(expected one of: exits, pf_taken, /);
    expect(err(VM + 'guest map gva=0 gpa=0 rw\n')).toBe("t.trace:2:23: guest map: unknown word 'rw' (expected one of: ro, user, nx, global)");
    expect(err(VM + 'guest map gpa=0\n')).toBe("t.trace:2:1: guest map: missing required key 'gva'");
    expect(err(VM + 'guest\n')).toBe('t.trace:2:1: guest: expected one of: map, identity');
  });

  it('vcpu= is checked against the vm line', () => {
    expect(err('vm tdp=npt vcpus=2\naccess vcpu=2 gva=0 read\n')).toBe('t.trace:2:8: access: vcpu 2 does not exist (vm has 2 vcpus: 0..1)');
  });

  it('checks the VM configuration and the layout the trace builds', () => {
    expect(err('vm tdp=npt ad=off\n')).toBe('t.trace:1:12: vm: ad= is the EPT A/D switch; NPT always has accessed/dirty bits');
    expect(err('vm tdp=npt levels=5\n')).toBe("t.trace:1:12: vm: levels= is the EPT walk length; NPT uses the host's 4-level mode");
    expect(err('vm tdp=ept memory=0\nguest map gva=0 gpa=0\n')).toBe(
      't.trace:2:1: guest map: the guest\'s page tables live at the top of memslot 0, and this VM has no memory (memory=0)',
    );
    expect(err(VM + 'guest map gva=0x800000000000 gpa=0\n')).toBe(
      't.trace:2:11: guest map: gva range 0x800000000000+0x1000 is not canonical for 4-level paging',
    );
    expect(err('vm tdp=ept memory=8K\nguest map gva=0 gpa=0\n')).toBe(
      't.trace:2:11: guest map: no guest memory left for page tables (they take 2 pages, growing down from gpa 0x2000)',
    );
    expect(err(VM + 'memslot slot=0 gpa=0x2000000 size=4K\n')).toBe('t.trace:2:9: memslot: slot 0 exists already (gpa 0x0, size 0x1000000)');
    expect(err(VM + 'expect dirty gfn=5 set\n')).toBe('t.trace:2:14: expect dirty: gfn 0x5 is not in a memslot that logs dirty pages');
    expect(err(VM + 'age size=4K\n')).toBe('t.trace:2:5: age: size= needs gpa=');
  });
});
