/**
 * The software walk's PMD-table cache (HostPageTable.walk): whatever tables
 * are freed, relinked or replaced by a 1G leaf, a walk finds what a walk
 * from the pgd finds; under a preempt hook it loads every level.
 */
import { describe, expect, it } from 'vitest';
import { MemOp, PhysMem } from '../../src/hw/phys_mem.js';
import { runProgram } from '../../src/hw/sched.js';
import { MmStruct } from '../../src/mm/mm.js';
import { PageAllocator } from '../../src/mm/page_alloc.js';
import { _PAGE_PRESENT, _PAGE_PSE, entryAddr } from '../../src/mm/pgtable.js';

const K4 = 4096;
const M2 = 2 << 20;
const G1 = 2 ** 30;

function mmOnly(poolSize = 0x1000_0000): MmStruct {
  const mem = new PhysMem(40);
  return new MmStruct(mem, new PageAllocator(mem, 0x100_0000, poolSize));
}

/** The walk spelled out from the pgd with load64: [level, entry hpa] where it stops. */
function refWalk(mm: MmStruct, addr: number, lowest = 1): [number, number] {
  let table = mm.pt.pgd;
  for (let level = 4; ; level--) {
    const e = table + (Math.floor(addr / 2 ** (12 + 9 * (level - 1))) % 512) * 8;
    mm.mem.load64(e);
    const lo = mm.mem.lo;
    if ((lo & _PAGE_PRESENT) === 0 || level === lowest || (level <= 3 && (lo & _PAGE_PSE) !== 0)) return [level, e];
    table = entryAddr(lo, mm.mem.hi);
  }
}

function expectSameWalk(mm: MmStruct, addr: number, lowest = 1): void {
  const level = mm.pt.walk(addr, lowest);
  expect([level, mm.pt.entry]).toEqual(refWalk(mm, addr, lowest));
}

describe('host page-table walk', () => {
  it('after munmap frees the tables and a new area links new ones, the walk follows the new tables', () => {
    const mm = mmOnly();
    mm.mmap(0x4000_0000, 4 * K4);
    mm.hvaToPfn(0x4000_0000, true);
    expectSameWalk(mm, 0x4000_1000);
    expect(mm.hostMappingLevel(0x4000_0000)).toBe(1);
    runProgram(mm.munmap(0x4000_0000, 4 * K4));
    expectSameWalk(mm, 0x4000_0000);
    expect(mm.lookup(0x4000_0000)).toBeNull();
    mm.mmap(0x4000_0000, M2, { level: 2 });
    expect(mm.hvaToPfn(0x4000_0000, true).ok).toBe(true);
    expect(mm.hostMappingLevel(0x4000_0000)).toBe(2);
    expectSameWalk(mm, 0x4000_0000);
    expectSameWalk(mm, 0x4000_0000, 2);
  });

  it('a 1G area where a 4K one was: the PUD leaf is found, not the old PMD table', () => {
    const mm = mmOnly(2 ** 39);
    mm.mmap(0x80_0000_0000, K4);
    mm.hvaToPfn(0x80_0000_0000, true);
    runProgram(mm.munmap(0x80_0000_0000, K4));
    mm.mmap(0x80_0000_0000, G1, { level: 3 });
    expect(mm.hvaToPfn(0x80_0000_5000, true).ok).toBe(true);
    expect(mm.hostMappingLevel(0x80_0000_5000)).toBe(3);
    expectSameWalk(mm, 0x80_0000_5000);
  });

  it('addresses in other 1G regions and beyond bit 47 of the key walk their own tables', () => {
    const mm = mmOnly();
    for (const a of [0x4000_0000, 0x8000_0000, 0x80_4000_0000]) {
      mm.mmap(a, K4);
      mm.hvaToPfn(a, true);
    }
    for (const a of [0x4000_0000, 0x8000_0000, 0x80_4000_0000, 0x4000_0000, 0xc000_0000]) {
      expectSameWalk(mm, a);
      expectSameWalk(mm, a, 2);
    }
  });

  it('a walk interleaved at any memory operation of munmap finds what a walk from the pgd finds', () => {
    const mm = mmOnly();
    mm.mmap(0x4000_0000, 2 * K4);
    mm.hvaToPfn(0x4000_0000, true);
    mm.hvaToPfn(0x4000_1000, true);
    let walks = 0;
    const hook = {
      point: () => {
        mm.mem.preempt = null; // an atomic walk (as under the PTE lock) between two operations of munmap
        expectSameWalk(mm, 0x4000_1000);
        mm.mem.preempt = hook;
        walks++;
      },
    };
    mm.mem.preempt = hook;
    runProgram(mm.munmap(0x4000_0000, 2 * K4));
    mm.mem.preempt = null;
    expect(walks).toBeGreaterThan(8);
    expect(mm.pages.tablePages).toBe(1);
    expectSameWalk(mm, 0x4000_1000);
  });

  it('under a preempt hook every level is loaded (each load is an interleaving point)', () => {
    const mm = mmOnly();
    mm.mmap(0x4000_0000, 2 * K4);
    mm.hvaToPfn(0x4000_0000, true);
    mm.pt.walk(0x4000_1000); // fills the cache
    const loads: number[] = [];
    mm.mem.preempt = { point: (op) => { if (op === MemOp.Load) loads.push(op); } };
    mm.pt.walk(0x4000_1000);
    expect(loads.length).toBe(4);
    loads.length = 0;
    mm.hostMappingLevel(0x4000_1000);
    expect(loads.length).toBe(3);
    mm.mem.preempt = null;
  });
});
