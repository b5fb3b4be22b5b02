/**
 * Cached second-dimension rights (SDM 28.3.3.4: a violation flushes, so
 * EPT R/W/X 0->1 needs no invalidation) and INVEPT all-context scope.
 */
import { describe, expect, it } from 'vitest';
import { EPT_R, EPT_RWX, EPT_WB } from '../../src/hw/table_writer.js';
import { Setup } from '../support/setup.js';

const LA = 0x40_1123n;
const DATA = 0x80_0000;

describe('cached EPT rights of a guest page-table page', () => {
  it('an A/D write-back denied by cached rights re-walks EPT from memory: EPT W 0->1 needs no INVEPT', () => {
    const s = new Setup('ept');
    s.map(0x40_1000n, DATA, { leafFlags: 0x27n }); // guest PTE P|W|U|A, D=0
    const pte = s.gEntry(LA, 1);
    const ptPage = pte & ~0xfff;
    s.write64(s.eEntry(ptPage, 1), BigInt(ptPage) | EPT_R | EPT_WB);
    expect(s.acc(LA, 'read')).toEqual({ result: 'ok', hpa: '0x800123', gpa: '0x800123' }); // fills the PDE cache with rights R
    s.write64(s.eEntry(ptPage, 1), BigInt(ptPage) | EPT_RWX | EPT_WB); // no INVEPT
    expect(s.acc(LA, 'write')).toEqual({ result: 'ok', hpa: '0x800123', gpa: '0x800123' });
    expect(s.read64(pte)).toBe(BigInt(DATA) | 0x67n);
  });

  it('the same write-back with the page still read-only exits with Q=0x8b from memory', () => {
    const s = new Setup('ept');
    s.map(0x40_1000n, DATA, { leafFlags: 0x27n });
    const pte = s.gEntry(LA, 1);
    const ptPage = pte & ~0xfff;
    s.write64(s.eEntry(ptPage, 1), BigInt(ptPage) | EPT_R | EPT_WB);
    s.acc(LA, 'read');
    expect(s.acc(LA, 'write')).toEqual({ result: 'ept_violation', qualification: '0x8b', gpa: '0x' + pte.toString(16), gla: '0x401123' });
    expect(s.read64(pte)).toBe(BigInt(DATA) | 0x27n);
  });
});

describe('INVEPT all-context (SDM 28.3.3.1)', () => {
  it('drops combined mappings made under an EPTP whose root is at hPA 0', () => {
    const s = new Setup('ept');
    s.map(0x40_1000n, DATA);
    // Move the EPT root to hPA 0 by copying the root table there.
    for (let i = 0; i < 4096; i += 8) s.write64(i, s.read64(s.root2 + i));
    s.regs.eptp = 0x1e; // WB, 4-level, root 0
    expect(s.raw(LA, 'read').tlbHit).toBe(false);
    expect(s.raw(LA, 'read').tlbHit).toBe(true);
    expect(s.m.invept(0, false, null).outcome).toBe(0);
    expect(s.raw(LA, 'read').tlbHit).toBe(false);
  });
});
