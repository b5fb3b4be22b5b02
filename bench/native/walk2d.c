/*
 * Native reference for issue 2's hardware benchmarks, to calibrate the
 * targets on the machine at hand: the same workload as bench/hw_workload.ts
 * (same xorshift32 seeds and shuffles, so the same tables and addresses),
 * walked by plain C.
 *
 *   walk2d_native_ns_per_op: full 4-over-4 EPT walks (24 references) of
 *     uniformly random 8-byte reads, no caches; EPT misconfiguration and
 *     permission checks, guest present/reserved/permission checks, A/D
 *     already set (checked, never written).
 *   tlbhit_native_ns_per_op: a 1536-entry 12-way TLB tagged by VPID, PCID
 *     and EPTP, reads over 32 pages, all hits after warm-up.
 *
 * Memory is sparse as in PhysMem: a frame is allocated on first write, found
 * through a flat frame-number table. Built with -DFLAT, host memory is one
 * flat mapping instead (lines end _native_flat_): no frame lookup, the floor
 * for any walker on the machine. Build and run both: npm run bench:native.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef FLAT
#define VARIANT "_flat"
#else
#define VARIANT ""
#endif

#define PAGES 262144             /* 1 GiB / 4 KiB */
#define GUEST_TABLE_FRAMES 515   /* PML4, PDPT, PD, 512 PTs */
#define DATA_GPA_FRAME 0x40000u
#define HOST_BASE_FRAME 0x100000u
#define EPT_BASE 0x200000000ull
#define MAXPHY_MASK 0x3ffffffff000ull /* bits 45:12 (MAXPHYADDR 46) */
#define RSVD_HI 0x000fc00000000000ull  /* bits 51:46 */

static uint32_t rng_state;
static uint32_t next_rand(void) {
  uint32_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return rng_state = x;
}

#ifdef FLAT
/*
 * FLAT: host memory is one flat mapping (hpa = offset), committed by the OS
 * on first touch: no frame lookup at all, the fastest a walker can be here.
 */
#include <sys/mman.h>
static uint8_t *hostmem;
static uint64_t *entry(uint64_t hpa, int create) {
  (void)create;
  return (uint64_t *)(hostmem + hpa);
}
static uint64_t load(uint64_t hpa) { return *entry(hpa, 0); }
#else
static int32_t *frame_slot; /* frame number -> slot + 1 */
static uint64_t *arena;
static int32_t frames = 0;

static uint64_t *entry(uint64_t hpa, int create) {
  uint64_t fn = hpa >> 12;
  int32_t s = frame_slot[fn];
  if (s == 0) {
    if (!create) return NULL;
    s = frame_slot[fn] = ++frames;
  }
  return &arena[((uint64_t)(s - 1) << 9) + ((hpa & 0xfff) >> 3)];
}
static uint64_t load(uint64_t hpa) {
  uint64_t *p = entry(hpa, 0);
  return p ? *p : 0;
}
#endif
static void store(uint64_t hpa, uint64_t v) { *entry(hpa, 1) = v; }

static uint64_t eptp;
static uint64_t out_hpa;

/* EPT walk of one guest-physical address: 0 = ok (hpa in out_hpa), 1 = violation, 2 = misconfiguration. */
static int ept_walk(uint64_t gpa, int need) {
  uint64_t table = eptp & MAXPHY_MASK, e = 0;
  int rights = 7;
  for (int level = 4; level >= 1; level--) {
    e = load(table + (((gpa >> (12 + 9 * (level - 1))) & 511) << 3));
    if ((e & 7) == 0) return 1;
    if ((e & 3) == 2 || (e & RSVD_HI)) return 2;
    int leaf = level == 1 || (e & 0x80);
    if (leaf) {
      int mt = (e >> 3) & 7;
      if (mt == 2 || mt == 3 || mt == 7) return 2;
    } else if (e & 0x78) {
      return 2;
    }
    if (!(e & 0x100)) return 3; /* accessed flag clear: would be set (never in this workload) */
    rights &= (int)(e & 7);
    if (leaf) break;
    table = e & MAXPHY_MASK;
  }
  if ((rights & need) != need) return 1;
  out_hpa = (e & MAXPHY_MASK) | (gpa & 0xfff);
  return 0;
}

