/**
 * Lockless aging (kvm_tdp_mmu_age_gfn_range, kvm_tdp_mmu_test_age_gfn) has
 * two ways through a table: while nothing can interleave, the walk scans
 * sibling entries with plain reads (TdpMmu.ageSiblingsDirect); under a
 * scheduler every read and clear is its own PhysMem operation. A
 * differential property: on random tables (4K and 2M leaves, holes, A set or
 * clear, each SPTE flavour, kernels before and after lockless aging) and
 * random ranges, both ways leave the same SPTEs and return the same young,
 * counters and trace events.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemOp } from '../../src/hw/phys_mem.js';
import { runProgram } from '../../src/hw/sched.js';
import { SHADOW_NONPRESENT_VALUE } from '../../src/kvm/spte.js';
import { forEachTdpPteMinLevelAll } from '../../src/kvm/tdp_iter.js';
import type { Kvm } from '../../src/kvm/vm.js';
import { PAGE, captureEvents, guestAccess, hookOps, hvaOf, makeVm, read64, write64 } from '../support/kvm_setup.js';

const MEMORY = 8 << 20;
const PAGES = MEMORY / PAGE;

interface Case {
  tdp: 'ept' | 'npt';
  eptAd: boolean;
  hostLevel: 1 | 2;
  kernel: number;
  /** Guest pages touched (faulted in), by index into [0, PAGES). */
  touched: number[];
  /** Per touched page: 0 keep, 1 clear A, 2 set A, 3 zap to SHADOW_NONPRESENT_VALUE. */
  edits: number[];
  events: boolean;
  testOnly: boolean;
  /** Range in pages. */
  start: number;
  len: number;
}

/** Builds the VM of a case: fault the pages in, then edit their leaves. Deterministic, so two builds are identical. */
function build(c: Case): Kvm {
  const kvm = makeVm({ tdp: c.tdp, eptAd: c.eptAd, hostLevel: c.hostLevel, kernel: c.kernel, memory: MEMORY, tlb: false });
  for (const p of c.touched) guestAccess(kvm, p * PAGE, p % 3 === 0 ? 'write' : 'read');
  const acc = kvm.flavour.accessedMask;
  c.touched.forEach((p, i) => {
    const l = kvm.tdpMmu.lookup(p);
    if (l === null || (l.spte & 0x800n) === 0n) return;
    const v = l.spte;
    const e = c.edits[i % c.edits.length];
    if (e === 1) write64(kvm.mem, l.sptep, v & ~acc);
    else if (e === 2) write64(kvm.mem, l.sptep, v | acc);
    else if (e === 3) write64(kvm.mem, l.sptep, SHADOW_NONPRESENT_VALUE);
  });
  return kvm;
}

/** Every entry of the structure, as `level:gfn:spte`. */
function entries(kvm: Kvm): string[] {
  const out: string[] = [];
  for (const it of forEachTdpPteMinLevelAll(kvm.mem, kvm.tdpMmu.roots[0], 1, PAGES)) out.push(`${it.level}:${it.gfn.toString(16)}:${it.oldSpte.toString(16)}`);
  return out;
}

/** Runs the case's aging call, with every memory operation its own program step (`scheduled`) or straight through. */
function age(c: Case, scheduled: boolean) {
  const kvm = build(c);
  const ev = c.events ? captureEvents(kvm, ['kvm_tdp_mmu_spte_changed', 'kvm_age_hva', 'kvm_test_age_hva']) : [];
  const start = hvaOf(c.start * PAGE);
  const end = hvaOf(Math.min(PAGES, c.start + c.len) * PAGE);
  const program = c.testOnly ? kvm.notifier.testYoung(start) : kvm.notifier.clearYoung(start, end);
  let ops = 0;
  let young: number;
  if (scheduled) {
    // As under a scheduler: the program yields before each memory operation, and a hook sees every one.
    const unhook = hookOps(kvm.mem, () => ops++);
    kvm.mem.yields = true;
    try {
      young = runProgram(program);
    } finally {
      kvm.mem.yields = false;
      unhook();
    }
  } else {
    young = runProgram(program);
  }
  const s = kvm.tdpMmu.stats;
  return {
    result: { young, aged: s.aged, ageLost: s.ageLost, cmpxchgFailed: s.cmpxchgFailed, pages: [...s.pages], pfnDirtied: kvm.stats.pfnDirtied },
    entries: entries(kvm),
    events: ev.map((e) => `${e.name} ${JSON.stringify(e.fields, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString(16) : v))}`),
    ops,
  };
}

