/**
 * `mmulab walk`: the walk inspector. Runs a trace up to a line, then probes
 * one access with no side effects and lists every paging-structure reference
 * the hardware would make, the A/D write-backs it would do, and the outcome.
 *
 * Text: a numbered, column-aligned list of references (flags as the Bochs
 * `page` command prints them, upper case = set; "rights" accumulated through
 * the entry), each A/D write-back under the reference that causes it, then
 * the outcome with its error code / qualification / EXITINFO1 bit by bit.
 * A probe does not store its write-backs, so later walks of the same access
 * would find the bits still clear: each write-back is shown once, where a
 * real access would do it.
 *
 * The first part is what `mmulab walk` and `mmulab dump` share: option
 * checks, running a trace up to a line, names and notations of entries.
 */
import { readFileSync } from 'node:fs';
import type { Trace } from '../trace/ast.js';
import { hexNum, hexPair } from '../trace/hex.js';
import { accessFields, Runner } from '../trace/runner.js';
import {
  bitByBit, EPT_QUAL_BITS, eptEntryFlags, eptQualNames, guestEntryFlags, NPF_BITS, npfNames, PF_BITS, pfErrorNames,
} from '../hw/decode.js';
import type { Machine } from '../hw/machine.js';
import { AccessKind, AccessResult, KIND_NAMES, OUTCOME_NAMES, Outcome, UnsupportedError } from '../hw/result.js';
import { RT_E_SHIFT } from '../hw/rights.js';
import { CR4_PAE, EFER_LMA } from '../hw/regs.js';
import { Dim, Mode, type WalkRecorder } from '../hw/walk.js';
import { loadTrace, parseOptionNumber, UsageError } from './load.js';
import { lo32, hi32 } from '../hw/halves.js';

export const MODE_NAMES = ['native', 'ept', 'npt'] as const;
export const DIM_NAMES = ['guest', 'ept', 'npt'] as const;

const X86_LEVELS = ['', 'PTE', 'PDE', 'PDPTE', 'PML4E', 'PML5E'] as const;

/** PML5E/PML4E/PDPTE/PDE/PTE for guest and NPT entries, "EPT PML4E".. for EPT entries. */
export function levelName(dim: Dim, level: number): string {
  const n = X86_LEVELS[level] ?? `L${level}`;
  return dim === Dim.Ept ? `EPT ${n}` : n;
}

/** "guest PDE", "EPT PDE", "NPT PDE": an entry named with its dimension. */
export function entryName(dim: Dim, level: number): string {
  return dim === Dim.Guest ? `guest ${levelName(dim, level)}` : dim === Dim.Ept ? levelName(dim, level) : `NPT ${levelName(dim, level)}`;
}

/** 0x%016x of a 64-bit value given as two 32-bit halves. */
export function hex16(hi: number, lo: number): string {
  return '0x' + (hi >>> 0).toString(16).padStart(8, '0') + (lo >>> 0).toString(16).padStart(8, '0');
}

/** 0x%016x of a bigint below 2^64. */
export function hex16n(v: bigint): string {
  return '0x' + v.toString(16).padStart(16, '0');
}

/** "4K", "2M", "1G" for a leaf at that level. */
export function pageSizeName(level: number): string {
  return level === 3 ? '1G' : level === 2 ? '2M' : '4K';
}

export function pageBytes(level: number): number {
  return 2 ** (12 + 9 * (level - 1));
}

/** Whether an entry at this level maps a page (PS=1 at PDPTE/PDE, or a PTE). */
export function isLeaf(lo: number, level: number): boolean {
  return level === 1 || (level <= 3 && (lo & 0x80) !== 0);
}

/** Whether the vCPU uses PAE paging (CR0.PG=1, CR4.PAE=1, EFER.LMA=0): 32-bit linear addresses, PDPTE registers. */
export function isPae(m: Machine, vcpu: number): boolean {
  const r = m.vcpu(vcpu).regs;
  return r.paging && (r.efer & EFER_LMA) === 0 && (r.cr4 & CR4_PAE) !== 0;
}

