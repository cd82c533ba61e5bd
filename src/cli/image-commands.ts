/** The image commands: create (upload or URI, optionally waiting on the live build log), get, list, delete. */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { CocoonApiError, isCocoonApiError, type BuildEnd, type CocoonClient, type Image, type UploadImageOptions } from '../client/index.ts';
import { zipDirectory } from '../host/zip-dir.ts';
import { isRemoteUri, parseBuildArg, parseCodeArtifact, parseImageIdentifier, parseInteger, UsageError } from './args.ts';
import { contextOf, type Context } from './context.ts';

const POLL_MS = 500;

interface CreateOptions {
  name: string;
  codeArtifact: string;
  dockerfilePath?: string;
  readinessTimeoutSeconds?: string;
  appPort?: string;
  hooksPort?: string;
  memoryMib?: string;
  buildArg?: Record<string, string>;
  wait?: boolean;
}

export function registerImageCommands(program: Command): void {
  program
    .command('create-microvm-image')
    .description('build a MicroVM image from a zip or a directory (uploaded) or an s3:// URI (fetched by the server)')
    .requiredOption('--name <name>', 'image name; an existing name gets a new version')
    .requiredOption('--code-artifact <uri=…>', 'uri=./app.zip, uri=./app-dir/ or uri=s3://bucket/key')
    .option('--dockerfile-path <path>', 'the Dockerfile inside the zip (default Dockerfile)')
    .option('--readiness-timeout-seconds <n>', '1–3600 (default 300)')
    .option('--app-port <port>', 'default: the first EXPOSEd port, else 8080')
    .option('--hooks-port <port>', 'default 9000')
    .option('--memory-mib <n>', 'guest RAM (default 512)')
    .option('--build-arg <KEY=VALUE>', 'a Dockerfile ARG, repeatable', (value: string, previous?: Record<string, string>) => parseBuildArg(value, previous))
    .option('--wait', 'follow the build log on stderr until the build ends; exit non-zero if it FAILED')
    .action(async (options: CreateOptions, command: Command) => {
      const ctx = contextOf(command);
      const image = await createImage(ctx, options);
      if (!options.wait) return ctx.print(image);
      const final = await waitForBuild(ctx, image);
      ctx.print(final);
      if (final.state === 'FAILED') throw buildFailure(final);
    });

  program
    .command('get-microvm-image')
    .description('an image version: the latest ACTIVE one, or NAME:VERSION')
    .requiredOption('--image-identifier <name[:version]>', 'NAME or NAME:VERSION')
    .action(async (options: { imageIdentifier: string }, command: Command) => {
      const ctx = contextOf(command);
      const { name, version } = parseImageIdentifier(options.imageIdentifier);
      ctx.print(await ctx.client.getImage(name, version));
    });

  program
    .command('list-microvm-images')
    .description('the latest version of each image')
    .action(async (_options: object, command: Command) => {
      const ctx = contextOf(command);
      ctx.print(await ctx.client.listImages());
    });

  program
    .command('list-microvm-image-versions')
    .description('every version of an image, oldest first')
    .requiredOption('--image-identifier <name>', 'image name')
    .action(async (options: { imageIdentifier: string }, command: Command) => {
      const ctx = contextOf(command);
      ctx.print(await ctx.client.listImageVersions(parseImageIdentifier(options.imageIdentifier).name));
    });

  program
    .command('delete-microvm-image')
    .description('delete one version (refused while it builds or a MicroVM uses it)')
    .requiredOption('--image-identifier <name>', 'image name (NAME:VERSION also works)')
    .option('--image-version <version>', 'e.g. 1.0')
    .action(async (options: { imageIdentifier: string; imageVersion?: string }, command: Command) => {
      const ctx = contextOf(command);
      const { name, version } = parseImageIdentifier(options.imageIdentifier);
      const chosen = options.imageVersion ?? version;
      if (chosen === undefined) throw new UsageError('--image-version is required (or --image-identifier NAME:VERSION)');
      ctx.print(await ctx.client.deleteImage(name, chosen));
    });
}

async function createImage(ctx: Context, options: CreateOptions): Promise<Image> {
  const uri = parseCodeArtifact(options.codeArtifact);
  const settings: UploadImageOptions = {
    ...(options.dockerfilePath !== undefined && { dockerfilePath: options.dockerfilePath }),
    ...(options.readinessTimeoutSeconds !== undefined && { readinessTimeoutSeconds: parseInteger('--readiness-timeout-seconds', options.readinessTimeoutSeconds) }),
    ...(options.appPort !== undefined && { appPort: parseInteger('--app-port', options.appPort) }),
    ...(options.hooksPort !== undefined && { hooksPort: parseInteger('--hooks-port', options.hooksPort) }),
    ...(options.memoryMib !== undefined && { memoryMiB: parseInteger('--memory-mib', options.memoryMib) }),
    ...(options.buildArg !== undefined && { buildArgs: options.buildArg }),
  };
  if (isRemoteUri(uri)) return ctx.client.createImage({ name: options.name, codeArtifact: { uri }, ...settings });

  const local = path.resolve(uri.toLowerCase().startsWith('file://') ? fileURLToPath(uri) : uri);
  const info = await stat(local).catch(() => undefined);
  if (!info) throw new UsageError(`--code-artifact: ${local} does not exist`);
  if (info.isFile()) {
    ctx.progress(`uploading ${local} (${formatBytes(info.size)})`);
    return ctx.client.uploadImage(options.name, local, settings);
  }
  if (!info.isDirectory()) throw new UsageError(`--code-artifact: ${local} is neither a file nor a directory`);
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'cocoon-cli-'));
  try {
    const zip = path.join(tmp, `${options.name}.zip`);
    await zipDirectory(local, zip);
    ctx.progress(`uploading ${local} as a zip (${formatBytes((await stat(zip)).size)})`);
    return await ctx.client.uploadImage(options.name, zip, settings);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Follows the build log; if the stream breaks, polls until the version leaves CREATING. */
async function waitForBuild(ctx: Context, image: Image): Promise<Image> {
  ctx.progress(`building ${image.name}:${image.version}`);
  try {
    await ctx.client.followBuildLogs(image.name, image.version, (line) => ctx.log(`  build | ${line}`));
  } catch (error) {
    if (!isCocoonApiError(error, 'client.stream_ended')) throw error;
    ctx.progress(`the log stream broke (${error.message}); polling the state`);
  }
  for (;;) {
    const current = await ctx.client.getImage(image.name, image.version);
    if (current.state !== 'CREATING') {
      ctx.progress(`${current.arn}: ${current.state}`);
      return current;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

export async function newestVersion(client: CocoonClient, name: string): Promise<string> {
  const { versions } = await client.listImageVersions(name);
  const newest = versions.at(-1);
  if (!newest) throw new CocoonApiError('image.not_found', `image ${name} has no versions`, 404);
  return newest.version;
}

/** A FAILED build as an error: its reason code when the registry knows it, else image.build_failed. */
export function buildFailure(image: BuildEnd & { name: string; version: string }): CocoonApiError {
  return new CocoonApiError(image.stateReasonCode ?? 'image.build_failed', `${image.name}:${image.version} FAILED: ${image.stateReason ?? 'no reason recorded'}`, 0);
}

function formatBytes(bytes: number): string {
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
}
