/**
 * KVM x86 shadow/TDP page-table entries (SPTEs): encoding, construction and
 * predicates, modelled on arch/x86/kvm/mmu/spte.{h,c} of Linux 6.17 (see
 * ../shared/spec/kvm-mmu.md sections 1 and 2).
 *
 * An SPTE is a 64-bit value, represented here as a non-negative `bigint`
 * below 2^64. This module is the readable reference API; hot paths that keep
 * entries as two 32-bit halves can be layered on top later.
 *
 * The kernel keeps the per-flavour masks in `shadow_*` globals set once at
 * module load. Here each flavour (EPT with A/D bits, EPT without A/D bits,
 * NPT) is an immutable {@link SpteFlavour} object, and every function that
 * reads a global takes the flavour as its first argument.
 */

// ---------------------------------------------------------------------------
// Bit helpers and fixed constants

const U64 = (1n << 64n) - 1n;

function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** Bits hi..lo inclusive, like the kernel's GENMASK_ULL(hi, lo). */
function genmask(hi: number, lo: number): bigint {
  return ((1n << BigInt(hi + 1)) - 1n) & ~((1n << BigInt(lo)) - 1n);
}

export const PAGE_SHIFT = 12n;

/** Software "MMU-present" bit; hardware ignores bit 11 in every flavour. */
export const SPTE_MMU_PRESENT_MASK = bit(11);

/** Two-bit A/D-type field in bits 53:52 (TDP SPTEs only; 0 = enabled). */
export const SPTE_TDP_AD_SHIFT = 52n;
export const SPTE_TDP_AD_MASK = 3n << SPTE_TDP_AD_SHIFT;
export const SPTE_TDP_AD_ENABLED = 0n << SPTE_TDP_AD_SHIFT;
export const SPTE_TDP_AD_DISABLED = 1n << SPTE_TDP_AD_SHIFT;
export const SPTE_TDP_AD_WRPROT_ONLY = 2n << SPTE_TDP_AD_SHIFT;

/** Physical-address field, bits 51:12 (no dynamic physical mask modelled). */
export const SPTE_BASE_ADDR_MASK = genmask(51, 12);

/** x86 PTE bits shared with KVM's SPTE handling (arch/x86/kvm/mmu.h). */
export const PT_PRESENT_MASK = bit(0);
export const PT_WRITABLE_MASK = bit(1);
export const PT_USER_MASK = bit(2);
export const PT_ACCESSED_MASK = bit(5);
export const PT_DIRTY_MASK = bit(6);
export const PT_PAGE_SIZE_MASK = bit(7);
export const PT64_NX_MASK = bit(63);

/** EPT entry bits (asm/vmx.h). */
export const VMX_EPT_READABLE_MASK = 0x1n;
export const VMX_EPT_WRITABLE_MASK = 0x2n;
export const VMX_EPT_EXECUTABLE_MASK = 0x4n;
export const VMX_EPT_RWX_MASK = 0x7n;
export const VMX_EPT_MT_EPTE_SHIFT = 3n;
export const VMX_EPT_IPAT_BIT = bit(6);
export const VMX_EPT_ACCESS_BIT = bit(8);
export const VMX_EPT_DIRTY_BIT = bit(9);
export const VMX_EPT_SUPPRESS_VE_BIT = bit(63);
/** W|X without R: the EPT misconfiguration pattern KVM uses for MMIO. */
export const VMX_EPT_MISCONFIG_WX_VALUE = 0x6n;
export const MTRR_TYPE_UNCACHABLE = 0n;
export const MTRR_TYPE_WRBACK = 6n;
/** Memory-type bits for an ordinary RAM leaf on EPT: WB with IPAT (0x70). */
export const EPT_MEMTYPE_RAM = (MTRR_TYPE_WRBACK << VMX_EPT_MT_EPTE_SHIFT) | VMX_EPT_IPAT_BIT;

/** KVM's own access encoding (ACC_*), not a hardware layout. */
export const ACC_EXEC_MASK = 1;
export const ACC_WRITE_MASK = 2;
export const ACC_USER_MASK = 4;
export const ACC_ALL = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK;

/** Bits saved when an A/D-disabled SPTE is access-tracked: EPT R and X (W is not saved). */
export const SHADOW_ACC_TRACK_SAVED_BITS_MASK = VMX_EPT_READABLE_MASK | VMX_EPT_EXECUTABLE_MASK;
export const SHADOW_ACC_TRACK_SAVED_BITS_SHIFT = 54n;
const SHADOW_ACC_TRACK_SAVED_MASK = SHADOW_ACC_TRACK_SAVED_BITS_MASK << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT;

