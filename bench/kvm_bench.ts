/**
 * The KVM benchmarks of issue 3, through the same paths the trace runner
 * uses: guest accesses with exit handling (Kvm.accessNow, the plain-code
 * form of Kvm.access, as nothing interleaves here) and the mmu-notifier
 * callbacks the host mm calls (kvm.notifier).
 */
import Benchmark from 'benchmark';
import { runProgram } from '../src/hw/sched.js';
import { AccessKind, Outcome } from '../src/hw/result.js';
import { GUEST_HVA_BASE, Kvm, type GuestAccess } from '../src/kvm/vm.js';

const GIB = 1024 * 1024 * 1024;

/**
 * Guest page tables mapping gVA [0, size) onto gPA [0, size) with 1 GiB
 * pages (as a guest kernel's direct map would), written through the VMM's
 * mapping of guest memory: PML4 at gPA 0, PDPT at gPA 0x1000.
 */
function identityMap1G(kvm: Kvm, size: number): void {
  const put = (gpa: number, lo: number, hi: number) => {
    const got = kvm.mm.hvaToPfn(GUEST_HVA_BASE + gpa, true);
    if (!got.ok) throw new Error('bench set-up: guest memory not mapped');
    kvm.mem.store64(got.pfn * 4096 + (gpa % 4096), lo, hi);
  };
  put(0, 0x1000 | 0x27, 0); // PML4[0] -> PDPT, P|W|U|A
  for (let i = 0; i < size / GIB; i++) put(0x1000 + 8 * i, (i * GIB) | 0xe7, 0); // 1G page, P|W|U|A|D|PS
  for (const v of kvm.vcpus) kvm.machine.vcpu(v.id).regs.cr3 = 0;
}

export function newGuestAccess(): GuestAccess {
  return { result: undefined as never, exits: 0, userExit: null };
}

/** Runs `fn` under benchmark.js; returns mean seconds per call. */
function secondsPerCall(name: string, fn: () => void, options: Benchmark.Options = {}): number {
  const b = new Benchmark(name, fn, { minSamples: 10, maxTime: 4, ...options });
  b.run();
  if (b.error) throw b.error;
  return 1 / b.hz;
}

/** The first gPA fault_in touches: the guest's tables live in the 2 MiB below it. */
export const FIRST_TOUCH_GPA = 0x200000;

/** A fresh 1 GiB guest, EPT with A/D, its tables mapped (and touched), every page from FIRST_TOUCH_GPA up untouched. */
export function freshFaultGuest(out: GuestAccess): Kvm {
  const kvm = new Kvm({ tdp: 'ept', memory: GIB, tlb: true });
  identityMap1G(kvm, GIB);
  kvm.accessNow(0, 0, 0x1000, AccessKind.Read, 1, out); // the guest tables' pages
  return kvm;
}

/**
 * fault_in_4k_ns: a fresh 1 GiB guest (EPT A/D on, 4K host pages) touched
 * once per page: each touch is EPT violation -> kvm_tdp_mmu_map -> re-entry.
 * Every touch needs an untouched page, so the batch that runs out of guest
 * builds the next VM (2-3 ms per 262,144 touches, about 10 ns a touch,
 * inside the timed region).
 */
export function faultIn4k(): number {
  const BATCH = 4096;
  let kvm!: Kvm;
  let next = 0;
  const out = newGuestAccess();
  const fresh = () => {
    kvm = freshFaultGuest(out);
    next = FIRST_TOUCH_GPA;
  };
  fresh();
  // Correctness guard: a first touch exits once and then succeeds.
  kvm.accessNow(0, 0, next, AccessKind.Read, 1, out);
  if (out.result.outcome !== Outcome.Ok || out.exits !== 1) throw new Error(`fault_in set-up is wrong: outcome ${out.result.outcome}, exits ${out.exits}`);
  const batch = () => {
    if (next + BATCH * 4096 > GIB) fresh();
    for (let i = 0; i < BATCH; i++) {
      kvm.accessNow(0, 0, next, AccessKind.Read, 1, out);
      next += 4096;
    }
  };
  // Warm-up: one guest's worth of first touches, so the samples time compiled code, not the JIT at work.
  for (let i = 0; i < GIB / 4096 / BATCH; i++) batch();
  const s = secondsPerCall('fault_in_4k', batch);
  return (s / BATCH) * 1e9;
}

/**
 * age_1m_spte_ms: one clear_young pass over 4 GiB of guest memory mapped by
 * 1M present 4K SPTEs (EPT A/D on), half of them accessed. Before each pass
 * the accessed half is made young again, as the guest would by touching it,
 * in benchmark.js's per-cycle setup: with minTime below one pass, a cycle is
 * one pass, so the setup stays outside the timed call. (benchmark.js
 * recompiles setup and test from source, so both reach their state through
 * globalThis.)
 */
export function age1mSpte(): number {
  const PAGES = 1 << 20;
  const kvm = new Kvm({ tdp: 'ept', memory: PAGES * 4096, tlb: false });
  identityMap1G(kvm, PAGES * 4096);
  const out = newGuestAccess();
  for (let p = 0; p < PAGES; p++) kvm.accessNow(0, 0, p * 4096, AccessKind.Read, 1, out);
  if (kvm.tdpMmu.stats.pages[1] !== PAGES) throw new Error(`age set-up is wrong: ${kvm.tdpMmu.stats.pages[1]} 4K SPTEs`);
  // The SPTE of every even page, for re-arming.
  const evenSpteps = new Float64Array(PAGES / 2);
  for (let p = 0; p < PAGES; p += 2) evenSpteps[p / 2] = kvm.tdpMmu.lookup(p, 1)!.sptep;
  const mem = kvm.mem;
  const start = GUEST_HVA_BASE;
  const end = GUEST_HVA_BASE + PAGES * 4096;
  const rearm = () => {
    for (let i = 0; i < evenSpteps.length; i++) mem.or64(evenSpteps[i], 0x100, 0); // EPT A, as the CPU sets it
  };
  const pass = () => runProgram(kvm.notifier.clearYoung(start, end));
  pass(); // all old
  rearm();
  const before = kvm.tdpMmu.stats.aged;
  const young = pass();
  if (young !== 1 || kvm.tdpMmu.stats.aged - before !== PAGES / 2) throw new Error(`age set-up is wrong: young ${young}, aged ${kvm.tdpMmu.stats.aged - before}`);
  const g = globalThis as unknown as Record<string, () => unknown>;
  g.__mmulabAgeRearm = rearm;
  g.__mmulabAgePass = pass;
  const b = new Benchmark('age_1m_spte', 'globalThis.__mmulabAgePass()', {
    setup: 'globalThis.__mmulabAgeRearm()', minTime: 0.001, minSamples: 20, maxTime: 6,
  });
  b.run();
  if (b.error) throw b.error;
  if (b.count !== 1) throw new Error(`age bench: ${b.count} passes per cycle; only the first would see young SPTEs`);
  if (kvm.tdpMmu.stats.aged - before < PAGES) throw new Error('age bench: passes did not age the re-armed SPTEs');
  return b.stats.mean * 1e3;
}
