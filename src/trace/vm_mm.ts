/**
 * The host-mm layer of a VM-level trace (docs/mm.md): on when the `vm` line
 * sets lru=/policy=/host_memory=/swap= or the trace uses a host-mm verb.
 * It sets up swap, workingset and reclaim on the VM's mm (classic LRU or
 * MGLRU with a secondary-MMU policy), records a content token for every
 * guest write, keeps resident guest pages under host_memory between
 * accesses (kswapd-style), and answers the host-mm verbs and expectations.
 * Everything a command needs was validated by vm_check.ts before the run.
 */
import { runProgram } from '../hw/sched.js';
import { kvmAgingCaps } from '../kvm/aging_caps.js';
import { GUEST_HVA_BASE, type Kvm } from '../kvm/vm.js';
import { LruList, PG_dirty, PG_idle, PG_ksm, PG_referenced, PG_workingset } from '../mm/folio.js';
import { ksmCounts } from '../mm/ksm.js';
import { Lruvec, lruGenFromSeq } from '../mm/mglru.js';
import { MglruReclaimer, lruGenDebugfs } from '../mm/mglru_evict.js';
import { PageIdle } from '../mm/page_idle.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY } from '../mm/pgtable.js';
import { SecondaryPolicy, type SecondaryPolicyName } from '../mm/secondary_policy.js';
import type { SwapDevice } from '../mm/swap.js';
import { setUpReclaim, type Reclaimer } from '../mm/vmscan.js';
import type { Workingset } from '../mm/workingset.js';
import type { Command, Trace } from './ast.js';
import { hexNum } from './hex.js';
import { MM_VERBS, MM_VM_KEYS, NOTIFIER_EVENTS, NOTIFIER_OPS } from './verbs.js';
import { num } from './vm_check.js';

const PAGE = 4096;

/** Whether a VM-level trace uses the host-mm layer (decided once per trace: replays run it many times). */
export function usesMm(t: Trace): boolean {
  let uses = usesMmOf.get(t);
  if (uses === undefined) {
    const vm = t.commands[0];
    uses = MM_VM_KEYS.some((k) => vm.args.has(k)) || t.commands.some((c) => MM_VERBS.includes(c.verb));
    usesMmOf.set(t, uses);
  }
  return uses;
}
const usesMmOf = new WeakMap<Trace, boolean>();

export type LruKind = 'classic' | 'mglru';

export function lruKind(vm: Command): LruKind {
  return (vm.args.get('lru')?.value as LruKind | undefined) ?? 'classic';
}

export class MmSession {
  readonly lru: LruKind;
  readonly swap: SwapDevice;
  readonly workingset: Workingset;
  readonly reclaim: Reclaimer;
  readonly lruvec: Lruvec | null = null;
  readonly mglru: MglruReclaimer | null = null;
  readonly policy: SecondaryPolicy | null = null;
  readonly pageIdle: PageIdle;
  /** Resident guest pages allowed (host_memory / 4K), or Infinity. */
  readonly limit: number;

  constructor(readonly kvm: Kvm, vm: Command) {
    this.lru = lruKind(vm);
    const memory = num(vm, 'memory') ?? 64 * 1024 * 1024;
    const swapBytes = num(vm, 'swap') ?? memory;
    const r = setUpReclaim(kvm.mm, { swapSlots: Math.max(1, Math.floor(swapBytes / PAGE)) });
    this.swap = r.swap;
    this.workingset = r.workingset;
    this.reclaim = r.reclaim;
    if (this.lru === 'mglru') {
      const lruvec = new Lruvec(kvm.mm.folios);
      const policy = new SecondaryPolicy((vm.args.get('policy')?.value as SecondaryPolicyName | undefined) ?? 'current', kvmAgingCaps(kvm));
      const mglru = new MglruReclaimer(lruvec, policy);
      mglru.useSwap(r); // MGLRU pages out through this swap device (shrink_folio_list)
      mglru.attach(kvm.mm);
      this.lruvec = lruvec;
      this.policy = policy;
      this.mglru = mglru;
    }
    this.pageIdle = new PageIdle(kvm.pages);
    const hm = num(vm, 'host_memory');
    this.limit = hm === undefined ? Infinity : Math.floor(hm / PAGE);
  }

  /** Pages on the LRU (resident anon folios of the VMM, guest memory and guest page tables alike). */
  get lruPages(): number {
    const l = this.lruvec;
    if (l === null) return this.reclaim.lruPages;
    let n = 0;
    for (const g of l.nrPages) n += Math.max(g[0], 0) + Math.max(g[1], 0);
    return n;
  }