/** Host-/MMU-writable software bits for legacy shadow paging and NPT (ignored bits 9, 10). */
export const DEFAULT_SPTE_HOST_WRITABLE = bit(9);
export const DEFAULT_SPTE_MMU_WRITABLE = bit(10);
/** Host-/MMU-writable software bits for EPT, where low ignored bits are scarce. */
export const EPT_SPTE_HOST_WRITABLE = bit(57);
export const EPT_SPTE_MMU_WRITABLE = bit(58);

/** MMIO generation layout: gen bits 0..7 -> SPTE bits 3..10, gen bits 8..18 -> SPTE bits 52..62. */
export const MMIO_SPTE_GEN_LOW_MASK = genmask(10, 3);
export const MMIO_SPTE_GEN_HIGH_MASK = genmask(62, 52);
export const MMIO_SPTE_GEN_LOW_SHIFT = 3n;
export const MMIO_SPTE_GEN_HIGH_SHIFT = 52n - 8n;
export const MMIO_SPTE_GEN_MASK = genmask(18, 0);
/** Bits an MMIO mask may use: bit 63, the address bits 51:12 and bits 2:0. */
export const SPTE_MMIO_ALLOWED_MASK = bit(63) | genmask(51, 12) | genmask(2, 0);
/** Memslots-generation flag meaning "an update is in progress" (never stored in an SPTE). */
export const KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS = bit(63);
/** How far L1TF relocation moves the top GPA bits of a non-present SPTE. */
export const SHADOW_NONPRESENT_OR_RSVD_MASK_LEN = 5n;

/**
 * Value of a zapped or never-populated SPTE on a 64-bit host: bit 63, which
 * is EPT "suppress #VE" and is ignored by NPT when P=0 (SHADOW_NONPRESENT_VALUE).
 */
export const SHADOW_NONPRESENT_VALUE = bit(63);

/**
 * Temporary value a lockless writer installs to own an SPTE during a
 * multi-step update (FROZEN_SPTE, formerly REMOVED_SPTE): non-present, no
 * RWX bits, no PFN bits; bits 5, 7, 8 and 10 set.
 */
export const FROZEN_SPTE = SHADOW_NONPRESENT_VALUE | 0x5a0n;

export const SPTE_LEVEL_BITS = 9;
export const SPTE_ENT_PER_PAGE = 512;
export const PG_LEVEL_4K = 1;
export const PG_LEVEL_2M = 2;
export const PG_LEVEL_1G = 3;
export const PT64_ROOT_MAX_LEVEL = 5;

/** Index of the SPTE covering `gpa` inside a table at `level` (SPTE_INDEX). */
export function spteIndex(gpa: bigint, level: number): number {
  const shift = 12n + BigInt(SPTE_LEVEL_BITS * (level - 1));
  return Number((gpa >> shift) & BigInt(SPTE_ENT_PER_PAGE - 1));
}

// ---------------------------------------------------------------------------
// Flavours: the shadow_* globals

/** Host CPU facts that shape the masks (boot_cpu_data / kvm_host in the kernel). */
export interface HostCpu {
  /** x86_phys_bits (default 46, as the hw layer's default MAXPHYADDR). */
  physBits?: number;
  /** Raw CPUID MAXPHYADDR (kvm_host.maxphyaddr); defaults to physBits. */
  maxPhyAddr?: number;
  /** Set when the CPU is L1TF-affected: the L1 cache's physical-address width (x86_cache_bits). */
  l1tfCacheBits?: number;
  /** The kvm.mmio_caching module parameter (default true). */
  allowMmioCaching?: boolean;
  /**
   * The kernel whose behaviour to model, as major*100+minor (default 617).
   * Below 613, EPT without A/D bits has no software A/D bits; below 615,
   * an A/D-enabled SPTE with A clear also needs an atomic update.
   */
  kernel?: number;
  /**
   * Memory-encryption bits set by the vendor module through
   * kvm_mmu_set_me_spte_mask (e.g. the SME C-bit); value must be a subset of
   * mask, else both become 0. Default none.
   */
  me?: { value: bigint; mask: bigint };
}

