/**
 * handleChangedSpte checks check_spte_writable_invariants on 32-bit halves
 * (the fault path never makes a bigint); the bigint predicate in spte.ts
 * words the failure. Both must judge every SPTE alike.
 */
import { describe, expect, it } from 'vitest';
import { checkSpteWritableInvariants } from '../../src/kvm/spte.js';
import { hi32, lo32 } from '../../src/hw/halves.js';
import { Kvm, type VmOptions } from '../../src/kvm/vm.js';

const FLAVOURS: [string, VmOptions][] = [
  ['EPT with A/D', { tdp: 'ept', memory: 4 << 20 }],
  ['EPT without A/D', { tdp: 'ept', eptAd: false, memory: 4 << 20 }],
  ['NPT', { tdp: 'npt', memory: 4 << 20 }],
];

describe('check_spte_writable_invariants: the halves check of handleChangedSpte agrees with checkSpteWritableInvariants', () => {
  for (const [name, opts] of FLAVOURS) {
    it(`${name}: all eight combinations of W, MMU-writable and host-writable on a present 4K leaf`, () => {
      const kvm = new Kvm(opts);
      const f = kvm.flavour;
      const base = 0x1234000n | f.presentMask | 0x800n | 1n; // pfn 0x1234, shadow-present, readable
      let failures = 0;
      for (let bits = 0; bits < 8; bits++) {
        let spte = base & ~(2n | f.mmuWritableMask | f.hostWritableMask);
        if (bits & 1) spte |= 2n;
        if (bits & 2) spte |= f.mmuWritableMask;
        if (bits & 4) spte |= f.hostWritableMask;
        const problem = checkSpteWritableInvariants(f, spte);
        const change = () => kvm.tdpMmu.handleChangedSpte(0, 0x1234, 0, 0, lo32(spte), hi32(spte), 1);
        if (problem === null) expect(change).not.toThrow();
        else {
          expect(change).toThrow(`assertion: ${problem}: 0x${spte.toString(16)}`);
          failures++;
        }
      }
      // W without MMU-writable (host-writable or not), and MMU-writable without host-writable (W or not).
      expect(failures).toBe(4);
    });
  }
});