/** Flags of a PAE PDPTE (SDM table 4-8: only P, PWT and PCD), upper case when set. */
export function paePdpteFlags(lo: number): string {
  const f = (set: boolean, name: string) => (set ? name.toUpperCase() : name);
  return [f((lo & 0x10) !== 0, 'pcd'), f((lo & 8) !== 0, 'pwt'), f((lo & 1) !== 0, 'p')].join(' ');
}

/** Options common to both inspectors, as commander hands them over (strings). */
export interface InspectOptions {
  vcpu?: string;
  at?: string;
}

export interface Inspected {
  trace: Trace;
  machine: Machine;
  vcpu: number;
  /** The --at line, or null when the whole trace ran. */
  at: number | null;
}

/** Number of lines in the file (a final newline does not start one). */
function lineCount(file: string): number {
  const text = readFileSync(file, 'utf8');
  if (text.length === 0) return 0;
  const n = text.split('\n').length;
  return text.endsWith('\n') ? n - 1 : n;
}

/**
 * Load and validate the trace and the --vcpu/--at options, then run the
 * commands on lines <= --at (all without it) printing nothing.
 */
export function runForInspection(file: string, o: InspectOptions): Inspected {
  const trace = loadTrace(file);
  let at: number | null = null;
  if (o.at !== undefined) {
    const v = parseOptionNumber('at', o.at);
    const lines = lineCount(file);
    if (v < 1n || v > BigInt(lines)) throw new UsageError(`--at: line ${o.at} is not in ${file} (lines 1..${lines})`);
    at = Number(v);
  }
  const runner = new Runner(trace, { quiet: true, out: () => {}, ...(at === null ? {} : { upToLine: at }) });
  let vcpu = 0;
  if (o.vcpu !== undefined) {
    const v = parseOptionNumber('vcpu', o.vcpu);
    const n = runner.machine.vcpus.length;
    if (v >= BigInt(n)) throw new UsageError(`--vcpu: ${o.vcpu} is out of range: the machine in ${file} has ${n} vCPU${n === 1 ? '' : 's'} (0..${n - 1})`);
    vcpu = Number(v);
  }
  runner.run();
  return { trace, machine: runner.machine, vcpu, at };
}

/** Pad the columns of rows of cells (the last column is not padded). */
export function columns(rows: string[][], gap = '  '): string[] {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join(gap).trimEnd());
}

// ---------------------------------------------------------------------------
// mmulab walk: the walk inspector

/** One paging-structure load of the probed walk. */
export interface WalkRef {
  /** 1-based, in the order the hardware makes them. */
  n: number;
  dim: Dim;
  level: number;
  /** gPA of a guest entry in ept/npt mode (its address in native mode); -1 for EPT/NPT entries. */
  entryGpa: number;
  entryHpa: number;
  lo: number;
  hi: number;
  /** The gPA an EPT/NPT reference is translating; -1 for guest entries. */
  target: number;
  /** Rights accumulated through this entry ("-" when the entry is not present). */
  rights: string;
}

/** An accessed/dirty write-back the access would perform (each one once, at its first occurrence). */
export interface AdWrite {
  /** The reference it follows. */
  afterRef: number;
  dim: Dim;
  level: number;
  /** gPA of a guest entry in ept/npt mode, else -1. */
  entryGpa: number;
  entryHpa: number;
  /** The entry before and after the write-back (earlier write-backs of this walk included). */
  lo: number;
  hi: number;
  newLo: number;
  newHi: number;
}

export interface WalkProbe {
  mode: Mode;
  vcpu: number;
  gva: bigint;
  kind: AccessKind;
  cpl: number;
  /** PAE paging: the PDPTE comes from a register (native, EPT) or memory (NPT). */
  pae: boolean;
  /** PAE outside NPT: the PDPTE register the access uses, [index, lo, hi]. */
  pdpte: [number, number, number] | null;
  refs: WalkRef[];
  writes: AdWrite[];
  /** A copy of the probe's result. */
  result: AccessResult;
}

