/**
 * Shadow-MMU rmaps (kvm-mmu.md section 5): pte_list encoding, the per-rmap
 * lock of 6.15+, lockless rmap aging, and the kvm_age_gfn/kvm_test_age_gfn
 * glue. Scenarios S7 (rmap part), S23 (rmap part) and S24 of section 9.
 */
import { describe, expect, it } from 'vitest';
import { MemOp, type PreemptHook } from '../../src/hw/phys_mem.js';
import { runProgram } from '../../src/hw/sched.js';
import { join64, hi32, lo32 } from '../../src/hw/halves.js';
import { KVM_RMAP_LOCKED, KVM_RMAP_MANY, PTE_LIST_EXT } from '../../src/kvm/rmap.js';
import { GUEST_HVA_BASE, Kvm } from '../../src/kvm/vm.js';

const E_W = 0x8600_0000_1234_5b77n; // EPT A/D-on writable leaf, pfn 0x12345
const N_W = 0x0000_0000_1234_5e67n; // NPT writable leaf, pfn 0x12345

function setUp(tdp: 'ept' | 'npt' = 'ept') {
  const kvm = new Kvm({ tdp, memory: 4 << 20 });
  const slot = kvm.memslots.gfnToMemslot(0)!;
  const rmaps = kvm.rmaps(slot);
  // A kernel page standing in for a shadow page's SPTEs.
  const spt = kvm.pages.allocPage();
  const write = (sptep: number, v: bigint) => kvm.mem.store64(sptep, lo32(v), hi32(v));
  const read = (a: number) => {
    kvm.mem.load64(a);
    return join64(kvm.mem.lo, kvm.mem.hi);
  };
  const add = (sptep: number, gfn: number) => {
    runProgram(kvm.mmuLock.writeLock());
    const n = runProgram(rmaps.pteListAdd(sptep, rmaps.headFor(gfn, 1)));
    kvm.mmuLock.writeUnlock();
    return n;
  };
  const remove = (sptep: number, gfn: number) => {
    runProgram(kvm.mmuLock.writeLock());
    runProgram(rmaps.pteListRemove(sptep, rmaps.headFor(gfn, 1)));
    kvm.mmuLock.writeUnlock();
  };
  return { kvm, slot, rmaps, spt, write, read, add, remove };
}

/** Steps a program once; true when it has finished. */
function step(g: Generator<unknown, unknown, undefined>): boolean {
  return g.next().done === true;
}

describe('pte_list encoding (pte_list_add / pte_list_remove)', () => {
  it('one SPTE is the head itself; the second makes a descriptor tagged KVM_RMAP_MANY', () => {
    const { rmaps, spt, add } = setUp();
    const head = rmaps.headFor(7, 1);
    expect(add(spt, 7)).toBe(0);
    expect(rmaps.get(head)).toBe(spt);
    expect(add(spt + 8, 7)).toBe(1);
    const val = rmaps.get(head);
    expect(val & KVM_RMAP_MANY).toBe(KVM_RMAP_MANY);
    expect(rmaps.desc(val).spteCount).toBe(2);
    expect(rmaps.sptes(val)).toEqual([spt, spt + 8]);
  });

  it('the 15th SPTE starts a new head descriptor whose tail_count is 14; removal fills the hole from the head', () => {
    const { rmaps, spt, add, remove } = setUp();
    const head = rmaps.headFor(9, 1);
    for (let i = 0; i < PTE_LIST_EXT; i++) expect(add(spt + 8 * i, 9)).toBe(i);
    expect(add(spt + 8 * 14, 9)).toBe(14);
    const d = rmaps.desc(rmaps.get(head));
    expect([d.spteCount, d.tailCount, d.more?.spteCount]).toEqual([1, 14, 14]);
    remove(spt + 8 * 3, 9); // in the tail descriptor: the head's only entry moves into its place
    const after = rmaps.get(head);
    expect(rmaps.desc(after).spteCount).toBe(14);
    expect(rmaps.desc(after).more).toBe(null);
    expect(rmaps.sptes(after)).toEqual([0, 1, 2, 14, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13].map((i) => spt + 8 * i));
  });

  it('removing the last SPTE empties the head to 0; removing an absent one is data corruption', () => {
    const { rmaps, spt, add, remove } = setUp();
    const head = rmaps.headFor(3, 1);
    add(spt, 3);
    remove(spt, 3);
    expect(rmaps.get(head)).toBe(0);
    expect(() => remove(spt, 3)).toThrow(/empty rmap/);
  });

  it('changing a chain needs mmu_lock held for write', () => {
    const { rmaps, spt } = setUp();
    expect(() => runProgram(rmaps.pteListAdd(spt, rmaps.headFor(1, 1)))).toThrow(/mmu_lock not held for write/);
  });
});

