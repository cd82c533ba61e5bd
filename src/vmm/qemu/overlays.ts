/**
 * Every clone needs its own qcow2 overlay on the template's disk. `qemu-img create` costs ~16 ms of
 * a ~200 ms launch, so each template keeps a few overlays ready and refills them in the background.
 */
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { run } from '../../host/run.ts';

const SPARE_NAME = /^overlay-[0-9a-f-]+\.qcow2$/;

export class OverlayPool {
  private readonly refills = new Map<string, Promise<void>>();

  constructor(private readonly sparesPerTemplate = 2) {}

  /** Puts a fresh overlay on `baseDisk` at `target`: a ready one when there is one, else a new one. */
  async take(baseDisk: string, target: string): Promise<void> {
    const spareDir = spareDirOf(baseDisk);
    const spares = await readdir(spareDir).catch(() => [] as string[]);
    let taken = false;
    for (const name of spares.filter((n) => SPARE_NAME.test(n))) {
      // Two launches may race for one spare: rename is atomic, the loser tries the next one.
      if (await rename(path.join(spareDir, name), target).then(() => true, () => false)) { taken = true; break; }
    }
    if (!taken) await createOverlay(baseDisk, target);
    this.refill(baseDisk);
  }

  /** Resolves when no refill is running (so that callers can remove a template's directory). */
  async idle(): Promise<void> {
    await Promise.all(this.refills.values());
  }

  private refill(baseDisk: string): void {
    if (this.refills.has(baseDisk)) return;
    const work = (async () => {
      const spareDir = spareDirOf(baseDisk);
      await mkdir(spareDir, { recursive: true });
      const names = await readdir(spareDir);
      // Half-made spares of a crashed process; this process owns the template's spares.
      await Promise.all(names.filter((n) => n.startsWith('tmp-')).map((n) => rm(path.join(spareDir, n), { force: true })));
      const have = names.filter((n) => SPARE_NAME.test(n)).length;
      for (let i = have; i < this.sparesPerTemplate; i++) {
        const temp = path.join(spareDir, `tmp-${randomUUID()}`);
        await createOverlay(baseDisk, temp);
        await rename(temp, path.join(spareDir, `overlay-${randomUUID()}.qcow2`));
      }
    })()
      .catch(() => {}) // a spare is an optimisation: take() creates one itself when none is ready
      .finally(() => this.refills.delete(baseDisk));
    this.refills.set(baseDisk, work);
  }
}

function spareDirOf(baseDisk: string): string {
  return path.join(path.dirname(baseDisk), 'spare-overlays');
}

function createOverlay(baseDisk: string, target: string): Promise<string> {
  return run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', baseDisk, '-F', 'qcow2', target]);
}

