/**
 * Pure builder of QEMU command lines. Launch and resume restore migration streams, which only load
 * into an identical device configuration: every device, id and order comes from this one function.
 */
import { assertShellSafe } from '../../host/paths.ts';
import type { VmUser } from './vm-users.ts';

export type Accelerator = 'kvm' | 'tcg';

export type RamBacking =
  /** Guest RAM in a file mapped shared: the build VM whose RAM becomes a template. */
  | { kind: 'template-source'; path: string }
  /** Private copy-on-write mapping of a template's RAM file: a clone. */
  | { kind: 'template-clone'; path: string }
  /** Plain anonymous memory: cold boots that are not templates, and resumes. */
  | { kind: 'anonymous' };

export interface HostForward {
  hostPort: number;
  guestPort: number;
}

export interface MachineConfig {
  accelerator: Accelerator;
  memoryMiB: number;
  vcpus: number;
  kernelPath: string;
  initramfsPath: string;
  kernelCmdline: string;
  /**
   * Host unix socket of the egress proxy; each guest connection to EGRESS_PROXY gets its own `socat`
   * (or, for a QEMU that drops privileges, its own relay: QemuLaunch.egressRelay).
   */
  egressSocket?: string;
}

/** Where the guest reaches the egress proxy (set as http_proxy for build steps). */
export const EGRESS_PROXY = { address: '10.0.2.100', port: 3128 } as const;

export interface QemuLaunch {
  machine: MachineConfig;
  ram: RamBacking;
  diskPath: string;
  forwards: HostForward[];
  qmpSocket: string;
  agentSocket: string;
  serialLog: string;
  pidFile: string;
  /**
   * Wait for a migration stream on this unix socket and stay paused until `cont`. QEMU binds it
   * while it starts, before it drops privileges; Cocoon connects and streams the saved state.
   */
  incomingSocket?: string;
  /** Where the port forwards listen: 127.0.0.1 (default), or the address of the VM's network namespace. */
  forwardAddress?: string;
  /**
   * The guest may open connections out of user-mode networking. Only for a QEMU inside a network
   * namespace whose traffic the host filters (src/vmm/netns.ts): 10.0.2.2 is that namespace's loopback.
   */
  unrestricted?: boolean;
  /**
   * The user QEMU drops to once its files are open (Cocoon runs as root); without it, Cocoon's own.
   * QEMU then reads the disk through inherited descriptors (DISK_FDS), as it reopens the disk after
   * a restore, when it could no longer open the VM's files by path.
   */
  runAs?: VmUser;
  /** With `runAs`: the directory QEMU chroots into before it drops privileges (it opens no file later). */
  chrootDir?: string;
  /**
   * With `runAs`: how many later disk layers QEMU inherits (layerFds), for `freezeDisk` to add as
   * nodes over their fd sets once the guest has written the layer before.
   */
  layerCount?: number;
  /**
   * With `chrootDir` and an `egressSocket`: the guestfwd runs this static relay instead of socat,
   * both paths as seen inside the chroot. libslirp splits the `cmd:` string into argv itself
   * (g_shell_parse_argv, no shell) and spawns it per guest connection after QEMU has chrooted and
   * dropped privileges: socat and the host's socket are out of its reach there.
   */
  egressRelay?: { program: string; socket: string };
}

/** Descriptors of the disk file that a QEMU with `runAs` inherits: opened read-write and read-only. */
export const DISK_FDS = { readWrite: 3, readOnly: 4 } as const;
/**
 * QEMU's image locks are OFD locks, held by the open file description: the fd set keeps the
 * inherited descriptors open, so a lock QEMU took through one of them outlives the copy it closed,
 * and reactivating the disk after a completed save (`cont`) then fails on its own lock ("Failed to
 * get write lock"). Each VM's disk is its own file and Cocoon runs one QEMU per VM directory.
 */
const FDSET_NO_LOCKING = 'file.locking=off';

/**
 * Descriptors and fd set of the `index`-th (from 0) later layer of a QEMU with `runAs`: after the
 * disk's own set 1 (fds 3 and 4), each layer has a set of its own, opened read-write and read-only.
 */
export function layerFds(index: number): { set: number; readWrite: number; readOnly: number } {
  return { set: 2 + index, readWrite: DISK_FDS.readOnly + 1 + 2 * index, readOnly: DISK_FDS.readOnly + 2 + 2 * index };
}

export const AGENT_PORT_NAME = 'cocoon.agent';

/**
 * TCG's translated-code cache. QEMU's default reserves 1 GiB, and a busy guest fills hundreds of
 * MiB of it (measured: a shell loop and an `ls -R /` in the tiny guest grew QEMU by 240 MiB);
 * capped, QEMU flushes and retranslates instead, and stays within its memory limit's overhead.
 */
export const TCG_CODE_CACHE_MIB = 128;

