/**
 * Brings the user's zip onto the host: from a local path, from S3, or from an upload stream. Every
 * source is copied into workDir while being hashed and size-checked, so the build reads a private,
 * immutable file whose sha256 is the artifact digest recorded on the image.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { createHash, randomUUID } from 'node:crypto';
import path from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { GetObjectCommand, S3Client, type GetObjectCommandOutput } from '@aws-sdk/client-s3';
import { AppError } from '../../errors/errors.ts';
import { formatBytes } from './unzip.ts';

export const DEFAULT_MAX_COMPRESSED_BYTES = 512 * 2 ** 20;
export const DEFAULT_FETCH_TIMEOUT_MS = 10 * 60_000;

export interface S3Config {
  endpoint?: string;
  region?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  forcePathStyle?: boolean;
}

export interface FetchedArtifact {
  /** `<workDir>/artifact-<sha256>.zip` */
  zipPath: string;
  sha256: string;
  sizeBytes: number;
}

export interface StoreOptions {
  signal?: AbortSignal;
  maxCompressedBytes?: number;
}

export interface FetchOptions extends StoreOptions {
  workDir: string;
  s3?: S3Config;
  timeoutMs?: number;
}

export type ArtifactSource =
  | { kind: 'file'; path: string }
  | { kind: 's3'; bucket: string; key: string };

/** Pure: classifies a URI. Relative paths resolve against the process's working directory. */
export function parseArtifactUri(uri: string): ArtifactSource {
  if (uri.startsWith('s3://')) {
    const rest = uri.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const bucket = slash === -1 ? rest : rest.slice(0, slash);
    const key = slash === -1 ? '' : rest.slice(slash + 1);
    if (bucket === '' || key === '') {
      throw new AppError('artifact.unsupported_uri', `"${uri}" is not a valid S3 URI (expected s3://bucket/key)`, { uri });
    }
    return { kind: 's3', bucket, key };
  }
  if (uri.startsWith('file:')) {
    try {
      return { kind: 'file', path: fileURLToPath(uri) };
    } catch (error) {
      throw new AppError('artifact.unsupported_uri', `"${uri}" is not a local file URI`, { uri }, { cause: error });
    }
  }
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(uri)?.[1];
  if (scheme !== undefined || uri === '') {
    throw new AppError('artifact.unsupported_uri',
      `unsupported artifact URI "${uri}": use a local path, file:///…, or s3://bucket/key`, { uri, scheme });
  }
  return { kind: 'file', path: path.resolve(uri) };
}

export async function fetchArtifact(uri: string, options: FetchOptions): Promise<FetchedArtifact> {
  const source = parseArtifactUri(uri);
  const maxBytes = options.maxCompressedBytes ?? DEFAULT_MAX_COMPRESSED_BYTES;
  const timeout = AbortSignal.timeout(options.timeoutMs ?? DEFAULT_FETCH_TIMEOUT_MS);
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
  try {
    if (source.kind === 'file') {
      const stream = await openLocal(source.path, uri, maxBytes);
      return await storeStream(stream, options.workDir, uri, maxBytes, signal);
    }
    return await fetchFromS3(source, uri, options.s3 ?? {}, options.workDir, maxBytes, signal);
  } catch (error) {
    if (timeout.aborted && !options.signal?.aborted && !(error instanceof AppError)) {
      throw new AppError('artifact.fetch_failed', `fetching "${uri}" timed out`, { uri }, { cause: error });
    }
    throw error;
  }
}

/** For bytes uploaded through the API: same checks, same result shape. */
export async function storeUploadedArtifact(
  stream: Readable,
  workDir: string,
  options: StoreOptions = {},
): Promise<FetchedArtifact> {
  return storeStream(stream, workDir, 'upload', options.maxCompressedBytes ?? DEFAULT_MAX_COMPRESSED_BYTES,
    options.signal);
}

async function openLocal(filePath: string, uri: string, maxBytes: number): Promise<Readable> {
  const handle = await open(filePath, 'r').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT' || error.code === 'ENOTDIR') {
      throw new AppError('artifact.not_found', `artifact "${uri}" does not exist`, { uri, path: filePath });
    }
    throw new AppError('artifact.fetch_failed', `cannot read artifact "${uri}": ${error.message}`,
      { uri, path: filePath }, { cause: error });
  });
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) {
      throw new AppError('artifact.not_found', `artifact "${uri}" is not a regular file`, { uri, path: filePath });
    }
    if (stats.size > maxBytes) throw tooLarge(uri, maxBytes);
  } catch (error) {
    await handle.close();
    throw error;
  }
  return handle.createReadStream(); // closes the handle when done or destroyed
}

