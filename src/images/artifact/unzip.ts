/**
 * Extracts a user's zip without trusting it: names are validated before anything touches disk,
 * symlinks are refused, sizes and ratios are checked against both the declared headers and the
 * bytes actually written, and the result appears at `destDir` only when extraction succeeded
 * (it is built in a sibling temp dir and renamed into place).
 */
import { createWriteStream } from 'node:fs';
import { chmod, mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { crc32 } from 'node:zlib';
import yauzl, { type Entry, type ZipFile } from 'yauzl';
import { AppError } from '../../errors/errors.ts';
import { DEFAULT_MAX_PATH_LENGTH, toSafeRelativePath } from './safe-path.ts';

const MiB = 2 ** 20;

export interface ZipLimits {
  maxTotalUncompressedBytes: number;
  maxEntries: number;
  /** Uncompressed : compressed, per entry and for the whole zip. */
  maxCompressionRatio: number;
  /** Ratios are only checked above this size: tiny, highly compressible files are normal. */
  ratioCheckMinBytes: number;
  maxPathLength: number;
}

export const DEFAULT_ZIP_LIMITS: Readonly<ZipLimits> = Object.freeze({
  maxTotalUncompressedBytes: 1024 * MiB,
  maxEntries: 20_000,
  maxCompressionRatio: 200,
  ratioCheckMinBytes: 1 * MiB,
  maxPathLength: DEFAULT_MAX_PATH_LENGTH,
});

export interface ExtractedFile {
  /** Relative to rootDir, POSIX separators. */
  path: string;
  sizeBytes: number;
  /** 0o755 or 0o644: only the executable flag survives from the zip. */
  mode: number;
}

export interface ExtractedArtifact {
  rootDir: string;
  /** Regular files, sorted by path. */
  files: ExtractedFile[];
  /** Every directory (explicit entries and implied parents), sorted; all 0o755. */
  directories: string[];
  totalBytes: number;
}

/** Temp dirs are `.<basename>.extracting-XXXXXX` beside destDir; startup reclaim can match this. */
export const EXTRACTING_DIR_INFIX = '.extracting-';

const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;
const S_IFDIR = 0o040000;

export async function extractZip(
  zipPath: string,
  destDir: string,
  limits: Partial<ZipLimits> = {},
  options: { signal?: AbortSignal } = {},
): Promise<ExtractedArtifact> {
  const effectiveLimits: ZipLimits = { ...DEFAULT_ZIP_LIMITS, ...limits };
  const rootDir = path.resolve(destDir);
  if (await exists(rootDir)) {
    throw new AppError('internal', `extraction destination ${rootDir} already exists`, { destDir: rootDir });
  }
  await mkdir(path.dirname(rootDir), { recursive: true });
  const tempDir = await mkdtemp(path.join(path.dirname(rootDir), `.${path.basename(rootDir)}${EXTRACTING_DIR_INFIX}`));
  try {
    const extraction = new Extraction(tempDir, effectiveLimits, options.signal);
    await extraction.run(zipPath);
    await chmod(tempDir, 0o755); // mkdtemp creates 0700
    await rename(tempDir, rootDir);
    return { rootDir, ...extraction.result() };
  } catch (error) {
    await rm(tempDir, { recursive: true, force: true });
    throw error;
  }
}

class Extraction {
  private readonly files: ExtractedFile[] = [];
  private readonly directories = new Set<string>();
  private declaredTotalBytes = 0;
  private writtenTotalBytes = 0;
  private zipSizeBytes = 0;

  constructor(
    private readonly tempDir: string,
    private readonly limits: ZipLimits,
    private readonly signal: AbortSignal | undefined,
  ) {}

  async run(zipPath: string): Promise<void> {
    const zipfile = await openZip(zipPath);
    try {
      this.zipSizeBytes = zipfile.fileSize;
      if (zipfile.entryCount > this.limits.maxEntries) {
        throw new AppError('artifact.too_many_files',
          `the zip has ${zipfile.entryCount} entries; at most ${this.limits.maxEntries} are allowed`,
          { entryCount: zipfile.entryCount, maxEntries: this.limits.maxEntries });
      }
      const entries = new EntryReader(zipfile);
      for (let entry = await entries.next(); entry; entry = await entries.next()) {
        this.signal?.throwIfAborted();
        await this.extractEntry(zipfile, entry);
      }
    } finally {
      zipfile.close();
    }
    for (const dir of this.directories) await chmod(path.join(this.tempDir, dir), 0o755); // undo any umask
  }

  result(): Omit<ExtractedArtifact, 'rootDir'> {
    const files = [...this.files].sort((a, b) => compare(a.path, b.path));
    return { files, directories: [...this.directories].sort(compare), totalBytes: this.writtenTotalBytes };
  }

  private async extractEntry(zipfile: ZipFile, entry: Entry): Promise<void> {
    // decodeStrings is off so that '\' is not silently turned into '/'; decode strictly here.
    const name = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, true);
    const safe = toSafeRelativePath(name, 'zip entry', this.limits.maxPathLength);
    const unixMode = (entry.externalFileAttributes >>> 16) & 0xffff;
    if ((unixMode & S_IFMT) === S_IFLNK) {
      throw new AppError('artifact.symlink',
        `zip entry "${name}" is a symbolic link; symlinks are not allowed (put the target file in the zip instead)`,
        { entry: name });
    }
    if (entry.isEncrypted()) {
      throw new AppError('artifact.invalid_zip', `zip entry "${name}" is encrypted; encrypted zips are not supported`,
        { entry: name, reason: 'encrypted' });
    }
    if (safe.path === '') return; // "./" and the like: the root itself
    if (safe.endsWithSlash || (unixMode & S_IFMT) === S_IFDIR) {
      await this.ensureDirectory(safe.path, name);
      return;
    }

    this.declaredTotalBytes += entry.uncompressedSize;
    this.enforce(name, entry.uncompressedSize, entry.compressedSize, this.declaredTotalBytes, 'declares');
    await this.ensureDirectory(path.posix.dirname(safe.path), name);

    const target = path.join(this.tempDir, safe.path);
    const meter = new EntryMeter((entryBytes, chunkBytes) => {
      this.writtenTotalBytes += chunkBytes;
      this.enforce(name, entryBytes, entry.compressedSize, this.writtenTotalBytes, 'expands to');
    });
    try {
      const source = await zipfile.openReadStreamPromise(entry);
      // 0600 while writing; the final mode is set below so setuid/setgid bits can never appear.
      await pipeline(source, meter, createWriteStream(target, { flags: 'wx', mode: 0o600 }),
        this.signal ? { signal: this.signal } : {});
    } catch (error) {
      throw entryError(error, name);
    }
    if (meter.crc !== entry.crc32) {
      throw new AppError('artifact.invalid_zip', `zip entry "${name}" is corrupt (CRC-32 mismatch)`,
        { entry: name, reason: 'crc_mismatch' });
    }
    const mode = (unixMode & 0o111) !== 0 ? 0o755 : 0o644;
    await chmod(target, mode);
    this.files.push({ path: safe.path, sizeBytes: meter.bytes, mode });
  }

  /** The same rules for header values (before writing) and real byte counts (while writing). */
  private enforce(name: string, entryBytes: number, entryCompressedBytes: number, totalBytes: number, verb: string): void {
    const { maxTotalUncompressedBytes, maxCompressionRatio, ratioCheckMinBytes } = this.limits;
    if (totalBytes > maxTotalUncompressedBytes) {
      throw new AppError('artifact.too_large',
        `the zip ${verb} more than ${formatBytes(maxTotalUncompressedBytes)} uncompressed (at entry "${name}")`,
        { entry: name, maxTotalUncompressedBytes });
    }
    if (entryBytes > ratioCheckMinBytes && entryBytes > Math.max(entryCompressedBytes, 1) * maxCompressionRatio) {
      throw new AppError('artifact.compression_ratio',
        `zip entry "${name}" ${verb} ${formatBytes(entryBytes)} from ${formatBytes(entryCompressedBytes)}: ` +
        `compression ratio above ${maxCompressionRatio}:1`,
        { entry: name, uncompressedBytes: entryBytes, compressedBytes: entryCompressedBytes, maxCompressionRatio });
    }
    if (totalBytes > ratioCheckMinBytes && totalBytes > this.zipSizeBytes * maxCompressionRatio) {
      throw new AppError('artifact.compression_ratio',
        `the zip ${verb} ${formatBytes(totalBytes)} from a ${formatBytes(this.zipSizeBytes)} file (at entry "${name}"): ` +
        `overall compression ratio above ${maxCompressionRatio}:1`,
        { entry: name, uncompressedBytes: totalBytes, zipSizeBytes: this.zipSizeBytes, maxCompressionRatio });
    }
  }

  private async ensureDirectory(relativeDir: string, name: string): Promise<void> {
    if (relativeDir === '.' || relativeDir === '' || this.directories.has(relativeDir)) return;
    try {
      await mkdir(path.join(this.tempDir, relativeDir), { recursive: true, mode: 0o755 });
    } catch (error) {
      throw entryError(error, name);
    }
    for (let dir = relativeDir; dir !== '.'; dir = path.posix.dirname(dir)) this.directories.add(dir);
  }
}

