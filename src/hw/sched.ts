/**
 * A seeded scheduler of simulated CPUs, so that a test can interleave
 * lockless software (KVM's aging, zapping, faulting) with hardware walks at
 * every shared-memory operation and replay an interleaving from its seed.
 *
 * Two kinds of agent take part:
 * - programs: generators that yield right before each shared-memory
 *   operation (the software side, written step by step);
 * - one synchronous agent run through `run()` (a hardware access): at each of
 *   its memory operations the PhysMem preempt hook lets the scheduler run
 *   steps of the programs first.
 * So any interleaving of the programs' operations with the agent's is
 * reachable, and which one happens is a function of the seed alone.
 */
import { MemOp, PhysMem, PreemptHook } from './phys_mem.js';

const OP_NAMES = ['load', 'store', 'cmpxchg', 'or', 'and', 'xchg'];

/** A simulated CPU's program; each `yield` is a point where another CPU may run. */
export type SimProgram = Generator<unknown, unknown, undefined>;

interface Thread {
  name: string;
  gen: SimProgram;
  done: boolean;
}

export class Scheduler implements PreemptHook {
  private readonly threads: Thread[] = [];
  private state: number;
  private inProgram = false;
  /** Every step taken, as `name` (a program step) or `hw:op@hpa` (an agent operation): the interleaving, for messages. */
  readonly log: string[] = [];

  constructor(
    readonly mem: PhysMem,
    readonly seed: number,
    /** Chance, at each point, of running one more program step before the agent goes on. */
    readonly switchChance = 0.5,
    /**
     * Which program runs next: `random` (seeded), or `round-robin` (in spawn
     * order, skipping finished ones), an interleaving simple enough to count
     * by hand.
     */
    readonly order: 'random' | 'round-robin' = 'random',
  ) {
    this.state = seed >>> 0 || 0x9e3779b9;
    mem.yields = true;
  }

  /** xorshift32: deterministic across runs and platforms. */
  private random(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state / 4294967296;
  }

  spawn(name: string, program: SimProgram): void {
    this.threads.push({ name, gen: program, done: false });
  }

  private runnable(): Thread[] {
    return this.threads.filter((t) => !t.done);
  }

  /** Index in threads of the last program stepped, for round-robin. */
  private last = -1;

  private pick(ready: Thread[]): Thread {
    if (this.order === 'random') return ready[Math.floor(this.random() * ready.length)];
    const n = this.threads.length;
    for (let k = 1; k <= n; k++) {
      const i = (this.last + k) % n;
      if (!this.threads[i].done) {
        this.last = i;
        return this.threads[i];
      }
    }
    throw new Error('assertion: pick with no runnable program');
  }

  /** Advance one program by one step (to its next yield or its end). */
  private step(t: Thread): void {
    this.inProgram = true;
    try {
      this.log.push(t.name);
      this.mem.clock++;
      t.done = t.gen.next().done === true;
    } finally {
      this.inProgram = false;
    }
  }

  /** The preempt hook: before an agent's memory operation, maybe run program steps. */
  point(op: MemOp, hpa: number): void {
    if (this.inProgram) return; // a program's own operation: it already yielded before it
    this.log.push(`hw:${OP_NAMES[op]}@0x${hpa.toString(16)}`);
    this.mem.clock++;
    for (;;) {
      const ready = this.runnable();
      if (ready.length === 0 || this.random() >= this.switchChance) return;
      this.step(this.pick(ready));
    }
  }

  /** Run a synchronous agent (e.g. one hardware access) with the scheduler hooked into memory. */
  run<T>(agent: () => T): T {
    if (this.mem.preempt !== null && this.mem.preempt !== this) throw new Error('assertion: another preempt hook is installed');
    this.mem.preempt = this;
    try {
      return agent();
    } finally {
      this.mem.preempt = null;
    }
  }

  /** Run the programs to their ends, interleaved at random; programs then stop yielding. */
  finish(): void {
    for (;;) {
      const ready = this.runnable();
      if (ready.length === 0) break;
      this.step(this.pick(ready));
    }
    this.mem.yields = false;
  }
}

/**
 * Run one program to its end on the calling CPU, as plain code. Outside a
 * scheduler it does not yield, so this is one resumption.
 */
export function runProgram<T>(program: Generator<unknown, T, undefined>): T {
  for (;;) {
    const r = program.next();
    if (r.done === true) return r.value;
  }
}
