/**
 * The payload of a COPY step: a tar of context files at their guest destinations, owned by root,
 * extracted in the guest with `tar -x -C /` (one agent round trip instead of one per file).
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { stat } from 'node:fs/promises';
import { pack } from 'tar-stream';

export interface CopyEntry {
  /** Path inside the build context (relative, POSIX). */
  source: string;
  /** Absolute path in the guest. */
  dest: string;
}

export async function copyArchive(contextDir: string, entries: readonly CopyEntry[], chmod?: number): Promise<Buffer> {
  const archive = pack();
  const chunks: Buffer[] = [];
  archive.on('data', (chunk) => chunks.push(chunk as Buffer));
  const finished = new Promise<void>((resolve, reject) => { archive.on('end', resolve); archive.on('error', reject); });
  for (const entry of entries) {
    if (!path.posix.isAbsolute(entry.dest) || entry.dest.split('/').includes('..')) throw new RangeError(`bad COPY destination ${entry.dest}`);
    const file = path.join(contextDir, entry.source);
    const info = await stat(file);
    const mode = chmod ?? (info.mode & 0o111 ? 0o755 : 0o644);
    const name = entry.dest.replace(/^\/+/, '');
    if (info.isDirectory()) {
      archive.entry({ name, type: 'directory', mode: chmod ?? 0o755, uid: 0, gid: 0 });
    } else {
      archive.entry({ name, mode, uid: 0, gid: 0, size: info.size }, await readFile(file));
    }
  }
  archive.finalize();
  await finished;
  return Buffer.concat(chunks);
}
