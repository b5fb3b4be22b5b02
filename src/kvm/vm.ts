/**
 * A VM (struct kvm) and its vCPUs over the emulated machine. A guest access
 * runs on the hardware; an EPT violation or NPF exits to KVM, which handles
 * it (kvm_mmu_page_fault) and re-enters so the access retries, as in life.
 * KVM sees hardware events only through exit information and memory.
 */
import { Machine } from '../hw/machine.js';
import { AccessKind, AccessResult, Outcome } from '../hw/result.js';
import { Mode } from '../hw/walk.js';
import { MmStruct } from '../mm/mm.js';
import { PageAllocator } from '../mm/page_alloc.js';
import { KvmEvents } from './events.js';
import { KvmMmuNotifier, MmuInvalidate } from './kvm_main.js';
import { MmuLock, Rcu, Srcu } from './locks.js';
import { KVM_MEM_LOG_DIRTY_PAGES, KvmMemslots, type KvmMemorySlot } from './memslots.js';
import { KvmRmaps } from './rmap.js';
import { EFAULT, kvmMmuPageFault, kvmMmuPageFaultNow, newFault } from './mmu.js';
import { TdpIter } from './tdp_iter.js';
import { EPT_AD, EPT_NOAD, NPT, makeFlavour, type SpteFlavour } from './spte.js';
import { RetPf, TdpMmu, type TdpMmuVm } from './tdp_mmu.js';

export interface VmOptions {
  tdp: 'ept' | 'npt';
  /** EPT accessed/dirty flags (EPTP bit 6); NPT always has them. Default on. */
  eptAd?: boolean;
  /** EPT walk length 4 or 5. Default 4. */
  eptLevels?: 4 | 5;
  vcpus?: number;
  /** Guest memory in bytes, one memslot at gpa 0 (default 64 MiB). 0 makes no slot. */
  memory?: number;
  /** Host page size backing guest memory (1 = 4K, 2 = 2M, 3 = 1G). */
  hostLevel?: 1 | 2 | 3;
  /** Guest TLBs and paging-structure caches. Default on. */
  tlb?: boolean;
  maxPhysAddr?: number;
  /** Kernel baseline as major*100+minor (default 617); see src/kvm/spte.ts HostCpu.kernel. */
  kernel?: number;
}

/** Where the VMM maps guest memory; guest memory's hva is this plus the gpa. */
export const GUEST_HVA_BASE = 0x7f00_0000_0000;
/** The host frames handed out by the page allocator start here. */
export const HOST_POOL_BASE = 0x100_0000;

/** Per-VM counters (a subset of kvm->stat and vcpu->stat, plus the model's own). */
export class KvmStats {
  exits = 0;
  /** EPT violations / NPFs handled. */
  pageFaults = 0;
  pfFixed = 0;
  pfSpurious = 0;
  pfRetry = 0;
  pfEmulate = 0;
  pfWriteProtected = 0;
  /** pf_fast: fixed by fast_page_fault. */
  pfFast = 0;
  mmioExits = 0;
  /** remote_tlb_flush */
  flushes = 0;
  /** Guest #PF delivered to the guest. */
  guestPf = 0;
  /** kvm_set_pfn_dirty calls (kernels before 6.13). */
  pfnDirtied = 0;
}

/** What a guest access ended in, as the trace sees it. */
export interface GuestAccess {
  readonly result: AccessResult;
  /** KVM exits taken on the way (0 when the first try succeeded). */
  exits: number;
  /**
   * How the access ended when it did not complete in the guest: 'mmio', an
   * exit to userspace (no memslot, or a write to a read-only slot);
   * 'emulate', KVM emulated it (a write to a write-tracked gfn,
   * RET_PF_WRITE_PROTECTED); 'efault', KVM_RUN failed with EFAULT (no host
   * memory behind the gfn). Null when the guest completed it.
   */
  userExit: 'mmio' | 'emulate' | 'efault' | null;
}

