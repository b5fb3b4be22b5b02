/**
 * TDP iterator (kvm-mmu.md section 3; arch/x86/kvm/mmu/tdp_iter.{h,c}, Linux 6.17).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemOp, PhysMem } from '../../src/hw/phys_mem.js';
import { ACC_ALL, EPT_AD, FROZEN_SPTE, SHADOW_NONPRESENT_VALUE, isLastSpte, isShadowPresentPte, makeNonleafSpte, makeSpte } from '../../src/kvm/spte.js';
import {
  TdpIter,
  type TdpRoot,
  forEachTdpPte,
  forEachTdpPteMinLevel,
  forEachTdpPteMinLevelAll,
  iterAtPresentLeaf,
  readSpte,
  spteToChildPt,
  tdpIterNext,
  tdpIterStart,
  tdpIterStepUp,
  tryStepDown,
} from '../../src/kvm/tdp_iter.js';
import { lo32, hi32 } from '../../src/hw/halves.js';

const G1 = 512 * 512; // gfns per 1G entry
const M2 = 512; // gfns per 2M entry

const ROOT = 0x10000; // level-4 table
const PDPT = 0x11000; // level 3
const PD = 0x12000; // level 2
const PT = 0x13000; // level 1

function store(mem: PhysMem, hpa: number, v: bigint): void {
  mem.store64(hpa, lo32(v), hi32(v));
}

function leaf(level: number, pfn: bigint): bigint {
  return makeSpte(EPT_AD, { level, pfn, access: ACC_ALL, hostWritable: true }).spte;
}

/**
 * root[0] -> PDPT, root[1] explicit hole.
 * PDPT[0] -> PD, PDPT[1] = 1G leaf, PDPT[2] explicit hole.
 * PD[0] -> PT, PD[1] = 2M leaf, PD[2] explicit hole.
 * PT[0], PT[1], PT[3], PT[511] = 4K leaves, PT[2] explicit hole.
 * Everything else never written (reads as 0: not present).
 */
function buildTree() {
  const mem = new PhysMem(46);
  const v = {
    root0: makeNonleafSpte(EPT_AD, BigInt(PDPT)),
    pdpt0: makeNonleafSpte(EPT_AD, BigInt(PD)),
    pdpt1: leaf(3, 0x40000n),
    pd0: makeNonleafSpte(EPT_AD, BigInt(PT)),
    pd1: leaf(2, 0x200n),
    pt0: leaf(1, 0x1000n),
    pt1: leaf(1, 0x1001n),
    pt3: leaf(1, 0x1003n),
    pt511: leaf(1, 0x11ffn),
  };
  store(mem, ROOT, v.root0);
  store(mem, ROOT + 8, SHADOW_NONPRESENT_VALUE);
  store(mem, PDPT, v.pdpt0);
  store(mem, PDPT + 8, v.pdpt1);
  store(mem, PDPT + 16, SHADOW_NONPRESENT_VALUE);
  store(mem, PD, v.pd0);
  store(mem, PD + 8, v.pd1);
  store(mem, PD + 16, SHADOW_NONPRESENT_VALUE);
  store(mem, PT, v.pt0);
  store(mem, PT + 8, v.pt1);
  store(mem, PT + 16, SHADOW_NONPRESENT_VALUE);
  store(mem, PT + 24, v.pt3);
  store(mem, PT + 511 * 8, v.pt511);
  const root: TdpRoot = { hpa: ROOT, level: 4 };
  return { mem, v, root };
}

type Visit = [gfn: number, level: number, oldSpte: string, sptep: number];

const hex = (x: bigint): string => '0x' + x.toString(16);

function snap(it: TdpIter): Visit {
  return [it.gfn, it.level, hex(it.oldSpte), it.sptep];
}

function collect(g: Iterable<TdpIter>): Visit[] {
  const out: Visit[] = [];
  for (const it of g) out.push(snap(it));
  return out;
}

/** Counts PhysMem operations by kind and records load addresses. */
function countLoads(mem: PhysMem) {
  const c = { loads: 0, other: 0, addrs: [] as number[] };
  mem.preempt = {
    point(op: MemOp, hpa: number) {
      if (op === MemOp.Load) {
        c.loads++;
        c.addrs.push(hpa);
      } else c.other++;
    },
  };
  return c;
}

