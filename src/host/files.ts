/**
 * Durable file writes (a file is written to a temporary name, fsynced and renamed into place), and
 * the sweep of working directories that a daemon killed mid-work left behind.
 */
import { lstat, open, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

export async function fsyncPath(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Makes a rename durable (the directory entry itself must reach the disk). */
export async function fsyncDir(dir: string): Promise<void> {
  await fsyncPath(dir);
}

export async function renameDurably(from: string, to: string): Promise<void> {
  await fsyncPath(from);
  await rename(from, to);
  await fsyncDir(path.dirname(to));
}

export async function writeFileAtomic(file: string, data: string | Buffer): Promise<void> {
  const temp = `${file}.tmp-${process.pid}`;
  await writeFile(temp, data);
  await renameDurably(temp, file);
}

/**
 * Removes the directories `<parent>/<prefix>…` last changed more than `olderThanMs` ago, except
 * those `inUse` claims (e.g. a socket something still serves).
 */
export async function removeStaleDirs(parent: string, prefix: string, olderThanMs: number, inUse: (dir: string) => Promise<boolean> = async () => false): Promise<void> {
  const cutoff = Date.now() - olderThanMs;
  for (const name of await readdir(parent)) {
    if (!name.startsWith(prefix)) continue;
    const dir = path.join(parent, name);
    const info = await lstat(dir).catch(() => undefined);
    if (info?.isDirectory() && info.mtimeMs < cutoff && !(await inUse(dir))) await rm(dir, { recursive: true, force: true });
  }
}
