import { describe, expect, it } from 'vitest';
import { Setup } from '../support/setup.js';

describe('2D walk reference counts (hw.md 5.2)', () => {
  for (const [n, e, want] of [[4, 4, 24], [5, 5, 35], [4, 5, 29], [5, 4, 29]] as const) {
    it(`cold ${n}-level guest over ${e}-level EPT makes ${want} references`, () => {
      const s = new Setup('ept', { tlb: false, guestLevels: n, eptLevels: e });
      s.map(0x40_1000n, 0x80_0000);
      const r = s.raw(0x40_1008n, 'read');
      expect(r.refs).toBe(want);
      expect(s.acc(0x40_1008n, 'read')).toEqual({ result: 'ok', hpa: '0x800008', gpa: '0x800008' });
    });
  }
  it('a cold 4-level guest over 4-level NPT makes 24 references', () => {
    const s = new Setup('npt', { tlb: false });
    s.map(0x40_1000n, 0x80_0000);
    expect(s.raw(0x40_1008n, 'read').refs).toBe(24);
  });
});