/** One flavour's shadow_* masks; the field comments name the kernel global. */
export interface SpteFlavour {
  readonly name: 'ept-ad' | 'ept-noad' | 'npt';
  /** Kernel baseline, major*100+minor (617 = Linux 6.17). */
  readonly kernel: number;
  readonly tdp: 'ept' | 'npt';
  /** kvm_ad_enabled: hardware A/D bits in use (always true for NPT). */
  readonly adEnabled: boolean;
  /** EPT only: whether the CPU supports execute-only EPT entries. */
  readonly hasExecOnly: boolean;
  readonly userMask: bigint; // shadow_user_mask
  readonly accessedMask: bigint; // shadow_accessed_mask
  readonly dirtyMask: bigint; // shadow_dirty_mask
  readonly nxMask: bigint; // shadow_nx_mask
  readonly xMask: bigint; // shadow_x_mask
  readonly presentMask: bigint; // shadow_present_mask
  readonly accTrackMask: bigint; // shadow_acc_track_mask
  readonly hostWritableMask: bigint; // shadow_host_writable_mask
  readonly mmuWritableMask: bigint; // shadow_mmu_writable_mask
  readonly meMask: bigint; // shadow_me_mask
  readonly meValue: bigint; // shadow_me_value
  readonly mmioValue: bigint; // shadow_mmio_value (VM-wide copy; per-VM overrides are passed explicitly)
  readonly mmioMask: bigint; // shadow_mmio_mask
  readonly mmioAccessMask: bigint; // shadow_mmio_access_mask
  readonly mmioCachingEnabled: boolean; // enable_mmio_caching
  readonly nonpresentOrRsvdMask: bigint; // shadow_nonpresent_or_rsvd_mask (L1TF)
  readonly nonpresentOrRsvdLowerGfnMask: bigint; // shadow_nonpresent_or_rsvd_lower_gfn_mask
}

type MutableFlavour = { -readonly [K in keyof SpteFlavour]: SpteFlavour[K] };

/**
 * Install an MMIO value/mask pair, disabling MMIO caching when the pair is
 * unusable; mirrors kvm_mmu_set_mmio_spte_mask.
 */
function setMmioSpteMask(f: MutableFlavour, allow: boolean, value: bigint, mask: bigint, accessMask: bigint): void {
  let v = allow ? value : 0n;
  // The mask may only use bits reserved for that purpose (not generation bits or bit 11).
  if ((mask & ~SPTE_MMIO_ALLOWED_MASK) !== 0n) v = 0n;
  // The value must not collide with the bits that hold an L1TF-relocated GFN.
  if ((v & (f.nonpresentOrRsvdMask << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN)) !== 0n) v = 0n;
  // The value must match itself under the mask, and a frozen SPTE must never look like MMIO.
  if ((v & mask) !== v || (v !== 0n && (FROZEN_SPTE & mask) === v)) v = 0n;
  f.mmioCachingEnabled = v !== 0n;
  f.mmioValue = v;
  f.mmioMask = mask;
  f.mmioAccessMask = accessMask;
}

/**
 * The default masks, used by legacy shadow paging and NPT; mirrors
 * kvm_mmu_reset_all_pte_masks (including its L1TF and MMIO set-up).
 */
export function resetAllPteMasks(host: HostCpu = {}): SpteFlavour {
  const physBits = host.physBits ?? 46;
  const maxPhyAddr = host.maxPhyAddr ?? physBits;
  let nonpresentOrRsvdMask = 0n;
  let lowPhysBits = physBits;
  // L1TF mitigation only when the cache width leaves room for 5 relocation bits below bit 52.
  if (host.l1tfCacheBits !== undefined && host.l1tfCacheBits < 52 - 5) {
    lowPhysBits = host.l1tfCacheBits - 5;
    nonpresentOrRsvdMask = genmask(host.l1tfCacheBits - 1, lowPhysBits);
  }
  const f: MutableFlavour = {
    name: 'npt',
    kernel: host.kernel ?? 617,
    tdp: 'npt',
    adEnabled: true,
    hasExecOnly: false,
    userMask: PT_USER_MASK,
    accessedMask: PT_ACCESSED_MASK,
    dirtyMask: PT_DIRTY_MASK,
    nxMask: PT64_NX_MASK,
    xMask: 0n,
    presentMask: PT_PRESENT_MASK,
    accTrackMask: 0n,
    hostWritableMask: DEFAULT_SPTE_HOST_WRITABLE,
    mmuWritableMask: DEFAULT_SPTE_MMU_WRITABLE,
    meMask: 0n,
    meValue: 0n,
    mmioValue: 0n,
    mmioMask: 0n,
    mmioAccessMask: 0n,
    mmioCachingEnabled: false,
    nonpresentOrRsvdMask,
    nonpresentOrRsvdLowerGfnMask: genmask(lowPhysBits - 1, 12),
  };
  // A reserved PA bit (51) plus P makes MMIO accesses fault with PFEC.RSVD; impossible at 52 PA bits.
  const mmio = maxPhyAddr < 52 ? bit(51) | PT_PRESENT_MASK : 0n;
  setMmioSpteMask(f, host.allowMmioCaching ?? true, mmio, mmio, BigInt(ACC_WRITE_MASK | ACC_USER_MASK));
  if (host.me && (host.me.value & ~host.me.mask) === 0n) {
    f.meValue = host.me.value;
    f.meMask = host.me.mask;
  }
  return Object.freeze(f);
}

