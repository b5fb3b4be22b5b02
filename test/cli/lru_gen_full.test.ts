/**
 * `mmulab lru_gen --full`: /sys/kernel/debug/lru_gen_full as
 * lru_gen_seq_show lays it out with `full` set (mm/vmscan.c), on the
 * bundled fixture mglru-aging-current.trace.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { lruGenCommand } from '../../src/cli/stats.js';
import { ROOT } from '../support/cli.js';

const pad = (v: number) => String(v).padStart(10);
/** One tier line: the tier, then three numbers with their marks per type. */
const tierLine = (tier: number, anon: [number, string][], file: [number, string][]) =>
  `            ${pad(tier)}` + [...anon, ...file].map(([n, c]) => ` ${pad(n)}${c}`).join('');
const x3: [number, string][] = [[0, 'x'], [0, 'x'], [0, 'x']];
const rep = (r: number, e: number, p: number): [number, string][] => [[r, 'r'], [e, 'e'], [p, 'p']];
const rt = (r: number, t: number): [number, string][] => [[r, 'R'], [t, 'T'], [0, 'x']];
const statsLine = (v: number[], marks: string) => '                      ' + v.map((n, i) => ` ${pad(n)}${marks[i]}`).join('');

describe('mmulab lru_gen --full', () => {
  it('prints every generation of the window with tiers, PID history and the walk stats', () => {
    const lines = lruGenCommand(join(ROOT, 'fixtures/mm/mglru-aging-current.trace'), { full: true });
    expect(lines).toEqual([
      'memcg     0 /',
      ' node     0',
      // max_seq 6: the window is 3..6; file's min_seq is 4, so its seq 3 size is marked x.
      `${' '.repeat(1)}${pad(3)} ${pad(0)} ${pad(4)}  ${pad(0)}x`,
      // anon's min_seq: 8 pages evicted from tier 0 (refs 1: referenced once), no refaults yet, nothing protected since.
      tierLine(0, rep(0, 8, 0), x3), tierLine(1, rep(0, 0, 0), x3), tierLine(2, rep(0, 0, 0), x3), tierLine(3, rep(0, 0, 0), x3),
      statsLine([0, 0, 0, 0], 'xxxx'),
      ` ${pad(4)} ${pad(0)} ${pad(0)}  ${pad(0)} `,
      tierLine(0, x3, rep(0, 0, 0)), tierLine(1, x3, rep(0, 0, 0)), tierLine(2, x3, rep(0, 0, 0)), tierLine(3, x3, rep(0, 0, 0)),
      statsLine([0, 0, 0, 0], 'xxxx'),
      ` ${pad(5)} ${pad(0)} ${pad(4)}  ${pad(0)} `,
      tierLine(0, x3, x3), tierLine(1, x3, x3), tierLine(2, x3, x3), tierLine(3, x3, x3),
      statsLine([0, 0, 0, 0], 'xxxx'),
      ` ${pad(6)} ${pad(0)} ${pad(0)}  ${pad(0)} `,
      // The third aging's inc_min_seq protected 12 tier-0 folios (referenced once) and 4 workingset ones (tier 3):
      // folded into the averages, halved: 12/2 = 6, 4/2 = 2.
      tierLine(0, rt(0, 6), rt(0, 0)), tierLine(1, rt(0, 0), rt(0, 0)), tierLine(2, rt(0, 0), rt(0, 0)), tierLine(3, rt(0, 2), rt(0, 0)),
      // Three forced walks of one 64-PTE table: 192 PTEs, 16 + 0 + 4 young, 3 tables entered, 1 dense enough for the filter.
      statsLine([192, 20, 3, 1], 'TYFA'),
    ]);
  });
});
