/**
 * migrate_pages of one order-0 anonymous folio (mm/migrate.c,
 * mm/rmap.c try_to_migrate_one), mm.md section 6 "migration
 * try_to_migrate_one: CLEAR".
 *
 * The folio is isolated from the LRU (a reference taken) and a new folio
 * allocated. try_to_migrate_one, per mapping (one here: no fork), runs a
 * CLEAR invalidation over the folio's page: invalidate_range_start, the
 * PTE cleared and flushed (ptep_clear_flush; its D moves to PG_dirty),
 * a migration entry installed in its place, the mapping's mapcount and
 * reference dropped, invalidate_range_end. Then the move: the contents
 * (the content token) and the flags are copied to the new folio
 * (folio_migrate_mapping / folio_migrate_flags), remove_migration_ptes
 * maps the new folio where the migration entry was (no notifier: a
 * non-present entry becomes present), the new folio goes on the LRU and
 * the old one is freed with the isolation reference.
 *
 * Migration entries: a swap entry whose type is SWP_MIGRATION_WRITE (27)
 * for a writable PTE, SWP_MIGRATION_READ_EXCLUSIVE (26) otherwise (every
 * anon folio here is exclusive), with MAX_SWAPFILES = 24 (DEVICE_PRIVATE,
 * MIGRATION, HWPOISON, PTE markers configured); the offset is the pfn,
 * plus the young and dirty bits at SWP_PFN_BITS = 40 and 41 (x86-64 has
 * room for them: migration_entry_supports_ad), soft-dirty carried in
 * _PAGE_SWP_SOFT_DIRTY. Nothing runs between try_to_migrate and
 * remove_migration_ptes here (no migration_entry_wait is modelled).
 *
 * Not modelled: large folios, swap-cache folios (their swap cache entry
 * would move too), MGLRU (the new folio's generation).
 */
import { LruList, PG_active, PG_anon, PG_dirty, PG_idle, PG_ksm, PG_referenced, PG_swapbacked, PG_swapcache, PG_unevictable, PG_uptodate, PG_workingset, PG_young } from './folio.js';
import { PAGE_SIZE, folioVma, vmaAddress, type MmStruct } from './mm.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, mmuNotifierRangeInit, type Program } from './mmu_notifier.js';
import {
  _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_NX_HI, _PAGE_PRESENT, _PAGE_RW, _PAGE_SOFT_DIRTY, _PAGE_SWP_SOFT_DIRTY, _PAGE_USER, entryAddr, pfnHi, pfnLo,
  swpEntryHi, swpEntryLo, swpOffset, swpType,
} from './pgtable.js';

export const SWP_MIGRATION_READ = 25;
export const SWP_MIGRATION_READ_EXCLUSIVE = 26;
export const SWP_MIGRATION_WRITE = 27;
/** SWP_PFN_BITS: MAX_PHYSMEM_BITS (52) - PAGE_SHIFT; the young and dirty bits of a migration entry sit above the pfn. */
export const SWP_PFN_BITS = 40;
const SWP_MIG_YOUNG = 2 ** SWP_PFN_BITS;
const SWP_MIG_DIRTY = 2 ** (SWP_PFN_BITS + 1);

/** Flags folio_migrate_flags / folio_migrate_mapping carry to the new folio. */
const MIGRATED_FLAGS = PG_anon | PG_swapbacked | PG_uptodate | PG_dirty | PG_referenced | PG_active | PG_workingset | PG_unevictable | PG_young | PG_idle;

/** One folio's migration: where it went and the migration entry its PTE held meanwhile (for tests and traces). */
export interface MigrateResult {
  oldPfn: number;
  newPfn: number;
  /** The migration entry as a 64-bit PTE value. */
  migrationEntry: bigint;
}

/** Whether a PTE is a migration entry (is_migration_entry), and its fields. */
export function decodeMigrationEntry(lo: number, hi: number): { type: number; pfn: number; young: boolean; dirty: boolean; softDirty: boolean } | null {
  if ((lo & _PAGE_PRESENT) !== 0 || (lo === 0 && hi === 0)) return null;
  const type = swpType(hi);
  if (type < SWP_MIGRATION_READ || type > SWP_MIGRATION_WRITE) return null;
  const off = swpOffset(lo, hi);
  return { type, pfn: off % SWP_MIG_YOUNG, young: Math.floor(off / SWP_MIG_YOUNG) % 2 === 1, dirty: Math.floor(off / SWP_MIG_DIRTY) % 2 === 1, softDirty: (lo & _PAGE_SWP_SOFT_DIRTY) !== 0 };
}

/**
 * migrate_pages of the folio mapped at hva to a newly allocated frame.
 * Null when there is nothing to migrate there (not resident, swapped) or
 * the folio is a KSM page (not migrated in this model).
 * Throws for what is not modelled (large folio, swap cache, MGLRU).
 */
