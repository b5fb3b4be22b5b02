/**
 * `mmulab dump`: runs a trace up to a line, then prints the guest tables
 * (from CR3), the EPT tables (from the EPTP) or the NPT tables (from nCR3) as
 * a tree of present entries. Everything is read from host memory with plain
 * loads: no A/D bit, TLB or cache is touched. Under EPT/NPT, guest table
 * addresses are translated by a read-only walk of the second-dimension
 * tables written here (permissions are not checked: this shows where the
 * tables are, not whether a walk would be allowed to read them).
 */
import { hexNum } from '../trace/hex.js';
import { eptEntryFlags, guestEntryFlags } from '../hw/decode.js';
import type { Machine } from '../hw/machine.js';
import { EFER_LMA } from '../hw/regs.js';
import { Dim, Mode } from '../hw/walk.js';
import { UsageError } from './load.js';
import {
  columns, hex16n, isLeaf, isPae, levelName, MODE_NAMES, pageBytes, pageSizeName, paePdpteFlags, runForInspection, type InspectOptions,
} from './walk.js';
import { join64 } from '../hw/halves.js';

export const TABLES = ['guest', 'ept', 'npt'] as const;
export type TableName = (typeof TABLES)[number];

/** More present entries than this end the dump (a self-referencing table can make the tree huge). */
export const MAX_ENTRIES = 100_000;

export interface DumpEntry {
  level: number;
  index: number;
  /** First and last address (linear for guest tables, guest-physical for EPT/NPT) the entry maps. */
  start: bigint;
  end: bigint;
  value: bigint;
  flags: string;
  /** Why the hardware would refuse the entry (reserved bits, EPT misconfiguration). */
  problem?: string;
  leaf: boolean;
  /** Leaf: the page's address (gPA for guest tables under EPT/NPT, hPA otherwise). */
  target?: bigint;
  /** Non-leaf: the next table's address in the tables' own space. */
  table?: bigint;
  /** hPA of the target page or next table when that differs from its address (guest tables under EPT/NPT). */
  hpa?: bigint;
  /** Why a guest address could not be translated to an hPA. */
  error?: string;
  children: DumpEntry[];
}

export interface Dump {
  table: TableName;
  dim: Dim;
  mode: Mode;
  vcpu: number;
  levels: number;
  pae: boolean;
  /** Root table: gPA (guest tables under EPT/NPT) or hPA. */
  root: bigint;
  rootHpa?: bigint;
  rootError?: string;
  entries: DumpEntry[];
  count: number;
  truncated: boolean;
  notes: string[];
}

/** A linear address in canonical form: bits 63:48 (63:57 with 5 levels) copy the top bit translated. */
function canonical(la: bigint, levels: number): bigint {
  const top = BigInt(12 + 9 * levels - 1);
  return ((la >> top) & 1n) === 1n ? la | (((1n << 64n) - 1n) ^ ((1n << (top + 1n)) - 1n)) : la;
}

type Xlate = { hpa: bigint } | { error: string };

class Dumper {
  private readonly mask: bigint;
  count = 0;
  truncated = false;
  /** PAE guest tables: PDEs and PTEs reserve bits 62:52 too (SDM 4.4.2). */
  pae = false;

  constructor(readonly m: Machine, readonly vcpu: number) {
    this.mask = (1n << BigInt(m.cfg.maxPhysAddr)) - 1n;
  }

  load(hpa: bigint): { lo: number; hi: number; v: bigint } {
    const mem = this.m.mem;
    mem.load64(Number(hpa));
    return { lo: mem.lo, hi: mem.hi, v: join64(mem.lo, mem.hi) };
  }

  /** Address bits [M-1:shift] of an entry. */
  addr(v: bigint, shift: number): bigint {
    return v & this.mask & ~((1n << BigInt(shift)) - 1n);
  }

  get regs() {
    return this.m.vcpu(this.vcpu).regs;
  }