describe('tdp_iter walks', () => {
  it('visits [0, 5) down to 4K in pre-order with exact gfn, level, old_spte and sptep', () => {
    const { mem, v, root } = buildTree();
    expect(collect(forEachTdpPte(mem, root, 0, 5))).toEqual<Visit[]>([
      [0, 4, hex(v.root0), ROOT],
      [0, 3, hex(v.pdpt0), PDPT],
      [0, 2, hex(v.pd0), PD],
      [0, 1, hex(v.pt0), PT],
      [1, 1, hex(v.pt1), PT + 8],
      [2, 1, hex(SHADOW_NONPRESENT_VALUE), PT + 16],
      [3, 1, hex(v.pt3), PT + 24],
      [4, 1, '0x0', PT + 32],
    ]);
  });

  it('steps up at the end of a table and continues with the parent\'s next entry (2M leaf, hole)', () => {
    const { mem, v, root } = buildTree();
    expect(collect(forEachTdpPte(mem, root, 510, 1030))).toEqual<Visit[]>([
      [0, 4, hex(v.root0), ROOT],
      [0, 3, hex(v.pdpt0), PDPT],
      [0, 2, hex(v.pd0), PD],
      [510, 1, '0x0', PT + 510 * 8],
      [511, 1, hex(v.pt511), PT + 511 * 8],
      [512, 2, hex(v.pd1), PD + 8],
      [1024, 2, hex(SHADOW_NONPRESENT_VALUE), PD + 16],
    ]);
  });

  it('does not descend into a 1G leaf and visits the hole after it', () => {
    const { mem, v, root } = buildTree();
    expect(collect(forEachTdpPte(mem, root, G1, 2 * G1 + 1))).toEqual<Visit[]>([
      [0, 4, hex(v.root0), ROOT],
      [G1, 3, hex(v.pdpt1), PDPT + 8],
      [2 * G1, 3, hex(SHADOW_NONPRESENT_VALUE), PDPT + 16],
    ]);
  });

  it('min_level 2M stops descent at the PD', () => {
    const { mem, v, root } = buildTree();
    expect(collect(forEachTdpPteMinLevel(mem, root, 2, 0, 2 * M2 + 1))).toEqual<Visit[]>([
      [0, 4, hex(v.root0), ROOT],
      [0, 3, hex(v.pdpt0), PDPT],
      [0, 2, hex(v.pd0), PD],
      [M2, 2, hex(v.pd1), PD + 8],
      [2 * M2, 2, hex(SHADOW_NONPRESENT_VALUE), PD + 16],
    ]);
  });

  it('min_level = root level visits root entries only', () => {
    const { mem, v, root } = buildTree();
    const g1x512 = 512 * G1;
    expect(collect(forEachTdpPteMinLevel(mem, root, 4, 0, 3 * g1x512))).toEqual<Visit[]>([
      [0, 4, hex(v.root0), ROOT],
      [g1x512, 4, hex(SHADOW_NONPRESENT_VALUE), ROOT + 8],
      [2 * g1x512, 4, '0x0', ROOT + 16],
    ]);
  });

  it('an empty range at an aligned gfn visits nothing; unaligned, it still visits the covering non-leaf path', () => {
    const { mem, root } = buildTree();
    expect(collect(forEachTdpPte(mem, root, 0, 0))).toEqual([]);
    // The loop test is only gfn < end, and entries on the way down start below start.
    expect(collect(forEachTdpPte(mem, root, 3, 3)).map(([g, l]) => [g, l])).toEqual([
      [0, 4],
      [0, 3],
      [0, 2],
    ]);
    expect(collect(forEachTdpPte(mem, root, 3, 4)).map(([g, l]) => [g, l])).toEqual([
      [0, 4],
      [0, 3],
      [0, 2],
      [3, 1],
    ]);
  });

  it('a whole-structure walk runs off the end of the root and clears valid', () => {
    const { mem } = buildTree();
    // A level-2 root (the PD): 512 PD entries plus the 512 PT entries under PD[0].
    const it = new TdpIter(mem);
    const seen = collect(forEachTdpPteMinLevel(mem, { hpa: PD, level: 2 }, 1, 0, Number.MAX_SAFE_INTEGER, 0, it));
    expect(seen.length).toBe(1024);
    expect(seen[0]).toEqual([0, 2, expect.any(String), PD]);
    expect(seen[512]).toEqual([511, 1, expect.any(String), PT + 511 * 8]);
    expect(seen[513]).toEqual([M2, 2, expect.any(String), PD + 8]);
    expect(seen[1023]).toEqual([511 * M2, 2, '0x0', PD + 511 * 8]);
    expect(it.valid).toBe(false);
  });

  it('for_each_tdp_pte_min_level_all stops at the max gfn', () => {
    const { mem, root } = buildTree();
    // MAXPHYADDR 46 -> 2^34 gfns -> root entries 0..127 at 2^27 gfns each.
    const seen = collect(forEachTdpPteMinLevelAll(mem, root, 4));
    expect(seen.length).toBe(128);
    expect(seen[127][3]).toBe(ROOT + 127 * 8);
  });

  it('the leaf filter keeps present last-level entries only', () => {
    const { mem, v, root } = buildTree();
    const leaves: [number, number, string][] = [];
    for (const it of forEachTdpPte(mem, root, 0, 3 * G1)) if (iterAtPresentLeaf(it)) leaves.push([it.gfn, it.level, hex(it.oldSpte)]);
    expect(leaves).toEqual([
      [0, 1, hex(v.pt0)],
      [1, 1, hex(v.pt1)],
      [3, 1, hex(v.pt3)],
      [511, 1, hex(v.pt511)],
      [M2, 2, hex(v.pd1)],
      [G1, 3, hex(v.pdpt1)],
    ]);
  });
});

