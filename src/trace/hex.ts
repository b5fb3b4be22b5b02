/** The contract's 64-bit notation: "0x" and lower-case hex without leading zeros. */

/** A non-negative integer below 2^53. */
export function hexNum(n: number): string {
  return '0x' + n.toString(16);
}

/** A 64-bit value given as two 32-bit halves (signed or unsigned). */
export function hexPair(hi: number, lo: number): string {
  const h = hi >>> 0;
  const l = lo >>> 0;
  if (h === 0) return '0x' + l.toString(16);
  return '0x' + h.toString(16) + l.toString(16).padStart(8, '0');
}