  /** gPA -> hPA through EPT or NPT, reading memory only. Identity in native mode. */
  translate(gpa: bigint): Xlate {
    const mode = this.m.cfg.mode;
    if (mode === Mode.Native) return { hpa: gpa };
    const mmu = this.m.vcpu(this.vcpu).mmu;
    const ept = mode === Mode.Ept;
    let table = this.addr(BigInt(ept ? this.regs.eptp : this.regs.ncr3), 12);
    for (let level = ept ? this.regs.eptLevels : 4; level >= 1; level--) {
      const entryHpa = table + ((gpa >> BigInt(12 + 9 * (level - 1))) & 511n) * 8n;
      const e = this.load(entryHpa);
      const via = ept ? 'EPT' : 'NPT';
      const where = `${via} ${levelName(Dim.Guest, level)} at hPA ${hexNum(Number(entryHpa))}`;
      if ((e.lo & (ept ? 7 : 1)) === 0) return { error: `not mapped by ${via}: ${where} is not present` };
      if (ept ? mmu.eptMisconfigured(e.lo, e.hi, level) : mmu.guestReserved(e.lo, e.hi, level, true, true)) {
        return { error: `not mapped by ${via}: ${where} is ${ept ? 'misconfigured' : 'reserved-bit-set'}` };
      }
      if (isLeaf(e.lo, level)) {
        const shift = 12 + 9 * (level - 1);
        return { hpa: this.addr(e.v, shift) + (gpa & ((1n << BigInt(shift)) - 1n)) };
      }
      table = this.addr(e.v, 12);
    }
    return { error: 'assertion: walk did not end' };
  }

  /**
   * The four PAE PDPTEs (SDM 4.4.1): the PDPTE registers, which the walk
   * uses (native, EPT), or under NPT the 32-byte table at CR3 in memory.
   */
  paeTop(pdptes: [number, number][]): DumpEntry[] {
    const out: DumpEntry[] = [];
    const mmu = this.m.vcpu(this.vcpu).mmu;
    pdptes.forEach(([lo, hi], index) => {
      if ((lo & 1) === 0) return;
      this.count++;
      const v = join64(lo, hi);
      const start = BigInt(index) << 30n;
      const entry: DumpEntry = { level: 3, index, start, end: start + (1n << 30n) - 1n, value: v, leaf: false, children: [], flags: paePdpteFlags(lo) };
      if (mmu.paePdpteReserved(lo, hi)) entry.problem = 'reserved bits set';
      entry.table = this.addr(v, 12);
      let next: bigint | null = entry.table;
      if (this.m.cfg.mode !== Mode.Native) {
        const x = this.translate(entry.table);
        if ('hpa' in x) entry.hpa = next = x.hpa;
        else {
          entry.error = x.error;
          next = null;
        }
      }
      if (next !== null) entry.children = this.walk(Dim.Guest, next, 2, 3, start);
      out.push(entry);
    });
    return out;
  }

  /** The present entries of the table at `tableGpa` (its hPA `tableHpa`), recursively. */
  walk(dim: Dim, tableHpa: bigint, level: number, levels: number, base: bigint): DumpEntry[] {
    const out: DumpEntry[] = [];
    const mmu = this.m.vcpu(this.vcpu).mmu;
    const mode = this.m.cfg.mode;
    const twoDimGuest = dim === Dim.Guest && mode !== Mode.Native;
    const span = BigInt(pageBytes(level));
    for (let index = 0; index < 512; index++) {
      const e = this.load(tableHpa + BigInt(index) * 8n);
      const present = dim === Dim.Ept ? (e.lo & 7) !== 0 : (e.lo & 1) !== 0;
      if (!present) continue;
      if (this.count >= MAX_ENTRIES) {
        this.truncated = true;
        return out;
      }
      this.count++;
      const raw = base + BigInt(index) * span;
      const start = dim === Dim.Guest ? canonical(raw, levels) : raw;
      const end = start + span - 1n;
      const leaf = level <= 3 && isLeaf(e.lo, level);
      const entry: DumpEntry = {
        level, index, start, end, value: e.v, leaf, children: [],
        flags: dim === Dim.Ept ? eptEntryFlags(e.lo, e.hi, level) : guestEntryFlags(e.lo, e.hi, level, dim !== Dim.Npt),
      };
      const bad = dim === Dim.Ept
        ? mmu.eptMisconfigured(e.lo, e.hi, level)
        : (this.pae && dim === Dim.Guest && (e.hi & 0x7ff00000) !== 0) || mmu.guestReserved(e.lo, e.hi, level, dim === Dim.Npt || this.regs.nxe, dim === Dim.Npt || mode === Mode.Npt);
      if (bad) entry.problem = dim === Dim.Ept ? 'EPT misconfiguration' : 'reserved bits set';
      if (leaf) {
        entry.target = this.addr(e.v, 12 + 9 * (level - 1));
        if (twoDimGuest) {
          const x = this.translate(entry.target);
          if ('hpa' in x) entry.hpa = x.hpa;
          else entry.error = x.error;
        }
      } else {
        entry.table = this.addr(e.v, 12);
        let next: bigint | null = entry.table;
        if (twoDimGuest) {
          const x = this.translate(entry.table);
          if ('hpa' in x) entry.hpa = next = x.hpa;
          else {
            entry.error = x.error;
            next = null;
          }
        }
        if (next !== null && level > 1) entry.children = this.walk(dim, next, level - 1, levels, raw);
      }
      out.push(entry);
      if (this.truncated) return out;
    }
    return out;
  }
}

