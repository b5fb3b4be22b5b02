/**
 * TagCache bookkeeping the invalidation paths rely on: the count of valid
 * entries (an invalidation of an empty cache returns at once) stays equal
 * to the valid bits through any mix of fills, replacements and drops.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { TagCache } from '../../src/hw/tag_cache.js';

const popcount = (c: TagCache) => c.valid.reduce((n, v) => n + v, 0);

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
          else if (o.op === 'drop') c.drop((i) => c.vpid[i] === o.vpid);
          else c.clear();
          expect(c.count()).toBe(popcount(c));
        }
      }),
      { numRuns: 300 },
    );
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
