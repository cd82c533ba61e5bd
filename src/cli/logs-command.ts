/** `cocoon logs`: an image version's build log or a MicroVM's runtime log on stdout, optionally followed. */
import type { Command } from 'commander';
import type { MicroVmLogOptions } from '../client/index.ts';
import { parseImageIdentifier, parseInteger, UsageError } from './args.ts';
import { contextOf, type Context } from './context.ts';
import { buildFailure, newestVersion } from './image-commands.ts';

interface LogsOptions {
  imageIdentifier?: string;
  microvmId?: string;
  follow?: boolean;
  tail?: string;
}

export function registerLogsCommand(program: Command): void {
  program
    .command('logs')
    .description("an image version's build log (default: the newest version) or a MicroVM's runtime log (its app's stdout and stderr) as text on stdout")
    .option('--image-identifier <name[:version]>', 'the build log of NAME or NAME:VERSION')
    .option('--microvm-id <id>', 'the runtime log of MicroVM mvm-…')
    .option('--follow', 'keep printing new lines until the build ends (exit non-zero if it FAILED) or the MicroVM is TERMINATED or FAILED')
    .option('--tail <n>', 'with --microvm-id: only the newest N lines so far')
    .action(async (options: LogsOptions, command: Command) => {
      if ((options.imageIdentifier === undefined) === (options.microvmId === undefined)) {
        throw new UsageError('give exactly one of --image-identifier (a build log) or --microvm-id (a runtime log)');
      }
      if (options.tail !== undefined && options.microvmId === undefined) throw new UsageError('--tail goes with --microvm-id');
      const logOptions: MicroVmLogOptions = options.tail === undefined ? {} : { tail: parseInteger('--tail', options.tail) };
      const ctx = contextOf(command);
      if (options.microvmId !== undefined) await microvmLogs(ctx, options.microvmId, options.follow === true, logOptions);
      else await buildLogs(ctx, options.imageIdentifier!, options.follow === true);
    });
}

function printLine(line: string): void {
  process.stdout.write(`${line}\n`);
}

async function microvmLogs(ctx: Context, microvmId: string, follow: boolean, logOptions: MicroVmLogOptions): Promise<void> {
  if (!follow) return void process.stdout.write(await ctx.client.microvmLogs(microvmId, logOptions));
  const end = await ctx.client.followMicroVmLogs(microvmId, printLine, logOptions);
  ctx.progress(`${microvmId} is ${end.state}${end.stateReason ? `: ${end.stateReason}` : ''}`);
}

async function buildLogs(ctx: Context, imageIdentifier: string, follow: boolean): Promise<void> {
  const { name, version } = parseImageIdentifier(imageIdentifier);
  const chosen = version ?? (await newestVersion(ctx.client, name));
  if (!follow) return void process.stdout.write(await ctx.client.buildLogs(name, chosen));
  const end = await ctx.client.followBuildLogs(name, chosen, printLine);
  if (end.state === 'FAILED') throw buildFailure({ name, version: chosen, ...end });
}
