/**
 * Wires the VM engine together: guest artifacts (kernel, initramfs, root filesystems), the
 * accelerator choice for this host, and the QEMU driver.
 */
import { copyFile, link, mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import { loadConfig, type Config } from '../config/config.ts';
import path from 'node:path';
import { ensureGuestArtifacts, type GuestArtifacts } from '../../guest/build/artifacts.ts';
import { chooseAccelerator, type AcceleratorChoice } from '../vmm/accelerator.ts';
import { Cgroups } from '../vmm/cgroups.ts';
import { NetworkNamespaces } from '../vmm/netns.ts';
import { QemuDriver } from '../vmm/qemu/driver.ts';

/** A KVM that works boots the tiny guest in well under a second; a broken one hangs or aborts. */
const KVM_PROBE_TIMEOUT_MS = 20_000;

export interface Engine {
  driver: QemuDriver;
  /** Content-addressed kernel and initramfs every VM boots (benchmarks build a cold-boot driver from them). */
  bootFiles: { kernelPath: string; initramfsPath: string };
  artifacts: GuestArtifacts;
  accelerator: AcceleratorChoice;
  /** Undefined when this host's cgroups cannot be used: VMs then run without host CPU/memory limits. */
  cgroups: Cgroups | undefined;
  /** Undefined when VMs cannot get network namespaces here (not root, no nftables): `internet` egress is refused. */
  networks: NetworkNamespaces | undefined;
}

export async function startEngine(options: { config?: Config; debian?: boolean; log?: (line: string) => void } = {}): Promise<Engine> {
  const config = options.config ?? loadConfig();
  const log = options.log ?? (() => {});
  const artifacts = await ensureGuestArtifacts({ debian: options.debian ?? false, log });
  const boot = await pinBootFiles(artifacts, path.join(config.dataDir, 'guest'));
  const kvmDriver = await QemuDriver.create({ accelerator: 'kvm', artifacts: boot });
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
  const cgroups = await Cgroups.open().then(
    (opened) => {
      log(`resource limits: cgroup v${opened.version}`);
      return opened;
    },
    (error: unknown) => {
      log(`resource limits: cgroups unavailable (${(error as Error).message}); VMs run without host CPU and memory limits`);
      return undefined;
    },
  );
  const networks = await NetworkNamespaces.open({ owner: config.dataDir, log }).then(
    (opened) => {
      log('egress: internet mode available (a network namespace and nftables rules per VM)');
      return { networks: opened };
    },
    (error: unknown) => {
      const reason = (error as Error).message;
      log(`egress: internet mode unavailable (${reason}); VMs get egress none only`);
      return { networksUnavailable: reason };
    },
  );
  const driver = await QemuDriver.create({
    accelerator: accelerator.accelerator, artifacts: boot, bootSnapshotDir: path.join(config.dataDir, 'guest', 'boot-snapshots'), cgroups,
    ...networks,
  });
  return { driver, bootFiles: boot, artifacts, accelerator, cgroups, networks: 'networks' in networks ? networks.networks : undefined };
}

/**
 * Templates record the kernel and initramfs they booted with, while `build/guest/` is rebuilt in
 * place: VMs boot from content-addressed copies under the data directory instead (hard links when
 * possible), which never change.
 */
async function pinBootFiles(artifacts: GuestArtifacts, dir: string): Promise<{ kernelPath: string; initramfsPath: string; egressRelayPath: string }> {
  const pin = async (source: string, sha256: string | undefined, name: string): Promise<string> => {
    if (!sha256) throw new Error(`the guest manifest has no sha256 for ${name}`);
    const target = path.join(dir, `${sha256.slice(0, 16)}-${name}`);
    if (await stat(target).then(() => true, () => false)) return target;
    await mkdir(dir, { recursive: true });
    const temp = `${target}.tmp-${process.pid}`;
    await link(source, temp).catch(() => copyFile(source, temp));
    await rename(temp, target);
    return target;
  };
  const { manifest } = artifacts;
  return {
    kernelPath: await pin(artifacts.kernelPath, manifest.artifacts.vmlinux?.sha256, 'vmlinux'),
    initramfsPath: await pin(artifacts.initramfsPath, manifest.artifacts.initramfs?.sha256, 'initramfs.cpio'),
    // Copied into QEMU's chroot by name of its content (driver.ts): no pinned copy needed.
    egressRelayPath: artifacts.egressRelayPath,
  };
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