  /** A guest store completed at hpa: new data for that page. */
  guestWrite(hpa: number): void {
    this.kvm.mm.recordWrite(hpa);
  }

  /** Whether kswapd has work: more pages on the LRU than the limit allows. */
  needsBalance(): boolean {
    return this.limit !== Infinity && this.lruPages > this.limit;
  }

  /** kswapd between accesses: above the limit, reclaim back down to it (with a little slack, the high watermark). */
  balance(): void {
    if (!this.needsBalance()) return;
    const high = Math.max(1, Math.floor(this.limit / 32));
    this.reclaim.stats.kswapdWakeups++;
    for (let tries = 0; tries < 64 && this.lruPages > this.limit; tries++) {
      const before = this.lruPages;
      const want = before - Math.max(0, this.limit - high);
      runProgram(this.reclaim.tryToFreePages(want));
      if (this.lruPages >= before && this.lru === 'classic') break;
    }
  }

  /** `reclaim [pages=N] [priority=P]`: the priority loop of direct reclaim, or one shrink_lruvec pass; returns pages reclaimed. */
  doReclaim(pages: number, priority: number | undefined): number {
    if (priority !== undefined) return runProgram(this.reclaim.shrinkLruvec(pages, priority));
    return runProgram(this.reclaim.tryToFreePages(pages));
  }

  /** `lru_age`: one MGLRU aging pass (force_scan). */
  age(): { maxSeq: number; minSeq: number } {
    runProgram(this.mglru!.age(true));
    return { maxSeq: this.lruvec!.maxSeq, minSeq: this.lruvec!.minSeq[0] };
  }

  /** Frames backing the guest pages of [gpa, gpa+size) that are resident, in order. */
  private frames(gpa: number, size: number): number[] {
    const out: number[] = [];
    for (let a = gpa; a < gpa + size; a += PAGE) {
      const pfn = this.kvm.mm.lookup(GUEST_HVA_BASE + a);
      if (pfn !== null) out.push(pfn);
    }
    return out;
  }

  /** `page_idle mark`: writes each resident frame's bit (one 8-byte pwrite per frame, as the selftest's helper does). */
  idleMark(gpa: number, size: number): { pages: number } {
    const pfns = this.frames(gpa, size);
    for (const pfn of pfns) {
      const r = runProgram(this.pageIdle.markIdle(pfn));
      if (r < 0) throw new Error(`assertion: page_idle write of pfn 0x${pfn.toString(16)} failed: ${r}`);
    }
    return { pages: pfns.length };
  }

  /** `page_idle read`: reads each resident frame's bit; the idle gfns. */
  idleRead(gpa: number, size: number): { resident: number; idle: number[] } {
    const idle: number[] = [];
    let resident = 0;
    for (let a = gpa; a < gpa + size; a += PAGE) {
      const pfn = this.kvm.mm.lookup(GUEST_HVA_BASE + a);
      if (pfn === null) continue;
      resident++;
      if (runProgram(this.pageIdle.isIdle(pfn))) idle.push(a / PAGE);
    }
    return { resident, idle };
  }

  /** The state `expect folio` checks, for the guest page at gpa. */
  folio(gpa: number): Record<string, string | number> {
    const mm = this.kvm.mm;
    const hva = GUEST_HVA_BASE + gpa;
    const pte = mm.pte(hva);
    const lo = Number(pte & 0xffffffffn);
    const pfn = mm.lookup(hva);
    if (pfn === null) return { mapped: 0, swapped: pte !== 0n ? 1 : 0, lru: 'none' };
    const f = mm.folios;
    const head = f.folioOf(pfn);
    const l = this.lruvec;
    let lru = 'none';
    let gen: string | number = 'none';
    if (l !== null) {
      const g = f.lruGen(head);
      if (g >= 0) {
        gen = g;
        // lru_gen_is_active: the two youngest generations.
        lru = g === lruGenFromSeq(l.maxSeq) || g === lruGenFromSeq(l.maxSeq - 1) ? 'active' : 'inactive';
      }
    } else {
      const list = f.lruListOf(head);
      lru = list === LruList.ActiveAnon ? 'active' : list === LruList.InactiveAnon ? 'inactive' : 'none';
    }
    return {
      mapped: 1, swapped: 0, lru, gen, pfn: hexNum(head),
      referenced: f.test(head, PG_referenced) ? 1 : 0,
      idle: f.test(head, PG_idle) ? 1 : 0,
      young: (lo & _PAGE_ACCESSED) !== 0 ? 1 : 0,
      dirty: f.test(head, PG_dirty) || (lo & _PAGE_DIRTY) !== 0 ? 1 : 0,
      workingset: f.test(head, PG_workingset) ? 1 : 0,
      ksm: f.test(head, PG_ksm) ? 1 : 0,
      mapcount: f.mapcount[f.idx(head)],
    };
  }

