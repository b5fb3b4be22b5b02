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


describe('PhysMem.fill64 (memset64)', () => {
  it('fills count words from hpa, allocating the frame, and leaves the rest of the frame alone', () => {
    const mem = new PhysMem(46);
    mem.store64(0x5000, 7, 7);
    // 64 frames fill the first arena; the fill allocates the 65th, which replaces the arena: it must write the new one.
    for (let f = 0; f < 63; f++) mem.store64(0x100000 + f * 4096, f, 0);
    expect(mem.frameCount).toBe(64);
    mem.fill64(0x3f_ffff_f010, 510, 0, 0x80000000 | 0);
    mem.load64(0x3f_ffff_f008);
    expect([mem.lo, mem.hi]).toEqual([0, 0]);
    mem.load64(0x3f_ffff_f010);
    expect([mem.lo, mem.hi]).toEqual([0, 0x80000000 | 0]);
    mem.load64(0x3f_ffff_fff8);
    expect([mem.lo, mem.hi]).toEqual([0, 0x80000000 | 0]);
    mem.load64(0x5000);
    expect([mem.lo, mem.hi]).toEqual([7, 7]);
  });

  it('refuses a fill that leaves its frame, or a bad address, and changes nothing', () => {
    const mem = new PhysMem(46);
    expect(() => mem.fill64(0x5008, 512, 1, 1)).toThrow('assertion: fill64 of 512 words at 20488 leaves its frame');
    expect(() => mem.fill64(0x5004, 1, 1, 1)).toThrow('assertion: bad 8-byte physical address 20484 (MAXPHYADDR 46)');
    expect(mem.frameCount).toBe(0);
  });

  it('under a preempt hook each word is a store of its own, as store64 makes it', () => {
    const mem = new PhysMem(46);
    const seen: number[] = [];
    mem.preempt = { point: (_op, hpa) => seen.push(hpa) };
    mem.fill64(0x7ff0, 2, 5, 6);
    mem.preempt = null;
    expect(seen).toEqual([0x7ff0, 0x7ff8]);
    mem.load64(0x7ff8);
    expect([mem.lo, mem.hi]).toEqual([5, 6]);
  });
});
