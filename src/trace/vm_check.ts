/**
 * Whole-file checks of a VM-level trace (one that starts with `vm`), run by
 * parseTrace before anything executes: the VM's configuration, the memslot
 * layout as the trace changes it, the guest page tables `guest map` will
 * build, host-mm ranges, and `expect` keys against the TDP flavour. Every
 * problem is a TraceError (FILE:LINE:COL, exit 2), so that a VM-level trace
 * that passes here runs without input errors.
 */
import type Long from 'long';
import { PhysMem } from '../hw/phys_mem.js';
import { runProgram } from '../hw/sched.js';
import type { VmOptions } from '../kvm/vm.js';
import { MmError, MmStruct } from '../mm/mm.js';
import { mremap } from '../mm/mremap.js';
import { PageAllocator } from '../mm/page_alloc.js';
import { TraceError, type Command, type Trace } from './ast.js';
import { canonical4, GuestMapError, GuestTables, pageLevelBytes, type LeafBits } from './guest_tables.js';
import { FORK_VERBS, MM_VERBS, MM_VM_KEYS, SPTE_BITS_EPT, SPTE_BITS_NPT } from './verbs.js';

/** GUEST_HVA_BASE of src/kvm/vm.ts: where guest memory's hvas start (mremap targets stay below it). */
const GUEST_MEMORY_HVA = 0x7f00_0000_0000;

/** Guest memory sits at GUEST_HVA_BASE + gpa in the VMM, which must stay below the 47-bit user address space. */
export const GPA_LIMIT = 2 ** 47 - 4096 - 0x7f00_0000_0000;
/** More pages than this in one `guest` command would take too long to build: use larger pages. */
const MAX_GUEST_PAGES = 2 ** 20;
const PAGE_LEVELS: Record<string, 1 | 2 | 3> = { '4k': 1, '2m': 2, '1g': 3 };

/** A memslot as the trace lays it out. */
export interface SlotPlan {
  id: number;
  gpa: number;
  size: number;
  readonly: boolean;
  dirtyLog: boolean;
}

/** The `vm` line as Kvm options. */
export function vmOptions(c: Command): Required<VmOptions> {
  return {
    tdp: c.args.get('tdp')!.value as 'ept' | 'npt',
    eptAd: (c.args.get('ad')?.value ?? 'on') === 'on',
    eptLevels: (c.args.get('levels')?.value as 4 | 5 | undefined) ?? 4,
    vcpus: (c.args.get('vcpus')?.value as number | undefined) ?? 1,
    memory: num(c, 'memory') ?? 64 * 1024 * 1024,
    hostLevel: PAGE_LEVELS[(c.args.get('host_page')?.value as string | undefined) ?? '4k'],
    tlb: (c.args.get('tlb')?.value ?? 'on') === 'on',
    maxPhysAddr: (c.args.get('maxphyaddr')?.value as number | undefined) ?? 46,
    // `kernel=6.12` is 612: the baseline whose behaviour to model (6.17 by default).
    kernel: Math.round(Number((c.args.get('kernel')?.value as string | undefined) ?? '6.17') * 100),
  };
}

/** A u64/size argument as a number, or undefined; values beyond 2^53 become Infinity so range checks catch them. */
export function num(c: Command, key: string): number | undefined {
  const v = c.args.get(key)?.value as Long | undefined;
  if (v === undefined) return undefined;
  return v.high >>> 21 !== 0 ? Infinity : v.toNumber();
}

export function leafBits(c: Command): LeafBits {
  const f = c.args.get('flags')?.value as Long | undefined;
  return {
    readonly: c.words.has('ro'), user: c.words.has('user'), nx: c.words.has('nx'), global: c.words.has('global'),
    extraLo: f?.low ?? 0, extraHi: f?.high ?? 0,
  };
}

