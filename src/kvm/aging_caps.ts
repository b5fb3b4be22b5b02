/**
 * KVM's side of the never-merged aging proposals (mm.md section 4.2) that
 * src/mm/secondary_policy.ts models as per-subscriber capabilities. It lives
 * in src/kvm because it is KVM's code: the mm reaches it only through
 * SecondaryAgingCaps, as the kernel's mm reaches KVM only through its
 * mmu_notifier_ops.
 */
import { MMU_NOTIFIER_YOUNG, MMU_NOTIFIER_YOUNG_BITMAP_UNRELIABLE, MMU_NOTIFIER_YOUNG_FAST, type SecondaryAgingCaps } from '../mm/secondary_policy.js';
import type { MmuNotifierOps, Program } from '../mm/mmu_notifier.js';
import type { Kvm } from './vm.js';

const PAGE = 4096;

/**
 * KVM's side of the proposals for x86 (beside kvm_main.ts, whose ops are
 * the merged ones): has_fast_aging when aging is lockless (6.15+), and v3's
 * bitmap clear_young as kvm_arch_prepare_bitmap_age + per-gfn aging +
 * finish: one mmu_lock acquisition (write, before 6.15) for the window.
 * BITMAP_UNRELIABLE when shadow-MMU SPTEs may exist (only the TDP MMU is
 * aged by the bitmap).
 */
export function kvmAgingCaps(kvm: Kvm): (sub: MmuNotifierOps) => SecondaryAgingCaps | null {
  const fast = kvm.flavour.kernel >= 615;
  const caps: SecondaryAgingCaps = {
    fast,
    *clearYoungBitmap(start: number, end: number, bitmap: Uint8Array): Program<number> {
      if (kvm.indirectShadowPages !== 0) return MMU_NOTIFIER_YOUNG_BITMAP_UNRELIABLE;
      const idx = kvm.srcu.readLock();
      let locked = false;
      let young = false;
      const hvaBase = start;
      try {
        const ranges = kvm.memslots.hvaRangeGfnRanges(start, end);
        if (ranges.length > 0 && !fast) {
          yield* kvm.mmuLock.writeLock('aging');
          locked = true;
        }
        const hit = new Uint8Array(bitmap.length);
        for (const r of ranges) {
          for (let gfn = r.start; gfn < r.end; gfn++) {
            const i = (r.slot.userspace_addr + (gfn - r.slot.base_gfn) * PAGE - hvaBase) / PAGE;
            if (bitmap[i] === 0) continue;
            if (yield* kvm.tdpMmu.ageGfnRange({ slot: r.slot, start: gfn, end: gfn + 1 }, false)) {
              hit[i] = 1;
              young = true;
            }
          }
        }
        bitmap.set(hit);
      } finally {
        if (locked) kvm.mmuLock.writeUnlock();
        kvm.srcu.readUnlock(idx);
      }
      return young ? MMU_NOTIFIER_YOUNG | (fast ? MMU_NOTIFIER_YOUNG_FAST : 0) : 0;
    },
  };
  return (sub) => (sub === kvm.notifier ? caps : null);
}
