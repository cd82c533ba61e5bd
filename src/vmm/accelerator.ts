/**
 * Picks the accelerator once per host: KVM only when a guest really boots with it, else TCG.
 * (Some hosts expose a /dev/kvm that cannot boot a stock kernel, e.g. nested KVM-PVM.)
 */
import { access, constants, mkdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { writeFileAtomic } from '../host/files.ts';
import type { Accelerator } from './qemu/argv.ts';

export interface AcceleratorChoice {
  accelerator: Accelerator;
  reason: string;
}

interface CachedChoice extends AcceleratorChoice {
  hostKey: string;
}

/**
 * `probeKvm` boots a real guest under KVM and resolves true only when its agent answered.
 * The answer is cached per host kernel + QEMU version; `override` (COCOON_ACCELERATOR) skips it.
 */
export async function chooseAccelerator(options: {
  cacheDir: string;
  qemuVersion: string;
  override?: string | undefined;
  probeKvm: () => Promise<boolean>;
}): Promise<AcceleratorChoice> {
  if (options.override === 'kvm' || options.override === 'tcg') {
    return { accelerator: options.override, reason: 'set by COCOON_ACCELERATOR' };
  }
  if (options.override) throw new RangeError(`COCOON_ACCELERATOR must be kvm or tcg, not ${options.override}`);
  const hostKey = `${os.release()} ${options.qemuVersion}`;
  const cachePath = path.join(options.cacheDir, 'accelerator.json');
  const cached = await readFile(cachePath, 'utf8').then((text) => JSON.parse(text) as CachedChoice, () => undefined);
  if (cached?.hostKey === hostKey) return { accelerator: cached.accelerator, reason: `${cached.reason} (cached)` };

  const choice = await detect(options.probeKvm);
  await mkdir(options.cacheDir, { recursive: true });
  await writeFileAtomic(cachePath, JSON.stringify({ ...choice, hostKey } satisfies CachedChoice));
  return choice;
}

async function detect(probeKvm: () => Promise<boolean>): Promise<AcceleratorChoice> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { accelerator: 'tcg', reason: '/dev/kvm is not available' };
  }
  if (await probeKvm().catch(() => false)) return { accelerator: 'kvm', reason: 'a probe guest booted under KVM' };
  return { accelerator: 'tcg', reason: '/dev/kvm exists but a probe guest did not boot under KVM' };
}