/** The page level and size of a `guest map` / `guest identity` command. */
export function guestPages(c: Command): { level: 1 | 2 | 3; bytes: number; size: number } {
  const level = PAGE_LEVELS[(c.args.get('page')?.value as string | undefined) ?? '4k'];
  const bytes = pageLevelBytes(level);
  return { level, bytes, size: num(c, 'size') ?? bytes };
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}

class VmChecker {
  readonly slots: SlotPlan[] = [];
  private readonly opts;
  private readonly hostBytes: number;
  private readonly physLimit: number;
  private readonly guest: GuestTables | null = null;
  private readonly mglru: boolean;
  /**
   * The VMM's address space as the trace changes it: a shadow mm that runs
   * every munmap, mprotect, madvise and mremap with no page ever touched, so
   * the VMA list, and what each call refuses, is what the run will see.
   */
  private readonly shadow: MmStruct;
  /** hva ranges taken away (munmap, the old range of a move or shrink, an MREMAP_FIXED target), latest last, for messages. */
  private readonly gone: { start: number; end: number; line: number }[] = [];
  /** The line of the `fork` whose child is alive, or null. */
  private childLine: number | null = null;

  constructor(readonly t: Trace) {
    const c = t.commands[0];
    this.opts = vmOptions(c);
    const o = this.opts;
    this.hostBytes = pageLevelBytes(o.hostLevel);
    this.physLimit = Math.min(2 ** o.maxPhysAddr, GPA_LIMIT);
    if (o.tdp === 'npt' && c.args.has('ad')) this.fail(c, 'ad', `vm: ad= is the EPT A/D switch; NPT always has accessed/dirty bits`);
    if (o.tdp === 'npt' && c.args.has('levels')) this.fail(c, 'levels', `vm: levels= is the EPT walk length; NPT uses the host's 4-level mode`);
    if (o.memory % this.hostBytes !== 0) this.fail(c, 'memory', `vm: memory ${hex(o.memory)} is not a multiple of the ${SIZE[o.hostLevel]} host page`);
    if (o.memory > this.physLimit) this.fail(c, 'memory', `vm: memory ${hex(o.memory)} does not fit below ${hex(this.physLimit)}`);
    this.mglru = c.args.get('lru')?.value === 'mglru';
    if (c.args.has('policy') && !this.mglru) this.fail(c, 'policy', `vm: policy= chooses how MGLRU asks KVM about young pages; it needs lru=mglru`);
    const hm = num(c, 'host_memory');
    if (hm !== undefined && (hm === 0 || hm % 4096 !== 0)) this.fail(c, 'host_memory', `vm: host_memory ${hex(hm)} is not a non-zero multiple of 4K`);
    const sw = num(c, 'swap');
    if (sw !== undefined && (sw === 0 || sw % 4096 !== 0 || sw > 2 ** 36)) this.fail(c, 'swap', `vm: swap ${hex(sw)} is not a non-zero multiple of 4K (at most 64G)`);
    if (o.hostLevel !== 1) {
      const k = MM_VM_KEYS.find((x) => c.args.has(x));
      if (k !== undefined) this.fail(c, k, `vm: ${k}= needs host_page=4k (the host-mm layer reclaims 4K folios only)`);
      const m = t.commands.find((x) => MM_VERBS.includes(x.verb));
      if (m !== undefined) {
        const why = FORK_VERBS.includes(m.verb) ? 'fork copies 4K page tables only: copy_huge_pmd and the THP split a COW needs are not modelled' : 'the host-mm layer reclaims 4K folios only';
        this.fail(m, null, `${m.verb}: needs host_page=4k (${why})`);
      }
    }
    const mem = new PhysMem(40);
    this.shadow = new MmStruct(mem, new PageAllocator(mem, 0x100_0000, 0x100_0000));
    if (o.memory > 0) {
      this.slots.push({ id: 0, gpa: 0, size: o.memory, readonly: false, dirtyLog: false });
      this.shadow.mmap(GUEST_MEMORY_HVA, o.memory, { level: o.hostLevel });
      this.guest = new GuestTables(o.memory, 0, (gpa) => this.tableWrite(gpa));
    }
  }

