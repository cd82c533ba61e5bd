/**
 * `cocoon`: the command line, a thin client of the SDK. Results go to stdout (JSON by default,
 * `--output table|text`, `--query` JMESPath first); errors go to stderr as one line starting with
 * the error code, and the exit code is the registry's for that code (2 for usage mistakes).
 */
import { Command, CommanderError, Option } from 'commander';
import { DEFAULT_ENDPOINT } from '../client/index.ts';
import { describeError, exitCodeOf } from './context.ts';
import { OUTPUT_FORMATS } from './format.ts';
import { registerImageCommands } from './image-commands.ts';
import { registerLogsCommand } from './logs-command.ts';
import { registerMicroVmCommands } from './microvm-commands.ts';
import { registerServerCommand } from './server-command.ts';

export function buildProgram(): Command {
  const program = new Command('cocoon')
    .description('Cocoon: isolated, stateful microVMs from an image snapshot')
    .option('--endpoint <url>', `the API (env COCOON_ENDPOINT, default ${DEFAULT_ENDPOINT})`)
    .option('--api-key <key>', 'env COCOON_API_KEY, else <COCOON_DATA_DIR or ./.cocoon>/admin-api-key')
    .addOption(new Option('--output <format>', 'how results are printed').choices(OUTPUT_FORMATS).default('json'))
    .option('--query <jmespath>', 'a JMESPath expression applied to the result before printing')
    .showHelpAfterError('(add --help for usage)');
  registerImageCommands(program);
  registerLogsCommand(program);
  registerMicroVmCommands(program);
  registerServerCommand(program);
  // Usage errors are exit code 2 (commander's default is 1), help and --version are 0.
  program.exitOverride();
  for (const command of program.commands) command.exitOverride();
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      return error.exitCode === 0 ? 0 : 2;
    }
    process.stderr.write(`${describeError(error)}\n`);
    return exitCodeOf(error);
  }
}

// A closed stdout (`cocoon … | head`) is not an error worth a stack trace.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(0);
  throw error;
});

process.exitCode = await main(process.argv.slice(2));
