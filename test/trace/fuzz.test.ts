/**
 * Bad input never crashes (brief, trace-format.md): random traces built
 * from the verb schema, with plausible addresses and values, either are
 * refused with a TraceError naming a line of the file, or run to the end
 * (expect failures are results, not crashes); and the walk inspector and
 * the dump then print or refuse with a message. Anything else thrown (a
 * TypeError, a failed model assertion) is a bug this test catches.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TraceError } from '../../src/trace/ast.js';
import { parseTrace } from '../../src/trace/parse.js';
import { Runner } from '../../src/trace/runner.js';
import { VERBS, type ArgType, type VerbSpec } from '../../src/trace/verbs.js';
import { probeWalk, walkJson, walkText } from '../../src/cli/walk.js';
import { TABLES, dumpJson, dumpTables, dumpText } from '../../src/cli/dump.js';
import { UsageError } from '../../src/cli/load.js';
import { AccessKind, UnsupportedError } from '../../src/hw/result.js';

const ADDRS = ['0x0', '0x8', '0x1000', '0x2000', '0x7000', '0x100000', '0x200000', '0x3ff000', '0x400000', '0x401000', '0x40000000', '0x123456789000'];
const VALUES = ['0x0', '0x87', '0x107', '0x337', '0x1027', '0x2007', '0x3067', '0x8000000000000001'];
const SIZES = ['4K', '8K', '64K', '128K', '1M', '2M', '4M', '0x1000'];

function valueArb(t: ArgType, key: string): fc.Arbitrary<string> {
  switch (t.t) {
    case 'u64':
      return fc.constantFrom(...(key === 'value' ? VALUES : ADDRS));
    case 'size':
      return fc.constantFrom(...SIZES);
    case 'int':
      if (key === 'vcpu') return fc.constantFrom('0', '1');
      return fc.integer({ min: t.min, max: Math.min(t.max, t.min + 7) }).map(String);
    default:
      return fc.constantFrom(...t.values);
  }
}

/** One command of `spec`: its required keys and words, and some optional ones (vCPU 0 only: there is one). */
function commandArb(name: string, spec: VerbSpec, vm: boolean): fc.Arbitrary<string> {
  const subs = Object.entries(spec.sub ?? {});
  const head = subs.length === 0 ? fc.constant<[string, VerbSpec]>([name, spec]) : fc.constantFrom(...subs.map(([w, s]) => [`${name} ${w}`, s] as [string, VerbSpec]));
  return head.chain(([verb, s]) => {
    const refused = (k: string) => vm && s.machineOnly !== undefined && k in s.machineOnly;
    const keys = Object.entries(s.keys).filter(([k]) => !refused(k));
    const args = keys.map(([k, t]) => {
      const v = valueArb(t, k).map((x) => `${k}=${x}`);
      return (s.required ?? []).includes(k) ? v : fc.option(v, { nil: '' });
    });
    const words = (s.words ?? []).map((g, i) => {
      const ok = g.filter((w) => !refused(w));
      if (ok.length === 0) return fc.constant('');
      const w = fc.constantFrom(...ok);
      return (s.requiredWords ?? []).includes(i) ? w : fc.option(w, { nil: '' });
    });
    return fc.tuple(...args, ...words).map((parts) => [verb, ...parts].filter((p) => p !== '').join(' '));
  });
}

const VM_HEADS = ['vm tdp=ept memory=64M', 'vm tdp=npt memory=16M', 'vm tdp=ept memory=8M lru=mglru', 'vm tdp=ept memory=8M ad=off'];
const BODY_VERBS = Object.keys(VERBS).filter((v) => v !== 'vm' && v !== 'machine' && v !== 'guest');

/** A trace: a first line, a guest mapping for VM-level ones, then up to 25 random commands. */
/** A consistent `vm` line: A/D switch and walk length only under EPT, a policy only with MGLRU, 2M host pages only without reclaim. */
const vmHead = fc
  .record({
    tdp: fc.constantFrom('ept', 'npt'), ad: fc.constantFrom('on', 'off'), levels: fc.constantFrom(4, 5), vcpus: fc.constantFrom(1, 2), memory: fc.constantFrom('8M', '64M'),
    host_page: fc.constantFrom('4k', '2m'), tlb: fc.constantFrom('on', 'off'), kernel: fc.constantFrom('6.12', '6.13', '6.17'), lru: fc.constantFrom('classic', 'mglru'),
    policy: fc.constantFrom('eviction-only', 'current', 'v3-bitmap', 'fast-only'), swap: fc.constantFrom('1M', '64M'),
  })
  .chain((o) => fc.subarray(Object.keys(o)).map((keys) => {
    const lru = keys.includes('lru');
    const pick = keys.filter(
      (k) => k !== 'tdp' && ((k !== 'ad' && k !== 'levels') || o.tdp === 'ept') && (k !== 'policy' || (lru && o.lru === 'mglru')) && (k !== 'host_page' || !lru),
    );
    return `vm tdp=${o.tdp} ` + pick.map((k) => `${k}=${o[k as keyof typeof o]}`).join(' ');
  }));
