/**
 * The host-mm benchmarks of issue 4: replaying a VM-level trace through the
 * trace runner (the whole stack: hardware, KVM, host mm), and the memory a
 * fully touched 64 GiB guest costs.
 */
import Benchmark from 'benchmark';
import { runProgram } from '../src/hw/sched.js';
import { AccessKind, Outcome } from '../src/hw/result.js';
import { parseTrace } from '../src/trace/parse.js';
import { Runner } from '../src/trace/runner.js';
import { GUEST_HVA_BASE, Kvm, type GuestAccess } from '../src/kvm/vm.js';
import { rng } from './hw_workload.js';

/**
 * replay_maccesses_per_s: a TLB-friendly VM-level trace (1M reads and
 * writes spread over 32 guest pages, so nearly all hit the TLB after the
 * first touches) parsed once, then run by the trace runner with output off.
 */
export function replayMaccessesPerS(): number {
  const N = 1 << 20;
  const next = rng(44);
  const lines = ['vm tdp=ept memory=64M', 'guest map gva=0x400000 gpa=0x100000 size=128K'];
  for (let i = 0; i < N; i++) {
    const off = (next() % (32 * 4096)) & ~7;
    lines.push(`access gva=0x${(0x400000 + off).toString(16)} ${i % 4 === 0 ? 'write' : 'read'}`);
  }
  const trace = parseTrace('replay.trace', lines.join('\n'));
  const check = new Runner(trace, { quiet: true }).run();
  if (check.accesses !== N || check.kvm === null || check.kvm.stats.exits > 100) {
    throw new Error(`replay set-up is wrong: ${check.accesses} accesses, ${check.kvm?.stats.exits} exits`);
  }
  const b = new Benchmark('replay', () => new Runner(trace, { quiet: true }).run(), { minSamples: 5, maxTime: 8 });
  b.run();
  if (b.error) throw b.error;
  return (N * b.hz) / 1e6;
}

/**
 * rss_mb_64g_guest: resident memory after a guest touched every 4K page of
 * 64 GiB once (EPT A/D on, 4K host pages; the guest maps its memory with
 * 1 GiB pages, as a kernel's direct map does): EPT tables, guest and host
 * page tables and folios are all in.
 */
export function rssMb64gGuest(gib = 64): number {
  const GIB = 1024 * 1024 * 1024;
  const size = gib * GIB;
  const kvm = new Kvm({ tdp: 'ept', memory: size, tlb: true });
  // Guest tables: PML4 at gPA 0, PDPT at gPA 0x1000, 64 1G leaves.
  const put = (gpa: number, lo: number, hi: number) => {
    const got = kvm.mm.hvaToPfn(GUEST_HVA_BASE + gpa, true);
    if (!got.ok) throw new Error('rss set-up: guest memory not mapped');
    kvm.mem.store64(got.pfn * 4096 + (gpa % 4096), lo, hi);
  };
  put(0, 0x1000 | 0x27, 0);
  for (let i = 0; i < gib; i++) put(0x1000 + 8 * i, ((i % 4) * GIB) | 0xe7, Math.floor(i / 4)); // 1G page, P|W|U|A|D|PS
  for (const v of kvm.vcpus) kvm.machine.vcpu(v.id).regs.cr3 = 0;
  const out: GuestAccess = { result: undefined as never, exits: 0, userExit: null };
  for (let gpa = 0; gpa < size; gpa += 4096) {
    const hi = Math.floor(gpa / 2 ** 32);
    const lo = gpa % 2 ** 32 | 0;
    if (!kvm.enter(0, hi, lo, AccessKind.Read, 1, out)) runProgram(kvm.handleExits(0, hi, lo, AccessKind.Read, 1, out));
    if (out.result.outcome !== Outcome.Ok) throw new Error(`rss set-up: access at 0x${gpa.toString(16)} ended in ${out.result.outcome}`);
  }
  if (kvm.tdpMmu.stats.pages[1] !== size / 4096) throw new Error(`rss set-up: ${kvm.tdpMmu.stats.pages[1]} 4K SPTEs`);
  global.gc?.();
  return process.memoryUsage().rss / (1024 * 1024);
}
