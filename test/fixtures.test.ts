/**
 * Every trace under fixtures/ (recursively: fixtures/hw, and later
 * fixtures/kvm, fixtures/mm) is a self-checking scenario: it is parsed and
 * run in-process, and its `expect`/`expect_mem` lines must all hold.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseTrace } from '../src/trace/parse.js';
import { runTrace } from '../src/trace/runner.js';

const ROOT = fileURLToPath(new URL('../fixtures/', import.meta.url));

/** All *.trace files below dir, sorted, as absolute paths. */
function traces(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...traces(p));
    else if (e.isFile() && e.name.endsWith('.trace')) out.push(p);
  }
  return out.sort();
}

const files = traces(ROOT);

describe('fixtures', () => {
  it('finds the hardware fixtures', () => {
    expect(files.filter((f) => relative(ROOT, f).startsWith('hw')).length).toBeGreaterThanOrEqual(14);
  });

  for (const file of files) {
    const name = relative(ROOT, file).split('\\').join('/');
    it(name, () => {
      const trace = parseTrace(`fixtures/${name}`, readFileSync(file, 'utf8'));
      const report = runTrace(trace, { quiet: true });
      // Compare with [] so that a failing expectation shows its line and message.
      expect(report.failures).toEqual([]);
    });
  }
});
