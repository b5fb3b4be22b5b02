/**
 * The standard layout the hardware tests use with test/support/setup.ts, and
 * architectural register bits written out (SDM vol. 3 ch. 2) so that tests do
 * not trust the model's own constants.
 */

export const CR0_WP = 1 << 16;
export const CR4_PGE = 1 << 7;
export const CR4_LA57 = 1 << 12;
export const CR4_PCIDE = 1 << 17;
export const CR4_SMEP = 1 << 20;
export const CR4_SMAP = 1 << 21;
export const CR4_PKE = 1 << 22;
export const CR4_PKS = 1 << 24;
export const EFER_NXE = 1 << 11;

/** LA with PML4 index 1, PDPT index 1, PD index 3, PT index 1, offset 0x123. */
export const LA = 0x0000_0080_4060_1123n;
export const LA_PAGE = LA & ~0xfffn;
export const LA_HEX = '0x8040601123';
/** gPA of the data page (identity-mapped in EPT/NPT, so also its hPA). */
export const DATA = 0x80_0000;

/** hPAs (= gPAs) of the guest entries that translate LA after `map(LA_PAGE, DATA)`. */
export const G_PML4E = 0x10_0008;
export const G_PDPTE = 0x10_1008;
export const G_PDE = 0x10_2018;
export const G_PTE = 0x10_3008;

/** hPAs of the EPT/NPT entries that translate the data page's gPA 0x800000. */
export const E_PML4E = 0x1000_0000;
export const E_PDPTE = 0x1000_1000;
export const E_PDE_DATA = 0x1000_2020; // PD index 4
export const E_PTE_DATA = 0x1000_7000; // PT of gPA 0x800000-0x9fffff, index 0
