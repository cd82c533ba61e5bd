// Build caching and exclusion for build/guest/: an artifact is rebuilt only when the hash of its
// inputs changed or its file was changed or removed; one build runs at a time (a lock file).
import { lstat, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { removeTreeSafely } from './debian.ts';
import { sha256File, sha256Text, type Log } from './exec.ts';

export interface ArtifactRecord {
  /** File name inside the output directory. */
  file: string;
  sha256: string;
  sizeBytes: number;
  /** With sizeBytes, tells a cached file apart from one changed since (hashing big images is slow). */
  mtimeMs: number;
  /** sha256 of the step's inputs (see inputHash). */
  inputHash: string;
  builtAt: string;
  buildSeconds: number;
}

/** A stable hash of a step's inputs: keys are sorted so property order does not matter. Pure. */
export function inputHash(inputs: unknown): string {
  const canonical = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(canonical);
    if (value !== null && typeof value === 'object') {
      return Object.fromEntries(Object.keys(value).sort().map((key) => [key, canonical((value as Record<string, unknown>)[key])]));
    }
    return value;
  };
  return sha256Text(JSON.stringify(canonical(inputs)));
}

/** Why an artifact must be (re)built, or undefined when the recorded one is still good. Pure. */
export function staleReason(
  record: ArtifactRecord | undefined,
  wantedInputHash: string,
  file: { sizeBytes: number; mtimeMs: number } | undefined,
  force: boolean,
): string | undefined {
  if (force) return 'forced';
  if (file === undefined) return 'missing';
  if (record === undefined) return 'not in the manifest';
  if (record.inputHash !== wantedInputHash) return 'inputs changed';
  if (record.sizeBytes !== file.sizeBytes || record.mtimeMs !== file.mtimeMs) return 'file changed since it was built';
  return undefined;
}

export async function fileStamp(path: string): Promise<{ sizeBytes: number; mtimeMs: number } | undefined> {
  const stats = await stat(path).catch(() => undefined);
  return stats?.isFile() ? { sizeBytes: stats.size, mtimeMs: stats.mtimeMs } : undefined;
}

/**
 * Returns the recorded artifact when it is current; otherwise builds it into a temporary sibling
 * and renames it into place, so a crash never leaves a half-written artifact under its name.
 */
export async function ensureArtifact(options: {
  name: string;
  outDir: string;
  file: string;
  inputs: unknown;
  previous: ArtifactRecord | undefined;
  force: boolean;
  log: Log;
  build: (tmpPath: string) => Promise<void>;
}): Promise<ArtifactRecord> {
  const path = join(options.outDir, options.file);
  const wantedHash = inputHash(options.inputs);
  const reason = staleReason(options.previous, wantedHash, await fileStamp(path), options.force);
  if (reason === undefined && options.previous !== undefined) return options.previous;
  options.log(`${options.name}: building (${reason})`);
  const startedMs = performance.now();
  const tmpPath = `${path}.tmp-${process.pid}`;
  try {
    await rm(tmpPath, { force: true });
    await options.build(tmpPath);
    await rename(tmpPath, path);
  } finally {
    await rm(tmpPath, { force: true });
  }
  const stamp = await fileStamp(path);
  if (stamp === undefined) throw new Error(`${path} vanished after its build`);
  const buildSeconds = Math.round((performance.now() - startedMs) / 10) / 100;
  options.log(`${options.name}: built in ${buildSeconds} s`);
  return {
    file: options.file,
    sha256: await sha256File(path),
    ...stamp,
    inputHash: wantedHash,
    builtAt: new Date().toISOString(),
    buildSeconds,
  };
}

/** Temporary names this module and the build steps use: "<name>.tmp-<pid>". */
export function isTemporaryName(name: string): boolean {
  return /\.tmp-\d+$/.test(name);
}

/** Deletes what interrupted builds left behind. Call with the lock held: no build owns them. */
export async function reclaimTemporaries(outDir: string, log: Log): Promise<void> {
  for (const name of await readdir(outDir)) {
    if (!isTemporaryName(name)) continue;
    const path = join(outDir, name);
    log(`cleanup: removing ${name} left by an interrupted build`);
    const stats = await lstat(path);
    if (stats.isDirectory()) await removeTreeSafely(path);
    else await rm(path, { force: true });
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes build/guest/.lock (created exclusively, holding our pid). A lock whose process is gone
 * is stale and taken over; a live holder is waited for, since two builds would race on renames.
 */
export async function acquireBuildLock(lockPath: string, log: Log, signal?: AbortSignal): Promise<() => Promise<void>> {
  let announced = false;
  for (;;) {
    try {
      const handle = await open(lockPath, 'wx');
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return async () => {
        const holder = await readFile(lockPath, 'utf8').catch(() => '');
        if (holder.trim() === String(process.pid)) await rm(lockPath, { force: true });
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holderText = await readFile(lockPath, 'utf8').catch(() => '');
    const holderPid = Number(holderText.trim());
    const lockAgeMs = Date.now() - ((await stat(lockPath).catch(() => undefined))?.mtimeMs ?? Date.now());
    const stale = Number.isInteger(holderPid) && holderPid > 0 ? !processAlive(holderPid) : lockAgeMs > 10_000;
    if (stale) {
      await rm(lockPath, { force: true });
      continue;
    }
    if (!announced) {
      log(`waiting for another guest build (pid ${holderText.trim() || '?'}) to finish`);
      announced = true;
    }
    await sleep(250, undefined, { signal });
  }
}
