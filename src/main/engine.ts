/**
 * Wires the VM engine together: guest artifacts (kernel, initramfs, root filesystems), the
 * accelerator choice for this host, and the QEMU driver.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { loadConfig, type Config } from '../config/config.ts';
import path from 'node:path';
import { ensureGuestArtifacts, type GuestArtifacts } from '../../guest/build/artifacts.ts';
import { chooseAccelerator, type AcceleratorChoice } from '../vmm/accelerator.ts';
import { QemuDriver } from '../vmm/qemu/driver.ts';

/** A KVM that works boots the tiny guest in well under a second; a broken one hangs or aborts. */
const KVM_PROBE_TIMEOUT_MS = 20_000;

export interface Engine {
  driver: QemuDriver;
  artifacts: GuestArtifacts;
  accelerator: AcceleratorChoice;
}

export async function startEngine(options: { config?: Config; debian?: boolean; log?: (line: string) => void } = {}): Promise<Engine> {
  const config = options.config ?? loadConfig();
  const log = options.log ?? (() => {});
  const artifacts = await ensureGuestArtifacts({ debian: options.debian ?? false, log });
  const kvmDriver = await QemuDriver.create({ accelerator: 'kvm', artifacts });
  const accelerator = await chooseAccelerator({
    cacheDir: config.cacheDir,
    qemuVersion: kvmDriver.qemuVersion,
    override: config.accelerator,
    probeKvm: async () => {
      log('probing KVM with a test guest (once per host)…');
      return probeBoot(kvmDriver, artifacts.rootfs.tiny);
    },
  });
  log(`accelerator: ${accelerator.accelerator} (${accelerator.reason})`);
  const driver = await QemuDriver.create({ accelerator: accelerator.accelerator, artifacts });
  return { driver, artifacts, accelerator };
}

async function probeBoot(driver: QemuDriver, rootfsPath: string): Promise<boolean> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-kvm-probe-'));
  try {
    const vm = await driver.boot(
      { dir, rootDisk: { kind: 'copy', rootfsPath }, hostname: 'kvm-probe', memoryMiB: 128, vcpus: 1, guestPorts: [], templateSource: false },
      { timeoutMs: KVM_PROBE_TIMEOUT_MS },
    );
    await driver.stop(vm);
    return true;
  } catch {
    return false;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
