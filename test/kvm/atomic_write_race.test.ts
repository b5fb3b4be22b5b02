/**
 * Issue 3 item 6(a), by interleaving: an update of an SPTE that
 * spteNeedsAtomicWrite says needs an atomic write (writable, D clear, A/D on)
 * loses the D bit the CPU sets during a guest write when KVM does it with a
 * plain store, and keeps it when KVM does it atomically (tdp_mmu_clear_spte_bits).
 * The seeded scheduler (src/hw/sched.ts) runs KVM's steps between the
 * hardware walk's memory operations; a seed replays its interleaving exactly.
 */
import { describe, expect, it } from 'vitest';
import { Scheduler } from '../../src/hw/sched.js';
import { ACC_ALL, EPT_AD, makeSpte, spteNeedsAtomicWrite } from '../../src/kvm/spte.js';
import { readSpte, tdpMmuClearSpteBits, tdpMmuSpteNeedAtomicUpdate, writeSptePlain } from '../../src/kvm/tdp_iter.js';
import { Setup } from '../support/setup.js';

const LA = 0x40_1123n;
const DATA = 0x80_0000;
const A = 0x100n; // shadow_accessed_mask (EPT bit 8)
const D = 0x200n; // shadow_dirty_mask (EPT bit 9)

/** A guest mapping LA -> DATA over EPT (A/D on, no TLB) whose data leaf is a KVM SPTE, writable, with D cleared. */
function setUp() {
  const s = new Setup('ept', { eptAd: true, tlb: false });
  s.map(0x40_1000n, DATA, { leafFlags: 0x67n, tableFlags: 0x27n }); // guest A/D already set: only EPT bits move
  const sptep = s.eEntry(DATA, 1);
  const made = makeSpte(EPT_AD, { level: 1, pfn: BigInt(DATA >> 12), access: ACC_ALL, hostWritable: true }).spte;
  const spte = made & ~D; // as after dirty-log harvesting cleared D
  s.write64(sptep, spte);
  return { s, sptep, spte };
}

/** KVM ages the SPTE: read it, then clear A, atomically or with a plain store. */
function* age(s: Setup, sptep: number, atomic: boolean): Generator<void, void, undefined> {
  if (s.m.mem.yields) yield;
  const old = readSpte(s.m.mem, sptep);
  if (atomic) yield* tdpMmuClearSpteBits(EPT_AD, s.m.mem, sptep, old, A, 1);
  else yield* writeSptePlain(s.m.mem, sptep, old & ~A);
}

function race(seed: number, atomic: boolean) {
  const { s, sptep, spte } = setUp();
  const sched = new Scheduler(s.m.mem, seed, 0.05); // a small chance per point spreads KVM's steps over the walk
  sched.spawn('kvm', age(s, sptep, atomic));
  const result = sched.run(() => s.acc(LA, 'write'));
  sched.finish();
  return { result, before: spte, after: s.read64(sptep), sptep, log: sched.log.join(' ') };
}

describe('spteNeedsAtomicWrite, by interleaving (issue 3 item 6a)', () => {
  it('the SPTE under test needs an atomic write: writable, A/D enabled, D clear', () => {
    const { spte } = setUp();
    expect(spte).toBe(0x8600000000800977n);
    expect(spteNeedsAtomicWrite(EPT_AD, spte)).toBe(true);
    expect(tdpMmuSpteNeedAtomicUpdate(EPT_AD, spte, 1)).toBe(true);
    expect(spteNeedsAtomicWrite(EPT_AD, spte | D)).toBe(false); // with D already set a plain store loses nothing
  });

  it('done with a plain store, some interleaving loses the D bit the CPU set; its seed replays it exactly', () => {
    const lost: number[] = [];
    for (let seed = 1; seed <= 200; seed++) {
      const r = race(seed, false);
      expect(r.result).toEqual({ result: 'ok', hpa: '0x800123', gpa: '0x800123' });
      if ((r.after & D) === 0n) lost.push(seed);
    }
    expect(lost.length).toBeGreaterThan(0);
    const seed = lost[0];
    const r = race(seed, false);
    // The guest wrote the page, yet its SPTE says clean: KVM's stale store overwrote A|D.
    expect(r.after).toBe(r.before & ~A);
    // KVM read before the CPU's cmpxchg on the leaf and stored after it.
    const ops = r.log.split(' ');
    const cmpxchg = ops.lastIndexOf(`hw:cmpxchg@0x${r.sptep.toString(16)}`);
    expect(cmpxchg).toBeGreaterThan(0);
    expect(ops.slice(0, cmpxchg).filter((o) => o === 'kvm').length).toBe(2); // started, and read
    expect(ops.slice(cmpxchg).filter((o) => o === 'kvm').length).toBeGreaterThanOrEqual(1); // stored after
    expect(race(seed, false)).toEqual(r); // same seed, same interleaving, same result
  });

  it('done atomically (tdp_mmu_clear_spte_bits), no interleaving loses D', () => {
    const finals = new Set<bigint>();
    for (let seed = 1; seed <= 200; seed++) {
      const r = race(seed, true);
      expect(r.result).toEqual({ result: 'ok', hpa: '0x800123', gpa: '0x800123' });
      expect(r.after & D).toBe(D);
      finals.add(r.after);
    }
    // Either KVM cleared A after the CPU set D (…a77), or the CPU walked after KVM and set A again (…b77).
    for (const v of finals) expect([0x8600000000800a77n, 0x8600000000800b77n]).toContain(v);
    expect(finals.has(0x8600000000800a77n)).toBe(true);
  });
});
