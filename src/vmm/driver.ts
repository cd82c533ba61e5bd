/**
 * The narrow VM driver interface. It knows VMs, RAM, disks, snapshots and ports — nothing about
 * tenants, images or MicroVM records. `QemuDriver` is the implementation.
 */
import type { AgentClient } from '../guest/client.ts';
import type { ResourceUsage } from './cgroups.ts';
import type { EgressAllowRule, EgressMode, EgressSpec } from './netns.ts';
import type { Accelerator, HostForward } from './qemu/argv.ts';

export type { Accelerator, EgressAllowRule, EgressMode, EgressSpec, HostForward, ResourceUsage };

export interface GuestArtifacts {
  kernelPath: string;
  initramfsPath: string;
  /**
   * Static helper that a build VM's guestfwd runs inside QEMU's chroot to reach `egressSocket`
   * (guest/agent/egress-relay.c); without it, such VMs cannot drop privileges.
   */
  egressRelayPath?: string;
}

export interface VmShape {
  memoryMiB: number;
  vcpus: number;
  /** Guest TCP ports reachable from the host on loopback (each gets a free host port). */
  guestPorts: number[];
  /** Host limits of the VM's QEMU process; without them it runs unlimited (beyond its RAM and vCPUs). */
  limits?: HostLimits;
}

/**
 * The host CPU a VM's QEMU may use: `cpuBurstCores` is a hard quota, `cpuBaselineCores` its share
 * when the host's CPUs are contended. A VM with limits also gets a memory limit (its RAM plus
 * QEMU's own overhead) and a pids limit, in a cgroup of its own when the host allows it.
 */
export interface HostLimits {
  cpuBaselineCores: number;
  cpuBurstCores: number;
}

/** What enforces a running VM's host limits: a cgroup, or nothing (no limits asked, or cgroups unavailable). */
export type LimitsEnforcement = 'cgroup-v1' | 'cgroup-v2' | 'none';

export interface BootSpec extends VmShape {
  /** The VM's own directory: sockets, pid file, logs, disk overlay, saved state. */
  dir: string;
  rootDisk: RootDisk;
  hostname: string;
  /** Unix socket of an egress proxy (guest sees it at 10.0.2.100:3128); without it nothing leaves. */
  egressSocket?: string;
  /**
   * The files `freezeDisk` will move the VM's disk into, in order (an image build's layers). They
   * are created (each backed by the one before) and opened before QEMU starts, because a QEMU that
   * dropped privileges can no longer create or open files by path.
   */
  freezePaths?: readonly string[];
  /** Boot with RAM in a shared file so that the VM can become a template snapshot. */
  templateSource: boolean;
}

/**
 * `copy`: the VM gets its own qcow2 copy of a raw rootfs image (a template never depends on a
 * rebuildable file). `overlay`: a new qcow2 overlay on a read-only layer (image builds).
 */
export type RootDisk =
  | { kind: 'copy'; rootfsPath: string }
  /** `activePath`: where the overlay goes (default: the VM's disk.qcow2), e.g. a build layer's file. */
  | { kind: 'overlay'; backingPath: string; activePath?: string };

export interface RunningVm {
  readonly dir: string;
  readonly pid: number;
  readonly accelerator: Accelerator;
  readonly forwards: readonly HostForward[];
  readonly agent: AgentClient;
  readonly serialLog: string;
  /** When its QEMU started (the launch or resume that began the current run), also for an adopted VM. */
  readonly startedAtMs: number;
  readonly limitsEnforcedBy: LimitsEnforcement;
  /**
   * Where the host reaches the VM's forwarded ports: 127.0.0.1, or the address of its network
   * namespace (a VM with `internet` egress).
   */
  readonly hostAddress: string;
  /** Host port (on `hostAddress`) that reaches `guestPort` inside the VM. */
  hostPort(guestPort: number): number;
  /** CPU time and memory of its QEMU process so far (rejects once QEMU has exited). */
  usage(): Promise<ResourceUsage>;
}

/** A template: the RAM file, device state and disk of a VM saved while its app ran. */
export interface TemplateSnapshot {
  dir: string;
  memoryMiB: number;
  vcpus: number;
  guestPorts: number[];
  hostname: string;
  qemuVersion: string;
  accelerator: Accelerator;
  kernelCmdline: string;
  kernelPath: string;
  initramfsPath: string;
  deviceStateBytes: number;
  /** The limits every VM launched from it runs under (absent in templates made before limits existed). */
  limits?: HostLimits;
}

/** A stopped VM whose full state (RAM, devices, disk overlay) is on disk in its directory. */
export interface SuspendedVm {
  dir: string;
  stateBytes: number;
}

export interface VmDriver {
  readonly accelerator: Accelerator;
  /** Why this host cannot run VMs with `internet` egress (not root, no nftables); undefined when it can. */
  readonly internetEgressUnavailable: string | undefined;
  boot(spec: BootSpec, options?: OperationOptions): Promise<RunningVm>;
  pause(vm: RunningVm): Promise<void>;
  cont(vm: RunningVm): Promise<void>;
  /** Saves the running VM as a template and stops it; `vm.dir` becomes the template's directory. */
  snapshotTemplate(vm: RunningVm, options?: OperationOptions): Promise<TemplateSnapshot>;
  /** Restores a new VM from a template: private copy-on-write RAM and its own disk overlay. */
  launch(template: TemplateSnapshot, dir: string, options?: StartOptions): Promise<RunningVm>;
  /**
   * Makes the VM's current disk file read-only and continues on a new overlay at `nextActivePath`
   * (a layer of an image build), which must be the next of the boot spec's `freezePaths`. Returns
   * the frozen file's path. Sync the guest first.
   */
  freezeDisk(vm: RunningVm, nextActivePath: string): Promise<string>;
  /** Grows the VM's current disk to `sizeBytes` while it runs; the guest sees the new capacity (its filesystem is the guest's concern). */
  growDisk(vm: RunningVm, sizeBytes: number): Promise<void>;
  suspend(vm: RunningVm, options?: OperationOptions): Promise<SuspendedVm>;
  resume(suspended: SuspendedVm, options?: StartOptions): Promise<RunningVm>;
  stop(vm: RunningVm): Promise<void>;
  /**
   * Re-attaches to the live VM in `dir` that another (crashed or restarted) daemon started, and
   * leaves it running. `vmm.exited` if none runs; `vmm.adopt_failed` if it runs but cannot be
   * driven (it is stopped then).
   */
  adopt(dir: string, options?: OperationOptions): Promise<RunningVm>;
  /** Lets a running VM outlive this daemon (a graceful restart); the next daemon adopts it. */
  release(vm: RunningVm): void;
}

export interface OperationOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A launch or resume: the guest's egress is chosen per start (default `none`: nothing leaves it). */
export interface StartOptions extends OperationOptions {
  egress?: EgressSpec;
}
