/**
 * Disk layers of image builds: one read-only qcow2 file per build step, named by the step's cache
 * key and backed by its parent's file. A layer counts only once its `.json` marker exists, so a
 * crash mid-step leaves a file that the next build discards instead of trusting.
 */
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../host/files.ts';
import { run } from '../host/run.ts';

export interface LayerInfo {
  key: string;
  parent: string;
  description: string;
  createdAt: string;
  sizeBytes: number;
}

export class LayerStore {
  constructor(readonly dir: string) {}

  pathOf(key: string): string {
    if (!/^[0-9a-f]{16,64}$/.test(key)) throw new RangeError(`bad layer key ${key}`);
    return path.join(this.dir, `${key}.qcow2`);
  }

  async has(key: string): Promise<boolean> {
    return stat(this.markerOf(key)).then(() => true, () => false);
  }

  async info(key: string): Promise<LayerInfo> {
    return JSON.parse(await readFile(this.markerOf(key), 'utf8')) as LayerInfo;
  }

  /** The qcow2 copy of a base root filesystem, keyed by the rootfs's sha256. */
  async baseLayer(rootfsPath: string, rootfsSha256: string): Promise<string> {
    const key = rootfsSha256.slice(0, 64);
    const file = this.pathOf(key);
    if (await this.has(key)) return file;
    await mkdir(this.dir, { recursive: true });
    const temp = `${file}.tmp-${process.pid}`;
    await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', rootfsPath, temp]);
    await rename(temp, file);
    await this.markDone(key, { parent: '', description: `base ${path.basename(rootfsPath)}` });
    return file;
  }

  /** Removes a layer file that has no marker (a step that never finished) before it is rebuilt. */
  async discardUnfinished(key: string): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    if (!(await this.has(key))) await rm(this.pathOf(key), { force: true });
  }

  async markDone(key: string, info: { parent: string; description: string }): Promise<void> {
    const sizeBytes = (await stat(this.pathOf(key))).size;
    const record: LayerInfo = { key, ...info, createdAt: new Date().toISOString(), sizeBytes };
    await writeFileAtomic(this.markerOf(key), JSON.stringify(record, null, 2));
  }

  private markerOf(key: string): string {
    return this.pathOf(key).replace(/\.qcow2$/, '.json');
  }
}
