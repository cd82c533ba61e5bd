/** Durable file writes: a file is written to a temporary name, fsynced and renamed into place. */
import { open, rename, writeFile } from 'node:fs/promises';
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