const caseArb: fc.Arbitrary<Case> = fc
  .record({
    flavour: fc.constantFrom(
      { tdp: 'ept' as const, eptAd: true }, { tdp: 'ept' as const, eptAd: false }, { tdp: 'npt' as const, eptAd: true },
    ),
    hostLevel: fc.constantFrom(1 as const, 1 as const, 2 as const),
    kernel: fc.constantFrom(617, 617, 614, 612),
    touched: fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), { minLength: 0, maxLength: 1200 }),
    edits: fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 1, maxLength: 64 }),
    events: fc.boolean(),
    testOnly: fc.boolean(),
    start: fc.integer({ min: 0, max: PAGES - 1 }),
    len: fc.oneof(fc.integer({ min: 1, max: 600 }), fc.integer({ min: 1, max: PAGES })),
  })
  .map(({ flavour, ...r }) => ({ ...flavour, ...r }));

const base: Case = {
  tdp: 'ept', eptAd: true, hostLevel: 1, kernel: 617, touched: [], edits: [0], events: false, testOnly: false, start: 0, len: PAGES,
};

describe('lockless aging: the direct scan and the step-by-step walk agree', () => {
  it('same SPTEs, young, counters and events on random tables and ranges', () => {
    fc.assert(
      fc.property(caseArb, (c) => {
        const direct = age(c, false);
        const stepped = age(c, true);
        expect(direct.result).toEqual(stepped.result);
        expect(direct.events).toEqual(stepped.events);
        expect(direct.entries).toEqual(stepped.entries);
        // The stepped walk read and wrote through PhysMem: at least one operation per aged SPTE.
        expect(stepped.ops).toBeGreaterThanOrEqual(stepped.result.aged);
      }),
      {
        numRuns: 100,
        examples: [
          // Young leaves right at the range's end, 4K and 2M: the scan must leave them alone.
          [{ ...base, touched: [0, 1, 2, 3], start: 0, len: 2 }],
          [{ ...base, hostLevel: 2, touched: [512, 1024], start: 512, len: 1 }],
          // A/D off: every young leaf stops the scan; events on: so does every young leaf.
          [{ ...base, eptAd: false, touched: [0, 1, 2, 3, 5, 8, 13], edits: [0, 1, 2, 3] }],
          [{ ...base, touched: [0, 1, 2, 3, 5, 8, 13], edits: [0, 1, 2], events: true }],
        ],
      },
    );
  });

  it('a direct pass ages the young half; a scheduled pass then reads every entry as its own load and writes nothing', () => {
    const c: Case = { ...base, touched: Array.from({ length: PAGES }, (_, i) => i), edits: [1, 2] };
    const kvm = build(c);
    const before = kvm.tdpMmu.stats.aged;
    expect(runProgram(kvm.notifier.clearYoung(hvaOf(0), hvaOf(MEMORY)))).toBe(1);
    expect(kvm.tdpMmu.stats.aged - before).toBe(PAGES / 2);
    let ops = 0;
    // Every SPTE is old now: the scheduled walk over the same range reads each entry once and writes none.
    const unhook = hookOps(kvm.mem, (op) => {
      if (op !== MemOp.Load) throw new Error(`unexpected write ${op}`);
      ops++;
    });
    kvm.mem.yields = true;
    try {
      expect(runProgram(kvm.notifier.clearYoung(hvaOf(0), hvaOf(MEMORY)))).toBe(0);
    } finally {
      kvm.mem.yields = false;
      unhook();
    }
    expect(ops).toBeGreaterThanOrEqual(PAGES);
    for (let p = 0; p < PAGES; p += 97) expect(read64(kvm.mem, kvm.tdpMmu.lookup(p, 1)!.sptep) & 0x100n).toBe(0n);
  });

  it('direct memory access is refused while a scheduler can interleave', () => {
    const kvm = makeVm({ memory: MEMORY });
    kvm.mem.yields = true;
    expect(() => kvm.mem.directWords()).toThrow(/direct memory access while a scheduler/);
    kvm.mem.yields = false;
    const unhook = hookOps(kvm.mem, () => {});
    expect(() => kvm.mem.directWords()).toThrow(/direct memory access while a scheduler/);
    unhook();
    expect(kvm.mem.wordIndex(0x7fff000)).toBe(-1); // never written
  });
});