export class KvmVcpu {
  /** KVM_REQ_TLB_FLUSH, processed before the next entry. */
  tlbFlushRequested = false;
  /** The fault being handled and the iterator its walks use (on the kernel stack, one per vCPU). */
  readonly fault = newFault();
  readonly iter: TdpIter;
  constructor(readonly kvm: Kvm, readonly id: number) {
    this.iter = new TdpIter(kvm.mem);
  }
}

export class Kvm implements TdpMmuVm {
  readonly machine: Machine;
  readonly flavour: SpteFlavour;
  readonly mm: MmStruct;
  readonly pages: PageAllocator;
  readonly memslots: KvmMemslots;
  readonly mmuLock;
  readonly rcu = new Rcu();
  readonly srcu = new Srcu();
  readonly events = new KvmEvents();
  readonly tdpMmu: TdpMmu;
  readonly invalidate = new MmuInvalidate();
  readonly notifier: KvmMmuNotifier;
  readonly stats = new KvmStats();
  readonly vcpus: KvmVcpu[] = [];
  readonly rootLevel: number;
  readonly maxGfn: number;
  readonly opts: Required<Omit<VmOptions, 'maxPhysAddr' | 'kernel'>>;
  /** Write-tracked gfns (kvm_page_track, KVM_PAGE_TRACK_WRITE), of address space 0. */
  private readonly writeTracked = new Set<number>();
  /** kvm->arch.indirect_shadow_pages: shadow pages that shadow guest tables (nested TDP). */
  indirectShadowPages = 0;
  private readonly slotRmaps = new Map<number, KvmRmaps>();

  constructor(options: VmOptions) {
    const opts = {
      eptAd: true, eptLevels: 4 as 4 | 5, vcpus: 1, memory: 64 * 1024 * 1024, hostLevel: 1 as 1 | 2 | 3, tlb: true, ...options,
    };
    this.opts = opts;
    const maxPhysAddr = options.maxPhysAddr ?? 46;
    this.machine = new Machine({ mode: opts.tdp === 'ept' ? Mode.Ept : Mode.Npt, vcpus: opts.vcpus, maxPhysAddr, tlb: opts.tlb, psc: opts.tlb });
    this.flavour = options.kernel === undefined
      ? opts.tdp === 'npt' ? NPT : opts.eptAd ? EPT_AD : EPT_NOAD
      : makeFlavour(opts.tdp === 'npt' ? 'npt' : opts.eptAd ? 'ept-ad' : 'ept-noad', { kernel: options.kernel, physBits: maxPhysAddr });
    this.rootLevel = opts.tdp === 'npt' ? 4 : opts.eptLevels;
    this.maxGfn = 2 ** (maxPhysAddr - 12);
    this.pages = new PageAllocator(this.mem, HOST_POOL_BASE, 2 ** maxPhysAddr - HOST_POOL_BASE);
    // struct pages up front (memmap_init) for the guest's RAM and, at 1%, KVM's page tables (both come from the bottom of
    // the pool), so that touching the guest never copies them as the pool grows.
    this.pages.folios.ensure(HOST_POOL_BASE / 4096 + Math.ceil((opts.memory / 4096) * 1.01) + 64);
    // Frames for page tables: a last-level table per 2 MiB of guest memory in KVM's TDP tables and in the host's, plus the
    // levels above and the guest's own (guest data lives in folio tokens, not frames).
    this.mem.reserveFrames(2 * Math.ceil(opts.memory / (2 << 20)) + 64);
    this.mm = new MmStruct(this.mem, this.pages);
    this.mmuLock = new MmuLock(this.mem);
    this.memslots = new KvmMemslots({ maxGpaBits: maxPhysAddr });
    this.tdpMmu = new TdpMmu(this);
    this.notifier = new KvmMmuNotifier(this);
    this.mm.notifiers.register(this.notifier);
    for (let i = 0; i < opts.vcpus; i++) this.vcpus.push(new KvmVcpu(this, i));
    if (opts.memory > 0) this.addMemory(0, 0, opts.memory, 0);
    this.loadRoots();
  }

  get mem() {
    return this.machine.mem;
  }