describe('tdp_iter start, yield and restart', () => {
  it('restarts from the root at next_last_level_gfn after a simulated yield', () => {
    const { mem, v, root } = buildTree();
    const out: Visit[] = [];
    let yieldedOnce = false;
    let yieldedGfnAfter = -1;
    for (const it of forEachTdpPte(mem, root, 0, 4)) {
      out.push(snap(it));
      if (it.level === 1 && it.gfn === 2 && !yieldedOnce) {
        // tdp_mmu_iter_cond_resched: progress was made (2 != 0), so yield.
        expect(it.nextLastLevelGfn).toBe(2);
        expect(it.yieldedGfn).toBe(0);
        yieldedOnce = true;
        it.yielded = true;
        continue;
      }
      if (yieldedOnce && yieldedGfnAfter < 0) yieldedGfnAfter = it.yieldedGfn;
    }
    expect(yieldedGfnAfter).toBe(2);
    expect(out).toEqual<Visit[]>([
      [0, 4, hex(v.root0), ROOT],
      [0, 3, hex(v.pdpt0), PDPT],
      [0, 2, hex(v.pd0), PD],
      [0, 1, hex(v.pt0), PT],
      [1, 1, hex(v.pt1), PT + 8],
      [2, 1, hex(SHADOW_NONPRESENT_VALUE), PT + 16],
      // restart: root again, then back down to gfn 2
      [0, 4, hex(v.root0), ROOT],
      [0, 3, hex(v.pdpt0), PDPT],
      [0, 2, hex(v.pd0), PD],
      [2, 1, hex(SHADOW_NONPRESENT_VALUE), PT + 16],
      [3, 1, hex(v.pt3), PT + 24],
    ]);
  });

  it('restart after a yield sees a table zapped meanwhile', () => {
    const { mem, v, root } = buildTree();
    const out: Visit[] = [];
    for (const it of forEachTdpPte(mem, root, 0, 2 * M2 + 1)) {
      out.push(snap(it));
      if (it.level === 1 && it.gfn === 1) {
        store(mem, PD, SHADOW_NONPRESENT_VALUE); // another thread zaps PD[0]
        it.yielded = true;
      }
    }
    expect(out.slice(2)).toEqual<Visit[]>([
      [0, 2, hex(v.pd0), PD],
      [0, 1, hex(v.pt0), PT],
      [1, 1, hex(v.pt1), PT + 8],
      [0, 4, hex(v.root0), ROOT],
      [0, 3, hex(v.pdpt0), PDPT],
      [0, 2, hex(SHADOW_NONPRESENT_VALUE), PD], // cannot descend any more
      [M2, 2, hex(v.pd1), PD + 8],
      [2 * M2, 2, hex(SHADOW_NONPRESENT_VALUE), PD + 16],
    ]);
  });

  it('start refuses a missing root, a bad root level and a start gfn not below gfn_bits', () => {
    const { mem, root } = buildTree();
    const it = new TdpIter(mem);
    it.valid = true;
    tdpIterStart(it, null, 1, 0);
    expect(it.valid).toBe(false);
    it.valid = true;
    tdpIterStart(it, { hpa: ROOT, level: 6 }, 1, 0);
    expect(it.valid).toBe(false);
    it.valid = true;
    tdpIterStart(it, { hpa: ROOT, level: 0 }, 1, 0);
    expect(it.valid).toBe(false);
    tdpIterStart(it, root, 1, 2 ** 27, 2 ** 27);
    expect(it.valid).toBe(false);
    expect(collect(forEachTdpPte(mem, null, 0, 10))).toEqual([]);
  });

  it('start records root level, min level, as_id and pt_path', () => {
    const { mem, v } = buildTree();
    const it = new TdpIter(mem);
    tdpIterStart(it, { hpa: ROOT, level: 4, asId: 1 }, 2, 5);
    expect([it.rootLevel, it.minLevel, it.level, it.asId, it.valid, it.yielded]).toEqual([4, 2, 4, 1, true, false]);
    expect([it.nextLastLevelGfn, it.yieldedGfn, it.gfn, it.sptep, it.oldSpte]).toEqual([5, 5, 0, ROOT, v.root0]);
    expect(it.ptPath[3]).toBe(ROOT);
    tdpIterNext(it);
    tdpIterNext(it);
    expect([...it.ptPath.slice(1, 4)]).toEqual([PD, PDPT, ROOT]);
  });

  it('gfn_bits select the entry used without appearing in gfn', () => {
    const { mem, root } = buildTree();
    const bits = 2 ** 27; // GPA bit 39: root index 1
    const seen = collect(forEachTdpPteMinLevel(mem, root, 4, 0, 2 ** 27, bits));
    expect(seen).toEqual<Visit[]>([[0, 4, hex(SHADOW_NONPRESENT_VALUE), ROOT + 8]]);
  });
});

