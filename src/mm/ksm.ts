/**
 * Kernel samepage merging (mm/ksm.c) for the VMM's anonymous memory: pages
 * whose content tokens are equal are merged into one write-protected KSM
 * folio that every sharer maps read-only; a write to a sharer then breaks
 * COW (MmStruct.wpPageCopy, mm/memory.c wp_page_copy). mm.md section 6:
 * "KSM write-protect / replace: CLEAR, one page".
 *
 * Mirrored:
 * - write_protect_page: a CLEAR invalidation over the page; inside it the
 *   PTE is cleared and flushed (ptep_clear_flush), the reference check
 *   (mapcount + swap cache == refcount: nobody else, such as an O_DIRECT
 *   GUP pin, holds the folio) refuses a busy page by putting the entry
 *   back, a dirty PTE marks the folio dirty, and the entry is put back
 *   clean and read-only. Done when the PTE is writable or dirty or the
 *   folio is exclusive (every non-KSM anon folio here is).
 * - replace_page: a second CLEAR invalidation over the page; the PTE, if it
 *   is still what write_protect_page left, is cleared and flushed and
 *   replaced by the KSM folio mapped with vm_page_prot (read-only, young,
 *   clean), the KSM folio gains a reference and a mapping, the old folio
 *   loses its mapping and its reference (freed on the last), all before
 *   invalidate_range_end.
 * - try_to_merge_one_page: an anon, unlocked, order-0 folio is write
 *   protected; with no KSM page yet it becomes one (folio_set_stable_node:
 *   PG_ksm and a stable node as its mapping, folio_mark_accessed, marked
 *   dirty so reclaim would write it out), else it is replaced when its
 *   content is identical (pages_identical).
 * - try_to_merge_two_pages: the page being scanned is made the KSM page
 *   first, then the unstable tree's page is merged into it.
 * - cmp_and_merge_page over a range, in address order (one ksmd pass with
 *   MADV_MERGEABLE on the range): the stable tree is searched first (merge
 *   into the KSM page of that content), then the unstable tree (merge the
 *   two pages and insert the new KSM page in the stable tree), else the page
 *   goes into the unstable tree.
 *
 * Model choices: content is the frame's token (pages_identical compares
 * tokens); the checksum-unchanged-since-last-scan rule (a page enters the
 * unstable tree only on its second scan) is left out, so one pass merges
 * what two ksmd passes would; stable node chains (max_page_sharing), the
 * zero-page option (use_zero_pages) and per-NUMA trees are not modelled.
 * KSM folios have no rmap walk here (rmap_walk_ksm): reclaim keeps them
 * (shrink_folio_list puts them back), migration skips them and page_idle
 * cannot see their sharers. Swap-cache and large folios are not merged.
 */
import { PG_anon, PG_dirty, PG_ksm, PG_locked, PG_swapcache, type FolioTable } from './folio.js';
import { PAGE_SIZE, type MmStruct } from './mm.js';
import { MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, mmuNotifierRangeInit, type Program } from './mmu_notifier.js';
import { _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_NX_HI, _PAGE_PRESENT, _PAGE_RW, _PAGE_USER, pfnHi, pfnLo } from './pgtable.js';

/** struct ksm_stable_node: the content it stands for and its KSM page; folio->mapping of that page. */
export interface KsmStableNode {
  readonly ksm: true;
  /** Its id in FolioTable.mappings (what folio->mapping holds). */
  id: number;
  kpfn: number;
  token: number;
}

/** vm_page_prot of a private writable mapping (PAGE_COPY: present, user, accessed, NX): how replace_page maps the KSM page. */
const KSM_PTE_LO = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED;

/** The stable tree, per struct page array (one host): content token -> stable node. */
const stableTrees = new WeakMap<FolioTable, Map<number, KsmStableNode>>();

function stableTree(f: FolioTable): Map<number, KsmStableNode> {
  let t = stableTrees.get(f);
  if (t === undefined) stableTrees.set(f, (t = new Map()));
  return t;
}