const MACHINE_HEADS = ['machine mode=ept vcpus=2', 'machine mode=npt vcpus=2', 'machine mode=native vcpus=2', 'machine mode=ept vcpus=2 tlb=off', 'machine mode=npt vcpus=2 psc=off'];
const traceArb = fc.boolean().chain((vm) => {
  const body = fc.array(
    fc.constantFrom(...BODY_VERBS.filter((v) => VERBS[v].scope === undefined || VERBS[v].scope === (vm ? 'vm' : 'machine'))).chain((v) => commandArb(v, VERBS[v], vm)),
    { maxLength: 25 },
  );
  const head = (vm ? vmHead : fc.constantFrom(...MACHINE_HEADS)).map((h) => (vm ? `${h}\nguest map gva=0x400000 gpa=0x100000 size=64K` : h));
  return fc.tuple(head, body).map(([h, b]) => [h, ...b].join('\n'));
});

describe('random traces from the verb schema', () => {
  it('are refused with a TraceError naming one of their lines, or run to the end; nothing else is thrown', () => {
    let ran = 0;
    fc.assert(
      fc.property(traceArb, (text) => {
        const lines = text.split('\n').length;
        try {
          new Runner(parseTrace('fuzz.trace', text), { quiet: true }).run();
          ran++;
        } catch (e) {
          if (!(e instanceof TraceError)) throw e;
          expect(e.message).toMatch(/^fuzz\.trace:\d+:\d+: \S/);
          expect(e.line).toBeGreaterThanOrEqual(1);
          expect(e.line).toBeLessThanOrEqual(lines);
        }
      }),
      { numRuns: 1000, seed: 20261123 },
    );
    // The generator must reach the runner, not only the validator.
    expect(ran).toBeGreaterThan(300);
  });

  it('arbitrary text after a valid first line is refused with a TraceError or parsed; nothing else is thrown', () => {
    const junk = fc.array(fc.oneof(fc.string({ unit: 'grapheme', maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 }), traceArb), { maxLength: 6 });
    fc.assert(
      fc.property(fc.constantFrom(...VM_HEADS, ...MACHINE_HEADS), junk, (head, rest) => {
        const text = [head, ...rest].join('\n');
        try {
          parseTrace('junk.trace', text);
        } catch (e) {
          if (!(e instanceof TraceError)) throw e;
          expect(e.message).toMatch(/^junk\.trace:\d+:\d+: \S/);
        }
      }),
      { numRuns: 1000, seed: 20261123 },
    );
  });

  it('the walk inspector and the table dump after any trace that ran print, or refuse the probe with a message; nothing else is thrown', () => {
    let ran = 0;
    // Addresses mapped, unmapped, canonical and not.
    const gvas = fc.constantFrom(0x400000n, 0x401008n, 0x0n, 0x7ffffffff000n, 0xffff800000000000n, 0x800000000000n);
    fc.assert(
      fc.property(traceArb, gvas, fc.constantFrom(AccessKind.Read, AccessKind.Write, AccessKind.Fetch), fc.boolean(), (text, gva, kind, user) => {
        let m;
        try {
          m = new Runner(parseTrace('fuzz.trace', text), { quiet: true }).run().machine;
        } catch (e) {
          if (e instanceof TraceError) return;
          throw e;
        }
        ran++;
        // The CLI turns these two into `walk: message` / `dump: message`, exit 2.
        const refused = (e: unknown) => e instanceof UsageError || e instanceof UnsupportedError;
        try {
          const p = probeWalk(m, 0, gva, kind, user);
          expect(walkText(m, p, 'fuzz.trace', null).length).toBeGreaterThan(0);
          JSON.stringify(walkJson(p, 'fuzz.trace', null));
        } catch (e) {
          if (!refused(e)) throw e;
        }
        for (const t of TABLES) {
          try {
            const d = dumpTables(m, 0, t);
            expect(dumpText(d, m, 'fuzz.trace', null).length).toBeGreaterThan(0);
            JSON.stringify(dumpJson(d, 'fuzz.trace', null));
          } catch (e) {
            if (!refused(e)) throw e;
          }
        }
      }),
      { numRuns: 300, seed: 20261123 },
    );
    expect(ran).toBeGreaterThan(100);
  });
});
