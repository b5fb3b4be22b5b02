/**
 * PhysMem's frame cache: a direct-mapped cache of frame lookups in front of
 * the radix tree. Its hash must keep apart the frames the model uses most:
 * the host's page-table frames, handed out top-down from near MAXPHYADDR,
 * and the guest's and KVM's frames, bottom-up from low memory.
 */
import { describe, expect, it } from 'vitest';
import { PhysMem } from '../../src/hw/phys_mem.js';

describe('PhysMem frame cache', () => {
  it('a top-down frame near 2^46 and a bottom-up frame near 16 MiB stay cached together (a plain XOR of the high half mapped both to slot 2)', () => {
    const mem = new PhysMem(46);
    const top = 0x3fff_ffff_d010; // frame 0x3fffffffd: low bits 0xffd, high half 0x3fff
    const low = 0x100_2000; // frame 0x1002
    mem.store64(top, 1, 0);
    mem.store64(low, 2, 0);
    const before = mem.frameCacheMisses;
    for (let i = 0; i < 10; i++) {
      mem.load64(top);
      expect(mem.lo).toBe(1);
      mem.load64Halves(0, low);
      expect(mem.lo).toBe(2);
    }
    expect(mem.frameCacheMisses - before).toBe(0);
  });

  it('a frame never written reads as zero and is looked up in the tree each time (it is not cached)', () => {
    const mem = new PhysMem(46);
    const before = mem.frameCacheMisses;
    mem.load64(0x5000);
    mem.load64(0x5008);
    expect([mem.lo, mem.hi, mem.frameCacheMisses - before]).toEqual([0, 0, 2]);
  });

  it('reserveFrames makes room up front: frames allocated up to the reserve keep the same arena, contents and all', () => {
    const mem = new PhysMem(46);
    mem.store64(0x1000, 7, 0);
    mem.reserveFrames(300);
    const arena = mem.directWords();
    for (let f = 2; f < 300; f++) mem.store64(f * 4096, f, 0);
    expect(mem.frameCount).toBe(299);
    expect(mem.directWords()).toBe(arena);
    mem.load64(0x1000);
    expect(mem.lo).toBe(7);
    mem.store64(300 * 4096, 1, 0); // the 300th frame still fits
    expect(mem.directWords()).toBe(arena);
    mem.store64(301 * 4096, 1, 0); // the 301st grows the arena
    expect(mem.directWords()).not.toBe(arena);
    mem.load64(299 * 4096);
    expect(mem.lo).toBe(299);
  });
});

