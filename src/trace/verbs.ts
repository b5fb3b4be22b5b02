/**
 * The verbs of the trace language and the arguments each takes: the schema the
 * parser validates against before anything runs (trace-format.md, "Lines").
 */

/** How an argument's value is read. */
export type ArgType =
  | { t: 'u64' } // any 64-bit number, kept as an unsigned Long
  | { t: 'size' } // like u64, but may carry K/M/G/T
  | { t: 'int'; min: number; max: number } // small integer within [min, max]
  | { t: 'enum'; values: readonly string[] }; // one of these words

export interface VerbSpec {
  /** key=value arguments this verb accepts. */
  keys: Record<string, ArgType>;
  /** keys that must be present. */
  required?: readonly string[];
  /** bare words accepted; each group lists mutually exclusive words. */
  words?: readonly (readonly string[])[];
  /** word groups of which exactly one word must be given. */
  requiredWords?: readonly number[];
  /** Sub-verbs named by the first bare word (`expect spte`, `guest map`), each with its own schema. */
  sub?: Record<string, VerbSpec>;
  /** A sub-verb must be given (`guest` alone means nothing). */
  subRequired?: boolean;
  /** Which traces accept the verb: hardware-level (`machine`) or VM-level (`vm`). Both when absent. */
  scope?: 'machine' | 'vm';
  /** Keys and words accepted only in VM-level traces. */
  vmOnly?: readonly string[];
  /** Keys and words accepted only in hardware-level traces, each with the reason a VM-level trace refuses it. */
  machineOnly?: Record<string, string>;
}

const u64: ArgType = { t: 'u64' };
const vcpu: ArgType = { t: 'int', min: 0, max: 63 };
const bit: ArgType = { t: 'int', min: 0, max: 1 };
const size: ArgType = { t: 'size' };
const count: ArgType = { t: 'int', min: 0, max: 0xffffffff };
const pageSize: ArgType = { t: 'enum', values: ['4k', '2m', '1g'] };
const slot: ArgType = { t: 'int', min: 0, max: 0x7fff };

export const RESULTS = ['ok', 'pf', 'gp', 'ept_violation', 'ept_misconfig', 'npf', 'vmfail', 'ud'] as const;

/** The user exits an access in a VM can end in (KVM_EXIT_MMIO; KVM_RUN failing with -EFAULT). */
export const USER_EXITS = ['none', 'mmio', 'efault'] as const;

/** MMU-notifier subscriber callbacks, by op (MmuNotifierSubscriptions.calls). */
export const NOTIFIER_OPS = [
  'invalidate_range_start', 'invalidate_range_end', 'invalidate', 'clear_young', 'clear_flush_young', 'test_young', 'release',
] as const;
/** Invalidation callbacks by event (MmuNotifierSubscriptions.callsByEvent): MMU_NOTIFY_<NAME> in lower case. */
/** MmuLockUser of src/kvm/locks.ts, for the mmu_lock counters. */
const MMU_LOCK_USERS = ['fault', 'aging', 'invalidate', 'other'] as const;

export const NOTIFIER_EVENTS = ['unmap', 'clear', 'protection_vma', 'protection_page', 'soft_dirty', 'release', 'migrate', 'exclusive'] as const;

/**
 * Counters `expect counter` can check: kvm->stat / vcpu->stat names where
 * the kernel has one (docs/kvm.md lists what each counts).
 */
export const COUNTERS = [
  'exits', 'pf_taken', 'pf_fixed', 'pf_spurious', 'pf_retry', 'pf_emulate', 'pf_write_protected', 'pf_fast', 'pf_guest',
  'mmio_exits', 'remote_tlb_flush', 'pages_4k', 'pages_2m', 'pages_1g', 'pt_pages', 'pt_allocated', 'pt_freed',
  'cmpxchg_failed', 'aged', 'age_lost', 'splits', 'host_faults', 'pfn_dirtied',
  // host mm (docs/mm.md)
  'evicted', 'refaults', 'swap_outs', 'swap_ins', 'kswapd_wakeups', 'lru_pages', 'notifier_calls',
  // KSM and COW (docs/mm.md): /sys/kernel/mm/ksm pages_shared and pages_sharing, wp_page_copy runs
  'ksm_pages_shared', 'ksm_pages_sharing', 'cow_copies',
  // fork (docs/mm.md): dup_mmap runs, PTEs and swap entries they shared, folios reclaim kept because parent and child map them
  'forks', 'fork_ptes', 'fork_swap_entries', 'kept_shared',
  ...NOTIFIER_OPS.map((o) => `calls_${o}` as const),
  ...NOTIFIER_EVENTS.map((e) => `event_${e}` as const),
  // the secondary-MMU policy's cost and benefit (MGLRU; docs/mm.md)
  'policy_calls', 'policy_pages_asked', 'policy_young',
  // kvm->mmu_lock (MmuLockStats): acquisitions by user; hold and wait steps (0 without a scheduler)
  ...MMU_LOCK_USERS.map((u) => `mmu_lock_reads_${u}` as const),
  ...MMU_LOCK_USERS.map((u) => `mmu_lock_writes_${u}` as const),
  ...MMU_LOCK_USERS.map((u) => `mmu_lock_held_write_${u}` as const),
  'mmu_lock_held_read',
  ...MMU_LOCK_USERS.map((u) => `mmu_lock_wait_${u}` as const),
] as const;

