/**
 * The VM-level verbs at run time (docs/kvm.md): a Kvm built from the `vm`
 * line, guest accesses through KVM's exit handling, the guest's page-table
 * builder writing through the VMM's mapping of guest memory, host-mm and
 * mmu-notifier operations, and the `expect spte|counter|dirty` checks.
 * Everything a command needs was validated by vm_check.ts before the run.
 */
import type Long from 'long';
import { runProgram } from '../hw/sched.js';
import { AccessKind, AccessResult, Outcome } from '../hw/result.js';
import type { EventFields } from '../kvm/events.js';
import type { MmuLockStats, MmuLockUser } from '../kvm/locks.js';
import { KVM_MEM_READONLY } from '../kvm/memslots.js';
import { spteToPfn } from '../kvm/spte.js';
import { GUEST_HVA_BASE, Kvm, type GuestAccess } from '../kvm/vm.js';
import { PG_swapcache } from '../mm/folio.js';
import { dupMmap } from '../mm/fork.js';
import { madviseFree } from '../mm/madvise_free.js';
import type { MmStruct } from '../mm/mm.js';
import { ksmCounts, ksmScan } from '../mm/ksm.js';
import { migrateFolio } from '../mm/migrate.js';
import { mremap } from '../mm/mremap.js';
import { clearSoftDirty } from '../mm/soft_dirty.js';
import type { Command, Trace } from './ast.js';
import { GuestTables } from './guest_tables.js';
import { hexNum } from './hex.js';
import type { Step } from './steps.js';
import { describeSpte, findSpte, spteBits } from './spte_view.js';
import { guestPages, leafBits, num, vmOptions } from './vm_check.js';
import type { COUNTERS } from './verbs.js';
import { MmSession, notifierCounter, usesMm } from './vm_mm.js';

/** What a VM verb with a result prints, and what `expect` then checks. */
export type VmRecord = Record<string, string | number | string[]>;

type CounterName = (typeof COUNTERS)[number];

export class VmSession {
  readonly kvm: Kvm;
  private readonly guest: GuestTables | null;
  /** The host-mm layer (docs/mm.md), when the trace uses it. */
  readonly mm: MmSession | null;
  private readonly out: GuestAccess = { result: new AccessResult(), exits: 0, userExit: null };
  /** An access's outcome as it completed, when the host mm's balancing runs after it. */
  private readonly kept: GuestAccess = { result: new AccessResult(), exits: 0, userExit: null };
  /** The VMM's forked child (`fork`), until `child_exit`. It has no KVM: nothing subscribes to its notifiers. */
  child: MmStruct | null = null;
  /** What the `fork`s did, for the counters: dup_mmap runs, PTEs and swap entries shared. */
  readonly forkStats = { forks: 0, ptes: 0, swapEntries: 0 };

  constructor(trace: Trace, events: { names: readonly string[]; sink: (name: string, fields: EventFields) => void } | null) {
    const o = vmOptions(trace.commands[0]);
    this.kvm = new Kvm(o);
    if (events !== null && events.names.length > 0) this.kvm.events.enable(events.names, events.sink);
    this.guest = o.memory > 0 ? new GuestTables(o.memory, 0, (gpa, lo, hi) => this.writeGuest(gpa, lo, hi)) : null;
    this.mm = usesMm(trace) ? new MmSession(this.kvm, trace.commands[0]) : null;
  }

  /** A store by the VMM into guest memory: gpa -> memslot hva -> host page (faulted in) -> host frame. */
  private writeGuest(gpa: number, lo: number, hi: number): void {
    const kvm = this.kvm;
    const slot = kvm.memslots.gfnToMemslot(Math.floor(gpa / 4096));
    if (slot === null) throw new Error(`assertion: guest table at gpa 0x${gpa.toString(16)} outside every memslot`);
    const hva = slot.userspace_addr + (gpa - slot.base_gfn * 4096);
    const page = kvm.mm.hvaToPfn(hva - (hva % 4096), true);
    if (!page.ok) throw new Error(`assertion: guest table at gpa 0x${gpa.toString(16)} has no host page`);
    kvm.mem.store64(page.pfn * 4096 + (gpa % 4096), lo, hi);
  }

