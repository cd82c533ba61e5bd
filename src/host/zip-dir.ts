/** Packs a directory into a zip (what a user uploads as a code artifact), files in sorted order. */
import { createWriteStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { ZipFile } from 'yazl';

export async function zipDirectory(dir: string, zipPath: string): Promise<void> {
  const zip = new ZipFile();
  const written = new Promise<void>((resolve, reject) => {
    const out = createWriteStream(zipPath);
    out.on('close', resolve);
    out.on('error', reject);
    zip.outputStream.pipe(out);
  });
  for (const relative of await listFiles(dir)) {
    const info = await stat(path.join(dir, relative));
    zip.addFile(path.join(dir, relative), relative, { mode: info.mode & 0o777 });
  }
  zip.end();
  await written;
}

async function listFiles(dir: string, prefix = ''): Promise<string[]> {
  const entries = await readdir(path.join(dir, prefix), { withFileTypes: true });
  const files: string[] = [];
  for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const relative = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) files.push(...(await listFiles(dir, relative)));
    else if (entry.isFile()) files.push(relative);
  }
  return files;
}