describe('tdp_iter old_spte refresh and memory access', () => {
  it('step-down re-reads the SPTE and does not enter a table unlinked since the last read', () => {
    const { mem, v, root } = buildTree();
    const out: Visit[] = [];
    for (const it of forEachTdpPte(mem, root, 0, M2 + 1)) {
      out.push(snap(it));
      if (it.level === 2 && it.gfn === 0) store(mem, PD, FROZEN_SPTE); // frozen by another thread
    }
    expect(out).toEqual<Visit[]>([
      [0, 4, hex(v.root0), ROOT],
      [0, 3, hex(v.pdpt0), PDPT],
      [0, 2, hex(v.pd0), PD],
      [M2, 2, hex(v.pd1), PD + 8],
    ]);
  });

  it('a failed step-down leaves the re-read value in old_spte; at min_level it reads nothing', () => {
    const { mem, v, root } = buildTree();
    const it = new TdpIter(mem);
    tdpIterStart(it, root, 1, M2);
    tdpIterNext(it); // L3 PDPT[0]
    tdpIterNext(it); // L2 PD[1], the 2M leaf
    expect([it.gfn, it.level, it.oldSpte]).toEqual([M2, 2, v.pd1]);
    const replaced = leaf(2, 0x400n);
    store(mem, PD + 8, replaced);
    expect(tryStepDown(it)).toBe(false);
    expect([it.level, it.oldSpte]).toEqual([2, replaced]);

    const at = new TdpIter(mem);
    tdpIterStart(at, root, 4, 0);
    const c = countLoads(mem);
    expect(tryStepDown(at)).toBe(false);
    expect(c.loads).toBe(0);
  });

  it('tdp_iter_step_up re-reads the parent entry', () => {
    const { mem, v, root } = buildTree();
    const it = new TdpIter(mem);
    tdpIterStart(it, root, 1, 7);
    for (let i = 0; i < 3; i++) tdpIterNext(it);
    expect([it.gfn, it.level, it.sptep]).toEqual([7, 1, PT + 56]);
    store(mem, PD, FROZEN_SPTE);
    expect(tdpIterStepUp(it)).toBe(true);
    expect([it.gfn, it.level, it.sptep, it.oldSpte]).toEqual([0, 2, PD, FROZEN_SPTE]);
    expect(tdpIterStepUp(it)).toBe(true);
    expect(tdpIterStepUp(it)).toBe(true);
    expect([it.level, it.oldSpte]).toEqual([4, v.root0]);
    expect(tdpIterStepUp(it)).toBe(false);
  });

  it('reads memory only through PhysMem.load64 (counted by the preempt hook)', () => {
    const { mem, root } = buildTree();
    const c = countLoads(mem);
    const n = collect(forEachTdpPte(mem, root, 0, 5)).length;
    expect(n).toBe(8);
    // start 1; three descents: re-read + refresh each; five side steps (gfn 1..5).
    expect(c.loads).toBe(12);
    expect(c.other).toBe(0);
    expect(c.addrs).toEqual([ROOT, ROOT, PDPT, PDPT, PD, PD, PT, PT + 8, PT + 16, PT + 24, PT + 32, PT + 40]);
  });

  it('counts the step-up re-read at the end of a table', () => {
    const { mem, root } = buildTree();
    const c = countLoads(mem);
    collect(forEachTdpPte(mem, root, 510, 1030));
    expect(c.addrs).toEqual([
      ROOT, ROOT, PDPT, PDPT, PD, PD, PT + 510 * 8, // start + 3 descents
      PT + 511 * 8, // side
      PD, // step-up refresh
      PD + 8, // side
      PD + 8, // try_step_down re-read of the 2M leaf
      PD + 16, // side
      PD + 16, // re-read of the hole
      PD + 24, // side to gfn 1536, past end
    ]);
    expect(c.other).toBe(0);
  });

  it('each yielded position can be interleaved: a hook can change memory before a read', () => {
    const { mem, v, root } = buildTree();
    // Zap PD[0] right before the iterator's step-down re-read of it.
    let reads = 0;
    mem.preempt = {
      point(op, hpa) {
        if (op === MemOp.Load && hpa === PD && ++reads === 2) {
          mem.preempt = null;
          store(mem, PD, SHADOW_NONPRESENT_VALUE);
        }
      },
    };
    const out = collect(forEachTdpPte(mem, root, 0, M2 + 1));
    expect(out).toEqual<Visit[]>([
      [0, 4, hex(v.root0), ROOT],
      [0, 3, hex(v.pdpt0), PDPT],
      [0, 2, hex(v.pd0), PD],
      [M2, 2, hex(v.pd1), PD + 8],
    ]);
  });
});