/** Whether the folio at head is a KSM page (folio_test_ksm). */
export function folioTestKsm(f: FolioTable, head: number): boolean {
  return f.test(head, PG_ksm);
}

/**
 * ksm_get_folio: the stable node's KSM page if it is still that node's
 * (the folio may have been freed after its last sharer broke COW or
 * unmapped it); a stale node is dropped from the tree.
 */
function ksmGetFolio(f: FolioTable, node: KsmStableNode): number | null {
  const i = f.idx(node.kpfn);
  if ((f.flags[i] & PG_ksm) !== 0 && f.mapping[i] === node.id && f.refcount[i] > 0) return node.kpfn;
  const t = stableTree(f);
  if (t.get(node.token) === node) t.delete(node.token);
  return null;
}

/** Why the page at hva cannot be a merge candidate, or null. */
export function ksmUnmergeable(mm: MmStruct, hva: number): string | null {
  const vma = mm.findVma(hva);
  if (vma === null) return 'not mapped';
  const pfn = mm.lookup(hva);
  if (pfn === null) return 'not resident';
  const f = mm.folios;
  const head = f.folioOf(pfn);
  if (!f.test(head, PG_anon)) return 'not anonymous';
  if (f.order(head) !== 0) return 'a large folio (splitting is not modelled)';
  if (f.test(head, PG_swapcache)) return 'in the swap cache (not modelled)';
  return null;
}

/** The content token of the page mapped at hva (the caller checked that it is resident). */
function tokenOf(mm: MmStruct, hva: number): number {
  const f = mm.folios;
  return f.token[f.idx(mm.lookup(hva)!)];
}

/** The PTE write_protect_page leaves, for replace_page's pte_same check. */
interface OrigPte {
  lo: number;
  hi: number;
}

/**
 * write_protect_page for the 4K page at hva mapping folio `head`: one CLEAR
 * pair over the page. Returns the entry it leaves, or null (not mapped
 * there any more, or busy: extra references).
 */
export function* writeProtectPage(mm: MmStruct, hva: number, head: number): Program<OrigPte | null> {
  const addr = Math.floor(hva / PAGE_SIZE) * PAGE_SIZE;
  const f = mm.folios;
  const i = f.idx(head);
  const mem = mm.mem;
  const pt = mm.pt;
  const range = mmuNotifierRangeInit(MmuNotifierEvent.Clear, MMU_NOTIFIER_RANGE_BLOCKABLE, addr, addr + PAGE_SIZE);
  yield* mm.notifiers.invalidateRangeStart(range);
  let res: OrigPte | null = null;
  pt.walk(addr);
  const pfn = mm.lookup(addr);
  if (pfn !== null && f.folioOf(pfn) === head && pt.level === 1) {
    const entry = pt.entry;
    let lo = pt.lo;
    const hi = pt.hi;
    const exclusive = (f.flags[i] & PG_ksm) === 0; // PageAnonExclusive: every non-KSM anon folio is here (no fork)
    res = { lo, hi };
    if ((lo & (_PAGE_RW | _PAGE_DIRTY)) !== 0 || exclusive) {
      mem.xchg64(entry, 0, 0); // ptep_clear_flush
      lo = mem.lo;
      mm.cpu.flushAll();
      mm.notifiers.archInvalidateSecondaryTlbs(addr, addr + PAGE_SIZE);
      const swapped = (f.flags[i] & PG_swapcache) !== 0 ? 1 : 0;
      if (f.mapcount[i] + swapped !== f.refcount[i]) {
        mem.store64(entry, lo, hi); // busy: put the entry back as it was
        res = null;
      } else {
        if ((lo & _PAGE_DIRTY) !== 0) f.set(head, PG_dirty);
        lo &= ~(_PAGE_DIRTY | _PAGE_RW); // pte_mkclean, pte_wrprotect
        mem.store64(entry, lo, hi);
        res = { lo, hi };
      }
    }
  }
  yield* mm.notifiers.invalidateRangeEnd(range);
  return res;
}