/* 4-level guest walk under EPT; returns the host address or 0 on any fault. */
static uint64_t walk2d(uint64_t la) {
  uint64_t table = 0 /* CR3 */, e = 0;
  int us = 1, rw = 1;
  for (int level = 4; level >= 1; level--) {
    /* guest paging-structure reads are EPT writes when EPT A/D is on */
    if (ept_walk(table + (((la >> (12 + 9 * (level - 1))) & 511) << 3), 3)) return 0;
    e = load(out_hpa);
    if (!(e & 1)) return 0;
    if (e & RSVD_HI) return 0;
    if (!(e & 0x20)) return 0; /* A clear: would be set */
    us &= (int)(e >> 2) & 1;
    rw &= (int)(e >> 1) & 1;
    if (level == 1) break;
    if (e & 0x80) return 0; /* no large pages in this workload */
    table = e & MAXPHY_MASK;
  }
  if (!us) return 0;
  if (ept_walk((e & MAXPHY_MASK) | (la & 0xfff), 1)) return 0;
  return out_hpa;
}

/* Set-associative TLB of final translations, tagged (VPID, PCID, EPTP). */
#define TLB_SETS 128
#define TLB_WAYS 12
struct tlb_entry {
  uint64_t vpn;
  uint64_t pfn;
  uint32_t tag; /* vpid << 12 | pcid */
  uint32_t rights; /* bit 0 valid, 1 write, 2 user, 3 exec */
  uint64_t eptp;
};
static struct tlb_entry tlb[TLB_SETS][TLB_WAYS];
static unsigned tlb_victim[TLB_SETS];

static uint64_t tlb_access(uint64_t la, uint32_t tag, uint32_t need) {
  uint64_t vpn = la >> 12;
  struct tlb_entry *set = tlb[vpn & (TLB_SETS - 1)];
  for (int w = 0; w < TLB_WAYS; w++) {
    struct tlb_entry *t = &set[w];
    if (t->vpn == vpn && t->tag == tag && t->eptp == eptp && (t->rights & need) == need) return (t->pfn << 12) | (la & 0xfff);
  }
  uint64_t hpa = walk2d(la);
  if (hpa == 0) return 0;
  struct tlb_entry *t = &set[tlb_victim[vpn & (TLB_SETS - 1)]++ % TLB_WAYS];
  t->vpn = vpn;
  t->pfn = hpa >> 12;
  t->tag = tag;
  t->rights = 1 | 2 | 4;
  t->eptp = eptp;
  return hpa;
}