/** Guest/NPT rights: R/W U/S XD, upper case when the bit is 1. */
function x86Rights(rw: number, us: number, xd: number): string {
  return `${rw ? 'R/W' : 'r/w'} ${us ? 'U/S' : 'u/s'} ${xd ? 'XD' : 'xd'}`;
}

/** EPT rights as RWX with '-' for a missing right. */
function eptRights(r: number): string {
  return `${r & 1 ? 'R' : '-'}${r & 2 ? 'W' : '-'}${r & 4 ? 'X' : '-'}`;
}

/** A/D bit names of a write-back. */
function adBitNames(dim: Dim, bits: number): string {
  const [a, d] = dim === Dim.Ept ? [0x100, 0x200] : [0x20, 0x40];
  return [bits & a ? 'A' : '', bits & d ? 'D' : ''].filter((s) => s !== '').join(' ');
}

class Recorder implements WalkRecorder {
  readonly refs: WalkRef[] = [];
  readonly writes: AdWrite[] = [];
  /** Bits already set by earlier write-backs of this walk, per entry hPA (a probe does not store them). */
  private readonly pending = new Map<number, number>();
  // NPT rights through the current nested walk (the recorder's own "before" rights fold U=0 into nothing).
  private nU = 1;
  private nW = 1;
  private nNx = 0;

  constructor(private readonly nxe: boolean, private readonly twoDim: boolean, private readonly pae: boolean) {}

  ref(dim: Dim, level: number, entryGpa: number, entryHpa: number, lo: number, hi: number, target: number, rights: number): void {
    let r = '-';
    if (dim === Dim.Guest && this.pae && level === 3) {
      // A PAE PDPTE (read from memory under NPT) has no R/W, U/S or XD.
      if ((lo & 1) !== 0) r = x86Rights(rights & 1, (rights >>> 1) & 1, (rights >>> 2) & 1);
    } else if (dim === Dim.Guest) {
      if ((lo & 1) !== 0) r = x86Rights(rights & (lo >>> 1) & 1, (rights >>> 1) & (lo >>> 2) & 1, ((rights >>> 2) & 1) | (this.nxe && hi < 0 ? 1 : 0));
    } else if (dim === Dim.Ept) {
      if ((lo & 7) !== 0) r = eptRights((rights >>> RT_E_SHIFT) & lo & 7);
    } else {
      if (level === 4) {
        this.nU = 1;
        this.nW = 1;
        this.nNx = 0;
      }
      if ((lo & 1) !== 0) {
        this.nW &= (lo >>> 1) & 1;
        this.nU &= (lo >>> 2) & 1;
        this.nNx |= hi < 0 ? 1 : 0;
        r = x86Rights(this.nW, this.nU, this.nNx);
      }
    }
    this.refs.push({ n: this.refs.length + 1, dim, level, entryGpa, entryHpa, lo, hi, target, rights: r });
  }

  setBits(dim: Dim, level: number, entryHpa: number, lo: number, hi: number, newLo: number, newHi: number): void {
    const done = this.pending.get(entryHpa) ?? 0;
    const bits = (newLo & ~lo & ~done) | 0;
    if (bits === 0) return; // a real access would find these set by its own earlier write-back
    this.pending.set(entryHpa, done | bits);
    const before = (lo | done) | 0;
    let entryGpa = -1;
    if (dim === Dim.Guest && this.twoDim) {
      for (let i = this.refs.length - 1; i >= 0; i--) {
        const r = this.refs[i];
        if (r.dim === Dim.Guest && r.entryHpa === entryHpa) {
          entryGpa = r.entryGpa;
          break;
        }
      }
    }
    this.writes.push({ afterRef: this.refs.length, dim, level, entryGpa, entryHpa, lo: before, hi, newLo: (before | bits) | 0, newHi });
  }
}

/**
 * Probe one access with the recorder attached: the walk the hardware would
 * make, read from memory, with no side effects (Machine.probe). With `user`,
 * CPL is 3 for the probe and restored afterwards.
 */