async function fetchFromS3(
  source: { bucket: string; key: string },
  uri: string,
  config: S3Config,
  workDir: string,
  maxBytes: number,
  signal: AbortSignal,
): Promise<FetchedArtifact> {
  const client = new S3Client({
    ...(config.endpoint ? { endpoint: config.endpoint } : {}),
    region: config.region ?? 'us-east-1',
    forcePathStyle: config.forcePathStyle ?? false,
    // Without explicit keys the SDK's default chain (env, profile, instance role) applies.
    ...(config.accessKeyId && config.secretAccessKey
      ? { credentials: { accessKeyId: config.accessKeyId, secretAccessKey: config.secretAccessKey } }
      : {}),
  });
  try {
    let response: GetObjectCommandOutput;
    try {
      response = await client.send(new GetObjectCommand({ Bucket: source.bucket, Key: source.key }),
        { abortSignal: signal });
    } catch (error) {
      throw s3Error(error, uri);
    }
    const body = response.Body;
    if (!(body instanceof Readable)) {
      throw new AppError('artifact.fetch_failed', `S3 returned no readable body for "${uri}"`, { uri });
    }
    if (response.ContentLength !== undefined && response.ContentLength > maxBytes) {
      body.destroy();
      throw tooLarge(uri, maxBytes);
    }
    return await storeStream(body, workDir, uri, maxBytes, signal);
  } finally {
    client.destroy();
  }
}

function s3Error(error: unknown, uri: string): unknown {
  if ((error as Error | undefined)?.name === 'AbortError') return error;
  const name = (error as { name?: string } | undefined)?.name;
  const httpStatus = (error as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
  if (name === 'NoSuchKey' || name === 'NoSuchBucket' || name === 'NotFound' || httpStatus === 404) {
    return new AppError('artifact.not_found', `artifact "${uri}" does not exist (${name ?? 'HTTP 404'})`,
      { uri, s3Error: name }, { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new AppError('artifact.fetch_failed', `fetching "${uri}" from S3 failed: ${name ?? 'error'}: ${message}`,
    { uri, s3Error: name, httpStatus }, { cause: error });
}

/** Copies `source` to `<workDir>/artifact-<sha256>.zip`; a partial file never keeps the final name. */
async function storeStream(
  source: Readable,
  workDir: string,
  label: string,
  maxBytes: number,
  signal: AbortSignal | undefined,
): Promise<FetchedArtifact> {
  let sourceError: unknown;
  source.once('error', (error) => { sourceError = error; });
  await mkdir(workDir, { recursive: true });
  const partialPath = path.join(workDir, `.artifact-${randomUUID()}.zip.partial`);
  const meter = new HashingLimiter(maxBytes, label);
  try {
    await pipeline(source, meter, createWriteStream(partialPath, { flags: 'wx', mode: 0o644 }),
      signal ? { signal } : {});
    const sha256 = meter.hash.digest('hex');
    const zipPath = path.join(workDir, `artifact-${sha256}.zip`);
    await rename(partialPath, zipPath);
    return { zipPath, sha256, sizeBytes: meter.bytes };
  } catch (error) {
    await rm(partialPath, { force: true });
    if (error === sourceError && !(error instanceof AppError) && (error as Error).name !== 'AbortError') {
      throw new AppError('artifact.fetch_failed', `reading ${label} failed: ${(error as Error).message}`,
        { uri: label }, { cause: error });
    }
    throw error;
  }
}

/** Hashes while enforcing the size limit, so an oversized source is cut off, not stored. */
class HashingLimiter extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  constructor(private readonly maxBytes: number, private readonly label: string) {
    super();
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.maxBytes) {
      callback(tooLarge(this.label, this.maxBytes));
      return;
    }
    this.hash.update(chunk);
    callback(null, chunk);
  }
}

function tooLarge(label: string, maxBytes: number): AppError {
  return new AppError('artifact.too_large', `artifact "${label}" is larger than ${formatBytes(maxBytes)}`,
    { uri: label, maxCompressedBytes: maxBytes });
}
