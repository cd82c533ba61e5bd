/**
 * Pure builder of QEMU command lines. Launch and resume restore migration streams, which only load
 * into an identical device configuration: every device, id and order comes from this one function.
 */
import { assertShellSafe } from '../../host/paths.ts';

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
  /** Host unix socket of the egress proxy; each guest connection to EGRESS_PROXY gets its own `socat`. */
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
  /** Wait for a migration stream (`migrate-incoming`) and stay paused until `cont`. */
  incoming: boolean;
}

export const AGENT_PORT_NAME = 'cocoon.agent';

export function qemuArgv(launch: QemuLaunch): string[] {
  const { machine } = launch;
  const accel = machine.accelerator === 'kvm'
    ? ['-accel', 'kvm', '-cpu', 'host']
    : ['-accel', machine.vcpus > 1 ? 'tcg,thread=multi' : 'tcg', '-cpu', 'max'];
  const forwards = launch.forwards.map((f) => `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`).join('');
  if (machine.egressSocket) assertShellSafe(machine.egressSocket);
  const egress = machine.egressSocket
    ? `,guestfwd=tcp:${EGRESS_PROXY.address}:${EGRESS_PROXY.port}-cmd:socat - UNIX-CONNECT:${machine.egressSocket}`
    : '';
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
    '-drive', `id=root,file=${launch.diskPath},format=qcow2,if=none,cache=writeback,discard=unmap`,
    '-device', 'virtio-blk-device,drive=root',
    // restrict=on: the guest cannot open connections out of user-mode networking (10.0.2.2 would
    // be the host's loopback); hostfwd still lets the host reach the guest's ports.
    '-netdev', `user,id=net0,restrict=on${forwards}${egress}`,
    '-device', 'virtio-net-device,netdev=net0',
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent0,path=${launch.agentSocket},server=on,wait=off`,
    '-device', `virtserialport,chardev=agent0,name=${AGENT_PORT_NAME}`,
    '-device', 'virtio-rng-device',
    '-qmp', `unix:${launch.qmpSocket},server=on,wait=off`,
    '-pidfile', launch.pidFile,
    ...(launch.incoming ? ['-S', '-incoming', 'defer'] : []),
  ];
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