  private fail(c: Command, key: string | null, message: string): never {
    const a = key === null ? undefined : c.args.get(key);
    throw new TraceError(this.t.file, c.line, a?.col ?? c.col, message);
  }

  /** The slot holding gpa, or undefined. */
  slotAt(gpa: number): SlotPlan | undefined {
    return this.slots.find((s) => gpa >= s.gpa && gpa < s.gpa + s.size);
  }

  private tableWrite(gpa: number): void {
    const u = this.unmapped(gpa, 4096);
    if (u !== null) throw new GuestMapError(`the guest page-table entry at gpa ${hex(gpa)} is in memory ${u.why}`);
  }

  /** null when all of [gpa, gpa+size) is mapped in the VMM; else the first gpa that is not and why ("unmapped at line N" or "not mapped"). */
  private unmapped(gpa: number, size: number): { gpa: number; why: string } | null {
    for (let a = GUEST_MEMORY_HVA + gpa; a < GUEST_MEMORY_HVA + gpa + size;) {
      const v = this.shadow.findVma(a);
      if (v !== null) {
        a = v.end;
        continue;
      }
      for (let i = this.gone.length - 1; i >= 0; i--) {
        const g = this.gone[i];
        if (a >= g.start && a < g.end) return { gpa: a - GUEST_MEMORY_HVA, why: `unmapped at line ${g.line}` };
      }
      return { gpa: a - GUEST_MEMORY_HVA, why: 'not mapped' };
    }
    return null;
  }

  /** Runs an mm call on the shadow mm; what it refuses is this line's error. */
  private shadowRun(c: Command, key: string | ((message: string) => string), call: () => void): void {
    try {
      call();
    } catch (e) {
      if (e instanceof MmError || e instanceof RangeError) {
        const m = e.message.slice(e.message.indexOf(': ') + 2);
        this.fail(c, typeof key === 'string' ? key : key(m), `${c.verb}: ${m}`);
      }
      throw e;
    }
  }

  run(): void {
    for (let i = 1; i < this.t.commands.length; i++) this.command(this.t.commands[i]);
  }

