/**
 * The host CPU that runs the VMM: the hardware walker in native mode over
 * the mm's page tables, at CPL 3, so its loads and stores set the host PTEs'
 * A and D bits as a real CPU would, and cache translations in its own TLB
 * (which the mm flushes after changing PTEs: flush_tlb_mm_range).
 */
import { Vcpu } from '../hw/machine.js';
import type { PhysMem } from '../hw/phys_mem.js';
import { AccessKind, type AccessResult } from '../hw/result.js';
import type { TlbGeometry } from '../hw/tlb.js';
import { Mode } from '../hw/walk.js';

const TWO32 = 4294967296;
/** A small TLB: the walker's #PF drops entries by scanning its caches, which a large TLB makes slow. */
const HOST_TLB: TlbGeometry = { entries: 64, ways: 4, pscEntries: 16, pscWays: 4 };

export class HostCpu {
  readonly vcpu: Vcpu;

  constructor(mem: PhysMem, pgd: number) {
    this.vcpu = new Vcpu(0, mem, { mode: Mode.Native, maxPhysAddr: mem.maxPhysAddr, tlb: true, psc: true, execOnly: false }, HOST_TLB);
    const regs = this.vcpu.regs;
    regs.cr3 = pgd; // switch_mm
    regs.cpl = 3; // the VMM runs in user mode
  }

  /** One access of a byte at the user address hva; the result (Ok, or Pf with its error code) is the walker's reused one. */
  access(hva: number, write: boolean): AccessResult {
    const mmu = this.vcpu.mmu;
    mmu.res.reset();
    mmu.translate((hva / TWO32) | 0, hva | 0, write ? AccessKind.Write : AccessKind.Read, false);
    return mmu.res;
  }

  /** flush_tlb_mm: drop every cached translation (the model does not do the per-page INVLPG ceiling). */
  flushAll(): void {
    this.vcpu.tlb.flushAll();
  }
}
