/**
 * 64-bit values between their two forms: bigint for public APIs, tests and
 * printing, and the two signed 32-bit halves that memory and the hot paths use.
 */

/** Bits 31:0 of v, as a signed 32-bit number. */
export function lo32(v: bigint): number {
  return Number(v & 0xffffffffn) | 0;
}

/** Bits 63:32 of v, as a signed 32-bit number. */
export function hi32(v: bigint): number {
  return Number((v >> 32n) & 0xffffffffn) | 0;
}

/** The unsigned 64-bit value with these halves (signed or unsigned). */
export function join64(lo: number, hi: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}