/** Build the tree of one set of tables. */
export function dumpTables(m: Machine, vcpu: number, table: TableName): Dump {
  const d = new Dumper(m, vcpu);
  const regs = d.regs;
  const mode = m.cfg.mode;
  const notes: string[] = [];
  let dim: Dim;
  let levels: number;
  let root: bigint;
  let rootHpa: bigint | undefined;
  let rootError: string | undefined;
  const pae = isPae(m, vcpu);
  let pdptes: [number, number][] | null = null;
  if (table === 'guest') {
    dim = Dim.Guest;
    levels = pae ? 3 : regs.la57 ? 5 : 4;
    root = pae ? BigInt(regs.cr3) & 0xffffffe0n : d.addr(BigInt(regs.cr3), 12);
    if (regs.paging && !pae && (regs.efer & EFER_LMA) === 0) throw new UsageError('dump: 32-bit (non-PAE) paging is not modelled: set CR4.PAE');
    if (!regs.paging) notes.push('CR0.PG=0: paging is off; the tables at CR3 are shown anyway');
    if (pae) {
      d.pae = true;
      if (mode !== Mode.Npt) {
        pdptes = [0, 1, 2, 3].map((i) => [regs.pdpteLo[i], regs.pdpteHi[i]]);
        notes.push('PAE paging: the PDPTEs shown are the PDPTE registers (loaded by the last MOV to CR3/CR0/CR4), not memory at CR3');
      } else {
        notes.push('PAE paging under NPT: the PDPTEs are read from memory at CR3 on each walk');
      }
    }
    if (mode === Mode.Native) rootHpa = root;
    else {
      const x = d.translate(root);
      if ('hpa' in x) rootHpa = x.hpa;
      else rootError = x.error;
    }
  } else if (table === 'ept') {
    dim = Dim.Ept;
    levels = regs.eptLevels;
    root = rootHpa = d.addr(BigInt(regs.eptp), 12);
  } else {
    dim = Dim.Npt;
    levels = 4;
    root = rootHpa = d.addr(BigInt(regs.ncr3), 12);
  }
  if (pae && table === 'guest' && pdptes === null && rootHpa !== undefined) {
    pdptes = [0, 1, 2, 3].map((i) => {
      const e = d.load(rootHpa! + BigInt(i) * 8n);
      return [e.lo, e.hi];
    });
  }
  const entries = pdptes !== null ? d.paeTop(pdptes) : rootHpa === undefined ? [] : d.walk(dim, rootHpa, levels, levels, 0n);
  if (d.truncated) notes.push(`stopped after ${MAX_ENTRIES} present entries`);
  return {
    table, dim, mode, vcpu, levels, pae: pae && table === 'guest', root, entries, count: d.count, truncated: d.truncated, notes,
    ...(rootHpa !== undefined ? { rootHpa } : {}),
    ...(rootError !== undefined ? { rootError } : {}),
  };
}

function h(v: bigint): string {
  return '0x' + v.toString(16);
}

function rootLine(dump: Dump, m: Machine): string {
  const regs = m.vcpu(dump.vcpu).regs;
  const twoDim = dump.mode !== Mode.Native;
  switch (dump.table) {
    case 'guest': {
      const via = dump.mode === Mode.Ept ? 'EPT' : 'NPT';
      const where = !twoDim ? '' : dump.rootHpa !== undefined ? ` (hPA ${h(dump.rootHpa)})` : ` (${dump.rootError})`;
      return `guest tables of vcpu${dump.vcpu}: CR3 ${hexNum(regs.cr3)}, root ${twoDim ? 'gPA ' : ''}${h(dump.root)}${where}, ${dump.pae ? 'PAE' : `${dump.levels}-level`}` +
        (twoDim ? `; table and page gPAs translated through ${via}` : '');
    }
    case 'ept':
      return `EPT tables of vcpu${dump.vcpu}: EPTP ${hexNum(regs.eptp)}, root hPA ${h(dump.root)}, ${dump.levels}-level, A/D ${regs.eptAd ? 'on' : 'off'}`;
    default:
      return `NPT tables of vcpu${dump.vcpu}: nCR3 ${hexNum(regs.ncr3)}, root hPA ${h(dump.root)}, 4-level`;
  }
}

