/**
 * SPTE encoding (kvm-mmu.md sections 1-2; arch/x86/kvm/mmu/spte.{h,c}, Linux 6.17).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ACC_ALL,
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  EPT_AD,
  EPT_NOAD,
  FROZEN_SPTE,
  KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
  NPT,
  PT_WRITABLE_MASK,
  SHADOW_NONPRESENT_VALUE,
  SPTE_TDP_AD_DISABLED,
  SPTE_TDP_AD_MASK,
  SPTE_TDP_AD_WRPROT_ONLY,
  type SpteFlavour,
  checkMmioSpte,
  checkSpteWritableInvariants,
  getMmioSpteAccess,
  getMmioSpteGeneration,
  getMmioSpteGfn,
  isAccessAllowed,
  isAccessTrackSpte,
  isAccessedSpte,
  isDirtySpte,
  isEptVePossible,
  isExecutablePte,
  isFrozenSpte,
  isHostWritableSpte,
  isLargePte,
  isLastSpte,
  isMmioSpte,
  isMmuWritableSpte,
  isShadowPresentPte,
  isWritablePte,
  isWritableSpte,
  leafSpteChangeNeedsTlbFlush,
  makeFlavour,
  makeMmioSpte,
  makeNonleafSpte,
  makeSpte,
  markSpteForAccessTrack,
  resetAllPteMasks,
  restoreAccTrackSpte,
  spteAdEnabled,
  spteAdNeedWriteProtect,
  spteIndex,
  spteNeedsAtomicWrite,
  spteToPfn,
} from '../../src/kvm/spte.js';

const hex = (v: bigint): string => '0x' + v.toString(16).padStart(16, '0');
const leaf = (f: SpteFlavour, extra: Partial<Parameters<typeof makeSpte>[1]> = {}): bigint =>
  makeSpte(f, { level: 1, pfn: 0x1234n, access: ACC_ALL, hostWritable: true, ...extra }).spte;

describe('flavour masks (kvm_mmu_reset_all_pte_masks / kvm_mmu_set_ept_masks)', () => {
  it('EPT with A/D bits, exec-only CPU', () => {
    expect(EPT_AD).toMatchObject({
      name: 'ept-ad', tdp: 'ept', adEnabled: true, hasExecOnly: true,
      userMask: 0x1n, accessedMask: 0x100n, dirtyMask: 0x200n, nxMask: 0n, xMask: 0x4n,
      presentMask: 0x8000_0000_0000_0000n, accTrackMask: 0x7n,
      hostWritableMask: 0x0200_0000_0000_0000n, mmuWritableMask: 0x0400_0000_0000_0000n,
      meMask: 0n, meValue: 0n,
      mmioValue: 0x6n, mmioMask: 0x8000_0000_0000_0007n, mmioAccessMask: 0n, mmioCachingEnabled: true,
      nonpresentOrRsvdMask: 0n, nonpresentOrRsvdLowerGfnMask: 0x0000_3fff_ffff_f000n,
    });
  });

  it('EPT without A/D bits keeps A=bit 8 and D=bit 9 as software bits (6.13+)', () => {
    expect(EPT_NOAD).toMatchObject({ ...EPT_AD, name: 'ept-noad', adEnabled: false });
  });

  it('EPT without exec-only support puts R into shadow_present_mask', () => {
    expect(makeFlavour('ept-ad', { hasExecOnly: false }).presentMask).toBe(0x8000_0000_0000_0001n);
  });

  it('NPT (legacy defaults)', () => {
    expect(NPT).toMatchObject({
      name: 'npt', tdp: 'npt', adEnabled: true,
      userMask: 0x4n, accessedMask: 0x20n, dirtyMask: 0x40n, nxMask: 0x8000_0000_0000_0000n, xMask: 0n,
      presentMask: 0x1n, accTrackMask: 0n, hostWritableMask: 0x200n, mmuWritableMask: 0x400n,
      mmioValue: 0x0008_0000_0000_0001n, mmioMask: 0x0008_0000_0000_0001n, mmioAccessMask: 0x6n, mmioCachingEnabled: true,
    });
  });

  it('NPT disables MMIO caching when MAXPHYADDR is 52 (no reserved PA bit)', () => {
    const f = resetAllPteMasks({ physBits: 52 });
    expect(f.mmioValue).toBe(0n);
    expect(f.mmioCachingEnabled).toBe(false);
  });

  it('mmio_caching=0 disables MMIO caching for EPT', () => {
    const f = makeFlavour('ept-ad', { allowMmioCaching: false });
    expect([f.mmioValue, f.mmioCachingEnabled]).toEqual([0n, false]);
  });

  it('L1TF: the five PA bits below the L1 cache width become shadow_nonpresent_or_rsvd_mask', () => {
    const f = resetAllPteMasks({ physBits: 46, l1tfCacheBits: 44 });
    expect(hex(f.nonpresentOrRsvdMask)).toBe('0x00000f8000000000'); // bits 43:39
    expect(hex(f.nonpresentOrRsvdLowerGfnMask)).toBe('0x0000007ffffff000'); // bits 38:12
    expect(resetAllPteMasks({ l1tfCacheBits: 47 }).nonpresentOrRsvdMask).toBe(0n); // too wide: no mitigation
  });
});

describe('fixed values', () => {
  it('SHADOW_NONPRESENT_VALUE is bit 63 and FROZEN_SPTE adds 0x5a0', () => {
    expect(hex(SHADOW_NONPRESENT_VALUE)).toBe('0x8000000000000000');
    expect(hex(FROZEN_SPTE)).toBe('0x80000000000005a0');
  });

  it('FROZEN_SPTE is neither present nor MMIO, though it has bit 7 and EPT A set', () => {
    for (const f of [EPT_AD, EPT_NOAD, NPT]) {
      expect(isShadowPresentPte(FROZEN_SPTE)).toBe(false);
      expect(isMmioSpte(f, FROZEN_SPTE)).toBe(false);
    }
    expect(isLargePte(FROZEN_SPTE)).toBe(true);
    expect(isAccessedSpte(EPT_AD, FROZEN_SPTE)).toBe(true);
  });
});

describe('makeSpte (make_spte)', () => {
  it('EPT A/D on, 4K, writable, pfn 0x1234', () => {
    expect(makeSpte(EPT_AD, { level: 1, pfn: 0x1234n, access: ACC_ALL, hostWritable: true })).toEqual({
      spte: 0x8600_0000_0123_4b77n,
      wrprot: false,
    });
  });

  it('EPT A/D off, 4K, writable: A/D-disabled type, A and D still set', () => {
    expect(hex(leaf(EPT_NOAD))).toBe('0x8610000001234b77');
  });

  it('NPT, 4K, writable', () => {
    expect(hex(leaf(NPT))).toBe('0x0000000001234e67');
  });

  it('NPT without exec sets NX', () => {
    expect(hex(leaf(NPT, { access: ACC_WRITE_MASK | ACC_USER_MASK }))).toBe('0x8000000001234e67');
  });

  it('EPT 2M leaf sets bit 7', () => {
    expect(hex(leaf(EPT_AD, { level: 2, pfn: 0x200n }))).toBe('0x8600000000200bf7');
  });

  it('EPT host read-only: host-writable, W, MMU-writable and D all clear', () => {
    expect(hex(leaf(EPT_AD, { hostWritable: false }))).toBe('0x8000000001234975');
    expect(hex(leaf(NPT, { hostWritable: false }))).toBe('0x0000000001234825');
  });

  it('EPT exec-only: no user access means no R; without exec-only R comes from shadow_present_mask', () => {
    const access = ACC_EXEC_MASK | ACC_WRITE_MASK;
    expect(hex(leaf(EPT_AD, { access }))).toBe('0x8600000001234b76');
    expect(hex(leaf(makeFlavour('ept-ad', { hasExecOnly: false }), { access }))).toBe('0x8600000001234b77');
  });

  it('host MMIO pfn gets UC memory type without IPAT on EPT', () => {
    expect(hex(leaf(EPT_AD, { hostMmio: true }))).toBe('0x8600000001234b07');
  });

  it('prefetch clears A on A/D-enabled SPTEs', () => {
    expect(hex(leaf(EPT_AD, { prefetch: true }))).toBe('0x8600000001234a77');
    expect(hex(leaf(NPT, { prefetch: true }))).toBe('0x0000000001234e47');
    expect(hex(leaf(EPT_AD, { prefetch: true, synchronizing: true }))).toBe('0x8600000001234b77');
  });

  it('prefetch access-tracks A/D-disabled SPTEs: R->bit 54, X->bit 56, RWX and A cleared', () => {
    const s = leaf(EPT_NOAD, { prefetch: true });
    expect(hex(s)).toBe('0x8750000001234a70');
    expect(isAccessTrackSpte(EPT_NOAD, s)).toBe(true);
  });

  it('NX huge-page mitigation drops exec on huge pages only', () => {
    expect(hex(leaf(EPT_AD, { level: 2, pfn: 0x200n, nxHugePages: true }))).toBe('0x8600000000200bf3');
    expect(hex(leaf(EPT_AD, { nxHugePages: true }))).toBe('0x8600000001234b77');
  });

  it('WRPROT_ONLY A/D type when PML dirty logging is active for an L2 page', () => {
    expect(hex(leaf(EPT_AD, { adWrprotOnly: true }))).toBe('0x8620000001234b77');
  });

  it('refused unsync write-protects a new SPTE, but not one replacing a writable leaf', () => {
    expect(makeSpte(EPT_AD, { level: 1, pfn: 0x1234n, access: ACC_ALL, hostWritable: true, unsyncRefused: true })).toEqual({
      spte: 0x8200_0000_0123_4975n,
      wrprot: true,
    });
    const old = leaf(EPT_AD);
    expect(makeSpte(EPT_AD, { level: 1, pfn: 0x1234n, access: ACC_ALL, hostWritable: true, unsyncRefused: true, oldSpte: old })).toEqual({
      spte: old,
      wrprot: false,
    });
  });

  it('refuses an EPT exec-only leaf with no access at all (the kernel warns)', () => {
    expect(() => leaf(EPT_AD, { access: 0 })).toThrow(/no access/);
    expect(hex(leaf(makeFlavour('ept-ad', { hasExecOnly: false }), { access: 0 }))).toBe('0x8200000001234971');
  });

  it('memory-encryption value is ORed into RAM leaves and non-leaves, not host MMIO leaves', () => {
    const f = makeFlavour('npt', { me: { value: 1n << 47n, mask: 1n << 47n } });
    expect(hex(leaf(f))).toBe('0x0000800001234e67');
    expect(hex(leaf(f, { hostMmio: true }))).toBe('0x0000000001234e67');
    expect(hex(makeNonleafSpte(f, 0x5000n))).toBe('0x0000800000005827');
    const bad = makeFlavour('npt', { me: { value: 3n << 46n, mask: 1n << 47n } }); // value not within mask
    expect([bad.meValue, bad.meMask]).toEqual([0n, 0n]);
  });

  it('rejects a pfn beyond bit 51', () => {
    expect(() => leaf(EPT_AD, { pfn: 1n << 40n })).toThrow(RangeError);
  });
});

describe('makeNonleafSpte (make_nonleaf_spte)', () => {
  it('exact values per flavour', () => {
    expect(hex(makeNonleafSpte(EPT_AD, 0x5000n))).toBe('0x8000000000005907');
    expect(hex(makeNonleafSpte(EPT_NOAD, 0x5000n))).toBe('0x8010000000005807');
    expect(hex(makeNonleafSpte(NPT, 0x5000n))).toBe('0x0000000000005827');
  });

  it('non-leaf at level 2 is not last', () => {
    const s = makeNonleafSpte(EPT_AD, 0x5000n);
    expect(isShadowPresentPte(s)).toBe(true);
    expect(isLastSpte(s, 2)).toBe(false);
  });
});

describe('MMIO SPTEs', () => {
  it('EPT: W|X misconfig value, generation in bits 3..10 and 52..62', () => {
    const s = makeMmioSpte(EPT_AD, 0x1234n, ACC_ALL, 0x7ffffn);
    expect(hex(s)).toBe('0x7ff00000012347fe');
    expect(isMmioSpte(EPT_AD, s)).toBe(true);
    expect(isShadowPresentPte(s)).toBe(false);
    expect(getMmioSpteAccess(EPT_AD, s)).toBe(0);
  });

  it('NPT: bit 51 | P, access W|U cached', () => {
    const s = makeMmioSpte(NPT, 0x1234n, ACC_ALL, 0x12345n);
    expect(hex(s)).toBe('0x123800000123422f');
    expect(getMmioSpteGeneration(s)).toBe(0x12345n);
    expect(getMmioSpteAccess(NPT, s)).toBe(ACC_WRITE_MASK | ACC_USER_MASK);
  });

  it('only the low 19 bits of the memslots generation are kept', () => {
    expect(getMmioSpteGeneration(makeMmioSpte(EPT_AD, 1n, 0, 0x80001n))).toBe(1n);
  });

  it('a present leaf is not MMIO, and nothing is MMIO with caching off', () => {
    expect(isMmioSpte(EPT_AD, leaf(EPT_AD))).toBe(false);
    expect(isMmioSpte(NPT, leaf(NPT))).toBe(false);
    const off = resetAllPteMasks({ physBits: 52 });
    expect(isMmioSpte(off, makeMmioSpte(off, 1n, 0, 0n))).toBe(false);
  });

  it('check_mmio_spte: generation must match and no update may be in progress', () => {
    const s = makeMmioSpte(EPT_AD, 1n, 0, 0x300n);
    expect(checkMmioSpte(s, 0x300n)).toBe(true);
    expect(checkMmioSpte(s, 0x302n)).toBe(false);
    expect(checkMmioSpte(s, 0x300n | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS)).toBe(false);
  });

  it('generation, gfn and MMIO-ness round-trip (property), with and without L1TF', () => {
    const l1tf = resetAllPteMasks({ physBits: 46, l1tfCacheBits: 44 });
    const flavours = [EPT_AD, EPT_NOAD, NPT, l1tf];
    fc.assert(
      fc.property(
        fc.constantFrom(...flavours),
        fc.bigInt({ min: 0n, max: (1n << 32n) - 1n }),
        fc.bigInt({ min: 0n, max: 0x7ffffn }),
        fc.integer({ min: 0, max: 7 }),
        (f, gfn, gen, access) => {
          const s = makeMmioSpte(f, gfn, access, gen);
          expect(getMmioSpteGeneration(s)).toBe(gen);
          expect(getMmioSpteGfn(f, s)).toBe(gfn);
          expect(isMmioSpte(f, s)).toBe(true);
          expect(isShadowPresentPte(s)).toBe(false);
          expect(checkMmioSpte(s, gen)).toBe(true);
        },
      ),
    );
  });

  it('L1TF relocates the top GPA bits up by 5 and forces the mask bits to 1', () => {
    const f = resetAllPteMasks({ physBits: 46, l1tfCacheBits: 44 });
    const gfn = 1n << 28n; // gpa bit 40
    const s = makeMmioSpte(f, gfn, 0, 0n);
    expect(hex(s)).toBe('0x00082f8000000001'); // bit 51|P, mask bits 43:39 (gpa bit 40 among them), relocated bit 45
    expect(getMmioSpteGfn(f, s)).toBe(gfn);
  });
});

describe('access tracking (mark_spte_for_access_track / restore_acc_track_spte)', () => {
  it('A/D-enabled: marking only clears A', () => {
    expect(hex(markSpteForAccessTrack(EPT_AD, leaf(EPT_AD)))).toBe('0x8600000001234a77');
    expect(hex(markSpteForAccessTrack(NPT, leaf(NPT)))).toBe('0x0000000001234e47');
  });

  it('A/D-disabled: mark saves R/X, drops W and A, keeps D, writable bits, pfn and memtype', () => {
    const s = leaf(EPT_NOAD);
    const m = markSpteForAccessTrack(EPT_NOAD, s);
    expect(hex(m)).toBe('0x8750000001234a70');
    expect(markSpteForAccessTrack(EPT_NOAD, m)).toBe(m); // already tracked: unchanged
    expect(hex(restoreAccTrackSpte(EPT_NOAD, m))).toBe('0x8610000001234a75');
  });

  const validAdDisabledLeaf = fc
    .record({
      pfn: fc.bigInt({ min: 0n, max: (1n << 40n) - 1n }),
      level: fc.integer({ min: 1, max: 3 }),
      access: fc.integer({ min: 0, max: ACC_ALL }),
      hostWritable: fc.boolean(),
      execOnly: fc.boolean(),
    })
    .filter(({ access, execOnly }) => !(execOnly && access === 0)) // makeSpte refuses these, as the kernel warns
    .map(({ execOnly, ...a }) => {
      const f = makeFlavour('ept-noad', { hasExecOnly: execOnly });
      return { f, spte: makeSpte(f, a).spte };
    })
    // Valid = hardware can reach it through R or X; an SPTE with no RWX at all already reads as access-tracked.
    .filter(({ spte }) => (spte & 0x5n) !== 0n);

  it('property: restore(mark(x)) === x for valid A/D-disabled SPTEs without W and A', () => {
    fc.assert(
      fc.property(validAdDisabledLeaf, ({ f, spte }) => {
        const x = spte & ~(PT_WRITABLE_MASK | f.accessedMask); // e.g. write-protected for dirty logging, aged
        expect(restoreAccTrackSpte(f, markSpteForAccessTrack(f, x))).toBe(x);
      }),
    );
  });

  it('property: in general restore(mark(x)) === x minus W and A, and mark(x) is access-tracked', () => {
    fc.assert(
      fc.property(validAdDisabledLeaf, ({ f, spte }) => {
        const m = markSpteForAccessTrack(f, spte);
        expect(isAccessTrackSpte(f, m)).toBe(true);
        expect(isShadowPresentPte(m)).toBe(true);
        expect(restoreAccTrackSpte(f, m)).toBe(spte & ~(PT_WRITABLE_MASK | f.accessedMask));
      }),
    );
  });

  it('marking an SPTE that breaks the writable invariants is refused (the kernel warns)', () => {
    const bad = leaf(EPT_NOAD) & ~EPT_NOAD.mmuWritableMask; // W without MMU-writable
    expect(() => markSpteForAccessTrack(EPT_NOAD, bad)).toThrow(/not MMU-writable/);
  });
});

describe('spteNeedsAtomicWrite (spte_needs_atomic_update, formerly spte_has_volatile_bits)', () => {
  it('clause 1: W clear but MMU-writable -> atomic (fast page fault may set W)', () => {
    const wp = leaf(EPT_AD) & ~PT_WRITABLE_MASK; // write-protected for dirty logging
    expect(spteNeedsAtomicWrite(EPT_AD, wp)).toBe(true);
    expect(spteNeedsAtomicWrite(EPT_AD, wp & ~EPT_AD.mmuWritableMask)).toBe(false);
    expect(spteNeedsAtomicWrite(NPT, leaf(NPT) & ~PT_WRITABLE_MASK)).toBe(true);
  });

  it('clause 2: A/D disabled -> atomic (lockless aging / fast page fault rewrite RWX and A)', () => {
    const s = leaf(EPT_NOAD); // W=1 and D=1, so clauses 1 and 3 say no
    expect(spteNeedsAtomicWrite(EPT_NOAD, s)).toBe(true);
    expect(spteNeedsAtomicWrite(EPT_AD, s & ~SPTE_TDP_AD_MASK)).toBe(false);
    expect(spteNeedsAtomicWrite(EPT_NOAD, leaf(EPT_NOAD, { hostWritable: false }))).toBe(true);
  });

  it('clause 3: writable with D clear -> atomic (the CPU may set D)', () => {
    const s = leaf(EPT_AD);
    expect(spteNeedsAtomicWrite(EPT_AD, s & ~EPT_AD.dirtyMask)).toBe(true);
    expect(spteNeedsAtomicWrite(EPT_AD, s)).toBe(false);
    expect(spteNeedsAtomicWrite(NPT, leaf(NPT) & ~NPT.dirtyMask)).toBe(true);
    expect(spteNeedsAtomicWrite(NPT, leaf(NPT))).toBe(false);
  });

  it('the Accessed bit alone never forces atomicity (6.15 dropped that clause)', () => {
    const s = leaf(EPT_AD) & ~EPT_AD.accessedMask;
    expect(spteNeedsAtomicWrite(EPT_AD, s)).toBe(false);
    expect(spteNeedsAtomicWrite(EPT_AD, leaf(EPT_AD, { hostWritable: false }) & ~EPT_AD.accessedMask)).toBe(false);
  });

  it('WRPROT_ONLY counts as A/D-enabled', () => {
    expect(spteNeedsAtomicWrite(EPT_AD, leaf(EPT_AD, { adWrprotOnly: true }))).toBe(false);
  });
});

describe('predicates', () => {
  const e = leaf(EPT_AD);
  const n = leaf(NPT);

  it('isShadowPresentPte: bit 11 only', () => {
    expect(isShadowPresentPte(e)).toBe(true);
    expect(isShadowPresentPte(0x800n)).toBe(true);
    expect(isShadowPresentPte(SHADOW_NONPRESENT_VALUE)).toBe(false);
    expect(isShadowPresentPte(0x7n)).toBe(false);
  });

  it('isFrozenSpte: exact compare', () => {
    expect(isFrozenSpte(FROZEN_SPTE)).toBe(true);
    expect(isFrozenSpte(FROZEN_SPTE | 1n)).toBe(false);
    expect(isFrozenSpte(0x5a0n)).toBe(false);
  });

  it('isLargePte / isLastSpte', () => {
    const big = leaf(EPT_AD, { level: 2, pfn: 0x200n });
    expect(isLargePte(big)).toBe(true);
    expect(isLargePte(e)).toBe(false);
    expect(isLastSpte(e, 1)).toBe(true);
    expect(isLastSpte(big, 2)).toBe(true);
    expect(isLastSpte(e, 2)).toBe(false);
  });

  it('spteAdEnabled / spteAdNeedWriteProtect by A/D type', () => {
    const base = 0x800n;
    expect([spteAdEnabled(base), spteAdNeedWriteProtect(base)]).toEqual([true, false]);
    expect([spteAdEnabled(base | SPTE_TDP_AD_DISABLED), spteAdNeedWriteProtect(base | SPTE_TDP_AD_DISABLED)]).toEqual([false, true]);
    expect([spteAdEnabled(base | SPTE_TDP_AD_WRPROT_ONLY), spteAdNeedWriteProtect(base | SPTE_TDP_AD_WRPROT_ONLY)]).toEqual([true, true]);
  });

  it('isAccessTrackSpte: A/D-disabled with RWX clear; never on NPT', () => {
    expect(isAccessTrackSpte(EPT_NOAD, leaf(EPT_NOAD))).toBe(false);
    expect(isAccessTrackSpte(EPT_NOAD, leaf(EPT_NOAD) & ~0x7n)).toBe(true);
    expect(isAccessTrackSpte(EPT_AD, e & ~0x7n)).toBe(false);
    expect(isAccessTrackSpte(NPT, 0x800n)).toBe(false);
  });

  it('isAccessedSpte / isDirtySpte read bits 8/9 (EPT, both A/D types) and 5/6 (NPT)', () => {
    expect([isAccessedSpte(EPT_NOAD, leaf(EPT_NOAD)), isDirtySpte(EPT_NOAD, leaf(EPT_NOAD))]).toEqual([true, true]);
    expect(isAccessedSpte(EPT_AD, e & ~0x100n)).toBe(false);
    expect(isDirtySpte(EPT_AD, e & ~0x200n)).toBe(false);
    expect([isAccessedSpte(NPT, n & ~0x20n), isDirtySpte(NPT, n & ~0x40n)]).toEqual([false, false]);
    expect(isAccessedSpte(NPT, n)).toBe(true);
  });

  it('isWritablePte (alias isWritableSpte), isMmuWritableSpte, isHostWritableSpte', () => {
    expect(isWritablePte(e)).toBe(true);
    expect(isWritableSpte(e & ~2n)).toBe(false);
    expect(isMmuWritableSpte(EPT_AD, e)).toBe(true);
    expect(isMmuWritableSpte(NPT, n & ~0x400n)).toBe(false);
    expect(isHostWritableSpte(EPT_AD, e)).toBe(true);
    expect(isHostWritableSpte(NPT, leaf(NPT, { hostWritable: false }))).toBe(false);
  });

  it('isExecutablePte: EPT X set, NPT NX clear', () => {
    expect(isExecutablePte(EPT_AD, e)).toBe(true);
    expect(isExecutablePte(EPT_AD, e & ~4n)).toBe(false);
    expect(isExecutablePte(NPT, n)).toBe(true);
    expect(isExecutablePte(NPT, n | (1n << 63n))).toBe(false);
  });

  it('isAccessAllowed by fault kind', () => {
    const ro = leaf(EPT_AD, { hostWritable: false });
    expect(isAccessAllowed(EPT_AD, { write: true }, ro)).toBe(false);
    expect(isAccessAllowed(EPT_AD, {}, ro)).toBe(true);
    expect(isAccessAllowed(EPT_AD, { exec: true }, ro)).toBe(true);
    const xo = leaf(EPT_AD, { access: ACC_EXEC_MASK }); // exec-only entry
    expect(isAccessAllowed(EPT_AD, {}, xo)).toBe(false);
    expect(isAccessAllowed(NPT, { exec: true }, n | (1n << 63n))).toBe(false);
  });

  it('leafSpteChangeNeedsTlbFlush: only on losing MMU-writable', () => {
    expect(leafSpteChangeNeedsTlbFlush(EPT_AD, e, e & ~EPT_AD.mmuWritableMask & ~2n)).toBe(true);
    expect(leafSpteChangeNeedsTlbFlush(EPT_AD, e, e & ~2n)).toBe(false); // dirty-log write-protect
    expect(leafSpteChangeNeedsTlbFlush(EPT_AD, e, e & ~0x300n)).toBe(false); // clear A and D
    expect(leafSpteChangeNeedsTlbFlush(NPT, n, n & ~0x400n & ~2n)).toBe(true);
  });

  it('checkSpteWritableInvariants: the four valid combinations pass, the others fail', () => {
    const f = EPT_AD;
    const h = f.hostWritableMask;
    const m = f.mmuWritableMask;
    const base = e & ~(h | m | 2n);
    expect(checkSpteWritableInvariants(f, base | h | m | 2n)).toBeNull();
    expect(checkSpteWritableInvariants(f, base | h | m)).toBeNull();
    expect(checkSpteWritableInvariants(f, base | h)).toBeNull();
    expect(checkSpteWritableInvariants(f, base)).toBeNull();
    expect(checkSpteWritableInvariants(f, base | m)).toMatch(/not host-writable/);
    expect(checkSpteWritableInvariants(f, base | h | 2n)).toMatch(/not MMU-writable/);
  });

  it('isEptVePossible: EPT only, without suppress-#VE and not an MMIO misconfig', () => {
    expect(isEptVePossible(EPT_AD, e)).toBe(false);
    expect(isEptVePossible(EPT_AD, e & ~(1n << 63n))).toBe(true);
    expect(isEptVePossible(EPT_AD, 0x6n)).toBe(false);
    expect(isEptVePossible(NPT, n)).toBe(false);
  });

  it('spteToPfn and spteIndex', () => {
    expect(spteToPfn(e)).toBe(0x1234n);
    expect(spteToPfn(makeNonleafSpte(EPT_NOAD, 0xf_ffff_f000n))).toBe(0xff_ffffn);
    expect(spteIndex(0x4020_1000n, 1)).toBe(1);
    expect(spteIndex(0x4020_1000n, 2)).toBe(1);
    expect(spteIndex(0x4020_1000n, 3)).toBe(1);
  });
});
