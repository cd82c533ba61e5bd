/** The base images a Dockerfile may start from, and the defaults a fresh stage gets from them. */
import type { BaseImageName } from './types.ts';

const DEBIAN_ALIAS = 'public.ecr.aws/lambda/microvms:al2023-minimal';

const references: Record<string, BaseImageName> = {
  'cocoon/debian': 'debian',
  'cocoon/debian:bookworm': 'debian',
  'cocoon/tiny': 'tiny',
  [DEBIAN_ALIAS]: 'debian',
};

/** The names `FROM` accepts, for error messages. */
export const BASE_IMAGE_REFERENCES = Object.keys(references);

export function resolveBaseImage(reference: string): { name: BaseImageName; warning?: string } | null {
  const name = Object.hasOwn(references, reference) ? references[reference] : undefined;
  if (name === undefined) return null;
  if (reference === DEBIAN_ALIAS) {
    return { name, warning: `${DEBIAN_ALIAS} is an alias of cocoon/debian:bookworm; Amazon Linux is not available here` };
  }
  return { name };
}

/** Docker's default PATH, which BuildKit writes into an image that does not set one. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export const DEFAULT_SHELL: readonly string[] = ['/bin/sh', '-c'];

/**
 * Directories every base image has. A COPY to one of them without a trailing slash copies into it,
 * as Docker does for an existing directory.
 */
export const BASE_DIRECTORIES: readonly string[] = [
  '/', '/bin', '/etc', '/home', '/opt', '/root', '/srv', '/tmp', '/usr', '/usr/bin', '/usr/local',
  '/usr/local/bin', '/var',
];

/** BuildKit's automatic platform ARGs: usable in FROM, and in a stage after `ARG NAME`. */
export const PLATFORM_ARGS: ReadonlyMap<string, string> = new Map([
  ['TARGETPLATFORM', 'linux/amd64'], ['TARGETOS', 'linux'], ['TARGETARCH', 'amd64'], ['TARGETVARIANT', ''],
  ['BUILDPLATFORM', 'linux/amd64'], ['BUILDOS', 'linux'], ['BUILDARCH', 'amd64'], ['BUILDVARIANT', ''],
]);