/**
 * replace_page: one CLEAR pair over the page at hva; if its PTE is still
 * `orig`, it maps the KSM page kpfn read-only instead of folio `head`, whose
 * mapping and reference go (freed on the last). False when the PTE changed.
 */
export function* replacePage(mm: MmStruct, hva: number, head: number, kpfn: number, orig: OrigPte): Program<boolean> {
  const addr = Math.floor(hva / PAGE_SIZE) * PAGE_SIZE;
  const f = mm.folios;
  const mem = mm.mem;
  const pt = mm.pt;
  const range = mmuNotifierRangeInit(MmuNotifierEvent.Clear, MMU_NOTIFIER_RANGE_BLOCKABLE, addr, addr + PAGE_SIZE);
  yield* mm.notifiers.invalidateRangeStart(range);
  pt.walk(addr);
  let ok = false;
  if (pt.lo === orig.lo && pt.hi === orig.hi) {
    const entry = pt.entry;
    const k = f.idx(kpfn);
    f.refcount[k]++; // folio_get
    f.mapcount[k]++; // folio_add_anon_rmap_pte
    mem.xchg64(entry, 0, 0); // ptep_clear_flush
    mm.cpu.flushAll();
    mm.notifiers.archInvalidateSecondaryTlbs(addr, addr + PAGE_SIZE);
    mem.store64(entry, pfnLo(kpfn, KSM_PTE_LO), pfnHi(kpfn) | _PAGE_NX_HI);
    f.mapcount[f.idx(head)]--; // folio_remove_rmap_pte
    mm.folioPut(head);
    ok = true;
  }
  yield* mm.notifiers.invalidateRangeEnd(range);
  return ok;
}

/**
 * try_to_merge_one_page for the page at hva: with kpfn null it becomes the
 * KSM page itself (a new stable node with its token); otherwise it is
 * replaced by kpfn when the contents match. True when merged.
 */
export function* tryToMergeOnePage(mm: MmStruct, hva: number, kpfn: number | null): Program<boolean> {
  const f = mm.folios;
  const pfn = mm.lookup(hva);
  if (pfn === null) return false;
  const head = f.folioOf(pfn);
  if (head === kpfn) return true; // already that KSM page
  const i = f.idx(head);
  if ((f.flags[i] & PG_anon) === 0 || (f.flags[i] & PG_locked) !== 0 || f.order(head) !== 0) return false;
  f.flags[i] |= PG_locked; // folio_trylock
  try {
    const orig = yield* writeProtectPage(mm, hva, head);
    if (orig === null) return false;
    if (kpfn === null) {
      // folio_set_stable_node + stable_tree_insert
      const node: KsmStableNode = { ksm: true, id: 0, kpfn: head, token: f.token[i] };
      node.id = f.registerMapping(node);
      f.mapping[i] = node.id;
      f.flags[i] |= PG_ksm;
      stableTree(f).set(node.token, node);
      f.markAccessed(head);
      f.set(head, PG_dirty);
      return true;
    }
    if (f.token[i] !== f.token[f.idx(kpfn)]) return false; // pages_identical
    return yield* replacePage(mm, hva, head, kpfn, orig);
  } finally {
    f.flags[i] &= ~PG_locked;
  }
}

/** What a merge did, for tests and the trace verb. */
export interface KsmMergeResult {
  /** PTEs that now map a KSM page and did not before. */
  merged: number;
  /** Frames freed (the replaced pages' folios, unless still referenced). */
  freed: number[];
}

/**
 * Merges the pages at hvas into one KSM page: an error string, changing
 * nothing, when fewer than two distinct pages are given, one cannot be a
 * candidate, or their contents differ (KSM never pairs pages whose
 * contents differ). The KSM page is one of them that is already KSM, else
 * the first is made one (try_to_merge_two_pages with the first as the
 * page scanned); the others are merged into it in order
 * (try_to_merge_with_ksm_page).
 */
