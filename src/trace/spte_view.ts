/**
 * The SPTE KVM keeps for a gfn, read straight from its TDP root (no locks,
 * no yields: a check between commands, not part of any race), and its named
 * bits per flavour, for `expect spte` (docs/kvm.md).
 */
import { join64 } from '../hw/halves.js';
import type { Kvm } from '../kvm/vm.js';
import {
  SPTE_TDP_AD_DISABLED, SPTE_TDP_AD_MASK, isAccessTrackSpte, isLastSpte, isMmioSpte, isShadowPresentPte, spteToPfn,
} from '../kvm/spte.js';

export interface SpteAt {
  spte: bigint;
  level: number;
  /** The walk ended above the level asked for (at `level`, non-present or a leaf). */
  short: boolean;
}

/**
 * Walks the root of address space 0 towards gfn. Without `want`, returns
 * the entry the walk ends at: the leaf, or the first non-present entry.
 */
export function findSpte(kvm: Kvm, gfn: number, want?: number): SpteAt | null {
  const root = kvm.tdpMmu.roots.find((r) => r.asId === 0 && !r.invalid);
  if (root === undefined) return null;
  const mem = kvm.mem;
  let table = root.hpa;
  for (let level = root.level; level >= 1; level--) {
    const index = Math.floor(gfn / 512 ** (level - 1)) % 512;
    mem.load64(table + 8 * index);
    const spte = join64(mem.lo, mem.hi);
    if (level === want) return { spte, level, short: false };
    if (!isShadowPresentPte(spte) || isLastSpte(spte, level)) return { spte, level, short: want !== undefined };
    table = Number(spteToPfn(spte)) * 4096;
  }
  throw new Error('assertion: TDP walk did not end at level 1');
}

const bit = (v: bigint, n: number): number => Number((v >> BigInt(n)) & 1n);

/** The named bits of an SPTE in this VM's flavour, each 0 or 1. */
export function spteBits(kvm: Kvm, spte: bigint): Record<string, number> {
  const f = kvm.flavour;
  const present = isShadowPresentPte(spte);
  const hw: Record<string, number> = f.tdp === 'ept'
    ? { r: bit(spte, 0), w: bit(spte, 1), x: bit(spte, 2) }
    : { p: bit(spte, 0), w: bit(spte, 1), u: bit(spte, 2), nx: bit(spte, 63) };
  const flag = (m: bigint) => ((spte & m) !== 0n ? 1 : 0);
  return {
    present: present ? 1 : 0,
    ...hw,
    a: flag(f.accessedMask),
    d: flag(f.dirtyMask),
    large: bit(spte, 7),
    mmu_writable: flag(f.mmuWritableMask),
    host_writable: flag(f.hostWritableMask),
    ad_disabled: (spte & SPTE_TDP_AD_MASK) === SPTE_TDP_AD_DISABLED ? 1 : 0,
    acc_track: present && isAccessTrackSpte(f, spte) ? 1 : 0,
    mmio: isMmioSpte(f, spte) ? 1 : 0,
  };
}

/** "0x8600000012345b77 present r w x a d ..." : the value and the names of its set bits. */
export function describeSpte(kvm: Kvm, spte: bigint): string {
  const set = Object.entries(spteBits(kvm, spte)).filter(([, v]) => v === 1).map(([k]) => k);
  return ['0x' + spte.toString(16), ...set, ...(isShadowPresentPte(spte) ? [`pfn=0x${spteToPfn(spte).toString(16)}`] : [])].join(' ');
}
