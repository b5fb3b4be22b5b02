/**
 * TagCache bookkeeping the invalidation paths rely on: the count of valid
 * entries (an invalidation of an empty cache returns at once) stays equal
 * to the valid bits through any mix of fills, replacements and drops.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TagCache } from '../../src/hw/tag_cache.js';

const validBits = (c: TagCache) => Uint8Array.from({ length: c.size }, (_, i) => (c.isValid(i) ? 1 : 0));
const popcount = (c: TagCache) => validBits(c).reduce((n, v) => n + v, 0);

type Op =
  | { op: 'insert'; page: number; vpid: number; shift: number }
  | { op: 'dropCovering'; page: number; vpid: number }
  | { op: 'drop'; vpid: number }
  | { op: 'clear' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('insert' as const), page: fc.integer({ min: 0, max: 63 }), vpid: fc.integer({ min: 0, max: 2 }), shift: fc.constantFrom(12, 21, 30) }),
  fc.record({ op: fc.constant('dropCovering' as const), page: fc.integer({ min: 0, max: 63 }), vpid: fc.integer({ min: -1, max: 2 }) }),
  fc.record({ op: fc.constant('drop' as const), vpid: fc.integer({ min: 0, max: 2 }) }),
  fc.record({ op: fc.constant('clear' as const) }),
);

describe('TagCache', () => {
  it('count() equals the valid bits after any sequence of inserts, replacements and drops', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 80 }), (ops) => {
        const c = new TagCache(16, 4, 12); // 4 sets of 4 ways: replacements happen
        for (const o of ops) {
          if (o.op === 'insert') c.insert(0, o.page << 12, o.vpid, 0, 0, false, o.shift, o.page * 4096, o.page * 4096, 7);
          else if (o.op === 'dropCovering') c.dropCovering(0, o.page << 12, o.vpid, -1, 0, false);
          else if (o.op === 'drop') c.drop((i) => c.vpidOf(i) === o.vpid);
          else c.clear();
          expect(c.count()).toBe(popcount(c));
        }
      }),
      { numRuns: 300 },
    );
  });

  it('dropCovering drops exactly what a scan of every entry with covers() and the tags would (fragments of many 2M and 1G pages)', () => {
    // Addresses in 4 1G pages, 2 2M pages each, 4 4K pages each, below and above 4 GiB.
    const addr = fc.record({ hi: fc.integer({ min: 0, max: 1 }), gig: fc.integer({ min: 0, max: 3 }), meg: fc.integer({ min: 0, max: 1 }), page: fc.integer({ min: 0, max: 3 }) });
    const lo = (a: { gig: number; meg: number; page: number }) => ((a.gig << 30) | (a.meg << 21) | (a.page << 12)) | 0;
    const step = fc.oneof(
      fc.record({ insert: addr, vpid: fc.integer({ min: 0, max: 1 }), shift: fc.constantFrom(12, 21, 30) }),
      fc.record({ drop: addr, vpid: fc.integer({ min: -1, max: 1 }) }),
    );
    fc.assert(
      fc.property(fc.array(step, { maxLength: 120 }), (steps) => {
        const c = new TagCache(32, 4, 12); // 8 sets of 4 ways: replacements happen
        for (const st of steps) {
          if ('insert' in st) {
            c.insert(st.insert.hi, lo(st.insert), st.vpid, 0, 0, false, st.shift, 0x1000, 0x1000, 7);
            continue;
          }
          const hi = st.drop.hi;
          const l = lo(st.drop);
          const expected: number[] = [];
          for (let i = 0; i < c.size; i++) if (c.isValid(i) && (st.vpid < 0 || c.vpidOf(i) === st.vpid) && c.covers(i, hi, l)) expected.push(i);
          const before = validBits(c);
          expect(c.dropCovering(hi, l, st.vpid, -1, 0, false)).toBe(expected.length);
          const dropped: number[] = [];
          for (let i = 0; i < c.size; i++) if (before[i] === 1 && !c.isValid(i)) dropped.push(i);
          expect(dropped).toEqual(expected);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('lookup finds the first valid entry with the key and tags, as a scan of the fields of every entry would, after any fills, replacements and drops', () => {
    // Keys in two 1G pages, a few 4K pages each (some in the same set), two VPIDs and PCIDs, global or not, small and large entries.
    const key = fc.record({ hi: fc.integer({ min: 0, max: 1 }), page: fc.constantFrom(0, 1, 8, 9, 0x40000, 0x40008) });
    const tags = { vpid: fc.integer({ min: 0, max: 1 }), pcid: fc.integer({ min: 0, max: 1 }), ep4ta: fc.constantFrom(0, 0x1_2345_6000) };
    const step = fc.oneof(
      fc.record({ insert: key, ...tags, global: fc.boolean(), shift: fc.constantFrom(12, 21, 30) }),
      fc.record({ dropCovering: key, ...tags }),
      fc.record({ dropVpid: fc.integer({ min: 0, max: 1 }) }),
      fc.record({ probe: key, ...tags }),
    );
    fc.assert(
      fc.property(fc.array(step, { maxLength: 100 }), (steps) => {
        const c = new TagCache(16, 2, 12); // 8 sets of 2 ways: replacements happen
        for (const st of steps) {
          if ('insert' in st) c.insert(st.insert.hi, st.insert.page << 12, st.vpid, st.pcid, st.ep4ta, st.global, st.shift, 0x1000, 0x1000, 7);
          else if ('dropCovering' in st) c.dropCovering(st.dropCovering.hi, st.dropCovering.page << 12, st.vpid, st.pcid, st.ep4ta, true);
          else if ('dropVpid' in st) c.drop((i) => c.vpidOf(i) === st.dropVpid);
          else {
            const lo = st.probe.page << 12;
            let expected = -1;
            for (let i = 0; i < c.size && expected < 0; i++) {
              if (c.isValid(i) && c.keyLoOf(i) === lo && c.keyHiOf(i) === st.probe.hi && c.vpidOf(i) === st.vpid && c.ep4taOf(i) === st.ep4ta && (c.pcidOf(i) === st.pcid || c.isGlobal(i))) expected = i;
            }
            expect(c.lookup(st.probe.hi, lo, st.vpid, st.pcid, st.ep4ta)).toBe(expected);
          }
          expect(c.count()).toBe(popcount(c));
        }
      }),
      { numRuns: 300 },
    );
  });

  it('refilling an entry with its own key keeps it in one chain, or in none once it is no longer a fragment', () => {
    const c = new TagCache(16, 4, 12);
    // A 4K fragment of the 1G page at 0, filled twice: one entry, chained once.
    c.insert(0, 0x5000, 0, 0, 0, false, 30, 0x9000, 0x5000, 7);
    c.insert(0, 0x5000, 0, 0, 0, false, 30, 0x9000, 0x5000, 7);
    expect(c.count()).toBe(1);
    // Another address in the 1G page finds it through the chain, once.
    expect(c.dropCovering(0, 0x3000_0000, -1, -1, 0, true)).toBe(1);
    expect(c.count()).toBe(0);
    // Refilled as a fragment, then as a plain 4K page: the second fill takes it out of the chain.
    c.insert(0, 0x5000, 0, 0, 0, false, 30, 0x9000, 0x5000, 7);
    c.insert(0, 0x5000, 0, 0, 0, false, 12, 0x9000, 0x5000, 7);
    expect(c.dropCovering(0, 0x3000_0000, -1, -1, 0, true)).toBe(0);
    expect(c.dropCovering(0, 0x5000, -1, -1, 0, true)).toBe(1);
    expect(c.count()).toBe(0);
  });

  it('a fill refuses a negative hPA or EP4TA, and changes nothing (the walker takes their high halves by truncation); a gPA of -1 (none) comes back as -1', () => {
    const c = new TagCache(16, 4, 12);
    expect(() => c.insert(0, 0x5000, 0, 0, 0, false, 12, -4096, 0x5000, 7)).toThrow('assertion: cache fill with a negative address (hPA -4096, EP4TA 0)');
    expect(() => c.insert(0, 0x5000, 0, 0, -1, false, 12, 0x9000, 0x5000, 7)).toThrow('assertion: cache fill with a negative address (hPA 36864, EP4TA -1)');
    expect([c.count(), c.fills, c.lookup(0, 0x5000, 0, 0, 0)]).toEqual([0, 0, -1]);
    const i = c.insert(0, 0x5000, 0, 0, 0x1_2345_6000, false, 12, 0x8_0000_9000, -1, 7);
    expect([c.hpaOf(i), c.gpaOf(i), c.ep4taOf(i)]).toEqual([0x8_0000_9000, -1, 0x1_2345_6000]);
    // The global flag shares a field with the shift; the low key is the tag's.
    const j = c.insert(0, 0x6000, 0, 0, 0, true, 21, 0xf_8000_0000, 0xffff_f000, 7);
    expect([c.hpaOf(j), c.gpaOf(j), c.shiftOf(j), c.isGlobal(j), c.keyLoOf(j)]).toEqual([0xf_8000_0000, 0xffff_f000, 21, true, 0x6000]);
  });

  it('an entry larger than the granule must come from a 2M or 1G page', () => {
    const c = new TagCache(16, 4, 12);
    expect(() => c.insert(0, 0, 0, 0, 0, false, 39, 0, 0, 7)).toThrow('assertion: a cache entry larger than its granule made from a page of shift 39');
  });

  it('an invalidation of an empty cache drops nothing and leaves the epoch alone', () => {
    const c = new TagCache(16, 4, 12);
    expect(c.dropCovering(0, 0x5000, -1, -1, 0, true)).toBe(0);
    expect(c.epoch[0]).toBe(0);
    c.insert(0, 0x5000, 0, 0, 0, false, 12, 0x9000, 0x5000, 7);
    expect([c.count(), c.epoch[0]]).toEqual([1, 1]);
    expect(c.dropCovering(0, 0x5000, -1, -1, 0, true)).toBe(1);
    expect([c.count(), c.epoch[0]]).toEqual([0, 2]);
  });
});
