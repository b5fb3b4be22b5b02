/**
 * Tracepoint-style events with the kernel's names and fields (kvm-mmu.md
 * section 8; include/trace/events/kvm.h and arch/x86/kvm/mmu/mmutrace.h).
 * Off by default; a disabled event costs one boolean test at its call site.
 */

export const KVM_EVENT_NAMES = [
  'kvm_unmap_hva_range',
  'kvm_age_hva',
  'kvm_test_age_hva',
  'kvm_tdp_mmu_spte_changed',
  'kvm_mmu_set_spte',
  'kvm_mmu_spte_requested',
  'fast_page_fault',
  'mark_mmio_spte',
  'kvm_mmu_get_page',
  'kvm_mmu_prepare_zap_page',
  'kvm_mmu_split_huge_page',
  'kvm_page_fault',
] as const;

export type KvmEventName = (typeof KVM_EVENT_NAMES)[number];

/** Field values: numbers, or 64-bit values as bigint. */
export type EventFields = Record<string, number | bigint | boolean | string>;

export type EventSink = (name: KvmEventName, fields: EventFields) => void;

export class KvmEvents {
  // One flag per event, read at the call sites.
  kvm_unmap_hva_range = false;
  kvm_age_hva = false;
  kvm_test_age_hva = false;
  kvm_tdp_mmu_spte_changed = false;
  kvm_mmu_set_spte = false;
  kvm_mmu_spte_requested = false;
  fast_page_fault = false;
  mark_mmio_spte = false;
  kvm_mmu_get_page = false;
  kvm_mmu_prepare_zap_page = false;
  kvm_mmu_split_huge_page = false;
  kvm_page_fault = false;
  private sink: EventSink | null = null;

  /** Enable the named events (throws on an unknown name) and send them to sink. */
  enable(names: readonly string[], sink: EventSink): void {
    for (const n of names) {
      if (!(KVM_EVENT_NAMES as readonly string[]).includes(n)) {
        throw new RangeError(`unknown event '${n}': expected one of ${KVM_EVENT_NAMES.join(', ')}`);
      }
      this[n as KvmEventName] = true;
    }
    this.sink = sink;
  }

  emit(name: KvmEventName, fields: EventFields): void {
    if (this.sink !== null) this.sink(name, fields);
  }
}
