/** The mmulab command line. */
import { Command, Option } from 'commander';
import { Runner } from '../trace/runner.js';
import { loadTrace, UsageError } from './load.js';
import { LOG_LEVELS, makeLogger } from './log.js';

const program = new Command();
program
  .name('mmulab')
  .description('x86-64 paging hardware with EPT/NPT two-dimensional walks, and the software that drives it')
  .addOption(new Option('--log-level <level>', 'log to stderr at this level').choices(LOG_LEVELS).default('silent'))
  .showHelpAfterError();

program
  .command('run')
  .description('run a trace and print one line per access (JSON with --json)')
  .argument('<file>', 'trace file')
  .option('--json', 'print the JSON objects of trace-format.md')
  .action((file: string, opts: { json?: boolean }) => {
    const log = makeLogger(program.opts().logLevel);
    const trace = loadTrace(file);
    log.info({ file, commands: trace.commands.length }, 'trace loaded');
    const lines: string[] = [];
    const flush = () => {
      if (lines.length > 0) process.stdout.write(lines.join('\n') + '\n');
      lines.length = 0;
    };
    const runner = new Runner(trace, {
      json: opts.json === true,
      out: (l) => {
        lines.push(l);
        if (lines.length >= 4096) flush();
      },
    });
    const report = runner.run();
    flush();
    log.info({ accesses: report.accesses, failures: report.failures.length }, 'trace done');
    for (const f of report.failures) process.stderr.write(`${file}:${f.line}: ${f.message}\n`);
    if (report.failures.length > 0) process.exitCode = 1;
  });

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(e.message + '\n');
      process.exitCode = e.exitCode;
      return;
    }
    throw e;
  }
}

void main();
export { program };