  /** mmap guest memory in the VMM and register it as a memslot (KVM_SET_USER_MEMORY_REGION). */
  addMemory(id: number, gpa: number, size: number, flags: number): void {
    const hva = GUEST_HVA_BASE + gpa;
    this.mm.mmap(hva, size, { level: this.opts.hostLevel });
    this.memslots.setMemoryRegion({ slot: id, flags, guest_phys_addr: gpa, memory_size: size, userspace_addr: hva });
  }

  /**
   * Turns dirty logging on for a slot and write-protects it
   * (kvm_mmu_slot_apply_flags without PML, and without eager page splitting:
   * huge SPTEs are split by the write faults that follow).
   */
  *enableDirtyLogging(id: number): Generator<unknown, void, undefined> {
    const slot = this.memslots.idToMemslot(0, id);
    if (slot === null) throw new RangeError(`no memslot ${id}`);
    this.memslots.setMemoryRegion({ slot: id, flags: slot.flags | KVM_MEM_LOG_DIRTY_PAGES, guest_phys_addr: slot.base_gfn * 4096, memory_size: slot.npages * 4096, userspace_addr: slot.userspace_addr });
    const neu = this.memslots.idToMemslot(0, id)!;
    yield* this.mmuLock.readLock();
    yield* this.tdpMmu.wrprotSlot(neu, 1);
    this.mmuLock.readUnlock();
    // kvm_mmu_slot_apply_flags flushes unconditionally: cached writable translations would let writes go unlogged.
    this.flushRemoteTlbs();
  }

  /**
   * KVM_GET_DIRTY_LOG (kvm_get_dirty_log_protect): snapshot and clear the
   * slot's bitmap, write-protect the harvested pages again, and flush if any
   * were harvested. Returns the dirty gfns.
   */
  *getDirtyLog(id: number): Generator<unknown, number[], undefined> {
    const slot = this.memslots.idToMemslot(0, id);
    if (slot === null || slot.dirty_bitmap === null) throw new RangeError(`memslot ${id} does not log dirty pages`);
    const words = this.memslots.getDirtyLog(0, id);
    const gfns: number[] = [];
    yield* this.mmuLock.writeLock();
    for (let w = 0; w < words.length; w += 2) {
      const mask = (BigInt(words[w + 1] ?? 0) << 32n) | BigInt(words[w]);
      if (mask === 0n) continue;
      for (let i = 0; i < 64; i++) if ((mask >> BigInt(i)) & 1n) gfns.push(slot.base_gfn + w * 32 + i);
      yield* this.tdpMmu.clearDirtyPtMasked(slot, slot.base_gfn + w * 32, mask);
    }
    this.mmuLock.writeUnlock();
    if (gfns.length > 0) this.flushRemoteTlbs();
    return gfns;
  }

  /** Point every vCPU at the TDP root (kvm_mmu_load: EPTP or nCR3). */
  private loadRoots(): void {
    const root = this.tdpMmu.allocRoot(0);
    for (const v of this.vcpus) {
      const regs = this.machine.vcpu(v.id).regs;
      if (this.opts.tdp === 'ept') regs.eptp = root.hpa + ((this.rootLevel - 1) << 3) + 6 + (this.flavour.adEnabled ? 0x40 : 0);
      else {
        regs.ncr3 = root.hpa;
        regs.asid = 1;
      }
    }
  }

  /** kvm_set_pfn_dirty: counted here; the host mm's folio gets PG_dirty once folios exist. */
  setPfnDirty(pfn: number): void {
    this.stats.pfnDirtied++;
    this.lastPfnDirtied = pfn;
  }

  /** The last pfn kvm_set_pfn_dirty named (for tests). */
  lastPfnDirtied = -1;

  isWriteTracked(gfn: number): boolean {
    return this.writeTracked.size !== 0 && this.writeTracked.has(gfn);
  }

  /** Whether any gfn in [start, end) is write-tracked (which disallows a huge page over it). */
  anyWriteTracked(start: number, end: number): boolean {
    for (const g of this.writeTracked) if (g >= start && g < end) return true;
    return false;
  }