export function probeWalk(m: Machine, vcpu: number, gva: bigint, kind: AccessKind, user: boolean): WalkProbe {
  const regs = m.vcpu(vcpu).regs;
  const pae = isPae(m, vcpu);
  const rec = new Recorder(regs.nxe, m.cfg.mode !== Mode.Native, pae);
  const hi = hi32(gva);
  const lo = lo32(gva);
  const result = new AccessResult();
  const cpl = user ? 3 : regs.cpl;
  result.copyFrom(m.probe(vcpu, hi, lo, kind, false, rec, cpl));
  let pdpte: [number, number, number] | null = null;
  if (pae && m.cfg.mode !== Mode.Npt) {
    const i = (lo >>> 30) & 3;
    pdpte = [i, regs.pdpteLo[i], regs.pdpteHi[i]];
  }
  return { mode: m.cfg.mode, vcpu, gva, kind, cpl, pae, pdpte, refs: rec.refs, writes: rec.writes, result };
}

/** The level of the last reference of a dimension (the leaf of the final translation when the access succeeded). */
function lastLevel(p: WalkProbe, second: boolean): number {
  for (let i = p.refs.length - 1; i >= 0; i--) {
    const r = p.refs[i];
    if ((r.dim !== Dim.Guest) === second) return r.level;
  }
  return 0;
}

function entryFlags(dim: Dim, lo: number, hi: number, level: number, pae = false): string {
  if (pae && dim === Dim.Guest && level === 3) return paePdpteFlags(lo);
  return dim === Dim.Ept ? eptEntryFlags(lo, hi, level) : guestEntryFlags(lo, hi, level, dim !== Dim.Npt);
}

/** The outcome as the contract's fields plus the page sizes and the decoded bit names. */
export function outcomeFields(p: WalkProbe): Record<string, string | number | string[]> {
  const o: Record<string, string | number> = {};
  accessFields(p.mode, p.result, o);
  const out: Record<string, string | number | string[]> = { ...o };
  const r = p.result;
  switch (r.outcome) {
    case Outcome.Ok: {
      const g = lastLevel(p, false);
      if (g > 0) out.page_size = hexNum(pageBytes(g));
      const s = lastLevel(p, true);
      if (s > 0 && p.mode !== Mode.Native) out.second_page_size = hexNum(pageBytes(s));
      break;
    }
    case Outcome.Pf:
      out.error_code_bits = pfErrorNames(r.errorCode);
      break;
    case Outcome.EptViolation:
      out.qualification_bits = eptQualNames(r.qualification);
      break;
    case Outcome.Npf:
      out.exitinfo1_bits = npfNames(r.exitinfo1);
      break;
    default:
      break;
  }
  return out;
}

/** The walk as one JSON-ready object (--json). */
export function walkJson(p: WalkProbe, file: string, at: number | null): Record<string, unknown> {
  const twoDim = p.mode !== Mode.Native;
  const hi = hi32(p.gva);
  const lo = lo32(p.gva);
  return {
    file,
    at,
    mode: MODE_NAMES[p.mode],
    vcpu: p.vcpu,
    gva: hexPair(hi, lo),
    kind: KIND_NAMES[p.kind],
    cpl: p.cpl,
    ...(p.pdpte !== null ? { pdpte_register: { index: p.pdpte[0], value: hexPair(p.pdpte[2], p.pdpte[1]) } } : {}),
    refs: p.refs.map((r) => ({
      n: r.n,
      dim: DIM_NAMES[r.dim],
      level: levelName(r.dim, r.level),
      ...(r.dim === Dim.Guest && twoDim ? { entry_gpa: hexNum(r.entryGpa) } : {}),
      entry_hpa: hexNum(r.entryHpa),
      value: hexPair(r.hi, r.lo),
      flags: entryFlags(r.dim, r.lo, r.hi, r.level, p.pae),
      rights: r.rights,
      ...(r.dim !== Dim.Guest ? { gpa: hexNum(r.target) } : {}),
    })),
    ad_writes: p.writes.map((w) => ({
      after_ref: w.afterRef,
      dim: DIM_NAMES[w.dim],
      level: levelName(w.dim, w.level),
      ...(w.entryGpa >= 0 ? { entry_gpa: hexNum(w.entryGpa) } : {}),
      entry_hpa: hexNum(w.entryHpa),
      set: adBitNames(w.dim, w.newLo & ~w.lo),
      old: hexPair(w.hi, w.lo),
      new: hexPair(w.newHi, w.newLo),
    })),
    outcome: outcomeFields(p),
  };
}

