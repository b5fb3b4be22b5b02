/**
 * Packed rights kept in TLB and paging-structure-cache entries (SDM 4.10.2.2:
 * cache the rights, not pass/fail, and evaluate WP/SMEP/SMAP/PK at use).
 */
/** Guest R/W AND over the entries used. */
export const RT_RW = 1 << 0;
/** Guest U/S AND. */
export const RT_US = 1 << 1;
/** Guest XD OR (only with EFER.NXE=1). */
export const RT_XD = 1 << 2;
/** A write may use this entry without a walk: guest D=1 and, when tracked, the second dimension's D=1. */
export const RT_DIRTY = 1 << 3;
/** Protection key (bits 7:4). */
export const RT_PKEY_SHIFT = 4;
/** Second dimension (EPT R/W/X AND; NPT: user-readable, writable, executable). */
export const RT_ER = 1 << 8;
export const RT_EW = 1 << 9;
export const RT_EX = 1 << 10;
export const RT_E_SHIFT = 8;
/** Second-dimension leaf D set (or not tracked): a write-type use needs no walk. */
export const RT_EDIRTY = 1 << 11;
