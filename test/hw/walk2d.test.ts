import { describe, expect, it } from 'vitest';
import { Machine } from '../../src/hw/machine.js';
import { AccessKind, Outcome } from '../../src/hw/result.js';
import { EPT_RWX, EPT_WB, TableWriter, X86_PWU } from '../../src/hw/table_writer.js';
import { Mode } from '../../src/hw/walk.js';

/** Guest tables at gPA 0x100000+, identity EPT over the first 16 MiB at hPA 0x10000000+. */
function eptMachine(levels: 4 | 5, eptLevels: 4 | 5) {
  const m = new Machine({ mode: Mode.Ept, tlb: false });
  const ept = new TableWriter(m.mem, 0x1000_0000);
  const eptRoot = ept.allocTable();
  for (let gpa = 0; gpa < 0x100_0000; gpa += 4096) {
    ept.map(eptRoot, BigInt(gpa), gpa, { leafFlags: EPT_RWX | EPT_WB, tableFlags: EPT_RWX, levels: eptLevels });
  }
  const guest = new TableWriter(m.mem, 0x10_0000);
  const cr3 = guest.allocTable();
  const v = m.vcpu(0);
  v.regs.eptp = eptRoot + 6 + ((eptLevels - 1) << 3);
  if (levels === 5) v.regs.cr4 |= 1 << 12;
  v.regs.cr3 = cr3;
  return { m, guest, cr3 };
}

describe('2D walk reference counts (hw.md 5.2)', () => {
  for (const [n, e, want] of [[4, 4, 24], [5, 5, 35], [4, 5, 29], [5, 4, 29]] as const) {
    it(`cold ${n}-level guest over ${e}-level EPT makes ${want} references`, () => {
      const { m, guest, cr3 } = eptMachine(n, e);
      guest.map(cr3, 0x40_1000n, 0x80_0000, { leafFlags: X86_PWU, tableFlags: X86_PWU, levels: n });
      const r = m.access(0, 0, 0x40_1008, AccessKind.Read, 1, false);
      expect(r.outcome).toBe(Outcome.Ok);
      expect(r.gpa).toBe(0x80_0008);
      expect(r.hpa).toBe(0x80_0008);
      expect(r.refs).toBe(want);
    });
  }
});