  private command(c: Command): void {
    switch (c.verb) {
      case 'guest map':
      case 'guest identity':
        return this.guestMap(c);
      case 'memslot':
        return this.memslot(c);
      case 'age':
      case 'clear_flush_young': {
        const gpa = num(c, 'gpa');
        const size = num(c, 'size');
        if (gpa === undefined && size !== undefined) this.fail(c, 'size', `${c.verb}: size= needs gpa=`);
        if (gpa !== undefined) this.range(c, gpa, size ?? 4096, 4096);
        return;
      }
      case 'test_young':
        return this.range(c, num(c, 'gpa')!, 1, 1);
      case 'madvise_dontneed':
      case 'munmap':
      case 'mprotect':
        return this.hostRange(c);
      case 'dirty_log': {
        const s = this.slot(c);
        if (c.words.has('enable')) s.dirtyLog = true;
        else if (!s.dirtyLog) this.fail(c, 'slot', `dirty_log get: memslot ${s.id} does not log dirty pages (no 'dirty_log enable' for it before)`);
        return;
      }
      case 'mremap':
        return this.mremap(c);
      case 'madvise_free':
      case 'migrate': {
        if (this.mglru) this.fail(c, null, `${c.verb}: not modelled with lru=mglru (lazyfree and migrated folios on MGLRU lists); use the classic LRU`);
        if (c.verb === 'madvise_free') return this.hostRange(c);
        const gpa = num(c, 'gpa')!;
        if (gpa % 4096 !== 0) this.fail(c, 'gpa', `migrate: gpa ${hex(gpa)} is not 4K aligned`);
        const s = this.slotAt(gpa);
        if (s === undefined) this.fail(c, 'gpa', `migrate: gpa ${hex(gpa)} is not in a memslot`);
        const u = this.unmapped(gpa, 4096);
        if (u !== null) this.fail(c, 'gpa', `migrate: gpa ${hex(gpa)} is ${u.why}`);
        return;
      }
      case 'ksm_merge': {
        const gpa = num(c, 'gpa')!;
        const size = num(c, 'size')!;
        this.range(c, gpa, size, 4096);
        const u = this.unmapped(gpa, size);
        if (u !== null) this.fail(c, 'gpa', `ksm_merge: ENOMEM: gpa ${hex(u.gpa)} of the range ${hex(gpa)}+${hex(size)} is ${u.why}`);
        return;
      }
      case 'fork':
        if (this.mglru) this.fail(c, null, `fork: not modelled with lru=mglru (MGLRU's page-table walk and eviction would meet the child's mm); use the classic LRU`);
        if (this.childLine !== null) this.fail(c, null, `fork: the child forked at line ${this.childLine} is still alive; one child at a time ('child_exit' first)`);
        this.childLine = c.line;
        return;
      case 'child_write': {
        if (this.childLine === null) this.fail(c, null, `child_write: no child (no 'fork' before, or it has exited)`);
        const gpa = num(c, 'gpa');
        const hva = num(c, 'hva');
        if ((gpa === undefined) === (hva === undefined)) this.fail(c, null, `child_write: give the address as gpa= (the child's copy of guest memory) or hva=, one of them`);
        if (gpa !== undefined && gpa >= GPA_LIMIT) this.fail(c, 'gpa', `child_write: gpa ${hex(gpa)} is beyond ${hex(GPA_LIMIT)}`);
        if (hva !== undefined && (hva < 0x10000 || hva >= 2 ** 47 - 4096)) this.fail(c, 'hva', `child_write: hva ${hex(hva)} is not a user address (0x10000..0x7ffffffff000)`);
        return;
      }
      case 'child_exit':
        if (this.childLine === null) this.fail(c, null, `child_exit: no child (no 'fork' before, or it has exited)`);
        this.childLine = null;
        return;
      case 'lru_age':
        if (!this.mglru) this.fail(c, null, `lru_age: an MGLRU aging pass needs lru=mglru on the vm line`);
        return;
      case 'page_idle mark':
      case 'page_idle read':
      case 'expect data': {
        const gpa = num(c, 'gpa');
        const size = num(c, 'size');
        if (gpa === undefined) {
          if (size !== undefined) this.fail(c, 'size', `${c.verb}: size= needs gpa=`);
          return;
        }
        return this.range(c, gpa, size ?? 4096, 4096);
      }
      case 'expect folio': {
        const gpa = num(c, 'gpa')!;
        if (this.slotAt(gpa) === undefined) this.fail(c, 'gpa', `expect folio: gpa ${hex(gpa)} is not in a memslot`);
        if (c.args.has('gen') && !this.mglru) this.fail(c, 'gen', `expect folio: gen= is an MGLRU generation; this VM uses the classic LRU (lru=mglru on the vm line)`);
        return;
      }
      case 'expect lru': {
        const keys = this.mglru ? ['active', 'inactive'] : ['gen0', 'gen1', 'gen2', 'gen3', 'max_seq', 'min_seq', 'nr_gens'];
        const k = keys.find((x) => c.args.has(x));
        if (k !== undefined) {
          this.fail(c, k, this.mglru
            ? `expect lru: ${k}= counts a classic list; with lru=mglru check gen0..gen3, max_seq, min_seq, nr_gens`
            : `expect lru: ${k}= is MGLRU's; with the classic LRU check active=, inactive=`);
        }
        if (c.args.size === 0) this.fail(c, null, `expect lru: nothing to check (${this.mglru ? 'gen0..gen3, max_seq, min_seq, nr_gens' : 'active, inactive'})`);
        return;
      }
      case 'expect spte':
        return this.expectSpte(c);
      case 'expect dirty': {
        const gfn = num(c, 'gfn')!;
        const s = this.slotAt(gfn * 4096);
        if (s === undefined || !s.dirtyLog) this.fail(c, 'gfn', `expect dirty: gfn ${hex(gfn)} is not in a memslot that logs dirty pages`);
        return;
      }
      default:
        return;
    }
  }

