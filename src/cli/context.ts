/**
 * What every command shares: the client built from the global options (flags > env > the admin
 * key file), printing the result (--query, then --output) on stdout, progress on stderr (only on a
 * terminal), and the exit code of an error (the registry's, by code).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import jmespath from 'jmespath';
import { CocoonApiError, CocoonClient, DEFAULT_ENDPOINT } from '../client/index.ts';
import { errorCodes } from '../errors/errors.ts';
import { UsageError } from './args.ts';
import { formatOutput, OUTPUT_FORMATS, type OutputFormat } from './format.ts';

export interface GlobalOptions {
  endpoint?: string;
  apiKey?: string;
  output: string;
  query?: string;
}

export interface Context {
  client: CocoonClient;
  /** Prints a command's result. */
  print(result: unknown): void;
  /** A progress line on stderr, only when stderr is a terminal. */
  progress(line: string): void;
  /** A line on stderr, always (build logs the user asked to follow). */
  log(line: string): void;
}

export function contextOf(command: Command, env: NodeJS.ProcessEnv = process.env): Context {
  const options = command.optsWithGlobals<GlobalOptions>();
  const output = options.output as OutputFormat;
  if (!OUTPUT_FORMATS.includes(output)) throw new UsageError(`--output: expected one of ${OUTPUT_FORMATS.join(', ')}, got ${JSON.stringify(options.output)}`);
  const query = options.query;
  // A syntax error is found before any request; a type error only once the result is there.
  if (query !== undefined) queryStep(() => (jmespath as unknown as { compile(expression: string): unknown }).compile(query));
  const apiKey = options.apiKey ?? env.COCOON_API_KEY ?? readAdminKey(env);
  const client = new CocoonClient({ endpoint: options.endpoint ?? env.COCOON_ENDPOINT ?? DEFAULT_ENDPOINT, ...(apiKey !== undefined && { apiKey }) });
  return {
    client,
    print: (result) => {
      const selected = query === undefined ? result : queryStep(() => jmespath.search(result, query));
      process.stdout.write(formatOutput(selected, output));
    },
    progress: (line) => {
      if (process.stderr.isTTY) process.stderr.write(`${line}\n`);
    },
    log: (line) => {
      process.stderr.write(`${line}\n`);
    },
  };
}

function queryStep<T>(step: () => T): T {
  try {
    return step();
  } catch (error) {
    throw new UsageError(`--query: ${(error as Error).message}`);
  }
}

/** `<COCOON_DATA_DIR or ./.cocoon>/admin-api-key`, if it is there (a single-user setup). */
function readAdminKey(env: NodeJS.ProcessEnv): string | undefined {
  try {
    return readFileSync(path.join(env.COCOON_DATA_DIR ?? '.cocoon', 'admin-api-key'), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** The process exit code of a failure: the registry's for API codes, 2 for usage, else 1. */
export function exitCodeOf(error: unknown): number {
  if (error instanceof UsageError) return 2;
  if (error instanceof CocoonApiError) return exitCodeOfCode(error.code);
  return 1;
}

export function exitCodeOfCode(code: string): number {
  return Object.hasOwn(errorCodes, code) ? errorCodes[code as keyof typeof errorCodes].exitCode : 1;
}

/** One line on stderr that starts with the error code, the part scripts and people grep for. */
export function describeError(error: unknown): string {
  if (error instanceof CocoonApiError) {
    const status = error.status > 0 ? ` (HTTP ${error.status})` : '';
    const details = Object.keys(error.details).length > 0 ? ` ${JSON.stringify(error.details)}` : '';
    return `cocoon: ${error.code}: ${error.message}${status}${details}`;
  }
  if (error instanceof UsageError) return `cocoon: usage: ${error.message}`;
  return `cocoon: ${(error as Error)?.stack ?? String(error)}`;
}
