/**
 * MmuLock's cost figures (src/kvm/locks.ts) on hand-made programs under a
 * round-robin scheduler, where every step can be counted by hand.
 */
import { describe, expect, it } from 'vitest';
import { PhysMem } from '../../src/hw/phys_mem.js';
import { Scheduler, runProgram } from '../../src/hw/sched.js';
import { MmuLock } from '../../src/kvm/locks.js';

function* holdWrite(lock: MmuLock, mem: PhysMem, steps: number): Generator<void, void, undefined> {
  yield* lock.writeLock('aging');
  for (let i = 0; i < steps; i++) if (mem.yields) yield;
  lock.writeUnlock();
}

function* holdRead(lock: MmuLock, mem: PhysMem, steps: number): Generator<void, void, undefined> {
  yield* lock.readLock('fault');
  for (let i = 0; i < steps; i++) if (mem.yields) yield;
  lock.readUnlock('fault');
}

describe('MmuLock stats', () => {
  it('a reader behind a writer: hold and wait steps, round-robin', () => {
    const mem = new PhysMem(40);
    const lock = new MmuLock(mem);
    const s = new Scheduler(mem, 1, 0.5, 'round-robin');
    s.spawn('aging', holdWrite(lock, mem, 3));
    s.spawn('vcpu', holdRead(lock, mem, 1));
    s.finish();
    // Steps: 1 W yields before the lock, 2 R likewise, 3 W takes it, 4 R waits, 5 W, 6 R waits, 7 W, 8 R waits,
    // 9 W unlocks and ends, 10 R takes it, 11 R unlocks.
    expect(mem.clock).toBe(11);
    const st = lock.stats;
    // Steps 4-9 began while W held it.
    expect(st.writeHeld).toEqual({ fault: 0, aging: 6, invalidate: 0, other: 0 });
    // Step 11 began while R held it.
    expect(st.readHeld).toBe(1);
    // R found it held at steps 4, 6 and 8.
    expect(st.waitSteps).toEqual({ fault: 3, aging: 0, invalidate: 0, other: 0 });
    expect(st.faultWaitBehind('aging')).toBe(3);
    expect(lock.waits).toBe(3);
    expect(st.writeLocks.aging).toBe(1);
    expect(st.readLocks.fault).toBe(1);
  });

  it('two readers share it; a writer waits behind the oldest', () => {
    const mem = new PhysMem(40);
    const lock = new MmuLock(mem);
    const s = new Scheduler(mem, 1, 0.5, 'round-robin');
    s.spawn('r1', holdRead(lock, mem, 2));
    s.spawn('r2', holdRead(lock, mem, 4));
    s.spawn('w', holdWrite(lock, mem, 0));
    s.finish();
    // 1-3 each yield before its lock; 4 r1 in, 5 r2 in, 6 w waits, 7 r1, 8 r2, 9 w waits, 10 r1 out (ends),
    // 11 r2, 12 w waits, 13 r2, 14 w waits, 15 r2 out (ends), 16 w takes it and releases at once.
    expect(mem.clock).toBe(16);
    // Steps 5-15 began with a reader inside.
    expect(lock.stats.readHeld).toBe(11);
    // Taken and released within step 16: no step began while held.
    expect(lock.stats.writeHeld.aging).toBe(0);
    // Steps 6, 9, 12 and 14: r1 (a fault-path reader) is oldest at 6 and 9, then r2.
    expect(lock.stats.waitSteps.aging).toBe(4);
    expect(lock.stats.waitBehind).toEqual(new Map([['aging/fault', 4]]));
  });

  it('costs nothing without a scheduler', () => {
    const mem = new PhysMem(40);
    const lock = new MmuLock(mem);
    runProgram(holdWrite(lock, mem, 3));
    runProgram(holdRead(lock, mem, 3));
    expect(mem.clock).toBe(0);
    expect(lock.stats.writeHeld.aging + lock.stats.readHeld + lock.waits).toBe(0);
    expect(lock.stats.writeLocks.aging + lock.stats.readLocks.fault).toBe(2);
  });

  it('a reader that leaves out of order takes the earliest entry of its name: the oldest left is who a writer waits behind', () => {
    const mem = new PhysMem(40);
    const lock = new MmuLock(mem);
    const s = new Scheduler(mem, 1, 0.5, 'round-robin');
    // Readers in order aging, fault, aging; the earliest 'aging' leaves, so 'fault' is now the oldest.
    expect([lock.readTrylock('aging'), lock.readTrylock('fault'), lock.readTrylock('aging')]).toEqual([true, true, true]);
    lock.readUnlock('aging');
    s.spawn('w', holdWrite(lock, mem, 0));
    s.spawn('r', (function* () {
      yield;
      lock.readUnlock('fault');
      lock.readUnlock('aging');
    })());
    s.finish();
    // 1 w yields before its lock, 2 r yields, 3 w waits behind the oldest reader, 4 r lets both go, 5 w takes it.
    expect(mem.clock).toBe(5);
    expect(lock.stats.waitBehind).toEqual(new Map([['aging/fault', 1]]));
    expect(() => lock.readUnlock('aging')).toThrow('assertion: read_unlock of mmu_lock not held for read');
    expect(lock.stats.writeLocks.aging).toBe(1);
  });
});