  private guestMap(c: Command): void {
    const reclaim = this.t.commands.find((x) => x.verb === 'reclaim') ?? (this.t.commands[0].args.has('host_memory') ? this.t.commands[0] : undefined);
    if (reclaim !== undefined) {
      this.fail(c, null, `${c.verb}: guest page tables would be reclaimed (${reclaim.verb === 'vm' ? 'host_memory=' : 'reclaim'} at line ${reclaim.line}), and swap keeps data tokens, not bytes; run the guest with paging off (cpu cr0=0x11), see docs/mm.md section 5`);
    }
    const { level, bytes, size } = guestPages(c);
    const gva = (c.args.get('gva')?.value as Long | undefined) ?? null;
    const gpa = num(c, 'gpa') ?? 0;
    const gvaBig = gva === null ? BigInt(gpa) : BigInt(gva.toString());
    const name = SIZE[level];
    if (this.guest === null) this.fail(c, null, `${c.verb}: the guest's page tables live at the top of memslot 0, and this VM has no memory (memory=0)`);
    if (size === 0 || size % bytes !== 0) this.fail(c, 'size', `${c.verb}: size ${hex(size)} is not a multiple of the ${name} page`);
    if (gpa % bytes !== 0) this.fail(c, 'gpa', `${c.verb}: gpa ${hex(gpa)} is not aligned to the ${name} page`);
    if (gvaBig % BigInt(bytes) !== 0n) this.fail(c, 'gva', `${c.verb}: gva 0x${gvaBig.toString(16)} is not aligned to the ${name} page`);
    if (gpa + size > 2 ** this.opts.maxPhysAddr) this.fail(c, 'gpa', `${c.verb}: gpa range ends beyond maxphyaddr ${this.opts.maxPhysAddr}`);
    if (!canonical4(gvaBig) || !canonical4(gvaBig + BigInt(size) - 1n)) {
      this.fail(c, gva === null ? 'size' : 'gva', `${c.verb}: gva range 0x${gvaBig.toString(16)}+${hex(size)} is not canonical for 4-level paging`);
    }
    if (size / bytes > MAX_GUEST_PAGES) this.fail(c, 'size', `${c.verb}: ${size / bytes} pages in one command is too many (at most ${MAX_GUEST_PAGES}); use larger pages`);
    const bits = leafBits(c);
    try {
      for (let off = 0; off < size; off += bytes) this.guest.map(gvaBig + BigInt(off), gpa + off, level, bits, c.line);
    } catch (e) {
      if (e instanceof GuestMapError) this.fail(c, gva === null ? 'size' : 'gva', `${c.verb}: ${e.message}`);
      throw e;
    }
  }

  private memslot(c: Command): void {
    const id = c.args.get('slot')!.value as number;
    const gpa = num(c, 'gpa')!;
    const size = num(c, 'size')!;
    const old = this.slots.find((s) => s.id === id);
    if (old !== undefined) this.fail(c, 'slot', `memslot: slot ${id} exists already (gpa ${hex(old.gpa)}, size ${hex(old.size)})`);
    const host = SIZE[this.opts.hostLevel];
    if (gpa % this.hostBytes !== 0) this.fail(c, 'gpa', `memslot: gpa ${hex(gpa)} is not aligned to the ${host} host page`);
    if (size === 0 || size % this.hostBytes !== 0) this.fail(c, 'size', `memslot: size ${hex(size)} is not a non-zero multiple of the ${host} host page`);
    if (gpa + size > this.physLimit) this.fail(c, 'size', `memslot: gpa range ends beyond ${hex(this.physLimit)}`);
    const clash = this.slots.find((s) => gpa < s.gpa + s.size && s.gpa < gpa + size);
    if (clash !== undefined) this.fail(c, 'gpa', `memslot: gpa range overlaps memslot ${clash.id} (gpa ${hex(clash.gpa)}, size ${hex(clash.size)})`);
    const hva = GUEST_MEMORY_HVA + gpa;
    if (this.shadow.vmasIn(hva, hva + size).length > 0) this.fail(c, 'gpa', `memslot: its memory at hva ${hex(hva)}+${hex(size)} would overlap an area of the VMM (an mremap moved or grew one there)`);
    this.shadow.mmap(hva, size, { level: this.opts.hostLevel });
    this.slots.push({ id, gpa, size, readonly: c.words.has('readonly'), dirtyLog: false });
  }