  /** One guest access (vcpu_run): exits handled by KVM until it completes, faults, or needs userspace. */
  access(s: Step): GuestAccess {
    // Only an access that exits needs KVM's exit handling as a program.
    if (!this.kvm.enter(s.vcpu, s.laHi, s.laLo, s.kind, s.size, this.out)) {
      this.kvm.handleExitsNow(s.vcpu, s.laHi, s.laLo, s.kind, s.size, this.out);
    }
    const mm = this.mm;
    if (mm === null) return this.out;
    const r = this.out.result;
    if (s.kind === AccessKind.Write && r.outcome === Outcome.Ok && this.out.userExit === null) mm.guestWrite(r.hpa);
    if (!mm.needsBalance()) return this.out;
    // kswapd will now reclaim, and KVM's remote TLB flush (INVEPT, VMRUN) reuses the vCPU's result: keep the access's first.
    const kept = this.kept;
    kept.result.copyFrom(r);
    kept.exits = this.out.exits;
    kept.userExit = this.out.userExit;
    mm.balance();
    return kept;
  }

  /** Runs a VM verb other than access and expect; returns what it prints, or null. */
  step(s: Step): VmRecord | null {
    const c = s.cmd;
    const kvm = this.kvm;
    switch (c.verb) {
      case 'guest map':
      case 'guest identity':
        this.guestMap(c);
        this.mm?.balance();
        return null;
      case 'memslot': {
        const gpa = num(c, 'gpa')!;
        kvm.addMemory(c.args.get('slot')!.value as number, gpa, num(c, 'size')!, c.words.has('readonly') ? KVM_MEM_READONLY : 0);
        return null;
      }
      case 'age': {
        const [start, end] = this.hvaRange(c);
        return { line: s.line, op: 'age', start: hexNum(start), end: hexNum(end), young: runProgram(kvm.notifier.clearYoung(start, end)) };
      }
      case 'clear_flush_young': {
        const [start, end] = this.hvaRange(c);
        let young = false;
        for (let hva = start; hva < end; hva += 4096) if (runProgram(kvm.mm.clearFlushYoungNotify(hva))) young = true;
        return { line: s.line, op: 'clear_flush_young', start: hexNum(start), end: hexNum(end), young: young ? 1 : 0 };
      }
      case 'test_young': {
        const hva = GUEST_HVA_BASE + num(c, 'gpa')!;
        return { line: s.line, op: 'test_young', hva: hexNum(hva), young: runProgram(kvm.notifier.testYoung(hva)) };
      }
      case 'madvise_dontneed':
        runProgram(kvm.mm.madviseDontneed(GUEST_HVA_BASE + num(c, 'gpa')!, num(c, 'size')!));
        return null;
      case 'munmap':
        runProgram(kvm.mm.munmap(GUEST_HVA_BASE + num(c, 'gpa')!, num(c, 'size')!));
        return null;
      case 'dirty_log': {
        const slot = (c.args.get('slot')?.value as number | undefined) ?? 0;
        if (c.words.has('enable')) {
          runProgram(kvm.enableDirtyLogging(slot));
          return null;
        }
        const gfns = runProgram(kvm.getDirtyLog(slot));
        return { line: s.line, op: 'dirty_log', slot, dirty: gfns.map(hexNum) };
      }
      case 'mprotect':
        runProgram(kvm.mm.mprotect(GUEST_HVA_BASE + num(c, 'gpa')!, num(c, 'size')!, { writable: c.words.has('rw') }));
        return null;
      case 'mremap': {
        const hva = num(c, 'hva') ?? GUEST_HVA_BASE + num(c, 'gpa')!;
        const size = num(c, 'size')!;
        const newSize = num(c, 'new_size');
        const to = num(c, 'to');
        const r = runProgram(mremap(kvm.mm, hva, size, newSize ?? size, { maymove: c.words.has('maymove'), ...(to !== undefined ? { fixed: to } : {}) }));
        return {
          line: s.line, op: 'mremap', ...(c.args.has('hva') ? { hva: hexNum(hva) } : { gpa: hexNum(hva - GUEST_HVA_BASE) }), size: hexNum(size), ...(newSize !== undefined ? { new_size: hexNum(newSize) } : {}),
          to: hexNum(r.addr), how: r.kind, moved: r.moved,
        };
      }
      case 'madvise_free': {
        const gpa = num(c, 'gpa')!;
        const size = num(c, 'size')!;
        const r = runProgram(madviseFree(kvm.mm, GUEST_HVA_BASE + gpa, size));
        return { line: s.line, op: 'madvise_free', gpa: hexNum(gpa), size: hexNum(size), cleaned: r.cleaned, lazyfree: r.lazyfree, swap_freed: r.swapFreed };
      }
      case 'migrate': {
        const gpa = num(c, 'gpa')!;
        const mm = kvm.mm;
        const pfn = mm.lookup(GUEST_HVA_BASE + gpa);
        // Not resident, or in the swap cache (whose migration is not modelled): nothing migrated.
        const r = pfn === null || mm.folios.test(mm.folios.folioOf(pfn), PG_swapcache) ? null : runProgram(migrateFolio(mm, GUEST_HVA_BASE + gpa));
        if (r === null) return { line: s.line, op: 'migrate', gpa: hexNum(gpa), migrated: 0 };
        return { line: s.line, op: 'migrate', gpa: hexNum(gpa), migrated: 1, old_pfn: hexNum(r.oldPfn), new_pfn: hexNum(r.newPfn) };
      }
      case 'ksm_merge': {
        const gpa = num(c, 'gpa')!;
        const size = num(c, 'size')!;
        const r = runProgram(ksmScan(kvm.mm, GUEST_HVA_BASE + gpa, GUEST_HVA_BASE + gpa + size));
        const k = ksmCounts(kvm.mm.folios);
        return { line: s.line, op: 'ksm_merge', gpa: hexNum(gpa), size: hexNum(size), scanned: r.scanned, merged: r.merged, freed: r.freed.length, pages_shared: k.pagesShared, pages_sharing: k.pagesSharing };
      }
      case 'fork': {
        const r = runProgram(dupMmap(kvm.mm));
        this.child = r.child;
        this.forkStats.forks++;
        this.forkStats.ptes += r.stats.ptes;
        this.forkStats.swapEntries += r.stats.swapEntries;
        return { line: s.line, op: 'fork', vmas: r.stats.vmas, cow_vmas: r.stats.cowVmas, ptes: r.stats.ptes, swap_entries: r.stats.swapEntries };
      }
      case 'child_write': {
        const child = this.child!;
        const hva = num(c, 'hva') ?? GUEST_HVA_BASE + num(c, 'gpa')!;
        const where: VmRecord = c.args.has('hva') ? { hva: hexNum(hva) } : { gpa: hexNum(hva - GUEST_HVA_BASE) };
        const copies = child.cowCopies;
        const hpa = child.access(hva, true); // the child's store on its CPU: #PF, handle_mm_fault, retry
        if (hpa < 0) return { line: s.line, op: 'child_write', ...where, segv: 1 };
        child.recordWrite(hpa);
        this.mm?.balance();
        return { line: s.line, op: 'child_write', ...where, segv: 0, pfn: hexNum(Math.floor(hpa / 4096)), copied: child.cowCopies - copies };
      }
      case 'child_exit':
        runProgram(this.child!.exit());
        this.child = null;
        return null;
      case 'clear_soft_dirty': {
        const r = runProgram(clearSoftDirty(kvm.mm));
        return { line: s.line, op: 'clear_soft_dirty', ptes: r.ptes };
      }
      case 'reclaim': {
        const want = (c.args.get('pages')?.value as number | undefined) ?? 32;
        const reclaimed = this.mm!.doReclaim(want, c.args.get('priority')?.value as number | undefined);
        return { line: s.line, op: 'reclaim', reclaimed, lru_pages: this.mm!.lruPages };
      }
      case 'lru_age': {
        const r = this.mm!.age();
        return { line: s.line, op: 'lru_age', max_seq: r.maxSeq, min_seq: r.minSeq };
      }
      case 'page_idle mark': {
        const gpa = num(c, 'gpa')!;
        const size = num(c, 'size') ?? 4096;
        const r = this.mm!.idleMark(gpa, size);
        return { line: s.line, op: 'page_idle_mark', gpa: hexNum(gpa), size: hexNum(size), marked: r.pages };
      }
      case 'page_idle read': {
        const gpa = num(c, 'gpa')!;
        const size = num(c, 'size') ?? 4096;
        const r = this.mm!.idleRead(gpa, size);
        return { line: s.line, op: 'page_idle_read', gpa: hexNum(gpa), size: hexNum(size), resident: r.resident, idle: r.idle.length, idle_gfns: r.idle.map(hexNum) };
      }
      default:
        throw new Error(`assertion: VM verb '${c.verb}' has no runner`);
    }
  }