export function* ksmMergePages(mm: MmStruct, hvas: readonly number[]): Program<KsmMergeResult | string> {
  const pages = [...new Set(hvas.map((h) => Math.floor(h / PAGE_SIZE) * PAGE_SIZE))];
  if (pages.length < 2) return 'ksm_merge: needs two distinct pages';
  for (const h of pages) {
    const why = ksmUnmergeable(mm, h);
    if (why !== null) return `ksm_merge: hva 0x${h.toString(16)} is ${why}`;
  }
  const t0 = tokenOf(mm, pages[0]);
  const other = pages.find((h) => tokenOf(mm, h) !== t0);
  if (other !== undefined) return `ksm_merge: contents differ: hva 0x${pages[0].toString(16)} holds token ${t0}, hva 0x${other.toString(16)} holds ${tokenOf(mm, other)}`;
  const f = mm.folios;
  const k = pages.find((h) => folioTestKsm(f, f.folioOf(mm.lookup(h)!)));
  const res: KsmMergeResult = { merged: 0, freed: [] };
  let kpfn: number | null = k === undefined ? null : f.folioOf(mm.lookup(k)!);
  for (const h of k === undefined ? pages : pages.filter((x) => x !== k)) {
    const before = f.folioOf(mm.lookup(h)!);
    if (yield* tryToMergeOnePage(mm, h, kpfn)) {
      res.merged++;
      if (kpfn === null) kpfn = before;
      else if (f.refcount[f.idx(before)] === 0) res.freed.push(before);
    }
  }
  return res;
}

/** One ksmd pass over a range: pages scanned and merged, and the frames freed. */
export interface KsmScanResult extends KsmMergeResult {
  scanned: number;
}

/**
 * One ksmd pass (cmp_and_merge_page per page, in address order) over
 * [start, end) of mm: resident candidates are matched by content against
 * the stable tree, then against the unstable tree built during the pass.
 */
export function* ksmScan(mm: MmStruct, start: number, end: number): Program<KsmScanResult> {
  const f = mm.folios;
  const stable = stableTree(f);
  const unstable = new Map<number, number>(); // token -> hva
  const res: KsmScanResult = { scanned: 0, merged: 0, freed: [] };
  for (let hva = start; hva < end; hva += PAGE_SIZE) {
    if (ksmUnmergeable(mm, hva) !== null) continue;
    res.scanned++;
    const head = f.folioOf(mm.lookup(hva)!);
    if (folioTestKsm(f, head)) continue; // already merged
    const token = f.token[f.idx(head)];
    const node = stable.get(token);
    const kpfn = node === undefined ? null : ksmGetFolio(f, node);
    if (kpfn !== null) {
      // stable_tree_search found it: try_to_merge_with_ksm_page
      if (yield* tryToMergeOnePage(mm, hva, kpfn)) {
        res.merged++;
        if (f.refcount[f.idx(head)] === 0) res.freed.push(head);
      }
      continue;
    }
    const tree = unstable.get(token);
    if (tree === undefined) {
      unstable.set(token, hva);
      continue;
    }
    // unstable_tree_search_insert found tree: try_to_merge_two_pages(page, tree_page)
    const treeHead = f.folioOf(mm.lookup(tree)!);
    if (!(yield* tryToMergeOnePage(mm, hva, null))) continue;
    res.merged++;
    unstable.delete(token);
    if (yield* tryToMergeOnePage(mm, tree, head)) {
      res.merged++;
      if (f.refcount[f.idx(treeHead)] === 0) res.freed.push(treeHead);
    }
  }
  return res;
}

/** /sys/kernel/mm/ksm: pages_shared (KSM pages in use) and pages_sharing (the further PTEs mapping them). */
export function ksmCounts(f: FolioTable): { pagesShared: number; pagesSharing: number } {
  let pagesShared = 0;
  let pagesSharing = 0;
  for (const node of [...stableTree(f).values()]) {
    const k = ksmGetFolio(f, node);
    if (k === null) continue;
    const m = f.mapcount[f.idx(k)];
    if (m <= 0) continue;
    pagesShared++;
    pagesSharing += m - 1;
  }
  return { pagesShared, pagesSharing };
}