  private slot(c: Command): SlotPlan {
    const id = (c.args.get('slot')?.value as number | undefined) ?? 0;
    const s = this.slots.find((x) => x.id === id);
    if (s === undefined) this.fail(c, 'slot', `${c.verb}: no memslot ${id}`);
    return s;
  }

  /** A gpa range for aging: aligned, inside the VM's physical address space. */
  private range(c: Command, gpa: number, size: number, align: number): void {
    if (gpa % align !== 0) this.fail(c, 'gpa', `${c.verb}: gpa ${hex(gpa)} is not 4K aligned`);
    if (size === 0 || size % align !== 0) this.fail(c, 'size', `${c.verb}: size ${hex(size)} is not a non-zero multiple of 4K`);
    if (gpa + size > this.physLimit) this.fail(c, 'gpa', `${c.verb}: gpa range ends beyond ${hex(this.physLimit)}`);
  }

  /**
   * munmap, mprotect, madvise_dontneed, madvise_free of any host-page
   * aligned gpa range: run on the shadow mm. madvise and mprotect need all
   * of it mapped (ENOMEM); munmap takes holes.
   */
  private hostRange(c: Command): void {
    const gpa = num(c, 'gpa')!;
    const size = num(c, 'size')!;
    const host = SIZE[this.opts.hostLevel];
    if (gpa % this.hostBytes !== 0) this.fail(c, 'gpa', `${c.verb}: gpa ${hex(gpa)} is not aligned to the ${host} host page`);
    if (size === 0 || size % this.hostBytes !== 0) this.fail(c, 'size', `${c.verb}: size ${hex(size)} is not a non-zero multiple of the ${host} host page`);
    if (gpa + size > GPA_LIMIT) this.fail(c, 'size', `${c.verb}: gpa range ends beyond ${hex(GPA_LIMIT)}`);
    const hva = GUEST_MEMORY_HVA + gpa;
    const mm = this.shadow;
    if (c.verb === 'munmap') {
      this.shadowRun(c, 'gpa', () => runProgram(mm.munmap(hva, size)));
      this.gone.push({ start: hva, end: hva + size, line: c.line });
      return;
    }
    const u = this.unmapped(gpa, size);
    if (u !== null) this.fail(c, 'gpa', `${c.verb}: ENOMEM: gpa ${hex(u.gpa)} of the range ${hex(gpa)}+${hex(size)} is ${u.why}`);
    if (c.verb === 'mprotect') this.shadowRun(c, 'gpa', () => runProgram(mm.mprotect(hva, size, { writable: c.words.has('rw') })));
    else this.shadowRun(c, 'gpa', () => runProgram(mm.madviseDontneed(hva, size))); // MADV_FREE's checks are the same, and neither changes the areas
  }