  /** The values `expect lru` checks. */
  lruState(): Record<string, number> {
    const l = this.lruvec;
    if (l === null) {
      const n = this.kvm.mm.folios.nrPages;
      return { active: n[LruList.ActiveAnon], inactive: n[LruList.InactiveAnon] };
    }
    const o: Record<string, number> = { max_seq: l.maxSeq, min_seq: l.minSeq[0], nr_gens: l.nrGens(0) };
    for (let g = 0; g < 4; g++) o[`gen${g}`] = Math.max(l.nrPages[g][0], 0) + Math.max(l.nrPages[g][1], 0);
    return o;
  }

  /** `expect data`: pages of the range (or of all guest memory) whose content is not their last write. */
  checkData(gpa: number | undefined, size: number | undefined): string[] {
    const mm = this.kvm.mm;
    const fails: string[] = [];
    if (gpa === undefined) {
      const r = mm.checkIntegrity();
      for (const m of r.mismatches.slice(0, 8)) {
        fails.push(`expect data: gpa ${hexNum(m.hva - GUEST_HVA_BASE)}: expected token ${m.expected}, got ${m.found}`);
      }
      if (r.mismatches.length > 8) fails.push(`expect data: ... ${r.mismatches.length - 8} more of ${r.pages} pages`);
      return fails;
    }
    for (let a = gpa; a < gpa + (size ?? PAGE); a += PAGE) {
      const hva = GUEST_HVA_BASE + a;
      const vma = mm.findVma(hva);
      const want = vma?.tokens?.[(hva - vma.start) / PAGE] ?? 0;
      const got = vma === null ? 0 : mm.tokenAt(hva);
      if (got !== want) fails.push(`expect data: gpa ${hexNum(a)}: expected token ${want} (its last write), got ${got}`);
    }
    return fails;
  }

  /** Host-mm counters (docs/mm.md); null for a name that is not one. */
  counter(name: string): number | null {
    const n = this.kvm.mm.notifiers;
    switch (name) {
      case 'evicted': return this.mglru !== null ? this.policy!.stats.evicted : this.reclaim.stats.evicted;
      case 'refaults': return this.mglru !== null ? this.policy!.stats.refaults : this.workingset.stats.refault;
      case 'swap_outs': return this.swap.stats.pswpout;
      case 'swap_ins': return this.swap.stats.swapins;
      case 'kswapd_wakeups': return this.reclaim.stats.kswapdWakeups;
      case 'lru_pages': return this.lruPages;
      case 'ksm_pages_shared': return ksmCounts(this.kvm.mm.folios).pagesShared;
      case 'ksm_pages_sharing': return ksmCounts(this.kvm.mm.folios).pagesSharing;
      case 'cow_copies': return this.kvm.mm.cowCopies;
      case 'kept_shared': return this.reclaim.stats.keptShared;
      case 'policy_calls': return this.policy?.stats.notifierCalls ?? 0;
      case 'policy_pages_asked': return this.policy?.stats.pagesAsked ?? 0;
      case 'policy_young': return this.policy?.stats.secondaryYoung ?? 0;
      case 'notifier_calls': {
        let s = 0;
        for (const v of n.calls.values()) s += v;
        return s;
      }
    }
    if (name.startsWith('calls_')) return n.calls.get(name.slice(6)) ?? 0;
    if (name.startsWith('event_')) return n.callsByEvent.get(`MMU_NOTIFY_${name.slice(6).toUpperCase()}`) ?? 0;
    return null;
  }

  /** The /sys/kernel/debug/lru_gen text, or lru_gen_full's (MGLRU only). */
  debugfs(full = false): string {
    return lruGenDebugfs([this.lruvec!], this.lruvec!.now, full);
  }
}

/** Notifier counters that do not need the mm layer (they count from VM creation either way). */
export function notifierCounter(kvm: Kvm, name: string): number | null {
  const n = kvm.mm.notifiers;
  if (name === 'notifier_calls') {
    let s = 0;
    for (const v of n.calls.values()) s += v;
    return s;
  }
  if (name.startsWith('calls_') && (NOTIFIER_OPS as readonly string[]).includes(name.slice(6))) return n.calls.get(name.slice(6)) ?? 0;
  if (name.startsWith('event_') && (NOTIFIER_EVENTS as readonly string[]).includes(name.slice(6))) {
    return n.callsByEvent.get(`MMU_NOTIFY_${name.slice(6).toUpperCase()}`) ?? 0;
  }
  return null;
}
