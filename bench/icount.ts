/**
 * `npm run bench:icount`: machine instructions per fault-in, counted by
 * valgrind (cachegrind), for comparing builds on a machine too noisy for
 * timings to tell a few per cent apart. The count is the difference of two
 * runs that differ only in the number of first touches made after the same
 * warm-up (two 1 GiB guests touched 150,000 times each), divided by that
 * number: start-up, JIT compilation and warm-up cancel out. Node runs with
 * --single-threaded so that no compiler or GC thread adds to the count. With
 * 250,000 touches two runs agree to within about ten instructions (with
 * 100,000 they wandered by 200). Not a time: a fault-in of 19,000
 * instructions took about 1.9 us here.
 */
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { AccessKind } from '../src/hw/result.js';
import { FIRST_TOUCH_GPA, freshFaultGuest, newGuestAccess } from './kvm_bench.js';

const WARM = 150_000;
const TOUCHES = 250_000;

/** The measured child: the warm-up, then `n` first touches of a third guest, as fault_in_4k_ns makes them. */
function touch(n: number): void {
  const out = newGuestAccess();
  for (const count of [WARM, WARM, n]) {
    const kvm = freshFaultGuest(out);
    for (let i = 0; i < count; i++) kvm.accessNow(0, 0, FIRST_TOUCH_GPA + i * 4096, AccessKind.Read, 1, out);
  }
}

/** Instructions cachegrind counts for a child making `n` touches. */
function countFor(n: number): Promise<number> {
  const args = ['--tool=cachegrind', '--cache-sim=no', '--cachegrind-out-file=/dev/null',
    process.execPath, '--single-threaded', fileURLToPath(import.meta.url), '--child', String(n)];
  return new Promise((resolve, reject) => {
    const p = spawn('valgrind', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (b: Buffer) => (err += b.toString()));
    p.on('close', (code) => {
      const m = /I\s+refs:\s+([\d,]+)/.exec(err);
      if (code !== 0 || m === null) reject(new Error(`valgrind exited ${code} without a count:\n${err.slice(-2000)}`));
      else resolve(Number(m[1].replace(/,/g, '')));
    });
  });
}

if (process.argv[2] === '--child') {
  touch(Number(process.argv[3]));
} else {
  if (spawnSync('valgrind', ['--version']).status !== 0) {
    console.error('bench:icount: valgrind is not installed (it counts the instructions); install it, e.g. apt-get install valgrind');
    process.exit(2);
  }
  const [base, more] = await Promise.all([countFor(0), countFor(TOUCHES)]);
  console.log(`fault_in_4k_instructions=${Math.round((more - base) / TOUCHES)}`);
}