/**
 * EPT overrides applied on top of the defaults; mirrors kvm_mmu_set_ept_masks
 * (6.13+: accessed/dirty masks are bits 8/9 even without hardware A/D bits;
 * before, they were 0 then).
 */
export function setEptMasks(hasAdBits: boolean, hasExecOnly: boolean, host: HostCpu = {}): SpteFlavour {
  const f: MutableFlavour = { ...resetAllPteMasks(host) };
  f.name = hasAdBits ? 'ept-ad' : 'ept-noad';
  f.tdp = 'ept';
  f.adEnabled = hasAdBits;
  f.hasExecOnly = hasExecOnly;
  f.userMask = VMX_EPT_READABLE_MASK;
  const softAd = hasAdBits || f.kernel >= 613;
  f.accessedMask = softAd ? VMX_EPT_ACCESS_BIT : 0n;
  f.dirtyMask = softAd ? VMX_EPT_DIRTY_BIT : 0n;
  f.nxMask = 0n;
  f.xMask = VMX_EPT_EXECUTABLE_MASK;
  // Suppress-#VE is part of "present" so W/X violations exit instead of raising #VE.
  f.presentMask = (hasExecOnly ? 0n : VMX_EPT_READABLE_MASK) | VMX_EPT_SUPPRESS_VE_BIT;
  f.accTrackMask = VMX_EPT_RWX_MASK;
  f.hostWritableMask = EPT_SPTE_HOST_WRITABLE;
  f.mmuWritableMask = EPT_SPTE_MMU_WRITABLE;
  setMmioSpteMask(f, host.allowMmioCaching ?? true, VMX_EPT_MISCONFIG_WX_VALUE, VMX_EPT_RWX_MASK | VMX_EPT_SUPPRESS_VE_BIT, 0n);
  return Object.freeze(f);
}

/**
 * Convenience constructor for the three flavours. EPT defaults to an
 * exec-only-capable CPU (every modern Intel part), which leaves R out of
 * shadow_present_mask; KVM then grants R through shadow_user_mask.
 */
export function makeFlavour(name: SpteFlavour['name'], host: HostCpu & { hasExecOnly?: boolean } = {}): SpteFlavour {
  if (host.kernel !== undefined && !(Number.isInteger(host.kernel) && host.kernel >= 600 && host.kernel <= 617)) {
    throw new RangeError(`kernel ${host.kernel}: expected major*100+minor between 600 and 617`);
  }
  if (name === 'npt') return resetAllPteMasks(host);
  return setEptMasks(name === 'ept-ad', host.hasExecOnly ?? true, host);
}

export const EPT_AD: SpteFlavour = makeFlavour('ept-ad');
export const EPT_NOAD: SpteFlavour = makeFlavour('ept-noad');
export const NPT: SpteFlavour = makeFlavour('npt');

// ---------------------------------------------------------------------------
// Predicates (flavour-independent)

/** MMU-present (bit 11), not the hardware R/P bit; mirrors is_shadow_present_pte. */
export function isShadowPresentPte(spte: bigint): boolean {
  return (spte & SPTE_MMU_PRESENT_MASK) !== 0n;
}

/** Exact compare with FROZEN_SPTE; mirrors is_frozen_spte. */
export function isFrozenSpte(spte: bigint): boolean {
  return spte === FROZEN_SPTE;
}

/** Page-size bit 7; mirrors is_large_pte. */
export function isLargePte(spte: bigint): boolean {
  return (spte & PT_PAGE_SIZE_MASK) !== 0n;
}

/** Leaf at `level` (4K, or bit 7); the caller checks presence first. Mirrors is_last_spte. */
export function isLastSpte(spte: bigint, level: number): boolean {
  return level === PG_LEVEL_4K || isLargePte(spte);
}