/** The tree as text: one line per present entry, indented by depth, columns aligned. */
export function dumpText(dump: Dump, m: Machine, file: string, at: number | null): string[] {
  const out = [`${rootLine(dump, m)}; ${file} ${at === null ? 'run to the end' : `run to line ${at}`}`];
  for (const n of dump.notes) out.push(`note: ${n}`);
  out.push('');
  const rows: string[][] = [];
  const guest2d = dump.dim === Dim.Guest && dump.mode !== Mode.Native;
  const visit = (es: DumpEntry[], depth: number) => {
    for (const e of es) {
      let tail: string;
      if (e.leaf) {
        tail = `-> ${guest2d ? 'gPA ' : ''}${h(e.target!)} ${pageSizeName(e.level)} page`;
        if (e.hpa !== undefined) tail += ` (hPA ${h(e.hpa)}${e.level > 1 ? ' at its base' : ''})`;
      } else {
        tail = `-> table ${guest2d ? 'gPA ' : ''}${h(e.table!)}`;
        if (e.hpa !== undefined) tail += ` (hPA ${h(e.hpa)})`;
      }
      if (e.error !== undefined) tail += ` (${e.error})`;
      if (e.problem !== undefined) tail += `  [${e.problem}]`;
      rows.push([`${'  '.repeat(depth)}${levelName(dump.dim, e.level)}[${e.index}]`, `${hex16n(e.start)}-${hex16n(e.end)}`, hex16n(e.value), e.flags, tail]);
      visit(e.children, depth + 1);
    }
  };
  visit(dump.entries, 0);
  out.push(...columns(rows));
  if (rows.length === 0) out.push('(no present entries)');
  return out;
}

function entryJson(e: DumpEntry, dim: Dim): Record<string, unknown> {
  const o: Record<string, unknown> = {
    level: levelName(dim, e.level),
    index: e.index,
    start: h(e.start),
    end: h(e.end),
    value: h(e.value),
    flags: e.flags,
  };
  if (e.problem !== undefined) o.problem = e.problem;
  if (e.leaf) {
    o.page_size = hexNum(pageBytes(e.level));
    o.target = h(e.target!);
    if (e.hpa !== undefined) o.target_hpa = h(e.hpa);
  } else {
    o.table = h(e.table!);
    if (e.hpa !== undefined) o.table_hpa = h(e.hpa);
  }
  if (e.error !== undefined) o.error = e.error;
  if (!e.leaf) o.entries = e.children.map((c) => entryJson(c, dim));
  return o;
}

export function dumpJson(dump: Dump, file: string, at: number | null): Record<string, unknown> {
  return {
    file,
    at,
    mode: MODE_NAMES[dump.mode],
    table: dump.table,
    vcpu: dump.vcpu,
    levels: dump.levels,
    ...(dump.pae ? { pae: true } : {}),
    root: h(dump.root),
    ...(dump.rootHpa !== undefined && dump.table === 'guest' && dump.mode !== Mode.Native ? { root_hpa: h(dump.rootHpa) } : {}),
    ...(dump.rootError !== undefined ? { error: dump.rootError } : {}),
    count: dump.count,
    truncated: dump.truncated,
    entries: dump.entries.map((e) => entryJson(e, dump.dim)),
  };
}

export interface DumpOptions extends InspectOptions {
  table?: string;
  json?: boolean;
}

/** `mmulab dump`: the output lines (one JSON line with --json). Bad options throw UsageError. */
export function dumpCommand(file: string, o: DumpOptions): string[] {
  const table = o.table;
  if (table === undefined) throw new UsageError("dump: required option '--table <which>' not specified (guest, ept or npt)");
  if (!(TABLES as readonly string[]).includes(table)) throw new UsageError(`dump: --table ${table}: expected guest, ept or npt`);
  const { machine, vcpu, at } = runForInspection(file, o);
  const mode = machine.cfg.mode;
  if ((table === 'ept' && mode !== Mode.Ept) || (table === 'npt' && mode !== Mode.Npt)) {
    throw new UsageError(`dump: --table ${table}: ${file} runs a mode=${MODE_NAMES[mode]} machine, which has no ${table.toUpperCase()} tables`);
  }
  const dump = dumpTables(machine, vcpu, table as TableName);
  return o.json ? [JSON.stringify(dumpJson(dump, file, at))] : dumpText(dump, machine, file, at);
}
