/** Where each VM's and each snapshot's files live. Pure: path layout only, no I/O. */
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';

/** Linux caps unix socket paths (sun_path) at 107 bytes plus a NUL. */
const MAX_SOCKET_PATH = 107;
/** QEMU's `exec:` migration URIs run through /bin/sh, so paths put into them must be plain. */
const SHELL_SAFE_PATH = /^[A-Za-z0-9_./-]+$/;

export interface VmPaths {
  dir: string;
  /** Short private directory (mode 0700) for the VM's unix sockets, outside its deep data directory. */
  socketDir: string;
  qmpSocket: string;
  agentSocket: string;
  /** Where a restoring QEMU listens for the saved state that Cocoon streams to it. */
  incomingSocket: string;
  /**
   * The directory QEMUs running as VM users chroot into, shared by all VMs: it holds nothing but
   * `etc/resolv.conf`, the build egress relay, and each saving VM's socket and each build VM's
   * egress socket, in a directory only that VM's QEMU can enter.
   */
  chrootDir: string;
  serialLog: string;
  qemuStderr: string;
  pidFile: string;
  disk: string;
  /** RAM file of a VM that will become a template (memory-backend-file, share=on). */
  templateRam: string;
  /** Full saved state of a suspended VM (zstd-compressed migration stream). */
  suspendedState: string;
  machine: string;
  /** Name of the VM's cgroup beneath Cocoon's own (src/vmm/cgroups.ts): readable and unique per directory. */
  cgroup: string;
}

/**
 * Unix socket paths (sun_path) hold only 107 bytes, and VM directories nest deeply (images per
 * account, name and version), so sockets live in `<tmp>/cocoon-<uid>/<hash of the VM dir>/`.
 */
function socketDirFor(vmDir: string): string {
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  return path.join(os.tmpdir(), `cocoon-${uid}`, createHash('sha256').update(vmDir).digest('hex').slice(0, 16));
}

export function vmPaths(dir: string): VmPaths {
  const abs = path.resolve(dir);
  const socketDir = socketDirFor(abs);
  const paths: VmPaths = {
    dir: abs,
    socketDir,
    qmpSocket: path.join(socketDir, 'qmp.sock'),
    agentSocket: path.join(socketDir, 'agent.sock'),
    incomingSocket: path.join(socketDir, 'incoming.sock'),
    chrootDir: path.join(path.dirname(socketDir), 'chroot'),
    serialLog: path.join(abs, 'serial.log'),
    qemuStderr: path.join(abs, 'qemu.stderr'),
    pidFile: path.join(abs, 'qemu.pid'),
    disk: path.join(abs, 'disk.qcow2'),
    templateRam: path.join(abs, 'ram'),
    suspendedState: path.join(abs, 'state.zst'),
    machine: path.join(abs, 'machine.json'),
    cgroup: `${path.basename(abs).replace(/^\.+/, '')}-${createHash('sha256').update(abs).digest('hex').slice(0, 12)}`,
  };
  for (const socket of [paths.qmpSocket, paths.agentSocket, paths.incomingSocket]) {
    if (socket.length > MAX_SOCKET_PATH) {
      throw new RangeError(`socket path ${socket} exceeds ${MAX_SOCKET_PATH} bytes (set TMPDIR to a shorter directory)`);
    }
  }
  assertShellSafe(abs);
  return paths;
}

/** Paths that end up in QEMU `exec:`/`cmd:` strings (run by /bin/sh) must be plain. */
export function assertShellSafe(file: string): void {
  if (!SHELL_SAFE_PATH.test(file)) throw new RangeError(`${file} may only contain letters, digits and _ . / -`);
}

export interface TemplatePaths {
  dir: string;
  ram: string;
  deviceState: string;
  disk: string;
  meta: string;
}

/** A template snapshot is the build VM's directory after its device state has been saved. */
export function templatePaths(dir: string): TemplatePaths {
  const vm = vmPaths(dir);
  return { dir: vm.dir, ram: vm.templateRam, deviceState: path.join(vm.dir, 'devices.state'), disk: vm.disk, meta: path.join(vm.dir, 'template.json') };
}