/** Counts and checksums the bytes really written; yauzl does not verify CRC-32. */
class EntryMeter extends Transform {
  bytes = 0;
  crc = 0;
  constructor(private readonly onChunk: (entryBytes: number, chunkBytes: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    try {
      this.onChunk(this.bytes, chunk.length);
    } catch (error) {
      callback(error as Error);
      return;
    }
    this.crc = crc32(chunk, this.crc);
    callback(null, chunk);
  }
}

/** Promise wrapper over lazyEntries that never loses an 'error' emitted between two reads. */
class EntryReader {
  private failure: Error | undefined;
  constructor(private readonly zipfile: ZipFile) {
    zipfile.on('error', (error: Error) => { this.failure ??= error; });
  }
  next(): Promise<Entry | undefined> {
    if (this.failure) return Promise.reject(zipError(this.failure));
    return new Promise((resolve, reject) => {
      const done = (): void => {
        this.zipfile.off('entry', onEntry).off('end', onEnd).off('error', onError);
      };
      const onEntry = (entry: Entry): void => { done(); resolve(entry); };
      const onEnd = (): void => { done(); resolve(undefined); };
      const onError = (error: Error): void => { done(); reject(zipError(error)); };
      this.zipfile.on('entry', onEntry).on('end', onEnd).on('error', onError);
      this.zipfile.readEntry();
    });
  }
}

async function openZip(zipPath: string): Promise<ZipFile> {
  try {
    return await yauzl.openPromise(zipPath, {
      lazyEntries: true, validateEntrySizes: true, decodeStrings: false, autoClose: true, strictFileNames: true,
    });
  } catch (error) {
    throw zipError(error);
  }
}

/** Format errors from yauzl/zlib become `artifact.invalid_zip`; host errors (errno) stay as they are. */
function zipError(error: unknown, entryName?: string): unknown {
  if (error instanceof AppError || !(error instanceof Error) || isHostError(error)) return error;
  const where = entryName === undefined ? '' : ` (entry "${entryName}")`;
  if (error.message.startsWith('too many bytes in the stream')) {
    return new AppError('artifact.invalid_zip',
      `zip entry "${entryName}" holds more data than its header declares (corrupt zip or zip bomb)`,
      { entry: entryName, reason: 'size_mismatch' }, { cause: error });
  }
  return new AppError('artifact.invalid_zip', `not a valid zip file${where}: ${error.message}`,
    { entry: entryName, reason: error.message }, { cause: error });
}

function entryError(error: unknown, entryName: string): unknown {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'EEXIST' || code === 'ENOTDIR' || code === 'EISDIR') {
    return new AppError('artifact.invalid_zip',
      `zip entry "${entryName}" conflicts with an earlier entry (duplicate name, or a file used as a directory)`,
      { entry: entryName, reason: 'conflict' }, { cause: error });
  }
  return zipError(error, entryName);
}

function isHostError(error: Error): boolean {
  const { code, syscall } = error as NodeJS.ErrnoException;
  return syscall !== undefined || error.name === 'AbortError' || (typeof code === 'string' && /^E[A-Z]+$/.test(code));
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(() => true, () => false);
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${+(bytes / 2 ** 30).toFixed(1)} GiB`;
  if (bytes >= MiB) return `${+(bytes / MiB).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${+(bytes / 1024).toFixed(1)} KiB`;
  return `${bytes} bytes`;
}