  /**
   * mremap gpa=|hva= size= [new_size=] [to=] [maymove]: host-page aligned; then
   * the shadow mm does what the run will (shrink, grow in place, move) or
   * refuses it with the syscall's errno.
   */
  private mremap(c: Command): void {
    const hvaArg = num(c, 'hva');
    if ((hvaArg === undefined) === !c.args.has('gpa')) this.fail(c, null, `mremap: give the old address as gpa= (guest memory) or hva= (an area moved away before), one of them`);
    const gpa = hvaArg === undefined ? num(c, 'gpa')! : hvaArg - GUEST_MEMORY_HVA;
    const at = hvaArg === undefined ? 'gpa' : 'hva';
    const size = num(c, 'size')!;
    const newSize = num(c, 'new_size') ?? size;
    const to = num(c, 'to');
    const host = SIZE[this.opts.hostLevel];
    if (gpa % this.hostBytes !== 0) this.fail(c, at, `mremap: ${at} ${hex(hvaArg ?? gpa)} is not aligned to the ${host} host page`);
    if (size === 0 || size % this.hostBytes !== 0) this.fail(c, 'size', `mremap: size ${hex(size)} is not a non-zero multiple of the ${host} host page`);
    if (newSize === 0 || newSize % this.hostBytes !== 0) this.fail(c, 'new_size', `mremap: new_size ${hex(newSize)} is not a non-zero multiple of the ${host} host page`);
    if (gpa + size > GPA_LIMIT) this.fail(c, 'size', `mremap: range ends beyond TASK_SIZE`);
    if (to !== undefined && to < 0x10000) this.fail(c, 'to', `mremap: to ${hex(to)} is below mmap_min_addr (0x10000)`);
    const hva = GUEST_MEMORY_HVA + gpa;
    if (hvaArg === undefined) {
      const u = this.unmapped(gpa, this.hostBytes);
      if (u !== null) this.fail(c, 'gpa', `mremap: EFAULT: gpa ${hex(gpa)} is ${u.why}`);
    }
    // The column points at what is wrong: the target for its own errors, else the old range.
    const key = (m: string): string => (to !== undefined && /new (range|address)|TASK_SIZE/.test(m) ? 'to' : /cannot grow/.test(m) && c.args.has('new_size') ? 'new_size' : at);
    let res = { addr: hva, kind: 'none' };
    this.shadowRun(c, key, () => {
      res = runProgram(mremap(this.shadow, hva, size, newSize, { maymove: c.words.has('maymove'), ...(to !== undefined ? { fixed: to } : {}) }));
    });
    if (to !== undefined) this.gone.push({ start: to, end: to + newSize, line: c.line });
    if (res.kind === 'move') this.gone.push({ start: hva, end: hva + size, line: c.line });
    else if (res.kind === 'shrink') this.gone.push({ start: hva + newSize, end: hva + size, line: c.line });
  }

  private expectSpte(c: Command): void {
    const ept = this.opts.tdp === 'ept';
    const foreign: readonly string[] = ept ? SPTE_BITS_NPT : SPTE_BITS_EPT;
    for (const k of foreign) {
      if (c.args.has(k)) {
        this.fail(c, k, `expect spte: '${k}' is ${ept ? 'an NPT' : 'an EPT'} bit; this VM's SPTEs are ${ept ? 'EPT (r, w, x)' : 'NPT (p, w, u, nx)'}`);
      }
    }
    const gfn = num(c, 'gfn')!;
    if (gfn >= 2 ** (this.opts.maxPhysAddr - 12)) this.fail(c, 'gfn', `expect spte: gfn ${hex(gfn)} is beyond maxphyaddr ${this.opts.maxPhysAddr}`);
    const level = c.args.get('level')?.value as number | undefined;
    const root = ept ? this.opts.eptLevels : 4;
    if (level !== undefined && level > root) this.fail(c, 'level', `expect spte: level ${level} is above the ${root}-level root`);
    if (c.args.has('mask') && !c.args.has('value')) this.fail(c, 'mask', `expect spte: mask= needs value=`);
  }
}

const SIZE = ['', '4K', '2M', '1G'];

/** Checks a VM-level trace; throws the first problem as a TraceError. */
export function checkVmTrace(t: Trace): void {
  new VmChecker(t).run();
}
