/**
 * The fault path exists twice: as programs (handleExits, kvmMmuPageFault,
 * TdpMmu.map), which a scheduler steps and interleaves, and as their plain
 * twins (handleExitsNow, kvmMmuPageFaultNow, TdpMmu.mapNow), which the trace
 * runner and the benchmarks call when nothing interleaves. These tests hold
 * the two together: their texts must agree once the program steps are taken
 * out, and both must leave the same machine behind.
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AccessResult } from '../../src/hw/result.js';
import { runProgram } from '../../src/hw/sched.js';
import type { GuestAccess, Kvm } from '../../src/kvm/vm.js';
import { KIND, captureEvents, hvaOf, makeVm, slot0, type KindName } from '../support/kvm_setup.js';

/** The body of the function whose declaration starts with `signature`: from the `{` ending its header to the matching `}`. */
function body(file: string, signature: string): string {
  const src = readFileSync(new URL(`../../src/${file}`, import.meta.url), 'utf8');
  const at = src.indexOf(signature);
  if (at < 0) throw new Error(`test set-up: no ${signature} in ${file}`);
  const open = src.indexOf('{\n', at);
  let depth = 0;
  for (let i = open; i < src.length; i++) {
    if (src[i] === '{') depth++;
    else if (src[i] === '}' && --depth === 0) return src.slice(open + 1, i);
  }
  throw new Error(`test set-up: unbalanced braces after ${signature} in ${file}`);
}

/** The call expression that starts at `s[from]`: a member chain and its balanced argument list. */
function callAt(s: string, from: number): string {
  let i = s.indexOf('(', from);
  let depth = 0;
  for (; i < s.length; i++) {
    if (s[i] === '(') depth++;
    else if (s[i] === ')' && --depth === 0) return s.slice(from, i + 1);
  }
  throw new Error(`test set-up: unbalanced call at ${s.slice(from, from + 40)}`);
}

const YIELD_LINE = /^if \((?:this\.vm\.mem|this\.mem|kvm\.mem|mem)\.yields\) yield;$/;

/** Lines without comments and blanks, trimmed. */
function lines(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.replace(/\s\/\/ .*$/, '').replace(/^\s*\/\/.*$/, '').trim())
    .filter((l) => l !== '');
}

/**
 * A program's body as plain code: its yield steps gone, `mem.yields ||`
 * false, a call of a twinned program a call of its twin, any other
 * `yield* call` a runProgram(call). Returns the lines and how many program
 * steps were taken out.
 */
function asPlain(program: string, twins: Record<string, string>): { lines: string[]; steps: number } {
  let steps = 0;
  const out: string[] = [];
  for (let l of lines(program)) {
    if (YIELD_LINE.test(l)) {
      steps++;
      continue;
    }
    l = l.replace(/(?:this\.vm\.mem|this\.mem|kvm\.mem)\.yields \|\| /g, () => (steps++, ''));
    for (let at = l.indexOf('yield* '); at >= 0; at = l.indexOf('yield* ')) {
      const call = callAt(l, at + 7);
      const name = call.slice(0, call.indexOf('('));
      const plain = name in twins ? twins[name] + call.slice(name.length) : `runProgram(${call})`;
      l = l.slice(0, at) + plain + l.slice(at + 7 + call.length);
      steps++;
    }
    out.push(l);
  }
  return { lines: out, steps };
}

