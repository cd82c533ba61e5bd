/**
 * The narrow VM driver interface. It knows VMs, RAM, disks, snapshots and ports — nothing about
 * tenants, images or MicroVM records. `QemuDriver` is the implementation.
 */
import type { AgentClient } from '../guest/client.ts';
import type { Accelerator, HostForward } from './qemu/argv.ts';

export type { Accelerator, HostForward };

export interface GuestArtifacts {
  kernelPath: string;
  initramfsPath: string;
}

export interface VmShape {
  memoryMiB: number;
  vcpus: number;
  /** Guest TCP ports reachable from the host on loopback (each gets a free host port). */
  guestPorts: number[];
}

export interface BootSpec extends VmShape {
  /** The VM's own directory: sockets, pid file, logs, disk overlay, saved state. */
  dir: string;
  rootDisk: RootDisk;
  hostname: string;
  /** Unix socket of an egress proxy (guest sees it at 10.0.2.100:3128); without it nothing leaves. */
  egressSocket?: string;
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
  /** Host loopback port that reaches `guestPort` inside the VM. */
  hostPort(guestPort: number): number;
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
}

/** A stopped VM whose full state (RAM, devices, disk overlay) is on disk in its directory. */
export interface SuspendedVm {
  dir: string;
  stateBytes: number;
}

export interface VmDriver {
  readonly accelerator: Accelerator;
  boot(spec: BootSpec, options?: OperationOptions): Promise<RunningVm>;
  pause(vm: RunningVm): Promise<void>;
  cont(vm: RunningVm): Promise<void>;
  /** Saves the running VM as a template and stops it; `vm.dir` becomes the template's directory. */
  snapshotTemplate(vm: RunningVm, options?: OperationOptions): Promise<TemplateSnapshot>;
  /** Restores a new VM from a template: private copy-on-write RAM and its own disk overlay. */
  launch(template: TemplateSnapshot, dir: string, options?: OperationOptions): Promise<RunningVm>;
  /**
   * Makes the VM's current disk file read-only and continues on a new overlay at `nextActivePath`
   * (a layer of an image build). Returns the frozen file's path. Sync the guest first.
   */
  freezeDisk(vm: RunningVm, nextActivePath: string): Promise<string>;
  suspend(vm: RunningVm, options?: OperationOptions): Promise<SuspendedVm>;
  resume(suspended: SuspendedVm, options?: OperationOptions): Promise<RunningVm>;
  stop(vm: RunningVm): Promise<void>;
}

export interface OperationOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}