export function qemuArgv(launch: QemuLaunch): string[] {
  const { machine } = launch;
  const accel = machine.accelerator === 'kvm'
    ? ['-accel', 'kvm', '-cpu', 'host']
    : ['-accel', `tcg,tb-size=${TCG_CODE_CACHE_MIB}${machine.vcpus > 1 ? ',thread=multi' : ''}`, '-cpu', 'max'];
  const forwards = launch.forwards.map((f) => `,hostfwd=tcp:${launch.forwardAddress ?? '127.0.0.1'}:${f.hostPort}-:${f.guestPort}`).join('');
  const relay = machine.egressSocket && launch.egressRelay;
  for (const file of relay ? [relay.program, relay.socket] : machine.egressSocket ? [machine.egressSocket] : []) assertShellSafe(file);
  const egressCommand = relay ? `${relay.program} ${relay.socket}` : `socat - UNIX-CONNECT:${machine.egressSocket}`;
  const egress = machine.egressSocket ? `,guestfwd=tcp:${EGRESS_PROXY.address}:${EGRESS_PROXY.port}-cmd:${egressCommand}` : '';
  const layers = launch.runAs ? Array.from({ length: launch.layerCount ?? 0 }, (_, i) => layerFds(i)) : [];
  return [
    '-name', 'cocoon',
    '-M', 'microvm,rtc=on,memory-backend=mem',
    ...accel,
    '-m', `${machine.memoryMiB}M`,
    '-smp', String(machine.vcpus),
    ...ramObject(launch.ram, machine.memoryMiB),
    '-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'none', '-no-reboot',
    '-chardev', `file,id=serial0,path=${launch.serialLog},append=on`,
    '-serial', 'chardev:serial0',
    '-kernel', machine.kernelPath,
    '-initrd', machine.initramfsPath,
    '-append', machine.kernelCmdline,
    ...(launch.runAs ? ['-add-fd', `fd=${DISK_FDS.readWrite},set=1`, '-add-fd', `fd=${DISK_FDS.readOnly},set=1`] : []),
    ...layers.flatMap((fds) => ['-add-fd', `fd=${fds.readWrite},set=${fds.set}`, '-add-fd', `fd=${fds.readOnly},set=${fds.set}`]),
    '-drive', `id=root,${launch.runAs ? `file=/dev/fdset/1,${FDSET_NO_LOCKING}` : `file=${launch.diskPath}`},format=qcow2,if=none,cache=writeback,discard=unmap`,
    '-device', 'virtio-blk-device,drive=root',
    // restrict=on: the guest cannot open connections out of user-mode networking (10.0.2.2 would
    // be the host's loopback); hostfwd still lets the host reach the guest's ports. A restore may
    // change it: it is not part of the migration stream.
    '-netdev', `user,id=net0,restrict=${launch.unrestricted ? 'off' : 'on'}${forwards}${egress}`,
    '-device', 'virtio-net-device,netdev=net0',
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent0,path=${launch.agentSocket},server=on,wait=off`,
    '-device', `virtserialport,chardev=agent0,name=${AGENT_PORT_NAME}`,
    '-device', 'virtio-rng-device',
    '-qmp', `unix:${launch.qmpSocket},server=on,wait=off`,
    '-pidfile', launch.pidFile,
    '-sandbox', sandbox(launch),
    ...(launch.runAs ? ['-runas', `${launch.runAs.uid}:${launch.runAs.gid}`] : []),
    ...(launch.runAs && launch.chrootDir ? ['-chroot', launch.chrootDir] : []),
    ...(launch.incomingSocket ? ['-S', '-incoming', `unix:${launch.incomingSocket}`] : []),
  ];
}

/**
 * QEMU's seccomp filter. Migration streams go through sockets that Cocoon serves, so QEMU needs to
 * start no process, except for the egress `guestfwd` (one socat or relay per guest connection).
 * `-runas` calls setuid/setgid after the filter is in place, so privileges can only be denied
 * without it; with it, QEMU ends up with no capabilities and no_new_privs (checked by the
 * hardening test), so it cannot raise them again either.
 */
function sandbox(launch: QemuLaunch): string {
  // The guestfwd's socat inherits the filter, and elevateprivileges=deny kills it (measured: the
  // build VM's apt then gets "Connection failed" from 10.0.2.100:3128).
  const elevate = launch.runAs || launch.machine.egressSocket ? 'allow' : 'deny';
  return [
    'on', 'obsolete=deny', `elevateprivileges=${elevate}`,
    `spawn=${launch.machine.egressSocket ? 'allow' : 'deny'}`, 'resourcecontrol=deny',
  ].join(',');
}

function ramObject(ram: RamBacking, memoryMiB: number): string[] {
  switch (ram.kind) {
    case 'template-source':
      return ['-object', `memory-backend-file,id=mem,size=${memoryMiB}M,mem-path=${ram.path},share=on`];
    case 'template-clone':
      return ['-object', `memory-backend-file,id=mem,size=${memoryMiB}M,mem-path=${ram.path},share=off`];
    case 'anonymous':
      return ['-object', `memory-backend-ram,id=mem,size=${memoryMiB}M`];
  }
}

export interface KernelCmdlineOptions {
  /** Host TSC frequency: without it ~8% of microvm boots hang calibrating the TSC. */
  tscKhz: number | undefined;
  hostname: string;
  /** The agent waits for a ROOT request before mounting the root disk (boot snapshots). */
  waitRoot?: boolean;
}

export function kernelCmdline(options: KernelCmdlineOptions): string {
  return [
    'console=ttyS0', 'reboot=t', 'panic=-1', 'quiet', 'loglevel=4',
    ...(options.tscKhz ? [`tsc_early_khz=${options.tscKhz}`] : []),
    'cocoon.root=/dev/vda',
    `cocoon.hostname=${options.hostname}`,
    ...(options.waitRoot ? ['cocoon.wait_root=1'] : []),
  ].join(' ');
}

/** The TSC frequency in kHz from /proc/cpuinfo text ("cpu MHz : 2445.430"). */
export function tscKhzFromCpuinfo(cpuinfo: string): number | undefined {
  const match = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo);
  return match ? Math.round(Number(match[1]) * 1000) : undefined;
}
