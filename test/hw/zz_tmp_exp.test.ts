import { Machine } from '../../src/hw/machine.js';
const M = process.env.MUT;
if (M === '1') (Machine.prototype as any).invlpg = function (this: Machine, id: number, hi: number, lo: number) {
  const v = this.vcpu(id); const r = v.mmu.res; r.reset();
  v.tlb.comb.drop((i) => v.tlb.comb.covers(i, hi, lo)); // mutant: no PSC invalidation
  return r;
};
if (M === '2') (Machine.prototype as any).invept = function (this: Machine, id: number) {
  const v = this.vcpu(id); const r = v.mmu.res; r.reset();
  v.tlb.dropGuestPhysical(() => true); // mutant: combined mappings kept
  return r;
};
if (M === '3') (Machine.prototype as any).probe = function (this: Machine, id: number, hi: number, lo: number, kind: number, imp: boolean) {
  return this.access(id, hi, lo, kind, 1, imp);
};
await import('./properties.test.js');