/** Named SPTE bits of `expect spte`, per flavour; each takes 0 or 1. */
export const SPTE_BITS_COMMON = ['present', 'w', 'a', 'd', 'large', 'mmu_writable', 'host_writable', 'ad_disabled', 'acc_track', 'mmio'] as const;
export const SPTE_BITS_EPT = ['r', 'x'] as const;
export const SPTE_BITS_NPT = ['p', 'u', 'nx'] as const;

const spteKeys: Record<string, ArgType> = { gfn: u64, level: { t: 'int', min: 1, max: 5 }, pfn: u64, value: u64, mask: u64 };
for (const k of [...SPTE_BITS_COMMON, ...SPTE_BITS_EPT, ...SPTE_BITS_NPT]) spteKeys[k] = bit;

const guestMapKeys = { gva: u64, gpa: u64, size, page: pageSize, flags: u64 };
const guestMapWords = [['ro'], ['user'], ['nx'], ['global']] as const;

export const VERBS: Record<string, VerbSpec> = {
  // --- trace-format.md, hardware-level verbs ---
  machine: {
    keys: {
      mode: { t: 'enum', values: ['native', 'ept', 'npt'] },
      vcpus: { t: 'int', min: 1, max: 64 },
      maxphyaddr: { t: 'int', min: 36, max: 52 },
      tlb: { t: 'enum', values: ['on', 'off'] },
      // project extensions (docs/hardware.md)
      psc: { t: 'enum', values: ['on', 'off'] },
      tlb_entries: { t: 'int', min: 1, max: 65536 },
      tlb_ways: { t: 'int', min: 1, max: 64 },
      exec_only: { t: 'enum', values: ['on', 'off'] },
    },
    required: ['mode'],
    scope: 'machine',
  },
  poke: { keys: { hpa: u64, value: u64 }, required: ['hpa', 'value'] },
  peek: { keys: { hpa: u64 }, required: ['hpa'] },
  cpu: {
    keys: {
      vcpu, cr0: u64, cr3: u64, cr4: u64, efer: u64, cpl: { t: 'int', min: 0, max: 3 }, ac: bit,
      pkru: u64, pkrs: u64, eptp: u64, ncr3: u64, vpid: { t: 'int', min: 0, max: 0xffff }, asid: u64,
    },
    machineOnly: { eptp: 'KVM loads the EPTP', ncr3: 'KVM loads nCR3', asid: 'KVM assigns the ASID' },
  },
  access: {
    keys: { vcpu, gva: u64, size: { t: 'int', min: 1, max: 4096 } },
    required: ['gva'],
    words: [['read', 'write', 'fetch'], ['implicit']],
    requiredWords: [0],
    machineOnly: { implicit: 'KVM runs the guest access as an explicit one' },
  },
  invlpg: { keys: { vcpu, gva: u64 }, required: ['gva'] },
  invpcid: { keys: { vcpu, type: { t: 'int', min: 0, max: 3 }, pcid: u64, gva: u64 }, required: ['type'] },
  invvpid: { keys: { vcpu, type: { t: 'int', min: 0, max: 3 }, vpid: u64, gva: u64 }, required: ['type'] },
  invept: { keys: { vcpu, eptp: u64 }, words: [['single', 'global']], requiredWords: [0] },
  flush: { keys: { vcpu } },

  // --- project extensions (docs/hardware.md) ---
  /** VM exit followed by VM entry (VMX): with VPID 0 both flush VPID 0's linear and combined mappings. */
  vmexit: { keys: { vcpu } },
  /** VMRUN with a TLB_CONTROL value (SVM). */
  vmrun: { keys: { vcpu, tlb_control: { t: 'int', min: 0, max: 255 } } },
  /** INVLPGA: the page at gva for one ASID. */
  invlpga: { keys: { vcpu, gva: u64, asid: u64 }, required: ['gva', 'asid'] },
  /** Check the result of the latest access or instruction. */
  expect: {
    keys: {
      result: { t: 'enum', values: RESULTS },
      hpa: u64, gpa: u64, error_code: u64, cr2: u64, qualification: u64, gla: u64,
      exitinfo1: u64, exitinfo2: u64,
      tlb: { t: 'enum', values: ['hit', 'miss'] },
      refs: { t: 'int', min: 0, max: 1000 },
      exits: count,
      user_exit: { t: 'enum', values: USER_EXITS },
      young: bit,
    },
    words: [['no_gla']],
    vmOnly: ['exits', 'user_exit', 'young'],
    sub: {
      /** The SPTE KVM keeps for a gfn, decoded per flavour (docs/kvm.md). */
      spte: { keys: spteKeys, required: ['gfn'], scope: 'vm' },
      /** KVM and host-mm counters. */
      counter: { keys: Object.fromEntries(COUNTERS.map((c) => [c, count])), scope: 'vm' },
      /** A gfn's bit in its memslot's dirty bitmap. */
      dirty: { keys: { gfn: u64 }, required: ['gfn'], words: [['set', 'clear']], requiredWords: [0], scope: 'vm' },
      /** The host folio backing a guest page (docs/mm.md). */
      folio: {
        keys: {
          gpa: u64, lru: { t: 'enum', values: ['active', 'inactive', 'none'] }, gen: { t: 'int', min: 0, max: 3 },
          referenced: bit, idle: bit, young: bit, dirty: bit, swapped: bit, workingset: bit, mapped: bit,
          ksm: bit, mapcount: count,
        },
        required: ['gpa'],
        scope: 'vm',
      },
      /** LRU list sizes (classic) or generations (MGLRU), in pages. */
      lru: {
        keys: {
          active: count, inactive: count, gen0: count, gen1: count, gen2: count, gen3: count,
          max_seq: count, min_seq: count, nr_gens: { t: 'int', min: 0, max: 4 },
        },
        scope: 'vm',
      },
      /** Every page of the range (default: all guest memory written) holds its last guest write. */
      data: { keys: { gpa: u64, size }, scope: 'vm' },
    },
  },
  /** Check the 8-byte value at hpa (under mask, default all ones). */
  expect_mem: { keys: { hpa: u64, value: u64, mask: u64 }, required: ['hpa', 'value'] },

  // --- VM-level verbs (docs/kvm.md) ---
  /** Create the VM (KVM_CREATE_VM, vCPUs, memslot 0 at gpa 0); first command of a VM-level trace. */
  vm: {
    keys: {
      tdp: { t: 'enum', values: ['ept', 'npt'] },
      ad: { t: 'enum', values: ['on', 'off'] },
      levels: { t: 'int', min: 4, max: 5 },
      vcpus: { t: 'int', min: 1, max: 64 },
      memory: size,
      host_page: pageSize,
      tlb: { t: 'enum', values: ['on', 'off'] },
      maxphyaddr: { t: 'int', min: 36, max: 52 },
      kernel: { t: 'enum', values: ['6.12', '6.13', '6.14', '6.15', '6.16', '6.17'] },
      // host mm (docs/mm.md)
      lru: { t: 'enum', values: ['classic', 'mglru'] },
      policy: { t: 'enum', values: ['eviction-only', 'current', 'v3-bitmap', 'fast-only'] },
      host_memory: size,
      swap: size,
    },
    required: ['tdp'],
    scope: 'vm',
  },
  /** Guest software: build guest page tables in guest memory. */
  guest: {
    keys: {},
    subRequired: true,
    scope: 'vm',
    sub: {
      map: { keys: guestMapKeys, required: ['gva', 'gpa'], words: guestMapWords, scope: 'vm' },
      identity: { keys: { size, page: pageSize, flags: u64 }, required: ['size'], words: guestMapWords, scope: 'vm' },
    },
  },
  /** KVM_SET_USER_MEMORY_REGION: a new memslot backed by fresh anonymous memory. */
  memslot: { keys: { slot, gpa: u64, size }, required: ['slot', 'gpa', 'size'], words: [['readonly']], scope: 'vm' },
  /** mmu_notifier_clear_young over the guest memory's hva range (default: all slots). */
  age: { keys: { gpa: u64, size }, scope: 'vm' },
  /** ptep_clear_flush_young_notify, page by page: the host young bit and KVM's clear_flush_young. */
  clear_flush_young: { keys: { gpa: u64, size }, required: ['gpa'], scope: 'vm' },
  /** mmu_notifier_test_young at the page of gpa. */
  test_young: { keys: { gpa: u64 }, required: ['gpa'], scope: 'vm' },
  /** madvise(MADV_DONTNEED) on any host-page aligned part of guest memory's hvas: a CLEAR pair per area. */
  madvise_dontneed: { keys: { gpa: u64, size }, required: ['gpa', 'size'], scope: 'vm' },
  /** munmap of any host-page aligned part of guest memory's hvas (the memslots stay): areas split, one UNMAP pair. */
  munmap: { keys: { gpa: u64, size }, required: ['gpa', 'size'], scope: 'vm' },
  /** Dirty logging: turn it on for a slot (write-protect), or KVM_GET_DIRTY_LOG (harvest and re-protect). */
  dirty_log: { keys: { slot }, words: [['enable', 'get']], requiredWords: [0], scope: 'vm' },

  // --- host-mm verbs (docs/mm.md) ---
  /** Direct reclaim of up to N pages (default 32) through the chosen LRU: the priority loop, or one shrink_lruvec pass at priority=P. */
  reclaim: { keys: { pages: { t: 'int', min: 1, max: 0xffffffff }, priority: { t: 'int', min: 0, max: 12 } }, scope: 'vm' },
  /** An MGLRU aging pass (try_to_inc_max_seq with force_scan): lru=mglru only. */
  lru_age: { keys: {}, scope: 'vm' },
  /** mprotect of any host-page aligned part of guest memory: areas split and merged, a PROTECTION_VMA pair per area changed. */
  mprotect: { keys: { gpa: u64, size }, required: ['gpa', 'size'], words: [['ro', 'rw']], requiredWords: [0], scope: 'vm' },
  /**
   * mremap of part of an area of guest memory (gpa=), or of one moved away before (hva=): shrink, grow in place, move with `maymove` (MREMAP_MAYMOVE) or to hva `to`
   * (MREMAP_MAYMOVE|MREMAP_FIXED). A move is two UNMAP pairs over the old range; the memslot keeps the old hva.
   */
  mremap: { keys: { gpa: u64, hva: u64, size, new_size: size, to: u64 }, required: ['size'], words: [['maymove']], scope: 'vm' },
  /** madvise(MADV_FREE) on guest memory: CLEAR; PTEs old and clean, folios lazyfree (classic LRU, 4K host pages). */
  madvise_free: { keys: { gpa: u64, size }, required: ['gpa', 'size'], scope: 'vm' },
  /** migrate_pages of the folio backing the guest page at gpa: CLEAR, migration entry, new frame (classic LRU, 4K host pages). */
  migrate: { keys: { gpa: u64 }, required: ['gpa'], scope: 'vm' },
  /** MADV_MERGEABLE on a gpa range, then one ksmd pass over it: resident pages of equal content merged into KSM pages (4K host pages). */
  ksm_merge: { keys: { gpa: u64, size }, required: ['gpa', 'size'], scope: 'vm' },
  /** fork() of the VMM (dup_mmap): a child mm sharing every anonymous page copy-on-write, the parent's PTEs write-protected; one child at a time. */
  fork: { keys: {}, scope: 'vm' },
  /** A store by the forked child at the hva of a guest page (gpa=) or at hva=: a COW break (wp_page_copy in the child), or a new page. */
  child_write: { keys: { gpa: u64, hva: u64 }, scope: 'vm' },
  /** The forked child exits (exit_mmap): its mappings go, the folios it shared are mapped once again. */
  child_exit: { keys: {}, scope: 'vm' },
  /** echo 4 > /proc/PID/clear_refs for the VMM: SOFT_DIRTY over the whole mm, every PTE write-protected and soft-clean. */
  clear_soft_dirty: { keys: {}, scope: 'vm' },
  /** /sys/kernel/mm/page_idle/bitmap for the frames backing a gpa range. */
  page_idle: {
    keys: {},
    subRequired: true,
    scope: 'vm',
    sub: {
      mark: { keys: { gpa: u64, size }, required: ['gpa'], scope: 'vm' },
      read: { keys: { gpa: u64, size }, required: ['gpa'], scope: 'vm' },
    },
  },
};

/** Verbs and `vm` keys that switch on the host-mm layer of a VM-level trace (reclaim, swap, data tokens). */
export const MM_VERBS: readonly string[] = [
  'reclaim', 'lru_age', 'mprotect', 'page_idle mark', 'page_idle read', 'expect folio', 'expect lru', 'expect data', 'madvise_free', 'migrate', 'ksm_merge',
  'fork', 'child_write', 'child_exit',
];
/** The fork verbs: the child they act on is the session's. */
export const FORK_VERBS: readonly string[] = ['fork', 'child_write', 'child_exit'];
export const MM_VM_KEYS: readonly string[] = ['lru', 'policy', 'host_memory', 'swap'];
