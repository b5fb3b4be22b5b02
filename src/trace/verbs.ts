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
}

const u64: ArgType = { t: 'u64' };
const vcpu: ArgType = { t: 'int', min: 0, max: 63 };
const bit: ArgType = { t: 'int', min: 0, max: 1 };

export const RESULTS = ['ok', 'pf', 'gp', 'ept_violation', 'ept_misconfig', 'npf', 'vmfail', 'ud'] as const;

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
  },
  poke: { keys: { hpa: u64, value: u64 }, required: ['hpa', 'value'] },
  peek: { keys: { hpa: u64 }, required: ['hpa'] },
  cpu: {
    keys: {
      vcpu, cr0: u64, cr3: u64, cr4: u64, efer: u64, cpl: { t: 'int', min: 0, max: 3 }, ac: bit,
      pkru: u64, pkrs: u64, eptp: u64, ncr3: u64, vpid: { t: 'int', min: 0, max: 0xffff }, asid: u64,
    },
  },
  access: {
    keys: { vcpu, gva: u64, size: { t: 'int', min: 1, max: 4096 } },
    required: ['gva'],
    words: [['read', 'write', 'fetch'], ['implicit']],
    requiredWords: [0],
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
    },
    words: [['no_gla']],
  },
  /** Check the 8-byte value at hpa (under mask, default all ones). */
  expect_mem: { keys: { hpa: u64, value: u64, mask: u64 }, required: ['hpa', 'value'] },
};