describe('tdp_iter against a reference recursive walk', () => {
  /** Pre-order recursion: entries whose range meets [start, end), descending above minLevel. */
  function reference(mem: PhysMem, table: number, level: number, base: number, minLevel: number, start: number, end: number, out: Visit[]): void {
    const size = 512 ** (level - 1);
    for (let i = 0; i < 512; i++) {
      const gfn = base + i * size;
      if (gfn + size <= start) continue;
      if (gfn >= end) return;
      const sptep = table + i * 8;
      const spte = readSpte(mem, sptep);
      out.push([gfn, level, hex(spte), sptep]);
      if (level > minLevel && isShadowPresentPte(spte) && !isLastSpte(spte, level)) {
        reference(mem, spteToChildPt(spte, level)!, level - 1, gfn, minLevel, start, end, out);
      }
    }
  }

  it('matches for random ranges and min levels', () => {
    const { mem, root } = buildTree();
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 3 * G1 }), fc.integer({ min: 0, max: 3000 }), fc.integer({ min: 1, max: 4 }), (start, len, minLevel) => {
        const end = start + len;
        const want: Visit[] = [];
        reference(mem, root.hpa, 4, 0, minLevel, start, end, want);
        expect(collect(forEachTdpPteMinLevel(mem, root, minLevel, start, end))).toEqual(want);
      }),
      { numRuns: 300 },
    );
  });
});
