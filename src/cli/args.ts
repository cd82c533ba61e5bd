/**
 * Parsing of the option values that carry structure (`uri=…`, `name:version`, JSON policies):
 * pure functions that throw UsageError (exit code 2) with the option's name.
 */
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
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (error) {
    throw new UsageError(`${option}: not JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new UsageError(`${option}: expected a JSON object`);
  return parsed as Record<string, unknown>;
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