  /** The hva range of an aging command: gpa/size, or all guest memory. */
  private hvaRange(c: Command): [number, number] {
    const gpa = num(c, 'gpa');
    if (gpa !== undefined) return [GUEST_HVA_BASE + gpa, GUEST_HVA_BASE + gpa + (num(c, 'size') ?? 4096)];
    let lo = Infinity;
    let hi = 0;
    for (const s of this.kvm.memslots.slots(0)) {
      lo = Math.min(lo, s.userspace_addr);
      hi = Math.max(hi, s.userspace_addr + s.npages * 4096);
    }
    return lo < hi ? [lo, hi] : [GUEST_HVA_BASE, GUEST_HVA_BASE + 4096];
  }

  private guestMap(c: Command): void {
    const g = this.guest!;
    const { level, bytes, size } = guestPages(c);
    const gva = c.args.get('gva')?.value as Long | undefined;
    const gpa = num(c, 'gpa') ?? 0;
    const base = gva === undefined ? BigInt(gpa) : BigInt(gva.toString());
    const bits = leafBits(c);
    const hadRoot = g.root >= 0;
    for (let off = 0; off < size; off += bytes) g.map(base + BigInt(off), gpa + off, level, bits, c.line);
    if (!hadRoot) {
      // The guest loads its new tables: MOV to CR3 on every vCPU.
      for (let v = 0; v < this.kvm.vcpus.length; v++) this.kvm.machine.movCr3(v, 0, g.root);
    }
  }