  /**
   * kvm_write_track_add_gfn: track the gfn and write-protect its SPTEs
   * (kvm_mmu_slot_gfn_write_protect under the write lock), flushing if any
   * lost MMU-writable.
   */
  *writeTrackAddGfn(gfn: number): Generator<unknown, void, undefined> {
    const slot = this.memslots.gfnToMemslot(gfn);
    if (slot === null) throw new RangeError(`gfn 0x${gfn.toString(16)} is in no memslot`);
    this.writeTracked.add(gfn);
    yield* this.mmuLock.writeLock();
    const flush = yield* this.tdpMmu.writeProtectGfn(slot, gfn, 1);
    this.mmuLock.writeUnlock();
    if (flush) this.flushRemoteTlbs();
  }

  /** kvm_write_track_remove_gfn. */
  writeTrackRemoveGfn(gfn: number): void {
    this.writeTracked.delete(gfn);
  }

  /** A memslot's shadow-MMU rmaps, allocated on first use (as when a shadow root is first allocated). */
  rmaps(slot: KvmMemorySlot): KvmRmaps {
    const key = slot.as_id * 65536 + slot.id;
    let r = this.slotRmaps.get(key);
    if (r === undefined || r.slot.base_gfn !== slot.base_gfn || r.slot.npages !== slot.npages) {
      r = new KvmRmaps(this, slot);
      this.slotRmaps.set(key, r);
    }
    return r;
  }

  memslotsGeneration(): bigint {
    return this.memslots.generation(0);
  }

  /**
   * kvm_flush_remote_tlbs: every vCPU flushes before it next runs guest code.
   * The kernel waits for the IPIs to be acknowledged, so the flush is done
   * here and now on each vCPU's emulated TLB: INVEPT all-context on VMX,
   * TLB_CONTROL flush-this-ASID on SVM.
   */
  flushRemoteTlbs(): void {
    this.stats.flushes++;
    for (const v of this.vcpus) this.flushVcpuTlb(v);
  }

  private flushVcpuTlb(v: KvmVcpu): void {
    const regs = this.machine.vcpu(v.id).regs;
    if (this.opts.tdp === 'ept') {
      // KVM executes INVEPT in VMX root operation at CPL 0; the vCPU registers hold the guest's CPL.
      const cpl = regs.cpl;
      regs.cpl = 0;
      const r = this.machine.invept(v.id, false, null);
      regs.cpl = cpl;
      if (r.outcome !== Outcome.Ok) throw new Error(`assertion: INVEPT failed (${r.outcome})`);
    } else {
      const r = this.machine.vmrun(v.id, 3);
      if (r.outcome !== Outcome.Ok) throw new Error(`assertion: VMRUN TLB_CONTROL failed (${r.outcome})`);
    }
    v.tlbFlushRequested = false;
  }

  vcpu(id: number): KvmVcpu {
    const v = this.vcpus[id];
    if (v === undefined) throw new RangeError(`no vCPU ${id} (the VM has ${this.vcpus.length})`);
    return v;
  }

  /**
   * One guest access from a vCPU (vcpu_run with the access as the guest's
   * next instruction): enter, and on an EPT violation or NPF let KVM handle
   * the exit and re-enter, until the access completes, faults in the guest,
   * or needs userspace.
   */
  access(vcpuId: number, laHi: number, laLo: number, kind: AccessKind, size: number, out: GuestAccess): Generator<unknown, void, undefined> {
    // One program, whose first step enters: nothing runs before the caller (or a scheduler) steps it.
    return this.handleExits(vcpuId, laHi, laLo, kind, size, out, true);
  }

  /**
   * access() run to its end as plain code, for a caller that nothing can
   * interleave (!mem.yields): what the trace runner does for each access.
   */
  accessNow(vcpuId: number, laHi: number, laLo: number, kind: AccessKind, size: number, out: GuestAccess): void {
    this.handleExitsNow(vcpuId, laHi, laLo, kind, size, out, true);
  }