function indentBits(bits: string[]): string[] {
  return bits.map((b) => `    ${b}`);
}

/** The outcome as text: a headline and, for faults and exits, the code bit by bit. */
export function outcomeLines(p: WalkProbe): string[] {
  const r = p.result;
  const la = hexPair(r.laHi, r.laLo);
  switch (r.outcome) {
    case Outcome.Ok: {
      const g = lastLevel(p, false);
      const s = lastLevel(p, true);
      const sizes: string[] = [];
      if (g > 0) sizes.push(`${p.mode === Mode.Native ? '' : 'guest '}${pageSizeName(g)} page (${levelName(Dim.Guest, g)})`);
      if (p.mode !== Mode.Native && s > 0) sizes.push(`${p.mode === Mode.Ept ? 'EPT' : 'NPT'} ${pageSizeName(s)} page (${levelName(p.mode === Mode.Ept ? Dim.Ept : Dim.Npt, s)})`);
      if (g === 0) sizes.push('paging off');
      const addr = p.mode === Mode.Native ? `hpa ${hexNum(r.hpa)}` : `gpa ${hexNum(r.gpa)} -> hpa ${hexNum(r.hpa)}`;
      return [`outcome: ok  ${addr}  ${sizes.join(', ')}`];
    }
    case Outcome.Pf:
      return [`outcome: #PF  error code ${hexNum(r.errorCode)} [${pfErrorNames(r.errorCode).join(' ')}]  CR2 ${la}`, ...indentBits(bitByBit(r.errorCode, PF_BITS))];
    case Outcome.Gp:
      return [`outcome: #GP(0)  ${hexPair(hi32(p.gva), lo32(p.gva))} is not canonical`];
    case Outcome.EptViolation:
      return [
        `outcome: EPT violation (exit reason 48)  qualification ${hexNum(r.qualification)} [${eptQualNames(r.qualification).join(' ')}]  gpa ${hexNum(r.gpa)}${r.glaValid ? `  gla ${la}` : ''}`,
        ...indentBits(bitByBit(r.qualification, EPT_QUAL_BITS)),
      ];
    case Outcome.EptMisconfig:
      return [`outcome: EPT misconfiguration (exit reason 49)  gpa ${hexNum(r.gpa)}`];
    case Outcome.Npf:
      return [
        `outcome: #NPF (exit code 0x400)  EXITINFO1 ${hexNum(r.exitinfo1)} [${npfNames(r.exitinfo1).join(' ')}]  EXITINFO2 ${hexNum(r.gpa)}`,
        ...indentBits(bitByBit(r.exitinfo1, NPF_BITS)),
      ];
    default:
      return [`outcome: ${OUTCOME_NAMES[r.outcome]}`];
  }
}

/** The registers the walk starts from, as a line. */
function contextLine(m: Machine, vcpu: number): string {
  const regs = m.vcpu(vcpu).regs;
  const parts = [`mode ${MODE_NAMES[m.cfg.mode]}`];
  const paging = isPae(m, vcpu) ? 'PAE paging' : `${regs.la57 ? 5 : 4}-level paging`;
  parts.push(regs.paging ? `CR3 ${hexNum(regs.cr3)} (${paging})` : 'CR0.PG=0 (paging off)');
  if (m.cfg.mode === Mode.Ept) parts.push(`EPTP ${hexNum(regs.eptp)} (${regs.eptLevels}-level EPT, A/D ${regs.eptAd ? 'on' : 'off'})`);
  if (m.cfg.mode === Mode.Npt) parts.push(`nCR3 ${hexNum(regs.ncr3)}`);
  return parts.join(', ');
}

