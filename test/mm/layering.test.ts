/**
 * The kernel's direction is kvm -> mm -> hw: the mm knows KVM only through
 * the notifier interface (and the proposals' SecondaryAgingCaps), the
 * hardware knows neither. An import against that direction fails here.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = join(import.meta.dirname, '../../src');

function importsOf(dir: string): string[] {
  const out: string[] = [];
  for (const f of readdirSync(join(SRC, dir))) {
    if (!f.endsWith('.ts')) continue;
    for (const m of readFileSync(join(SRC, dir, f), 'utf8').matchAll(/from '([^']+)'/g)) out.push(`${dir}/${f}: ${m[1]}`);
  }
  return out;
}

describe('layering', () => {
  it('src/mm imports nothing from src/kvm, src/trace or src/cli', () => {
    expect(importsOf('mm').filter((l) => /^\.\.\/(kvm|trace|cli)\//.test(l.split(': ')[1]))).toEqual([]);
  });

  it('src/hw imports nothing from src/mm, src/kvm, src/trace or src/cli', () => {
    expect(importsOf('hw').filter((l) => /^\.\.\/(mm|kvm|trace|cli)\//.test(l.split(': ')[1]))).toEqual([]);
  });
});