describe('the rmap lock (__kvm_rmap_lock, 6.15+)', () => {
  it('S24: rmap aging of an rmap locked by a writer spins until LOCKED clears, locks with cmpxchg (head | 2), walks, then stores the original head back', () => {
    const { kvm, rmaps, spt, write, read, add } = setUp();
    write(spt, E_W);
    write(spt + 8, E_W);
    add(spt, 5);
    add(spt + 8, 5);
    const head = rmaps.headFor(5, 1);
    const val = rmaps.get(head);
    kvm.mem.yields = true; // as under a scheduler: programs stop at each memory operation

    // The writer takes mmu_lock and the rmap lock, and holds them.
    runProgram(kvm.mmuLock.writeLock());
    const writer = rmaps.lock(head);
    while (!step(writer)) {
      /* until it returns the value */
    }
    expect(read(head)).toBe(BigInt(val | KVM_RMAP_LOCKED));

    // The lockless reader spins: any number of steps change nothing.
    const slot = kvm.memslots.gfnToMemslot(5)!;
    const reader = rmaps.ageGfnRange({ slot, start: 5, end: 6 }, false);
    for (let i = 0; i < 20; i++) expect(step(reader)).toBe(false);
    expect(read(spt)).toBe(E_W);
    expect(read(head)).toBe(BigInt(val | KVM_RMAP_LOCKED));

    // The writer unlocks (storing the head unchanged); the reader takes the lock with its own cmpxchg.
    runProgram(rmaps.unlock(head, val));
    kvm.mmuLock.writeUnlock();
    let sawOwnLock = false;
    while (!step(reader)) if (read(head) === BigInt(val | KVM_RMAP_LOCKED)) sawOwnLock = true;
    expect(sawOwnLock).toBe(true);
    kvm.mem.yields = false;

    // Both SPTEs lost only A (bit 8); the head is the original value, LOCKED clear.
    expect(read(spt)).toBe(0x8600_0000_1234_5a77n);
    expect(read(spt + 8)).toBe(0x8600_0000_1234_5a77n);
    expect(read(head)).toBe(BigInt(val));
  });

  it('S24: an empty rmap is not locked, and nothing is aged', () => {
    const { kvm, rmaps } = setUp();
    const head = rmaps.headFor(6, 1);
    const ops: [MemOp, number][] = [];
    const hook: PreemptHook = { point: (op, hpa) => void ops.push([op, hpa]) };
    kvm.mem.preempt = hook;
    const slot = kvm.memslots.gfnToMemslot(6)!;
    const young = runProgram(rmaps.ageGfnRange({ slot, start: 6, end: 7 }, false));
    kvm.mem.preempt = null;
    expect(young).toBe(false);
    // One load of each level's head (4K, 2M, 1G), no cmpxchg, no store.
    expect(ops.filter(([, hpa]) => hpa === head)).toEqual([[MemOp.Load, head]]);
    expect(ops.every(([op]) => op === MemOp.Load)).toBe(true);
    expect(ops.length).toBe(3);
  });
});

describe('kvm_age_gfn / kvm_test_age_gfn with shadow SPTEs', () => {
  it('S23: NPT shadow rmap aging of N_W clears bit 5 only (0x...5e47), under the read-only rmap lock', () => {
    const { kvm, spt, write, read, add } = setUp('npt');
    write(spt, N_W);
    add(spt, 2);
    kvm.indirectShadowPages = 1;
    const hva = GUEST_HVA_BASE + 2 * 4096;
    expect(runProgram(kvm.notifier.clearYoung(hva, hva + 4096))).toBe(1);
    expect(read(spt)).toBe(0x0000_0000_1234_5e47n);
    expect(runProgram(kvm.notifier.clearYoung(hva, hva + 4096))).toBe(0);
  });

  it('clear_young ages the rmaps only while indirect shadow pages exist (kvm_may_have_shadow_mmu_sptes)', () => {
    const { kvm, spt, write, read, add } = setUp();
    write(spt, E_W);
    add(spt, 2);
    const hva = GUEST_HVA_BASE + 2 * 4096;
    expect(runProgram(kvm.notifier.clearYoung(hva, hva + 4096))).toBe(0);
    expect(read(spt)).toBe(E_W);
    kvm.indirectShadowPages = 1;
    expect(runProgram(kvm.notifier.clearYoung(hva, hva + 4096))).toBe(1);
    expect(read(spt)).toBe(0x8600_0000_1234_5a77n);
  });

  it('S7: test_young is true from the TDP MMU alone; the rmaps are not even read', () => {
    const { kvm, rmaps, spt, write, add } = setUp();
    write(spt, E_W);
    add(spt, 0);
    kvm.indirectShadowPages = 1;
    // A guest access maps gfn 0 (the guest's own page table) with an accessed TDP SPTE.
    const out = { result: undefined as never, exits: 0, userExit: null };
    runProgram(kvm.access(0, 0, 0x1000, 0, 1, out));
    const tdp = kvm.tdpMmu.lookup(0, 1)!;
    expect(tdp.spte & 0x100n).toBe(0x100n);
    const head = rmaps.headFor(0, 1);
    const loads: number[] = [];
    kvm.mem.preempt = { point: (_op, hpa) => void loads.push(hpa) };
    const young = runProgram(kvm.notifier.testYoung(GUEST_HVA_BASE));
    kvm.mem.preempt = null;
    expect(young).toBe(1);
    expect(loads).not.toContain(head);
    expect(kvm.tdpMmu.lookup(0, 1)!.spte).toBe(tdp.spte); // unchanged
  });
});