/** A/D type is not DISABLED (WRPROT_ONLY counts as enabled); mirrors spte_ad_enabled. Present SPTEs only. */
export function spteAdEnabled(spte: bigint): boolean {
  return (spte & SPTE_TDP_AD_MASK) !== SPTE_TDP_AD_DISABLED;
}

/** A/D type is DISABLED or WRPROT_ONLY; mirrors spte_ad_need_write_protect. Present SPTEs only. */
export function spteAdNeedWriteProtect(spte: bigint): boolean {
  return (spte & SPTE_TDP_AD_MASK) !== SPTE_TDP_AD_ENABLED;
}

/** Hardware-effective writability, bit 1 (P/W on NPT, W on EPT); mirrors is_writable_pte. */
export function isWritablePte(spte: bigint): boolean {
  return (spte & PT_WRITABLE_MASK) !== 0n;
}

/** Alias of {@link isWritablePte} under the name used by the issue card. */
export const isWritableSpte = isWritablePte;

/** Page-frame number from bits 51:12; mirrors spte_to_pfn. */
export function spteToPfn(spte: bigint): bigint {
  return (spte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT;
}

/** The 19-bit MMIO generation stored in an MMIO SPTE; mirrors get_mmio_spte_generation. */
export function getMmioSpteGeneration(spte: bigint): bigint {
  return ((spte & MMIO_SPTE_GEN_LOW_MASK) >> MMIO_SPTE_GEN_LOW_SHIFT) | ((spte & MMIO_SPTE_GEN_HIGH_MASK) >> MMIO_SPTE_GEN_HIGH_SHIFT);
}

// ---------------------------------------------------------------------------
// Predicates that read the flavour's masks

/** A/D-disabled and no RWX bit left; mirrors is_access_track_spte. Never true on NPT. */
export function isAccessTrackSpte(f: SpteFlavour, spte: bigint): boolean {
  return !spteAdEnabled(spte) && (spte & f.accTrackMask) === 0n;
}

/**
 * Accessed bit (bit 8 EPT, bit 5 NPT) for both A/D types (6.13+); mirrors
 * is_accessed_spte. Before 6.13 an A/D-disabled SPTE was accessed when not
 * access-tracked.
 */
export function isAccessedSpte(f: SpteFlavour, spte: bigint): boolean {
  if (f.kernel < 613 && !spteAdEnabled(spte)) return !isAccessTrackSpte(f, spte);
  return (spte & f.accessedMask) !== 0n;
}

/**
 * Dirty bit (bit 9 EPT, bit 6 NPT). The kernel removed is_dirty_spte in 6.13;
 * 6.17 tests `spte & shadow_dirty_mask` inline (e.g. when clearing dirty
 * bits), which is what this does, for both A/D types.
 */
export function isDirtySpte(f: SpteFlavour, spte: bigint): boolean {
  if (f.kernel < 613 && !spteAdEnabled(spte)) return (spte & PT_WRITABLE_MASK) !== 0n; // is_dirty_spte before 6.13
  return (spte & f.dirtyMask) !== 0n;
}

/** MMU-writable software bit (10 NPT, 58 EPT); mirrors is_mmu_writable_spte. */
export function isMmuWritableSpte(f: SpteFlavour, spte: bigint): boolean {
  return (spte & f.mmuWritableMask) !== 0n;
}

/** Host-writable software bit (9 NPT, 57 EPT). The kernel tests this mask inline; no named helper. */
export function isHostWritableSpte(f: SpteFlavour, spte: bigint): boolean {
  return (spte & f.hostWritableMask) !== 0n;
}

/** EPT: X set; NPT: NX clear. Mirrors is_executable_pte. */
export function isExecutablePte(f: SpteFlavour, spte: bigint): boolean {
  return (spte & (f.xMask | f.nxMask)) === f.xMask;
}

/** The access kind of a fault, as in struct kvm_page_fault. */
export interface FaultAccess {
  exec?: boolean;
  write?: boolean;
}

/** Whether the SPTE already permits the faulting access; mirrors is_access_allowed. Present leaves only. */
export function isAccessAllowed(f: SpteFlavour, fault: FaultAccess, spte: bigint): boolean {
  if (fault.exec) return isExecutablePte(f, spte);
  if (fault.write) return isWritablePte(spte);
  return (spte & PT_PRESENT_MASK) !== 0n;
}

/** Only losing MMU-writable forces a flush (A, D, W-for-dirty-log do not); mirrors leaf_spte_change_needs_tlb_flush. */
export function leafSpteChangeNeedsTlbFlush(f: SpteFlavour, oldSpte: bigint, newSpte: bigint): boolean {
  return isMmuWritableSpte(f, oldSpte) && !isMmuWritableSpte(f, newSpte);
}

/**
 * Checks the writable invariants of a present leaf (MMU-writable implies
 * host-writable; W implies MMU-writable). Returns null when they hold, else a
 * description; mirrors check_spte_writable_invariants (which only warns).
 */
export function checkSpteWritableInvariants(f: SpteFlavour, spte: bigint): string | null {
  if (isMmuWritableSpte(f, spte)) {
    return isHostWritableSpte(f, spte) ? null : 'MMU-writable SPTE is not host-writable';
  }
  return isWritablePte(spte) ? 'writable SPTE is not MMU-writable' : null;
}

/**
 * EPT with #VE: a non-suppressed, non-misconfigured entry could raise #VE
 * instead of exiting; mirrors is_ept_ve_possible.
 */
export function isEptVePossible(f: SpteFlavour, spte: bigint): boolean {
  return (
    (f.presentMask & VMX_EPT_SUPPRESS_VE_BIT) !== 0n &&
    (spte & VMX_EPT_SUPPRESS_VE_BIT) === 0n &&
    (spte & VMX_EPT_RWX_MASK) !== VMX_EPT_MISCONFIG_WX_VALUE
  );
}

/**
 * Whether an update of this shadow-present leaf SPTE must be an atomic
 * exchange because other agents may change bits KVM must not lose.
 *
 * Mirrors the kernel's spte_needs_atomic_update (6.15+). It was
 * spte_has_volatile_bits up to 6.14; the patch series proposed renaming it to
 * spte_needs_atomic_write, and it was applied as spte_needs_atomic_update.
 * The name here follows the issue card. The caller checks presence and
 * leafness (kvm_tdp_mmu_spte_need_atomic_update does both).
 */
export function spteNeedsAtomicWrite(f: SpteFlavour, spte: bigint): boolean {
  // Fast page fault may set W with a lockless cmpxchg while W=0 and MMU-writable=1.
  if (!isWritablePte(spte) && isMmuWritableSpte(f, spte)) return true;
  // Lockless aging may access-track, and fast page fault may restore, any A/D-disabled SPTE.
  if (!spteAdEnabled(spte)) return true;
  // Before 6.15 (spte_has_volatile_bits) a clear A also counted: aging ran under mmu_lock and must not lose it.
  if (f.kernel < 615 && (spte & f.accessedMask) === 0n) return true;
  // The CPU may set D on a writable SPTE whose D is clear (A is ignored: losing age info is tolerated).
  return isWritablePte(spte) && (spte & f.dirtyMask) === 0n;
}

// ---------------------------------------------------------------------------
// Construction

/** Inputs of {@link makeSpte}: the parts of make_spte's arguments this model keeps. */
export interface MakeSpteArgs {
  /** sp->role.level: 1 = 4K, 2 = 2M, 3 = 1G. */
  level: number;
  pfn: bigint;
  /** pte_access, ACC_* bits (the TDP MMU always passes ACC_ALL). */
  access: number;
  /** fault->map_writable: the host mapping allows writes. */
  hostWritable: boolean;
  prefetch?: boolean;
  synchronizing?: boolean;
  /** The SPTE being replaced (default SHADOW_NONPRESENT_VALUE). */
  oldSpte?: bigint;
  /** sp->role.ad_disabled; the TDP MMU uses !kvm_ad_enabled (the default). */
  adDisabled?: boolean;
  /** kvm_mmu_page_ad_need_write_protect: PML active and the page is for L2 (default false). */
  adWrprotOnly?: boolean;
  /** is_nx_huge_page_enabled for the VM (default false). */
  nxHugePages?: boolean;
  /** kvm_is_mmio_pfn: the pfn is host MMIO (default false). */
  hostMmio?: boolean;
  /** EPT memory-type bits from the get_mt_mask hook; default UC for host MMIO, else WB|IPAT (0x70). */
  memtype?: bigint;
  /**
   * Result of mmu_try_to_unsync_pages: true when unsync-ing shadow pages for
   * the gfn is refused (gfn write-tracked, or shadow pages that cannot be
   * unsynced). Default false, as for a TDP-only VM.
   */
  unsyncRefused?: boolean;
}

export interface MakeSpteResult {
  spte: bigint;
  /** The requested write access was refused (write-protected result). */
  wrprot: boolean;
}

function checkPfn(pfn: bigint): void {
  if (pfn < 0n || pfn > SPTE_BASE_ADDR_MASK >> PAGE_SHIFT) throw new RangeError(`pfn 0x${pfn.toString(16)} outside bits 51:12`);
}

/**
 * Builds a leaf SPTE; mirrors make_spte. Marking the slot dirty and the
 * host-MMIO tracking side effects are left to the caller (a writable result
 * with dirty logging on means the gfn must be marked dirty).
 */
export function makeSpte(f: SpteFlavour, a: MakeSpteArgs): MakeSpteResult {
  const { level } = a;
  if (!Number.isInteger(level) || level < PG_LEVEL_4K || level > PG_LEVEL_1G) throw new RangeError(`leaf level ${level}`);
  checkPfn(a.pfn);
  const prefetch = a.prefetch ?? false;
  const synchronizing = a.synchronizing ?? false;
  const oldSpte = a.oldSpte ?? SHADOW_NONPRESENT_VALUE;
  const adDisabled = a.adDisabled ?? !f.adEnabled;
  const hostMmio = a.hostMmio ?? false;
  let access = a.access;
  let wrprot = false;

  // With exec-only EPT and no access bits the leaf would be indistinguishable from non-present.
  if ((BigInt(access) | f.presentMask) === SHADOW_NONPRESENT_VALUE) throw new Error('makeSpte: leaf with no access on exec-only EPT');

  let spte = SPTE_MMU_PRESENT_MASK;
  if (adDisabled) spte |= SPTE_TDP_AD_DISABLED;
  else if (a.adWrprotOnly) spte |= SPTE_TDP_AD_WRPROT_ONLY;
  spte |= f.presentMask;
  if (!prefetch || synchronizing) spte |= f.accessedMask;
  if (level > PG_LEVEL_4K && access & ACC_EXEC_MASK && a.nxHugePages) access &= ~ACC_EXEC_MASK;
  spte |= access & ACC_EXEC_MASK ? f.xMask : f.nxMask;
  if (access & ACC_USER_MASK) spte |= f.userMask;
  if (level > PG_LEVEL_4K) spte |= PT_PAGE_SIZE_MASK;
  if (f.tdp === 'ept') spte |= a.memtype ?? (hostMmio ? MTRR_TYPE_UNCACHABLE << VMX_EPT_MT_EPTE_SHIFT : EPT_MEMTYPE_RAM);
  if (a.hostWritable) spte |= f.hostWritableMask;
  else access &= ~ACC_WRITE_MASK;
  if (f.meValue !== 0n && !hostMmio) spte |= f.meValue;
  spte |= a.pfn << PAGE_SHIFT;
  if (access & ACC_WRITE_MASK) {
    if ((!isLastSpte(oldSpte, level) || !isWritablePte(oldSpte)) && a.unsyncRefused) wrprot = true;
    else spte |= PT_WRITABLE_MASK | f.mmuWritableMask | f.dirtyMask;
  }
  if (prefetch && !synchronizing) spte = markSpteForAccessTrack(f, spte);
  return { spte, wrprot };
}

/**
 * A non-leaf SPTE pointing at a child page table at physical address
 * `childPa`, granting all access; mirrors make_nonleaf_spte.
 */
export function makeNonleafSpte(f: SpteFlavour, childPa: bigint, adDisabled: boolean = !f.adEnabled): bigint {
  if ((childPa & ~SPTE_BASE_ADDR_MASK) !== 0n) throw new RangeError(`child table 0x${childPa.toString(16)} not a page address`);
  let spte = SPTE_MMU_PRESENT_MASK;
  spte |= childPa | f.presentMask | PT_WRITABLE_MASK | f.userMask | f.xMask | f.meValue;
  spte |= adDisabled ? SPTE_TDP_AD_DISABLED : f.accessedMask;
  return spte;
}

/**
 * Removes the accessed state of a leaf; mirrors mark_spte_for_access_track.
 * A/D-enabled: clear A only. A/D-disabled: save R and X in bits 54/56 and
 * clear RWX and A, making the SPTE inaccessible to hardware (W is not saved).
 */
export function markSpteForAccessTrack(f: SpteFlavour, spte: bigint): bigint {
  if (spteAdEnabled(spte)) return spte & ~f.accessedMask;
  if (isAccessTrackSpte(f, spte)) return spte;
  const problem = checkSpteWritableInvariants(f, spte);
  if (problem !== null) throw new Error(`markSpteForAccessTrack: ${problem}: 0x${spte.toString(16)}`);
  if ((spte & SHADOW_ACC_TRACK_SAVED_MASK) !== 0n) throw new Error(`markSpteForAccessTrack: saved-bit area not zero: 0x${spte.toString(16)}`);
  spte |= (spte & SHADOW_ACC_TRACK_SAVED_BITS_MASK) << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT;
  return spte & ~(f.accTrackMask | f.accessedMask);
}

/**
 * Puts the saved R/X bits of an access-tracked SPTE back and clears the
 * saved area; mirrors restore_acc_track_spte. A and W are not restored (fast
 * page fault adds them itself).
 */
export function restoreAccTrackSpte(f: SpteFlavour, spte: bigint): bigint {
  const saved = (spte >> SHADOW_ACC_TRACK_SAVED_BITS_SHIFT) & SHADOW_ACC_TRACK_SAVED_BITS_MASK;
  return (spte & ~f.accTrackMask & ~SHADOW_ACC_TRACK_SAVED_MASK) | saved;
}

// ---------------------------------------------------------------------------
// MMIO SPTEs

/** Spreads a generation over bits 3..10 and 52..62; mirrors generation_mmio_spte_mask. */
export function generationMmioSpteMask(gen: bigint): bigint {
  if ((gen & ~MMIO_SPTE_GEN_MASK) !== 0n) throw new RangeError(`MMIO generation 0x${gen.toString(16)} wider than 19 bits`);
  return ((gen << MMIO_SPTE_GEN_LOW_SHIFT) & MMIO_SPTE_GEN_LOW_MASK) | ((gen << MMIO_SPTE_GEN_HIGH_SHIFT) & MMIO_SPTE_GEN_HIGH_MASK);
}

/**
 * An MMIO SPTE for `gfn`, caching the low 19 bits of the memslots generation
 * `memslotsGen`; mirrors make_mmio_spte. `vmMmioValue` is the per-VM
 * kvm->arch.shadow_mmio_value (defaults to the flavour's).
 */
export function makeMmioSpte(f: SpteFlavour, gfn: bigint, access: number, memslotsGen: bigint, vmMmioValue: bigint = f.mmioValue): bigint {
  const gpa = gfn << PAGE_SHIFT;
  if ((gpa & ~SPTE_BASE_ADDR_MASK) !== 0n) throw new RangeError(`gfn 0x${gfn.toString(16)} outside bits 51:12`);
  let spte = generationMmioSpteMask(memslotsGen & MMIO_SPTE_GEN_MASK);
  spte |= vmMmioValue | (BigInt(access) & f.mmioAccessMask);
  spte |= gpa | f.nonpresentOrRsvdMask;
  spte |= (gpa & f.nonpresentOrRsvdMask) << SHADOW_NONPRESENT_OR_RSVD_MASK_LEN;
  return spte & U64;
}

/** MMIO caching on and the masked SPTE equals the VM's MMIO value; mirrors is_mmio_spte. */
export function isMmioSpte(f: SpteFlavour, spte: bigint, vmMmioValue: bigint = f.mmioValue): boolean {
  return (spte & f.mmioMask) === vmMmioValue && f.mmioCachingEnabled;
}

/** The gfn of an MMIO SPTE, undoing L1TF relocation; mirrors get_mmio_spte_gfn. */
export function getMmioSpteGfn(f: SpteFlavour, spte: bigint): bigint {
  let gpa = spte & f.nonpresentOrRsvdLowerGfnMask;
  gpa |= (spte >> SHADOW_NONPRESENT_OR_RSVD_MASK_LEN) & f.nonpresentOrRsvdMask;
  return gpa >> PAGE_SHIFT;
}

/** The ACC_* bits cached in an MMIO SPTE; mirrors get_mmio_spte_access. */
export function getMmioSpteAccess(f: SpteFlavour, spte: bigint): number {
  return Number(spte & f.mmioAccessMask);
}

/**
 * Whether an MMIO SPTE is still valid for the current memslots generation:
 * never while an update is in progress, else the 19-bit generations must
 * match; mirrors check_mmio_spte.
 */
export function checkMmioSpte(spte: bigint, memslotsGen: bigint): boolean {
  if ((memslotsGen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS) !== 0n) return false;
  return (memslotsGen & MMIO_SPTE_GEN_MASK) === getMmioSpteGeneration(spte);
}