describe('plain twins of the fault path', () => {
  const pairs: { names: string; file: string; program: string; plain: string; skip: RegExp | null; twins: Record<string, string> }[] = [
    { names: 'handleExitsNow says what handleExits says', file: 'kvm/vm.ts', program: '*handleExits(', plain: '  handleExitsNow(\n', skip: /^if \(this\.mem\.yields\) throw /, twins: { kvmMmuPageFault: 'kvmMmuPageFaultNow' } },
    { names: 'kvmMmuPageFaultNow says what kvmMmuPageFault says', file: 'kvm/mmu.ts', program: 'export function* kvmMmuPageFault(', plain: 'export function kvmMmuPageFaultNow(', skip: null, twins: { 'kvm.tdpMmu.map': 'kvm.tdpMmu.mapNow' } },
    { names: 'TdpMmu.mapNow says what TdpMmu.map says', file: 'kvm/tdp_mmu.ts', program: '  *map(fault', plain: '  mapNow(fault', skip: null, twins: {} },
  ];
  for (const p of pairs) {
    it(`${p.names}, apart from the program steps`, () => {
      const prog = asPlain(body(p.file, p.program), p.twins);
      const plain = lines(body(p.file, p.plain)).filter((l) => p.skip === null || !p.skip.test(l));
      expect(prog.steps).toBeGreaterThan(0); // the program has steps, and the normalisation took them out
      expect(plain).toEqual(prog.lines);
    });
  }

  it('the text check notices a twin that drifts', () => {
    const prog = asPlain('if (x) {\n  if (kvm.mem.yields) yield;\n  r = yield* kvm.tdpMmu.map(f, it, 0);\n}', { 'kvm.tdpMmu.map': 'kvm.tdpMmu.mapNow' });
    expect(prog.lines).toEqual(['if (x) {', 'r = kvm.tdpMmu.mapNow(f, it, 0);', '}']);
    expect(prog.steps).toBe(2);
    expect(lines('if (x) {\n  r = kvm.tdpMmu.mapNow(f, it, 1);\n}')).not.toEqual(prog.lines);
  });

  it('the plain form refuses to run while a scheduler interleaves (mem.yields): that needs the programs', () => {
    const kvm = makeVm({ tdp: 'ept' });
    const out: GuestAccess = { result: new AccessResult(), exits: 0, userExit: null };
    kvm.mem.yields = true;
    expect(() => kvm.accessNow(0, 0, 0x5000, KIND.read, 1, out)).toThrow('assertion: handleExitsNow while a scheduler interleaves (use the handleExits program)');
    kvm.mem.yields = false;
    expect(out.exits).toBe(0); // refused before the first entry
    kvm.accessNow(0, 0, 0x5000, KIND.read, 1, out);
    expect([out.exits, out.userExit]).toEqual([1, null]);
  });

  type Op =
    | { op: 'access'; page: number; kind: KindName }
    | { op: 'mmio'; page: number; kind: KindName }
    | { op: 'age' }
    | { op: 'dontneed'; page: number }
    | { op: 'dirtylog' }
    | { op: 'getdirty' };

  type Flavour = 'ept' | 'ept-noad' | 'npt';
  const PAGES = 96; // few enough that accesses come back to mapped pages (fast page faults after aging or dirty logging)
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    { weight: 12, arbitrary: fc.record({ op: fc.constant('access' as const), page: fc.nat(PAGES - 1), kind: fc.constantFrom<KindName>('read', 'write', 'fetch') }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('mmio' as const), page: fc.nat(15), kind: fc.constantFrom<KindName>('read', 'write') }) },
    { weight: 1, arbitrary: fc.constant({ op: 'age' as const }) },
    { weight: 1, arbitrary: fc.record({ op: fc.constant('dontneed' as const), page: fc.nat(PAGES - 16) }) },
    { weight: 1, arbitrary: fc.constant({ op: 'dirtylog' as const }) },
    { weight: 1, arbitrary: fc.constant({ op: 'getdirty' as const }) },
  );

  /** Runs the ops on a new VM, each access as plain code or as a program stepped at every yield; returns all it left behind. */
  function replay(flavour: Flavour, ops: Op[], asProgram: boolean): { results: unknown[]; steps: number; state: unknown } {
    const kvm: Kvm = makeVm(flavour === 'npt' ? { tdp: 'npt' } : { tdp: 'ept', eptAd: flavour === 'ept' });
    const events = captureEvents(kvm, ['kvm_page_fault', 'kvm_mmu_spte_requested', 'kvm_tdp_mmu_spte_changed', 'kvm_mmu_set_spte', 'kvm_mmu_prepare_zap_page', 'fast_page_fault']);
    const out: GuestAccess = { result: new AccessResult(), exits: 0, userExit: null };
    const results: unknown[] = [];
    let steps = 0;
    let logging = false;
    const access = (gpa: number, kind: KindName) => {
      if (asProgram) {
        kvm.mem.yields = true; // every program step is taken, with nothing to interleave
        try {
          const g = kvm.access(0, 0, gpa, KIND[kind], 1, out);
          while (g.next().done !== true) steps++;
        } finally {
          kvm.mem.yields = false;
        }
      } else {
        kvm.accessNow(0, 0, gpa, KIND[kind], 1, out);
      }
      results.push([out.result.outcome, out.result.hpa, out.exits, out.userExit]);
    };
    for (const o of ops) {
      if (o.op === 'access') access(o.page * 4096, o.kind);
      else if (o.op === 'mmio') access((32 << 20) + o.page * 4096, o.kind);
      else if (o.op === 'age') results.push(runProgram(kvm.notifier.clearYoung(hvaOf(0), hvaOf(PAGES * 4096))));
      else if (o.op === 'dontneed') runProgram(kvm.mm.madviseDontneed(hvaOf(o.page * 4096), 16 * 4096));
      else if (o.op === 'dirtylog' && !logging) {
        runProgram(kvm.enableDirtyLogging(slot0(kvm).id));
        logging = true;
      } else if (o.op === 'getdirty' && logging) results.push(runProgram(kvm.getDirtyLog(slot0(kvm).id)));
    }
    const sptes: unknown[] = [];
    for (let gfn = 0; gfn < PAGES; gfn++) {
      const l = kvm.tdpMmu.lookup(gfn);
      if (l !== null) sptes.push([gfn, l.level, l.spte.toString(16)]);
    }
    return { results, steps, state: { sptes, kvm: { ...kvm.stats }, tdp: JSON.stringify(kvm.tdpMmu.stats), events } };
  }

  it('fault-in as plain code and as programs leaves the same results, SPTEs, counters and events', () => {
    let programSteps = 0;
    fc.assert(
      fc.property(fc.constantFrom<Flavour>('ept', 'ept-noad', 'npt'), fc.array(opArb, { minLength: 1, maxLength: 60 }), (flavour, ops) => {
        const plain = replay(flavour, ops, false);
        const prog = replay(flavour, ops, true);
        programSteps += prog.steps;
        expect(plain.steps).toBe(0);
        expect(prog.results).toEqual(plain.results);
        expect(prog.state).toEqual(plain.state);
      }),
      { seed: 0x7417, numRuns: 60 },
    );
    expect(programSteps).toBeGreaterThan(1000); // the program runs did step through their yields
  });
});
