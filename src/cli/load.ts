/** Reading and validating a trace file for a CLI command; bad input exits 2 with FILE:LINE:COL: message. */
import { isUtf8 } from 'node:buffer';
import { readFileSync } from 'node:fs';
import { TraceError, type Trace } from '../trace/ast.js';
import { parseTrace } from '../trace/parse.js';
import { machineStep } from '../trace/steps.js';

/** Thrown for bad input; main() prints the message and exits with the code. */
export class UsageError extends Error {
  constructor(message: string, readonly exitCode = 2) {
    super(message);
  }
}

export function loadTrace(file: string): Trace {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    throw new UsageError(`${file}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const text = bytes.toString('utf8');
  if (!isUtf8(bytes)) throw new UsageError(`${file}:${where(text, text.indexOf('\ufffd'))}: not UTF-8 text (a trace is UTF-8, trace-format.md)`);
  try {
    const trace = parseTrace(file, text);
    if (trace.commands[0].verb === 'machine') machineStep(trace); // semantic checks of the machine line
    return trace;
  } catch (e) {
    if (e instanceof TraceError) throw new UsageError(e.message);
    throw e;
  }
}

/** LINE:COL of a character offset (the first replacement character stands for the first bad byte). */
function where(text: string, at: number): string {
  const before = text.slice(0, Math.max(at, 0));
  const line = before.split('\n').length;
  return `${line}:${before.length - before.lastIndexOf('\n')}`;
}

/** A number option such as --gva 0x1000 or --at 12, checked like a trace value. */
export function parseOptionNumber(name: string, text: string): bigint {
  const t = text.replace(/_/g, '');
  if (!/^(0x[0-9a-fA-F]+|[0-9]+)$/.test(t)) throw new UsageError(`--${name}: expected a decimal or 0x hex number, got '${text}'`);
  const v = BigInt(t);
  if (v >= 1n << 64n) throw new UsageError(`--${name}: '${text}' is out of 64-bit range`);
  return v;
}
