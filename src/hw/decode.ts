/** Names of the bits of error codes, exit qualifications and entries, for people. */

function names(value: number, table: readonly (readonly [number, string])[]): string[] {
  const out: string[] = [];
  for (const [bit, name] of table) if (Math.floor(value / 2 ** bit) % 2 === 1) out.push(name);
  return out;
}

/** #PF error code (SDM 4.7). */
export const PF_BITS = [[0, 'P'], [1, 'W'], [2, 'U'], [3, 'RSVD'], [4, 'I/D'], [5, 'PK'], [6, 'SS'], [15, 'SGX']] as const;
/** EPT-violation exit qualification (SDM table 27-7). */
export const EPT_QUAL_BITS = [
  [0, 'RD'], [1, 'WR'], [2, 'FETCH'], [3, 'PERM_R'], [4, 'PERM_W'], [5, 'PERM_X'], [6, 'PERM_XU'],
  [7, 'GLA_VALID'], [8, 'TRANSLATED'], [12, 'NMI_UNBLOCK'],
] as const;
/** #NPF EXITINFO1 (APM 15.25.6). */
export const NPF_BITS = [[0, 'P'], [1, 'W'], [2, 'U'], [3, 'RSVD'], [4, 'I/D'], [32, 'FINAL'], [33, 'GUEST_PAGE']] as const;

export function pfErrorNames(code: number): string[] {
  return names(code, PF_BITS);
}
export function eptQualNames(q: number): string[] {
  return names(q, EPT_QUAL_BITS);
}
export function npfNames(e1: number): string[] {
  return names(e1, NPF_BITS);
}

/** Each bit with its meaning, for the inspector's bit-by-bit decoding. */
export function bitByBit(value: number, table: readonly (readonly [number, string])[]): string[] {
  return table.map(([bit, name]) => `bit ${bit} ${name}=${Math.floor(value / 2 ** bit) % 2}`);
}

/**
 * Flags of a guest (or NPT) entry, upper case when set, as the Bochs
 * debugger's `page` command prints them. `keys`: show the protection key
 * (NPT entries have none: protection keys never apply to nested walks).
 */
export function guestEntryFlags(lo: number, hi: number, level: number, keys = true): string {
  const leaf = level === 1 || (level <= 3 && (lo & 0x80) !== 0);
  const f = (set: boolean, name: string) => (set ? name.toUpperCase() : name.toLowerCase());
  const parts = [f(hi < 0, 'xd')];
  if (leaf) {
    if (keys) parts.push(`pk=${(hi >>> 27) & 15}`);
    parts.push(f((lo & 0x100) !== 0, 'g'), f(level === 1 ? (lo & 0x80) !== 0 : (lo & 0x1000) !== 0, 'pat'), f((lo & 0x40) !== 0, 'd'));
  }
  if (level > 1) parts.push(f((lo & 0x80) !== 0, 'ps'));
  parts.push(f((lo & 0x20) !== 0, 'a'), f((lo & 0x10) !== 0, 'pcd'), f((lo & 0x8) !== 0, 'pwt'), f((lo & 4) !== 0, 'u'), f((lo & 2) !== 0, 'w'), f((lo & 1) !== 0, 'p'));
  return parts.join(' ');
}

/** Flags of an EPT entry (SDM 28.2.2), upper case when set. */
export function eptEntryFlags(lo: number, _hi: number, level: number): string {
  const leaf = level === 1 || (level <= 3 && (lo & 0x80) !== 0);
  const f = (set: boolean, name: string) => (set ? name.toUpperCase() : name.toLowerCase());
  const parts = [f((lo & 0x400) !== 0, 'xu')];
  if (leaf) parts.push(f((lo & 0x200) !== 0, 'd'));
  parts.push(f((lo & 0x100) !== 0, 'a'));
  if (level > 1 && level <= 3) parts.push(f((lo & 0x80) !== 0, 'ps'));
  if (leaf) parts.push(f((lo & 0x40) !== 0, 'ipat'), `mt=${(lo >>> 3) & 7}`);
  parts.push(f((lo & 4) !== 0, 'x'), f((lo & 2) !== 0, 'w'), f((lo & 1) !== 0, 'r'));
  return parts.join(' ');
}
