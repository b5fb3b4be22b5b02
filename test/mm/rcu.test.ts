/**
 * RcuDomain's grace periods (src/mm/rcu.ts): a call_rcu callback runs once
 * every read section open at the call has closed, and not before; sections
 * opened later do not hold it back; synchronize waits the same way. Checked
 * by hand and, for any interleaving of locks, unlocks and calls, against
 * the definition itself (the set of sections open at each call).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RcuDomain } from '../../src/mm/rcu.js';

describe('RcuDomain', () => {
  it('call_rcu with no reader runs at once; with readers, when the last of them unlocks, in any order', () => {
    const rcu = new RcuDomain();
    const ran: string[] = [];
    rcu.call(() => ran.push('a'));
    expect(ran).toEqual(['a']);
    const r1 = rcu.readLock();
    const r2 = rcu.readLock();
    rcu.call(() => ran.push('b'));
    const r3 = rcu.readLock(); // opened after the call: does not hold b back
    rcu.readUnlock(r1);
    expect(ran).toEqual(['a']);
    rcu.readUnlock(r2);
    expect(ran).toEqual(['a', 'b']);
    expect([rcu.readersInside, rcu.pendingCallbacks, rcu.callbacksRun]).toEqual([1, 0, 2]);
    rcu.readUnlock(r3);
  });

  it('a later callback waits for its own readers only, but runs after an earlier one still waiting (call order)', () => {
    const rcu = new RcuDomain();
    const ran: string[] = [];
    const old = rcu.readLock();
    rcu.call(() => ran.push('first'));
    const young = rcu.readLock();
    rcu.call(() => ran.push('second'));
    rcu.readUnlock(young);
    expect(ran).toEqual([]); // second also waits for `old`, open at its call
    rcu.readUnlock(old);
    expect(ran).toEqual(['first', 'second']);
  });

  it('read_unlock of a token not held is an assertion', () => {
    const rcu = new RcuDomain();
    const t = rcu.readLock();
    rcu.readUnlock(t);
    expect(() => rcu.readUnlock(t)).toThrow('assertion: srcu_read_unlock without srcu_read_lock');
  });

  it('synchronize inside a read section with nobody to run is the self-deadlock assertion; after the section it returns at once', () => {
    const rcu = new RcuDomain('synchronize_srcu');
    const t = rcu.readLock();
    expect(() => rcu.synchronize({ yields: false }).next()).toThrow(/synchronize_srcu would wait forever/);
    rcu.readUnlock(t);
    expect(rcu.synchronize({ yields: false }).next().done).toBe(true);
  });

  it('synchronize yields while a section open at its start is open, and ignores sections opened later', () => {
    const rcu = new RcuDomain();
    const t = rcu.readLock();
    const sync = rcu.synchronize({ yields: true });
    expect(sync.next().done).toBe(false);
    const later = rcu.readLock();
    rcu.readUnlock(t);
    expect(sync.next().done).toBe(true);
    expect(rcu.syncWaits).toBe(1);
    rcu.readUnlock(later);
  });

  it('callbacks run exactly when the sections open at their call have all closed, for any interleaving', () => {
    type Op = { op: 'lock' } | { op: 'unlock'; pick: number } | { op: 'call' };
    const opArb: fc.Arbitrary<Op> = fc.oneof(
      fc.constant<Op>({ op: 'lock' }),
      fc.nat(16).map<Op>((pick) => ({ op: 'unlock', pick })),
      fc.constant<Op>({ op: 'call' }),
    );
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 60 }), (ops) => {
        const rcu = new RcuDomain();
        const open: number[] = [];
        // The definition: each callback's set of sections still to close.
        const waiting: { id: number; waitFor: Set<number> }[] = [];
        const ran: number[] = [];
        const expected: number[] = [];
        let next = 0;
        const settle = () => {
          // Every callback with nothing left to wait for runs, in call order.
          for (let i = 0; i < waiting.length; ) {
            if (waiting[i].waitFor.size === 0) expected.push(waiting.splice(i, 1)[0].id);
            else i++;
          }
        };
        for (const o of ops) {
          if (o.op === 'lock') open.push(rcu.readLock());
          else if (o.op === 'unlock') {
            if (open.length === 0) continue;
            const [t] = open.splice(o.pick % open.length, 1);
            rcu.readUnlock(t);
            for (const w of waiting) w.waitFor.delete(t);
          } else {
            const id = next++;
            waiting.push({ id, waitFor: new Set(open) });
            rcu.call(() => ran.push(id));
          }
          settle();
          expect(ran).toEqual(expected);
          expect(rcu.readersInside).toBe(open.length);
          expect(rcu.pendingCallbacks).toBe(waiting.length);
        }
      }),
      { numRuns: 500 },
    );
  });
});
