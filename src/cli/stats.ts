/**
 * `mmulab run --stats`: a summary of what a VM-level run did (docs/mm.md):
 * guest accesses and KVM's exits and faults, TLB flushes, MMU-notifier
 * callbacks by op and by event, and the host mm's reclaim, swap and
 * workingset figures. `mmulab lru_gen`: the /sys/kernel/debug/lru_gen text
 * at the end of (or part way through) an MGLRU run.
 */
import Table from 'cli-table3';
import { MMU_LOCK_USERS } from '../kvm/locks.js';
import { MMU_NOTIFIER_EVENT_NAMES } from '../mm/mmu_notifier.js';
import { Runner } from '../trace/runner.js';
import { lruKind } from '../trace/vm_mm.js';
import { loadTrace, parseOptionNumber, UsageError } from './load.js';

/** The rows of the summary, in order: [name, value]. */
export function statsRows(runner: Runner, accesses: number): [string, number][] {
  const vm = runner.vm;
  if (vm === null) throw new Error('assertion: --stats on a hardware-level trace');
  const k = vm.kvm;
  const rows: [string, number][] = [
    ['guest accesses', accesses],
    ['exits', k.stats.exits],
    ['page faults fixed', k.stats.pfFixed],
    ['guest #PF', k.stats.guestPf],
    ['host page faults', k.mm.faults],
    ['remote TLB flushes', k.stats.flushes],
    ['SPTEs aged', k.tdpMmu.stats.aged],
  ];
  // mmu_lock: acquisitions by user; hold and wait steps count only under a scheduler (a trace runs without one).
  const l = k.mmuLock.stats;
  for (const u of MMU_LOCK_USERS) {
    if (l.readLocks[u] !== 0) rows.push([`mmu_lock read (${u})`, l.readLocks[u]]);
    if (l.writeLocks[u] !== 0) rows.push([`mmu_lock write (${u})`, l.writeLocks[u]]);
  }
  rows.push(['mmu_lock held for read (steps)', l.readHeld]);
  for (const u of MMU_LOCK_USERS) if (l.writeHeld[u] !== 0) rows.push([`mmu_lock held for write by ${u} (steps)`, l.writeHeld[u]]);
  rows.push(['vCPU steps waiting for mmu_lock', l.waitSteps.fault]);
  const n = k.mm.notifiers;
  let calls = 0;
  for (const v of n.calls.values()) calls += v;
  rows.push(['notifier calls', calls]);
  for (const [op, v] of [...n.calls.entries()].sort((a, b) => a[0].localeCompare(b[0]))) rows.push([`  ${op}`, v]);
  for (const ev of MMU_NOTIFIER_EVENT_NAMES) {
    const v = n.callsByEvent.get(ev);
    if (v !== undefined) rows.push([`  event ${ev}`, v]);
  }
  const mm = vm.mm;
  if (vm.forkStats.forks > 0) {
    rows.push(['forks', vm.forkStats.forks]);
    rows.push(['  PTEs shared copy-on-write', vm.forkStats.ptes]);
    rows.push(['  swap entries shared', vm.forkStats.swapEntries]);
    rows.push(['COW copies by the VMM (wp_page_copy)', k.mm.cowCopies]);
    if (mm !== null) rows.push(['shared folios kept by reclaim', mm.reclaim.stats.keptShared]);
  }
  if (mm !== null) {
    rows.push(['resident guest pages (LRU)', mm.lruPages]);
    rows.push(['kswapd wakeups', mm.reclaim.stats.kswapdWakeups]);
    rows.push(['evicted', mm.counter('evicted')!]);
    rows.push(['refaults', mm.counter('refaults')!]);
    rows.push(['swap outs', mm.swap.stats.pswpout]);
    rows.push(['swap ins', mm.swap.stats.swapins]);
    if (mm.policy !== null) {
      rows.push(['MGLRU evicted while hot', mm.policy.stats.evictedHot]);
      rows.push([`policy ${mm.policy.name}: secondary-MMU calls`, mm.policy.stats.notifierCalls]);
      for (const [op, v] of [...mm.policy.stats.calls.entries()].sort((a, b) => a[0].localeCompare(b[0]))) rows.push([`  ${op}`, v]);
      rows.push(['  SPTEs asked about', mm.policy.stats.pagesAsked]);
      rows.push(['  young answers', mm.policy.stats.secondaryYoung]);
      rows.push(['MGLRU PTEs scanned by aging', mm.lruvec!.stats.ptesScanned]);
    }
  }
  return rows;
}

/** The summary table (no colours: output is meant for files and tests too). */
export function statsTable(rows: [string, number][]): string {
  const t = new Table({
    head: ['stat', 'value'], style: { head: [], border: [] }, colAligns: ['left', 'right'],
    chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' },
  });
  for (const r of rows) t.push(r);
  return t.toString();
}

export interface LruGenOptions {
  at?: string;
  full?: boolean;
}

/** `mmulab lru_gen FILE [--at LINE] [--full]`: the debugfs text (lru_gen or lru_gen_full), as lines. */
export function lruGenCommand(file: string, opts: LruGenOptions): string[] {
  const trace = loadTrace(file);
  const first = trace.commands[0];
  if (first.verb !== 'vm' || lruKind(first) !== 'mglru') {
    throw new UsageError(`lru_gen: ${file} does not use MGLRU: its first line must be 'vm ... lru=mglru'`);
  }
  const at = opts.at === undefined ? undefined : Number(parseOptionNumber('at', opts.at));
  const runner = new Runner(trace, { quiet: true, ...(at !== undefined ? { upToLine: at } : {}) });
  runner.run();
  return runner.vm!.mm!.debugfs(opts.full === true).replace(/\n$/, '').split('\n');
}