static int32_t *shuffled(int n) {
  int32_t *a = malloc(sizeof *a * n);
  for (int i = 0; i < n; i++) a[i] = i;
  for (int i = n - 1; i > 0; i--) {
    int j = next_rand() % (uint32_t)(i + 1);
    int32_t t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
  return a;
}

static uint32_t *random_offsets(int n, uint32_t span, uint32_t seed) {
  uint32_t *o = malloc(sizeof *o * n);
  rng_state = seed;
  for (int i = 0; i < n; i++) o[i] = (next_rand() % span) & ~7u;
  return o;
}

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(void) {
#ifdef FLAT
  hostmem = mmap(0, 9ull << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (hostmem == MAP_FAILED) { perror("mmap"); return 1; }
#else
  frame_slot = calloc(1u << 22, sizeof *frame_slot);
  arena = calloc((size_t)4096 * 512, sizeof *arena);
#endif
  int n = GUEST_TABLE_FRAMES + PAGES;
  uint32_t *gframes = malloc(sizeof *gframes * n);
  for (int i = 0; i < GUEST_TABLE_FRAMES; i++) gframes[i] = i;
  for (int i = 0; i < PAGES; i++) gframes[GUEST_TABLE_FRAMES + i] = DATA_GPA_FRAME + i;
  rng_state = 0x5eed;
  int32_t *host_perm = shuffled(n);
  uint64_t *to_host = calloc(DATA_GPA_FRAME + PAGES, sizeof *to_host);
  for (int i = 0; i < n; i++) to_host[gframes[i]] = HOST_BASE_FRAME + host_perm[i];
#define HPA_OF(gpa) (to_host[(gpa) >> 12] * 4096 + ((gpa) & 0xfff))

  /* guest tables: gVA [1 GiB, 2 GiB) onto shuffled data frames, P|W|U|A|D everywhere */
  store(HPA_OF(0), 0x1000 | 0x27);
  store(HPA_OF(0x1000 + 8), 0x2000 | 0x27);
  int32_t *data_perm = shuffled(PAGES);
  for (uint64_t t = 0; t < 512; t++) {
    store(HPA_OF(0x2000 + t * 8), (0x3000 + t * 4096) | 0x27);
    for (uint64_t e = 0; e < 512; e++)
      store(HPA_OF(0x3000 + t * 4096 + e * 8), (uint64_t)(DATA_GPA_FRAME + data_perm[t * 512 + e]) * 4096 + 0x67);
  }

  /* EPT: every guest frame in use, 4K leaves RWX|WB|A|D (0x337), non-leaf RWX|A (0x107), tables allocated in the same order as the TS */
  uint64_t next_table = EPT_BASE, root = next_table;
  next_table += 4096;
  uint64_t *pdpt = calloc(512, 8), *pd = calloc(512 * 512, 8), *pt = calloc((DATA_GPA_FRAME + PAGES) / 512 + 1, 8);
  for (int i = 0; i < n; i++) {
    uint64_t g = gframes[i], i4 = (g >> 27) & 511, i3 = (g >> 18) & 511, i2 = (g >> 9) & 511;
    if (!pdpt[i4]) { pdpt[i4] = next_table; next_table += 4096; store(root + i4 * 8, pdpt[i4] + 0x107); }
    if (!pd[i4 * 512 + i3]) { pd[i4 * 512 + i3] = next_table; next_table += 4096; store(pdpt[i4] + i3 * 8, pd[i4 * 512 + i3] + 0x107); }
    if (!pt[g >> 9]) { pt[g >> 9] = next_table; next_table += 4096; store(pd[i4 * 512 + i3] + i2 * 8, pt[g >> 9] + 0x107); }
    store(pt[g >> 9] + (g & 511) * 8, to_host[g] * 4096 + 0x337);
  }
  eptp = root + 0x40 + (3 << 3) + 6;

  const uint64_t gva = 0x40000000ull;
  int N = 1 << 20;
  uint32_t *offs = random_offsets(N, 1u << 30, 42);
  uint64_t check = walk2d(gva + offs[0]);
  if (check == 0) { fprintf(stderr, "walk2d set-up is wrong\n"); return 1; }
  uint64_t sink = 0;
  double best = 1e30;
  for (int rep = 0; rep < 7; rep++) {
    double t0 = now_ns();
    for (int i = 0; i < N; i++) sink += walk2d(gva + offs[i]);
    double ns = (now_ns() - t0) / N;
    if (ns < best) best = ns;
  }
  printf("walk2d_native%s_ns_per_op=%.1f\n", VARIANT, best);

  int M = 1 << 16;
  uint32_t *hot = random_offsets(M, 32 * 4096, 43);
  for (int i = 0; i < M; i++) sink += tlb_access(gva + hot[i], 1, 1);
  best = 1e30;
  for (int rep = 0; rep < 7; rep++) {
    double t0 = now_ns();
    for (int r = 0; r < 64; r++)
      for (int i = 0; i < M; i++) sink += tlb_access(gva + hot[i], 1, 1);
    double ns = (now_ns() - t0) / (64.0 * M);
    if (ns < best) best = ns;
  }
  printf("tlbhit_native%s_ns_per_op=%.2f\n", VARIANT, best);
  fprintf(stderr, "first walk hpa=0x%llx, sink %llu\n", (unsigned long long)check, (unsigned long long)sink);
  return 0;
}