/** The walk as text: a header, the numbered references with their write-backs, the outcome. */
export function walkText(m: Machine, p: WalkProbe, file: string, at: number | null): string[] {
  const twoDim = p.mode !== Mode.Native;
  const gva = hexPair(hi32(p.gva), lo32(p.gva));
  const out = [
    `walk: vcpu${p.vcpu} ${KIND_NAMES[p.kind]} ${gva} at CPL ${p.cpl}, ${file} ${at === null ? 'run to the end' : `run to line ${at}`} (probe: nothing written, TLB untouched)`,
    contextLine(m, p.vcpu),
  ];
  if (p.pdpte !== null) {
    const [i, lo, hi] = p.pdpte;
    out.push(`PDPTE register ${i} (loaded from memory by MOV to CR3/CR0/CR4, no reference now): ${hex16(hi, lo)}  ${paePdpteFlags(lo)}`);
  }
  out.push('');
  const head = twoDim
    ? ['#', 'dim', 'level', 'entry gPA', 'entry hPA', 'value', 'flags', 'rights', 'for gPA']
    : ['#', 'dim', 'level', 'entry hPA', 'value', 'flags', 'rights'];
  const rows = [head];
  for (const r of p.refs) {
    const row = [String(r.n), DIM_NAMES[r.dim], levelName(r.dim, r.level)];
    if (twoDim) row.push(r.dim === Dim.Guest ? hexNum(r.entryGpa) : '-');
    row.push(hexNum(r.entryHpa), hex16(r.hi, r.lo), entryFlags(r.dim, r.lo, r.hi, r.level, p.pae), r.rights);
    if (twoDim) row.push(r.dim === Dim.Guest ? '' : hexNum(r.target));
    rows.push(row);
  }
  const lines = columns(rows.map((r) => [r[0].padStart(2), ...r.slice(1)]));
  if (p.refs.length > 0) out.push(lines[0]);
  const indent = ' '.repeat(4);
  let w = 0;
  for (let i = 0; i < p.refs.length; i++) {
    out.push(lines[i + 1]);
    for (; w < p.writes.length && p.writes[w].afterRef === i + 1; w++) {
      const x = p.writes[w];
      out.push(`${indent}would set ${adBitNames(x.dim, x.newLo & ~x.lo)} in ${entryName(x.dim, x.level)} at ${x.entryGpa >= 0 ? `gPA ${hexNum(x.entryGpa)} hPA` : 'hPA'} ${hexNum(x.entryHpa)}: ${hex16(x.hi, x.lo)} -> ${hex16(x.newHi, x.newLo)}`);
    }
  }
  if (p.refs.length === 0) out.push('(no paging-structure references)');
  out.push('', ...outcomeLines(p));
  return out;
}

export interface WalkOptions extends InspectOptions {
  gva?: string;
  read?: boolean;
  write?: boolean;
  fetch?: boolean;
  user?: boolean;
  json?: boolean;
}

/** `mmulab walk`: the output lines (one JSON line with --json). Bad options throw UsageError. */
export function walkCommand(file: string, o: WalkOptions): string[] {
  if (o.gva === undefined) throw new UsageError("walk: required option '--gva <addr>' not specified");
  const gva = parseOptionNumber('gva', o.gva);
  const kinds = (['read', 'write', 'fetch'] as const).filter((k) => o[k] === true);
  if (kinds.length > 1) throw new UsageError(`walk: --${kinds.join(' and --')} are exclusive: give at most one of --read, --write, --fetch`);
  const kind = kinds[0] === 'write' ? AccessKind.Write : kinds[0] === 'fetch' ? AccessKind.Fetch : AccessKind.Read;
  const { machine, vcpu, at } = runForInspection(file, o);
  let p: WalkProbe;
  try {
    p = probeWalk(machine, vcpu, gva, kind, o.user === true);
  } catch (e) {
    if (e instanceof UnsupportedError) throw new UsageError(`walk: ${e.message}`);
    throw e;
  }
  return o.json ? [JSON.stringify(walkJson(p, file, at))] : walkText(machine, p, file, at);
}
