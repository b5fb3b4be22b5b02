/**
 * A validated trace compiled into steps whose numeric fields are already in
 * the machine's representation (numbers below 2^53, 32-bit halves), so that
 * replay does no parsing or allocation per access.
 */
import type Long from 'long';
import { AccessKind } from '../hw/result.js';
import { Mode } from '../hw/walk.js';
import { TraceError, type Command, type Trace } from './ast.js';
import { DEFAULT_GEOMETRY } from '../hw/tlb.js';

export interface MachineStep {
  verb: 'machine';
  mode: Mode;
  vcpus: number;
  maxPhysAddr: number;
  tlb: boolean;
  psc: boolean;
  execOnly: boolean;
  tlbEntries: number | undefined;
  tlbWays: number | undefined;
}

export interface Step {
  readonly verb: string;
  readonly line: number;
  readonly vcpu: number;
  readonly cmd: Command;
  // access / invlpg / invpcid / invvpid / invlpga
  readonly laHi: number;
  readonly laLo: number;
  readonly kind: AccessKind;
  readonly size: number;
  readonly implicit: boolean;
  // poke / peek / expect_mem
  readonly hpa: number;
}

/** Steps depend on the trace alone: compiled once per trace, however many runs replay it. */
const compiled = new WeakMap<Trace, readonly Step[]>();

const KINDS: Record<string, AccessKind> = { read: AccessKind.Read, write: AccessKind.Write, fetch: AccessKind.Fetch };

export function argLong(c: Command, key: string): Long | undefined {
  return c.args.get(key)?.value as Long | undefined;
}
export function argNum(c: Command, key: string): number | undefined {
  return c.args.get(key)?.value as number | undefined;
}
export function argStr(c: Command, key: string): string | undefined {
  return c.args.get(key)?.value as string | undefined;
}

export function machineStep(t: Trace): MachineStep {
  const c = t.commands[0];
  const mode = argStr(c, 'mode');
  const entries = argNum(c, 'tlb_entries') ?? DEFAULT_GEOMETRY.entries;
  const ways = argNum(c, 'tlb_ways') ?? DEFAULT_GEOMETRY.ways;
  const sets = entries / ways;
  if (!Number.isInteger(sets) || (sets & (sets - 1)) !== 0) {
    const a = c.args.get('tlb_entries') ?? c.args.get('tlb_ways');
    throw new TraceError(t.file, c.line, a?.col ?? c.col, `machine: tlb_entries (${entries}) / tlb_ways (${ways}) must be a power of two`);
  }
  return {
    verb: 'machine',
    mode: mode === 'ept' ? Mode.Ept : mode === 'npt' ? Mode.Npt : Mode.Native,
    vcpus: argNum(c, 'vcpus') ?? 1,
    maxPhysAddr: argNum(c, 'maxphyaddr') ?? 46,
    tlb: (argStr(c, 'tlb') ?? 'on') === 'on',
    psc: (argStr(c, 'psc') ?? 'on') === 'on',
    execOnly: (argStr(c, 'exec_only') ?? 'on') === 'on',
    tlbEntries: argNum(c, 'tlb_entries'),
    tlbWays: argNum(c, 'tlb_ways'),
  };
}

export function compileSteps(t: Trace): readonly Step[] {
  const done = compiled.get(t);
  if (done !== undefined) return done;
  const steps: Step[] = [];
  for (let n = 1; n < t.commands.length; n++) {
    const c = t.commands[n];
    const gva = argLong(c, 'gva');
    const hpa = argLong(c, 'hpa');
    let kind = AccessKind.Read;
    for (const w of c.words) if (w in KINDS) kind = KINDS[w];
    steps.push({
      verb: c.verb,
      line: c.line,
      vcpu: argNum(c, 'vcpu') ?? 0,
      cmd: c,
      laHi: gva ? gva.high : 0,
      laLo: gva ? gva.low : 0,
      kind,
      size: argNum(c, 'size') ?? 1,
      implicit: c.words.has('implicit'),
      hpa: hpa ? hpa.toNumber() : 0,
    });
  }
  compiled.set(t, steps);
  return steps;
}
