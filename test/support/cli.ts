/** Helpers shared by the CLI tests. */
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { UsageError } from '../../src/cli/load.js';

/** The repository root, with a trailing slash: stripped from messages so they read as relative paths. */
export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Run f, which must throw a UsageError with exit code 2; returns its message with ROOT removed. */
export function usage(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(UsageError);
    expect((e as UsageError).exitCode).toBe(2);
    return (e as Error).message.split(ROOT).join('');
  }
  throw new Error('expected a UsageError');
}
