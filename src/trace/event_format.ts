/**
 * KVM tracepoint events (src/kvm/events.ts) as `mmulab run --events` prints
 * them, on stdout in order with the access lines of the command that caused
 * them: a readable `LINE: name: field=value ...` line, or with --json an
 * object {"line", "op": "event", "event", fields...}. Addresses, gfns and
 * SPTEs are hex strings as in the contract; levels, ids and return codes are
 * numbers.
 */
import type { EventFields } from '../kvm/events.js';

/** Fields that are counts or codes, printed in decimal. */
const DECIMAL = new Set(['level', 'as_id', 'vcpu_id', 'ret', 'errno', 'u']);

function value(key: string, v: number | bigint | boolean | string): string | number | boolean {
  if (typeof v === 'bigint') return '0x' + v.toString(16);
  if (typeof v === 'number') return DECIMAL.has(key) || v < 0 ? v : '0x' + v.toString(16);
  return v;
}

export function eventObject(line: number, name: string, fields: EventFields): Record<string, unknown> {
  const o: Record<string, unknown> = { line, op: 'event', event: name };
  for (const [k, v] of Object.entries(fields)) o[k] = value(k, v);
  return o;
}

export function eventText(line: number, name: string, fields: EventFields): string {
  const parts = Object.entries(fields).map(([k, v]) => {
    const x = value(k, v);
    return `${k}=${typeof x === 'boolean' ? (x ? 1 : 0) : x}`;
  });
  return `${line}: ${name}: ${parts.join(' ')}`;
}
