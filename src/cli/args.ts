/**
 * Parsing of the option values that carry structure (`uri=…`, `name:version`, JSON policies,
 * `port=…` shorthand): pure functions that throw UsageError (exit code 2) with the option's name.
 */
import type { AllowedPort } from '../client/index.ts';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** `--code-artifact uri=./app.zip` (also `uri=s3://b/k`, or a bare URI). */
export function parseCodeArtifact(value: string): string {
  const uri = value.startsWith('uri=') ? value.slice(4) : value;
  if (uri === '' || /^[A-Za-z]\w*=/.test(value) && !value.startsWith('uri=')) {
    throw new UsageError(`--code-artifact: expected uri=<path or s3://bucket/key>, got ${JSON.stringify(value)}`);
  }
  return uri;
}

/** A URI the server fetches itself (anything with a scheme other than file:), else a local path. */
export function isRemoteUri(uri: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(uri) && !uri.toLowerCase().startsWith('file://');
}

/** `name`, `name:version` or the arn `cocoon:image:name:version`. */
export function parseImageIdentifier(value: string): { name: string; version?: string } {
  const bare = value.startsWith('cocoon:image:') ? value.slice('cocoon:image:'.length) : value;
  const colon = bare.indexOf(':');
  const name = colon === -1 ? bare : bare.slice(0, colon);
  const version = colon === -1 ? undefined : bare.slice(colon + 1);
  if (name === '' || version === '' || version?.includes(':')) throw new UsageError(`--image-identifier: expected NAME or NAME:VERSION, got ${JSON.stringify(value)}`);
  return version === undefined ? { name } : { name, version };
}

export function parseJsonObject(option: string, value: string): Record<string, unknown> {
  const parsed = parseJson(option, value);
  if (!isJsonObject(parsed)) throw new UsageError(`${option}: expected a JSON object`);
  return parsed;
}

function parseJson(option: string, value: string): unknown {
  try {
    return JSON.parse(value);
  } catch (error) {
    throw new UsageError(`${option}: not JSON: ${(error as Error).message}`);
  }
}

function isJsonObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function parseInteger(option: string, value: string): number {
  if (!/^\d{1,10}$/.test(value)) throw new UsageError(`${option}: expected a non-negative integer, got ${JSON.stringify(value)}`);
  return Number(value);
}

/** `--build-arg KEY=VALUE`, repeatable. */
export function parseBuildArg(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new UsageError(`--build-arg: expected KEY=VALUE, got ${JSON.stringify(value)}`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

const PORT_KEYS = new Set(['port', 'fromPort', 'toPort', 'all']);

/**
 * One `--allowed-ports` entry, in the AWS CLI's shorthand (`port=8080`, `fromPort=8000,toPort=8100`,
 * `all=true`) or as JSON (an entry or a list of entries, checked by the server).
 */
export function parseAllowedPorts(value: string): AllowedPort[] {
  const option = '--allowed-ports';
  if (/^\s*[[{]/.test(value)) {
    const parsed = parseJson(option, value);
    const entries = Array.isArray(parsed) ? parsed : [parsed];
    if (!entries.every(isJsonObject)) throw new UsageError(`${option}: expected JSON objects such as {"port":8080}`);
    return entries as AllowedPort[];
  }
  const fields = new Map<string, string>();
  for (const pair of value.split(',')) {
    const eq = pair.indexOf('=');
    const key = pair.slice(0, eq);
    if (eq <= 0 || !PORT_KEYS.has(key) || fields.has(key)) {
      throw new UsageError(`${option}: expected port=N, fromPort=N,toPort=M or all=true, got ${JSON.stringify(value)}`);
    }
    fields.set(key, pair.slice(eq + 1));
  }
  const keys = [...fields.keys()].sort().join(',');
  const port = (key: string) => parsePort(option, fields.get(key)!);
  if (keys === 'port') return [{ port: port('port') }];
  if (keys === 'fromPort,toPort') return [{ fromPort: port('fromPort'), toPort: port('toPort') }];
  if (keys === 'all') {
    if (fields.get('all') !== 'true') throw new UsageError(`${option}: all=true is the only value of all, got ${JSON.stringify(value)}`);
    return [{ all: true }];
  }
  throw new UsageError(`${option}: ${JSON.stringify(value)} mixes keys: use port=N, fromPort=N,toPort=M or all=true`);
}

function parsePort(option: string, value: string): number {
  const port = /^\d{1,5}$/.test(value) ? Number(value) : 0;
  if (port < 1 || port > 65535) throw new UsageError(`${option}: a port is 1–65535, got ${JSON.stringify(value)}`);
  return port;
}
