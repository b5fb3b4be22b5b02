import { expect } from 'vitest';
import { TraceError } from '../../src/trace/ast.js';
import { parseTrace } from '../../src/trace/parse.js';

/** The message of the TraceError that parsing `text` throws (failing the test if it parses). */
export function parseError(text: string, file = 't.trace'): string {
  try {
    parseTrace(file, text);
  } catch (e) {
    expect(e).toBeInstanceOf(TraceError);
    return (e as Error).message;
  }
  throw new Error('expected a TraceError');
}
