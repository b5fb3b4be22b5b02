/**
 * A VM's host pool has struct pages (FolioTable entries) for the guest's RAM
 * and KVM's page tables from VM creation, as memmap_init gives RAM its struct
 * pages at boot: touching the guest never regrows (copies) the folio arrays.
 */
import { describe, expect, it } from 'vitest';
import { AccessResult, Outcome } from '../../src/hw/result.js';
import { HOST_POOL_BASE, type GuestAccess } from '../../src/kvm/vm.js';
import { KIND, makeVm } from '../support/kvm_setup.js';

describe('VM memmap', () => {
  it('a 16 MiB VM has struct pages for 4096 guest frames plus 1% and 64 for tables, and frames for its page tables, and touching all of it keeps the same arrays', () => {
    const kvm = makeVm({ tdp: 'ept', memory: 16 << 20 });
    const folios = kvm.pages.folios;
    expect(folios.basePfn).toBe(HOST_POOL_BASE / 4096);
    expect(folios.capacity).toBe(Math.ceil(4096 * 1.01) + 64); // 4137 + 64
    const flags = folios.flags;
    const arena = kvm.mem.directWords();
    const out: GuestAccess = { result: new AccessResult(), exits: 0, userExit: null };
    for (let gpa = 0; gpa < 16 << 20; gpa += 4096) {
      kvm.accessNow(0, 0, gpa, KIND.write, 1, out);
      expect(out.result.outcome).toBe(Outcome.Ok);
    }
    expect(kvm.tdpMmu.stats.pages[1] + 512 * kvm.tdpMmu.stats.pages[2]).toBe(4096);
    expect(folios.flags).toBe(flags); // never regrown
    expect(kvm.mem.directWords()).toBe(arena); // page-table frames fit the reserve: 2 per 2 MiB + 64
    expect(kvm.mem.directWords().length).toBe((2 * 8 + 64) * 1024); // 80 frames of 1024 words
    expect(kvm.mem.frameCount).toBe(22); // KVM's root, PDPT, PD and 8 PTs, and as many host tables
    expect(folios.capacity).toBe(4201);
  });
});
