/** The mmulab command line. */
import { Command, CommanderError, Option } from 'commander';
import { TraceError } from '../trace/ast.js';
import { Runner } from '../trace/runner.js';
import { dumpCommand, type DumpOptions } from './dump.js';
import { loadTrace, UsageError } from './load.js';
import { LOG_LEVELS, makeLogger } from './log.js';
import { walkCommand, type WalkOptions } from './walk.js';
import { KVM_EVENT_NAMES } from '../kvm/events.js';
import { lruGenCommand, statsRows, statsTable, type LruGenOptions } from './stats.js';

const program = new Command();
program
  .name('mmulab')
  .description('x86-64 paging hardware with EPT/NPT two-dimensional walks, and the software that drives it')
  .addOption(new Option('--log-level <level>', 'log to stderr at this level').choices(LOG_LEVELS).default('silent'))
  .showHelpAfterError()
  // Usage errors commander finds (unknown option, missing argument) exit 2 like every invalid input; main() sets the code.
  .exitOverride();

program
  .command('run')
  .description('run a trace and print one line per access (JSON with --json)')
  .argument('<file>', 'trace file')
  .option('--json', 'print the JSON objects of trace-format.md')
  .option('--events <names>', `print these KVM events (comma-separated, or 'all') of a VM-level trace, in order with the access lines`)
  .option('--stats', 'print a summary table of a VM-level run at the end (faults, exits, flushes, notifier calls, reclaim, swap)')
  .action((file: string, opts: { json?: boolean; events?: string; stats?: boolean }) => {
    const log = makeLogger(program.opts().logLevel);
    const events = opts.events === undefined ? undefined : eventNames(opts.events);
    const trace = loadTrace(file);
    if (events !== undefined && trace.commands[0].verb !== 'vm') {
      throw new UsageError(`--events: ${file} is a hardware-level trace ('machine'); KVM events come from VM-level traces ('vm')`);
    }
    if (opts.stats === true && trace.commands[0].verb !== 'vm') {
      throw new UsageError(`--stats: ${file} is a hardware-level trace ('machine'); the summary is of VM-level traces ('vm')`);
    }
    log.info({ file, commands: trace.commands.length }, 'trace loaded');
    const lines: string[] = [];
    const flush = () => {
      if (lines.length > 0) process.stdout.write(lines.join('\n') + '\n');
      lines.length = 0;
    };
    const runner = new Runner(trace, {
      json: opts.json === true,
      ...(events !== undefined ? { events } : {}),
      out: (l) => {
        lines.push(l);
        if (lines.length >= 4096) flush();
      },
    });
    const report = runner.run();
    if (opts.stats === true) {
      const rows = statsRows(runner, report.accesses);
      if (opts.json === true) lines.push(JSON.stringify({ op: 'stats', stats: Object.fromEntries(rows.map(([k, v]) => [k.trim(), v])) }));
      else lines.push(statsTable(rows));
    }
    flush();
    log.info({ accesses: report.accesses, failures: report.failures.length }, 'trace done');
    for (const f of report.failures) process.stderr.write(`${file}:${f.line}: ${f.message}\n`);
    if (report.failures.length > 0) process.exitCode = 1;
  });

/** The --events list: known tracepoint names, or 'all'. */
function eventNames(list: string): string[] {
  const names = list.split(',').map((n) => n.trim()).filter((n) => n !== '');
  if (names.length === 1 && names[0] === 'all') return [...KVM_EVENT_NAMES];
  for (const n of names) {
    if (!(KVM_EVENT_NAMES as readonly string[]).includes(n)) {
      throw new UsageError(`--events: unknown event '${n}' (expected 'all' or some of: ${KVM_EVENT_NAMES.join(', ')})`);
    }
  }
  if (names.length === 0) throw new UsageError(`--events: no event named (expected 'all' or some of: ${KVM_EVENT_NAMES.join(', ')})`);
  return names;
}

/** Print the lines of an inspector command. */
function print(lines: string[]): void {
  if (lines.length > 0) process.stdout.write(lines.join('\n') + '\n');
}

program
  .command('walk')
  .description('run a trace (up to --at), then show the page walk one access would make, without side effects')
  .argument('<file>', 'trace file')
  .requiredOption('--gva <addr>', 'linear address to probe')
  .option('--vcpu <n>', 'vCPU whose registers and tables are used', '0')
  .option('--read', 'probe a read (the default)')
  .option('--write', 'probe a write')
  .option('--fetch', 'probe an instruction fetch')
  .option('--user', 'probe at CPL 3 (the register is restored afterwards)')
  .option('--at <line>', 'run only the commands on lines <= this')
  .option('--json', 'print one JSON object: refs, ad_writes, outcome')
  .action((file: string, opts: WalkOptions) => print(walkCommand(file, opts)));

program
  .command('dump')
  .description('run a trace (up to --at), then print the guest, EPT or NPT tables as a tree of present entries')
  .argument('<file>', 'trace file')
  .addOption(new Option('--table <which>', 'which tables').choices(['guest', 'ept', 'npt']).makeOptionMandatory())
  .option('--vcpu <n>', 'vCPU whose CR3/EPTP/nCR3 is the root', '0')
  .option('--at <line>', 'run only the commands on lines <= this')
  .option('--json', 'print one JSON object: the nested tables')
  .action((file: string, opts: DumpOptions) => print(dumpCommand(file, opts)));

program
  .command('lru_gen')
  .description('run an MGLRU trace (lru=mglru; up to --at), then print /sys/kernel/debug/lru_gen')
  .argument('<file>', 'trace file')
  .option('--at <line>', 'run only the commands on lines <= this')
  .option('--full', 'print /sys/kernel/debug/lru_gen_full instead: tiers, PID-controller history, walk stats')
  .action((file: string, opts: LruGenOptions) => print(lruGenCommand(file, opts)));

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof UsageError || e instanceof TraceError) {
      process.stderr.write(e.message + '\n');
      process.exitCode = e instanceof UsageError ? e.exitCode : 2;
      return;
    }
    if (e instanceof CommanderError) {
      // commander has printed the message (or the help); help and version exit 0
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    throw e;
  }
}

void main();
export { program };