  /**
   * The first entry of an access, as plain code: true when the access ended
   * in the guest (the common case: nothing to run as a program, nothing
   * allocated); false when it exited, the exit being in out.result for
   * handleExits.
   */
  enter(vcpuId: number, laHi: number, laLo: number, kind: AccessKind, size: number, out: GuestAccess): boolean {
    const v = this.vcpu(vcpuId);
    out.exits = 0;
    out.userExit = null;
    return this.run(v, laHi, laLo, kind, size, out);
  }

  /**
   * Handles the exit enter() left in out.result, and re-enters until the
   * access is done; with `enterFirst`, makes that first entry itself.
   * (Optional without a default: a default makes V8 copy every parameter of
   * a generator into its registers.)
   */
  *handleExits(
    vcpuId: number, laHi: number, laLo: number, kind: AccessKind, size: number, out: GuestAccess, enterFirst?: boolean,
  ): Generator<unknown, void, undefined> {
    if (enterFirst && this.enter(vcpuId, laHi, laLo, kind, size, out)) return;
    const v = this.vcpu(vcpuId);
    // The bookkeeping is in plain methods, so this program keeps few values of its own.
    for (;;) {
      this.exitBegin(laLo, out);
      const ret = yield* kvmMmuPageFault(this, v, out.result);
      if (this.exitDone(ret, out)) return;
      if (this.mem.yields) yield; // re-entering the guest is a point where others may run
      if (this.run(v, laHi, laLo, kind, size, out)) return;
    }
  }

  /**
   * handleExits as plain code, for a caller that nothing can interleave
   * (!mem.yields): the trace runner and the benchmarks. Exits are handled
   * by kvmMmuPageFaultNow, so an access runs no generator.
   * test/kvm/plain_twins.test.ts checks that the two texts say the same
   * apart from the program steps.
   */
  handleExitsNow(
    vcpuId: number, laHi: number, laLo: number, kind: AccessKind, size: number, out: GuestAccess, enterFirst?: boolean,
  ): void {
    if (this.mem.yields) throw new Error('assertion: handleExitsNow while a scheduler interleaves (use the handleExits program)');
    if (enterFirst && this.enter(vcpuId, laHi, laLo, kind, size, out)) return;
    const v = this.vcpu(vcpuId);
    for (;;) {
      this.exitBegin(laLo, out);
      const ret = kvmMmuPageFaultNow(this, v, out.result);
      if (this.exitDone(ret, out)) return;
      if (this.run(v, laHi, laLo, kind, size, out)) return;
    }
  }

  /**
   * One more exit for the access (out.exits counts them from enter()),
   * failing an access that never completes.
   */
  private exitBegin(laLo: number, out: GuestAccess): void {
    if (out.exits >= 1000) throw new Error(`assertion: access at 0x${laLo.toString(16)} still exits after ${out.exits + 1} entries (livelock)`);
    out.exits++;
    this.stats.exits++;
  }

  /** True when the fault's result ends the access in userspace (out.userExit says how); false to re-enter. */
  private exitDone(ret: RetPf | typeof EFAULT, out: GuestAccess): boolean {
    if (ret === RetPf.Emulate) {
      this.stats.mmioExits++;
      out.userExit = 'mmio';
      return true;
    }
    if (ret === RetPf.WriteProtected) {
      out.userExit = 'emulate';
      return true;
    }
    if (ret === EFAULT) {
      out.userExit = 'efault';
      return true;
    }
    return false;
  }

  /** VM entry until the access ends or exits: true unless it exited to KVM. */
  private run(v: KvmVcpu, laHi: number, laLo: number, kind: AccessKind, size: number, out: GuestAccess): boolean {
    if (v.tlbFlushRequested) this.flushVcpuTlb(v);
    const r = this.machine.access(v.id, laHi, laLo, kind, size, false);
    (out as { result: AccessResult }).result = r;
    if (r.outcome === Outcome.Ok || r.outcome === Outcome.Gp) return true;
    if (r.outcome === Outcome.Pf) {
      this.stats.guestPf++;
      return true;
    }
    return false;
  }
}
