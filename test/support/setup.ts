/**
 * Test set-up shared by the hardware tests: a machine with guest tables, and
 * for ept/npt an identity second dimension over the first 16 MiB of
 * guest-physical memory, all entries permissive with A=D=0 (hw.md §9's
 * default set-up).
 *
 * Layout: guest tables from gPA 0x100000; data pages anywhere else below
 * 16 MiB (e.g. 0x800000); EPT/NPT tables from hPA 0x10000000.
 */
import { Machine } from '../../src/hw/machine.js';
import { AccessKind, AccessResult } from '../../src/hw/result.js';
import { EPT_RWX, EPT_WB, TableWriter, X86_PWU } from '../../src/hw/table_writer.js';
import { Mode } from '../../src/hw/walk.js';
import { accessFields } from '../../src/trace/runner.js';
import { lo32, hi32, join64 } from '../../src/hw/halves.js';

export const GUEST_TABLES = 0x10_0000;
export const SECOND_TABLES = 0x1000_0000;
export const IDENTITY_BYTES = 0x100_0000;

export interface SetupOptions {
  tlb?: boolean;
  psc?: boolean;
  /** EPTP bit 6. */
  eptAd?: boolean;
  guestLevels?: 4 | 5;
  eptLevels?: 4 | 5;
  maxPhysAddr?: number;
  vcpus?: number;
  execOnly?: boolean;
}

export type TableSnapshot = Map<number, bigint>;

export type KindName = 'read' | 'write' | 'fetch';
const KIND: Record<KindName, AccessKind> = { read: AccessKind.Read, write: AccessKind.Write, fetch: AccessKind.Fetch };

export class Setup {
  readonly m: Machine;
  readonly mode: Mode;
  /** Writer of guest tables (gPA space; identity onto hPA). */
  readonly guest: TableWriter;
  readonly cr3: number;
  /** Writer of EPT or NPT tables (hPA space), and its root. */
  readonly second: TableWriter | null = null;
  readonly root2: number = 0;
  readonly guestLevels: 4 | 5;
  readonly eptLevels: 4 | 5;

  constructor(mode: 'native' | 'ept' | 'npt', o: SetupOptions = {}) {
    this.mode = mode === 'ept' ? Mode.Ept : mode === 'npt' ? Mode.Npt : Mode.Native;
    this.m = new Machine({ mode: this.mode, tlb: o.tlb ?? true, psc: o.psc ?? true, maxPhysAddr: o.maxPhysAddr, vcpus: o.vcpus, execOnly: o.execOnly });
    this.guestLevels = o.guestLevels ?? 4;
    this.eptLevels = o.eptLevels ?? 4;
    this.guest = new TableWriter(this.m.mem, GUEST_TABLES);
    this.cr3 = this.guest.allocTable();
    if (this.mode !== Mode.Native) {
      this.second = new TableWriter(this.m.mem, SECOND_TABLES);
      this.root2 = this.second.allocTable();
      for (let gpa = 0; gpa < IDENTITY_BYTES; gpa += 4096) this.map2(gpa, gpa);
    }
    for (const v of this.m.vcpus) {
      v.regs.cr3 = this.cr3;
      if (this.guestLevels === 5) v.regs.cr4 |= 1 << 12;
      if (this.mode === Mode.Ept) v.regs.eptp = this.root2 | 6 | ((this.eptLevels - 1) << 3) | (o.eptAd ? 0x40 : 0);
      if (this.mode === Mode.Npt) v.regs.ncr3 = this.root2;
    }
  }

  /** Map gva -> gpa in the guest tables (default: 4K leaf, P|W|U everywhere, A=D=0). */
  map(gva: bigint, gpa: number, o: { leafLevel?: 1 | 2 | 3; leafFlags?: bigint; tableFlags?: bigint } = {}): void {
    this.guest.map(this.cr3, gva, gpa, { leafLevel: o.leafLevel, leafFlags: o.leafFlags ?? X86_PWU, tableFlags: o.tableFlags ?? X86_PWU, levels: this.guestLevels });
  }

  /** Map gpa -> hpa in the EPT/NPT tables (default: 4K leaf; EPT RWX+WB, NPT P|W|U). */
  map2(gpa: number, hpa: number, o: { leafLevel?: 1 | 2 | 3; leafFlags?: bigint; tableFlags?: bigint } = {}): void {
    if (this.second === null) throw new Error('no second dimension in native mode');
    const ept = this.mode === Mode.Ept;
    this.second.map(this.root2, BigInt(gpa), hpa, {
      leafLevel: o.leafLevel,
      leafFlags: o.leafFlags ?? (ept ? EPT_RWX | EPT_WB : X86_PWU),
      tableFlags: o.tableFlags ?? (ept ? EPT_RWX : X86_PWU),
      levels: ept ? this.eptLevels : 4,
    });
  }

  /** hPA of the guest entry at `level` for gva (identity second dimension). */
  gEntry(gva: bigint, level: number): number {
    const a = this.guest.entryAddress(this.cr3, gva, level, this.guestLevels);
    if (a === undefined) throw new Error(`no guest level-${level} entry for ${gva.toString(16)}`);
    return a;
  }
  /** hPA of the EPT/NPT entry at `level` for gpa. */
  eEntry(gpa: number, level: number): number {
    const a = this.second!.entryAddress(this.root2, BigInt(gpa), level, this.mode === Mode.Ept ? this.eptLevels : 4);
    if (a === undefined) throw new Error(`no level-${level} second-dimension entry for ${gpa.toString(16)}`);
    return a;
  }

  read64(hpa: number): bigint {
    this.m.mem.load64(hpa);
    return join64(this.m.mem.lo, this.m.mem.hi);
  }
  write64(hpa: number, v: bigint): void {
    this.m.mem.store64(hpa, lo32(v), hi32(v));
  }

  /** One access; returns the raw result (reused object: read it before the next access). */
  raw(gva: bigint, kind: KindName, o: { size?: number; implicit?: boolean; vcpu?: number } = {}): AccessResult {
    const hi = hi32(gva);
    const lo = lo32(gva);
    return this.m.access(o.vcpu ?? 0, hi, lo, KIND[kind], o.size ?? 1, o.implicit ?? false);
  }

  /** One access; returns the contract's JSON fields (result, hpa, gpa, error_code, cr2, ...). */
  acc(gva: bigint, kind: KindName, o: { size?: number; implicit?: boolean; vcpu?: number } = {}): Record<string, string | number> {
    const out: Record<string, string | number> = {};
    accessFields(this.mode, this.raw(gva, kind, o), out);
    return out;
  }

  /** Every word of the guest tables and the EPT/NPT tables (32 pages each from their bases). */
  snapshotTables(): TableSnapshot {
    const m: TableSnapshot = new Map();
    for (const b of [GUEST_TABLES, SECOND_TABLES]) for (let a = b; a < b + 32 * 4096; a += 8) m.set(a, this.read64(a));
    return m;
  }

  /** The table words that differ from the snapshot: { '0xaddr': '0xnew value' }. */
  tableChanges(before: TableSnapshot): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [a, v] of before) {
      const now = this.read64(a);
      if (now !== v) out['0x' + a.toString(16)] = '0x' + now.toString(16);
    }
    return out;
  }

  get regs() {
    return this.m.vcpu(0).regs;
  }
}