export function* migrateFolio(mm: MmStruct, hva: number, observe?: (phase: 'migration-entry', pte: bigint) => void): Program<MigrateResult | null> {
  const f = mm.folios;
  if (f.mglru !== null) throw new RangeError('migrate: migrating folios on MGLRU lists is not modelled (use the classic LRU)');
  const pfn = mm.lookup(hva);
  if (pfn === null) return null;
  const src = f.folioOf(pfn);
  const si = f.idx(src);
  if ((f.flags[si] & PG_ksm) !== 0) return null; // a KSM page: its sharers' rmap (rmap_walk_ksm) is not modelled
  if (f.mapcount[si] > 1) return null; // shared with a forked child: try_to_migrate of every mapping is not modelled, the folio stays
  if (f.order(src) !== 0) throw new RangeError('migrate: large folios are not modelled');
  if ((f.flags[si] & PG_swapcache) !== 0) throw new RangeError('migrate: swap-cache folios are not modelled');
  const vma = folioVma(f, src);
  if (vma === null || vma.mm !== mm || f.mapcount[si] !== 1) throw new RangeError('migrate: only a folio mapped once by this mm is modelled');
  // isolate_lru_page: off the LRU with a reference.
  const wasOn = f.lruDel(src) >= 0;
  f.get(src);
  const dst = mm.pages.allocPage() / PAGE_SIZE;
  const di = f.idx(dst);
  const addr = vmaAddress(vma, f.index[si]);
  const mem = mm.mem;
  const pt = mm.pt;

  // try_to_migrate -> try_to_migrate_one.
  const range = mmuNotifierRangeInit(MmuNotifierEvent.Clear, MMU_NOTIFIER_RANGE_BLOCKABLE, addr, addr + PAGE_SIZE);
  yield* mm.notifiers.invalidateRangeStart(range);
  pt.walk(addr);
  const entry = pt.entry;
  if (!pt.present || f.folioOf(entryAddr(pt.lo, pt.hi) / PAGE_SIZE) !== src) throw new Error('assertion: the folio is not mapped where its rmap says');
  mem.xchg64(entry, 0, 0); // ptep_clear_flush
  const lo = mem.lo;
  mm.cpu.flushAll();
  mm.notifiers.archInvalidateSecondaryTlbs(addr, addr + PAGE_SIZE);
  if ((lo & _PAGE_DIRTY) !== 0) f.set(src, PG_dirty);
  const type = (lo & _PAGE_RW) !== 0 ? SWP_MIGRATION_WRITE : SWP_MIGRATION_READ_EXCLUSIVE;
  const offset = src + ((lo & _PAGE_ACCESSED) !== 0 ? SWP_MIG_YOUNG : 0) + ((lo & _PAGE_DIRTY) !== 0 ? SWP_MIG_DIRTY : 0);
  const mlo = swpEntryLo(type, offset, (lo & _PAGE_SOFT_DIRTY) !== 0 ? _PAGE_SWP_SOFT_DIRTY : 0);
  const mhi = swpEntryHi(type, offset);
  mem.store64(entry, mlo, mhi);
  f.mapcount[si]--; // folio_remove_rmap_pte
  f.refcount[si]--; // the mapping's reference
  yield* mm.notifiers.invalidateRangeEnd(range);
  const migrationEntry = (BigInt(mhi >>> 0) << 32n) | BigInt(mlo >>> 0);
  observe?.('migration-entry', migrationEntry);

  // move_to_new_folio: folio_migrate_mapping (only the isolation reference may remain) and the copy.
  if (f.refcount[si] !== 1) throw new Error(`assertion: migrating folio 0x${src.toString(16)} with refcount ${f.refcount[si]}`);
  f.token[di] = f.token[si]; // folio_copy
  f.flags[di] = (f.flags[di] & ~MIGRATED_FLAGS) | (f.flags[si] & MIGRATED_FLAGS);
  f.mapping[di] = f.mapping[si];
  f.index[di] = f.index[si];
  f.flags[si] &= ~(PG_active | PG_unevictable | PG_dirty | PG_referenced | PG_workingset | PG_young | PG_idle);

  // remove_migration_ptes -> remove_migration_pte.
  const m = decodeMigrationEntry(mlo, mhi)!;
  let nlo = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED; // mk_pte(new, vm_page_prot)
  if (m.softDirty) nlo |= _PAGE_SOFT_DIRTY;
  if (m.type === SWP_MIGRATION_WRITE && vma.writable) nlo |= _PAGE_RW;
  if (!m.young) nlo &= ~_PAGE_ACCESSED;
  if (m.dirty && f.test(dst, PG_dirty)) nlo |= _PAGE_DIRTY | _PAGE_SOFT_DIRTY; // pte_mkdirty
  mem.store64(entry, pfnLo(dst, nlo), pfnHi(dst) | _PAGE_NX_HI);
  f.mapcount[di] = 1; // folio_add_anon_rmap_pte (RMAP_EXCLUSIVE)
  // The new folio: the allocation's reference became the mapping's; on the LRU as the old one was.
  if (wasOn) f.lruAdd(dst, f.test(dst, PG_active) ? LruList.ActiveAnon : LruList.InactiveAnon);
  // The old folio: the isolation reference was the last.
  mm.folioPut(src);
  return { oldPfn: src, newPfn: dst, migrationEntry };
}