  /** `expect spte`: failure messages, empty when every key holds. */
  expectSpte(c: Command): string[] {
    const gfn = num(c, 'gfn')!;
    const want = c.args.get('level')?.value as number | undefined;
    const at = findSpte(this.kvm, gfn, want);
    const where = `gfn ${hexNum(gfn)}${want === undefined ? '' : ` level ${want}`}`;
    const fails: string[] = [];
    const keys = [...c.args.keys()].filter((k) => k !== 'gfn' && k !== 'level' && k !== 'mask');
    if (at === null || at.short) {
      const end = at === null ? 'no TDP root' : `the walk ends at level ${at.level}: ${describeSpte(this.kvm, at.spte)}`;
      for (const k of keys) {
        if (k === 'present' && c.args.get(k)!.value === 0) continue;
        fails.push(`expect spte ${k}: expected ${this.shown(c, k)}, got no SPTE at ${where} (${end})`);
      }
      return fails;
    }
    const bits = spteBits(this.kvm, at.spte);
    const ctx = `(${where}: level ${at.level} ${describeSpte(this.kvm, at.spte)})`;
    for (const k of keys) {
      let got: string;
      let ok: boolean;
      if (k === 'value') {
        const mask = c.args.get('mask')?.value as Long | undefined;
        const m = mask === undefined ? (1n << 64n) - 1n : BigInt(mask.toString());
        const v = BigInt((c.args.get('value')!.value as Long).toString());
        ok = (at.spte & m) === (v & m);
        got = '0x' + (at.spte & m).toString(16);
      } else if (k === 'pfn') {
        const pfn = spteToPfn(at.spte);
        ok = pfn === BigInt((c.args.get('pfn')!.value as Long).toString());
        got = '0x' + pfn.toString(16);
      } else {
        ok = bits[k] === c.args.get(k)!.value;
        got = String(bits[k]);
      }
      if (!ok) fails.push(`expect spte ${k}: expected ${this.shown(c, k)}, got ${got} ${ctx}`);
    }
    return fails;
  }

  private shown(c: Command, k: string): string {
    const v = c.args.get(k)!.value;
    if (typeof v === 'number') return String(v);
    const l = v as Long;
    const mask = k === 'value' ? (c.args.get('mask')?.value as Long | undefined) : undefined;
    return '0x' + (mask === undefined ? l : l.and(mask)).toString(16);
  }

