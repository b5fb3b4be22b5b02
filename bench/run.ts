/**
 * `npm run bench`: benchmark.js over the same APIs the trace runner uses
 * (Machine.access for the hardware, Kvm.access and the mmu-notifier
 * callbacks for KVM); prints one `name=value` line per figure, each
 * figure measured in a fresh process. `npm run bench -- NAME...` runs only
 * the figures named.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import Benchmark from 'benchmark';
import { AccessKind, Outcome } from '../src/hw/result.js';
import { buildWorkload, randomOffsets } from './hw_workload.js';
import { age1mSpte, faultIn4k } from './kvm_bench.js';
import { replayMaccessesPerS, rssMb64gGuest } from './mm_bench.js';

const BATCH = 4096;

function nsPerAccess(name: string, body: () => void): number {
  const b = new Benchmark(name, body, { minSamples: 20, maxTime: 3 });
  b.run();
  if (b.error) throw b.error;
  return 1e9 / b.hz / BATCH;
}

function walk2d(): void {
  const w = buildWorkload({ tlb: false, psc: false });
  const m = w.machine;
  const offs = randomOffsets(1 << 20, 1 << 30, 42);
  let k = 0;
  // Correctness guard: a full 24-reference walk that succeeds.
  const r0 = m.access(0, 0, w.gvaBase + offs[0], AccessKind.Read, 1, false);
  if (r0.outcome !== Outcome.Ok || r0.refs !== 24) throw new Error(`walk2d set-up is wrong: outcome ${r0.outcome}, refs ${r0.refs}`);
  const ns = nsPerAccess('walk2d', () => {
    for (let i = 0; i < BATCH; i++) {
      m.access(0, 0, w.gvaBase + offs[k], AccessKind.Read, 1, false);
      k = (k + 1) & ((1 << 20) - 1);
    }
  });
  console.log(`walk2d_ns_per_op=${ns.toFixed(1)}`);
}

function tlbhit(): void {
  const w = buildWorkload({ tlb: true, psc: true });
  const m = w.machine;
  const offs = randomOffsets(1 << 16, 32 * 4096, 43);
  for (let i = 0; i < offs.length; i++) m.access(0, 0, w.gvaBase + offs[i], AccessKind.Read, 1, false);
  const r = m.access(0, 0, w.gvaBase + offs[0], AccessKind.Read, 1, false);
  if (r.outcome !== Outcome.Ok || !r.tlbHit) throw new Error('tlbhit set-up is wrong: no TLB hit after warm-up');
  let k = 0;
  const ns = nsPerAccess('tlbhit', () => {
    for (let i = 0; i < BATCH; i++) {
      m.access(0, 0, w.gvaBase + offs[k], AccessKind.Read, 1, false);
      k = (k + 1) & ((1 << 16) - 1);
    }
  });
  console.log(`tlbhit_ns_per_op=${ns.toFixed(2)}`);
}

/** Every figure, by name; `npm run bench -- NAME...` runs only those named. */
const FIGURES: Record<string, () => void> = {
  walk2d_ns_per_op: walk2d,
  tlbhit_ns_per_op: tlbhit,
  age_1m_spte_ms: () => console.log(`age_1m_spte_ms=${age1mSpte().toFixed(2)}`),
  fault_in_4k_ns: () => console.log(`fault_in_4k_ns=${faultIn4k().toFixed(0)}`),
  replay_maccesses_per_s: () => console.log(`replay_maccesses_per_s=${replayMaccessesPerS().toFixed(2)}`),
  // Last: it leaves a 64 GiB guest resident (about a minute and a half to build).
  rss_mb_64g_guest: () => console.log(`rss_mb_64g_guest=${rssMb64gGuest().toFixed(0)}`),
};

const wanted = process.argv.slice(2);
const unknown = wanted.filter((n) => !(n in FIGURES));
if (unknown.length > 0) {
  console.error(`bench: unknown figure ${unknown.join(', ')}; expected some of: ${Object.keys(FIGURES).join(' ')}`);
  process.exit(2);
}
if (wanted.length === 1) {
  FIGURES[wanted[0]]();
} else {
  // Each figure in a process of its own: a figure run after another inherits the JIT feedback and heap the first
  // left (tlbhit after walk2d measured about 1.5x slower), which says nothing about the code measured.
  for (const name of Object.keys(FIGURES)) {
    if (wanted.length > 0 && !wanted.includes(name)) continue;
    const r = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), name], { stdio: 'inherit' });
    if (r.status !== 0) process.exit(r.status ?? 1);
  }
}
