/**
 * The hardware benchmark workload (issue 2): 1 GiB of gVA mapped with 4K
 * pages onto shuffled guest-physical frames; EPT maps every guest-physical
 * frame (data and guest tables) with 4K pages onto shuffled host frames; EPT
 * A/D on and every A/D bit already set. Tables are written directly with
 * numbers (the bigint TableWriter would take seconds for this size).
 */
import { Machine } from '../src/hw/machine.js';
import { Mode } from '../src/hw/walk.js';

const PAGES = 262144; // 1 GiB / 4 KiB
const GUEST_TABLE_FRAMES = 1 + 1 + 1 + 512; // PML4, PDPT, PD, 512 PTs
const DATA_GPA_FRAME = 0x40000; // data at gPA 1 GiB
const HOST_BASE_FRAME = 0x100000; // host frames for guest memory from hPA 4 GiB
const EPT_BASE = 0x2_0000_0000; // EPT tables from hPA 8 GiB

/** A deterministic xorshift32 generator, so every run measures the same workload. */
export function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

function shuffled(n: number, next: () => number): Int32Array {
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = next() % (i + 1);
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
  return a;
}

export interface Workload {
  machine: Machine;
  /** Guest-virtual base of the mapped gigabyte. */
  gvaBase: number;
}

export function buildWorkload(opts: { tlb: boolean; psc: boolean }): Workload {
  const m = new Machine({ mode: Mode.Ept, tlb: opts.tlb, psc: opts.psc, maxPhysAddr: 46 });
  const mem = m.mem;
  const next = rng(0x5eed);
  const put = (hpa: number, value: number) => mem.store64(hpa, value % 4294967296 | 0, Math.floor(value / 4294967296));

  // Guest-physical frames in use: the guest tables (gPA frames 0..514) and the data (1 GiB at gPA 1 GiB).
  const gframes = new Float64Array(GUEST_TABLE_FRAMES + PAGES);
  for (let i = 0; i < GUEST_TABLE_FRAMES; i++) gframes[i] = i;
  for (let i = 0; i < PAGES; i++) gframes[GUEST_TABLE_FRAMES + i] = DATA_GPA_FRAME + i;
  const hostPerm = shuffled(gframes.length, next);
  const toHost = new Map<number, number>();
  for (let i = 0; i < gframes.length; i++) toHost.set(gframes[i], HOST_BASE_FRAME + hostPerm[i]);
  const hpaOf = (gpa: number) => toHost.get(Math.floor(gpa / 4096))! * 4096 + (gpa % 4096);

  // Guest tables: gVA [1 GiB, 2 GiB) -> shuffled data frames. A|D set everywhere (0x67 = P|W|U|A|D).
  const gvaBase = 0x4000_0000;
  const pml4 = 0;
  const pdpt = 0x1000;
  const pd = 0x2000;
  const pt0 = 0x3000;
  put(hpaOf(pml4), pdpt | 0x27);
  put(hpaOf(pdpt + 8), pd | 0x27); // PDPT index 1 = gVA 1 GiB
  const dataPerm = shuffled(PAGES, next);
  for (let t = 0; t < 512; t++) {
    put(hpaOf(pd + t * 8), (pt0 + t * 4096) | 0x27);
    for (let e = 0; e < 512; e++) {
      const page = t * 512 + e;
      put(hpaOf(pt0 + t * 4096 + e * 8), (DATA_GPA_FRAME + dataPerm[page]) * 4096 + 0x67);
    }
  }

  // EPT: every guest-physical frame in use, 4K leaves, RWX|WB|A|D (0x337), non-leaf RWX|A (0x107).
  let eptNext = EPT_BASE;
  const alloc = () => {
    const a = eptNext;
    eptNext += 4096;
    return a;
  };
  const root = alloc();
  const tables = new Map<number, number>(); // key: level*2^40 + gpa prefix
  const tableFor = (parent: number, level: number, gfn: number): number => {
    const key = level * 2 ** 40 + Math.floor(gfn / 512 ** level);
    let t = tables.get(key);
    if (t === undefined) {
      t = alloc();
      tables.set(key, t);
      const idx = Math.floor(gfn / 512 ** level) % 512;
      put(parent + idx * 8, t + 0x107);
    }
    return t;
  };
  for (let i = 0; i < gframes.length; i++) {
    const gfn = gframes[i];
    const pdptT = tableFor(root, 3, gfn);
    const pdT = tableFor(pdptT, 2, gfn);
    const ptT = tableFor(pdT, 1, gfn);
    put(ptT + (gfn % 512) * 8, toHost.get(gfn)! * 4096 + 0x337);
  }

  const regs = m.vcpu(0).regs;
  regs.cr3 = pml4;
  regs.eptp = root + 0x40 + (3 << 3) + 6; // A/D on, 4-level, WB
  return { machine: m, gvaBase };
}

/** `n` uniformly random 8-byte-aligned offsets into `span` bytes. */
export function randomOffsets(n: number, span: number, seed: number): Int32Array {
  const next = rng(seed);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = (next() % span) & ~7;
  return out;
}