  /** The value of a counter (docs/kvm.md lists them). */
  counter(name: CounterName): number {
    const k = this.kvm;
    const s = k.stats;
    const t = k.tdpMmu.stats;
    switch (name) {
      case 'exits': return s.exits;
      case 'pf_taken': return s.pageFaults;
      case 'pf_fixed': return s.pfFixed;
      case 'pf_spurious': return s.pfSpurious;
      case 'pf_retry': return s.pfRetry;
      case 'pf_emulate': return s.pfEmulate;
      case 'pf_write_protected': return s.pfWriteProtected;
      case 'pf_fast': return s.pfFast;
      case 'pf_guest': return s.guestPf;
      case 'mmio_exits': return s.mmioExits;
      case 'remote_tlb_flush': return s.flushes;
      case 'pages_4k': return t.pages[1];
      case 'pages_2m': return t.pages[2];
      case 'pages_1g': return t.pages[3];
      case 'pt_pages': return k.tdpMmu.pageCount;
      case 'pt_allocated': return t.ptAllocated;
      case 'pt_freed': return t.ptFreed;
      case 'cmpxchg_failed': return t.cmpxchgFailed;
      case 'aged': return t.aged;
      case 'age_lost': return t.ageLost;
      case 'splits': return t.splits;
      case 'host_faults': return k.mm.faults;
      case 'pfn_dirtied': return s.pfnDirtied;
      case 'mmu_lock_held_read': return k.mmuLock.stats.readHeld;
      case 'forks': return this.forkStats.forks;
      case 'fork_ptes': return this.forkStats.ptes;
      case 'fork_swap_entries': return this.forkStats.swapEntries;
      default:
        if (name.startsWith('mmu_lock_')) return mmuLockCounter(k.mmuLock.stats, name.slice(9)); return this.mm?.counter(name) ?? notifierCounter(k, name) ?? 0;
    }
  }

  /** `expect folio`: the host folio behind a guest page. */
  expectFolio(c: Command): string[] {
    const gpa = num(c, 'gpa')!;
    const got = this.mm!.folio(gpa);
    const fails: string[] = [];
    const ctx = Object.entries(got).map(([k, v]) => `${k}=${v}`).join(' ');
    for (const [k, a] of c.args) {
      if (k === 'gpa') continue;
      const g = got[k];
      if (g === undefined) fails.push(`expect folio ${k}: expected ${a.value as string | number}, got no resident folio at gpa ${hexNum(gpa)} (${ctx})`);
      else if (g !== a.value) fails.push(`expect folio ${k}: expected ${a.value as string | number}, got ${g} (gpa ${hexNum(gpa)}: ${ctx})`);
    }
    return fails;
  }

  /** `expect lru`: list sizes or generations. */
  expectLru(c: Command): string[] {
    const got = this.mm!.lruState();
    const ctx = Object.entries(got).map(([k, v]) => `${k}=${v}`).join(' ');
    const fails: string[] = [];
    for (const [k, a] of c.args) if (got[k] !== a.value) fails.push(`expect lru ${k}: expected ${a.value as number}, got ${got[k]} (${ctx})`);
    return fails;
  }

  /** `expect data`: every page of the range holds its last write. */
  expectData(c: Command): string[] {
    return this.mm!.checkData(num(c, 'gpa'), num(c, 'size'));
  }

  expectCounter(c: Command): string[] {
    const fails: string[] = [];
    for (const [k, a] of c.args) {
      const got = this.counter(k as CounterName);
      if (got !== a.value) fails.push(`expect counter ${k}: expected ${a.value as number}, got ${got}`);
    }
    return fails;
  }

  /** `expect dirty`: the gfn's bit in its memslot's dirty bitmap (not harvested yet). */
  expectDirty(c: Command): string[] {
    const gfn = num(c, 'gfn')!;
    const slot = this.kvm.memslots.gfnToMemslot(gfn);
    const bitmap = slot?.dirty_bitmap ?? null;
    if (slot === null || bitmap === null) return [`expect dirty: gfn ${hexNum(gfn)} is not in a dirty-logged memslot`];
    const i = gfn - slot.base_gfn;
    const set = ((bitmap[i >>> 5] >>> (i & 31)) & 1) === 1;
    const want = c.words.has('set');
    return set === want ? [] : [`expect dirty: expected gfn ${hexNum(gfn)} ${want ? 'set' : 'clear'}, got ${set ? 'set' : 'clear'} (memslot ${slot.id})`];
  }
}

/** The mmu_lock counters `reads_U`, `writes_U`, `held_write_U`, `wait_U` (U a MmuLockUser). */
function mmuLockCounter(st: MmuLockStats, rest: string): number {
  const m = /^(reads|writes|held_write|wait)_(fault|aging|invalidate|other)$/.exec(rest);
  if (m === null) throw new Error(`assertion: mmu_lock counter ${rest}`);
  const u = m[2] as MmuLockUser;
  switch (m[1]) {
    case 'reads': return st.readLocks[u];
    case 'writes': return st.writeLocks[u];
    case 'held_write': return st.writeHeld[u];
    default: return st.waitSteps[u];
  }
}
