/**
 * QEMU implementation of the VM driver: cold boot, template snapshot, copy-on-write launch,
 * suspend and resume. Snapshots are QEMU migration streams written through `exec:` URIs.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { AppError } from '../../errors/errors.ts';
import { AgentClient } from '../../guest/client.ts';
import { fsyncPath, renameDurably, writeFileAtomic } from '../../host/files.ts';
import { assertShellSafe, templatePaths, vmPaths, type VmPaths } from '../../host/paths.ts';
import { run } from '../../host/run.ts';
import { freeLoopbackPort } from '../../host/sockets.ts';
import type {
  BootSpec, GuestArtifacts, OperationOptions, RunningVm, SuspendedVm, TemplateSnapshot, VmDriver,
} from '../driver.ts';
import { kernelCmdline, qemuArgv, tscKhzFromCpuinfo, type Accelerator, type HostForward, type MachineConfig, type RamBacking } from './argv.ts';
import { QemuProcess, QEMU_BINARY } from './process.ts';
import { OverlayPool } from './overlays.ts';
import { QmpClient } from './qmp.ts';

const DEFAULT_TIMEOUT_MS = 120_000;
/** QEMU's default migration bandwidth cap (128 MiB/s) makes a local save 6x slower. */
const UNLIMITED_BANDWIDTH = 64 * 1024 ** 3;

/** What a VM's directory records so that a suspended VM can be started again identically. */
interface MachineRecord {
  machine: MachineConfig;
  guestPorts: number[];
  qemuVersion: string;
}

class QemuVm implements RunningVm {
  constructor(
    readonly paths: VmPaths,
    readonly process: QemuProcess,
    readonly qmp: QmpClient,
    readonly agent: AgentClient,
    readonly forwards: HostForward[],
    readonly record: MachineRecord,
  ) {
    this.activeDisk = paths.disk;
  }

  /** The qcow2 file the guest writes to now (changes with `freezeDisk`). */
  activeDisk: string;

  get dir(): string { return this.paths.dir; }
  get pid(): number { return this.process.pid; }
  get accelerator(): Accelerator { return this.record.machine.accelerator; }
  get serialLog(): string { return this.paths.serialLog; }

  hostPort(guestPort: number): number {
    const forward = this.forwards.find((f) => f.guestPort === guestPort);
    if (!forward) throw new RangeError(`guest port ${guestPort} is not forwarded`);
    return forward.hostPort;
  }
}

export class QemuDriver implements VmDriver {
  private constructor(
    readonly accelerator: Accelerator,
    private readonly artifacts: GuestArtifacts,
    readonly qemuVersion: string,
    private readonly tscKhz: number | undefined,
    private readonly bootSnapshotDir: string | undefined,
  ) {}

  private readonly overlays = new OverlayPool();

  /** Resolves when background work (overlay refills) is done. */
  async idle(): Promise<void> {
    await this.overlays.idle();
  }

  /**
   * `bootSnapshotDir`: where boot snapshots are kept. With it, `boot` restores a VM saved right
   * after its kernel booted (before the root disk was mounted) instead of booting a kernel.
   */
  static async create(options: { accelerator: Accelerator; artifacts: GuestArtifacts; bootSnapshotDir?: string }): Promise<QemuDriver> {
    const version = (await run(QEMU_BINARY, ['--version'])).split('\n')[0]!.trim();
    const tscKhz = tscKhzFromCpuinfo(readFileSync('/proc/cpuinfo', 'utf8'));
    return new QemuDriver(options.accelerator, options.artifacts, version, tscKhz, options.bootSnapshotDir);
  }

  async boot(spec: BootSpec, options: OperationOptions = {}): Promise<RunningVm> {
    const paths = vmPaths(spec.dir);
    await mkdir(paths.dir, { recursive: true });
    const diskPath = (spec.rootDisk.kind === 'overlay' && spec.rootDisk.activePath) || paths.disk;
    await (spec.rootDisk.kind === 'copy'
      ? run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', spec.rootDisk.rootfsPath, diskPath])
      : run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', spec.rootDisk.backingPath, '-F', 'qcow2', diskPath]));
    const record: MachineRecord = {
      machine: {
        accelerator: this.accelerator,
        memoryMiB: spec.memoryMiB,
        vcpus: spec.vcpus,
        kernelPath: this.artifacts.kernelPath,
        initramfsPath: this.artifacts.initramfsPath,
        kernelCmdline: kernelCmdline({ tscKhz: this.tscKhz, hostname: spec.hostname, waitRoot: this.bootSnapshotDir !== undefined }),
        ...(spec.egressSocket ? { egressSocket: spec.egressSocket } : {}),
      },
      guestPorts: spec.guestPorts,
      qemuVersion: this.qemuVersion,
    };
    await writeFileAtomic(paths.machine, JSON.stringify(record, null, 2));
    const ram: RamBacking = spec.templateSource ? { kind: 'template-source', path: paths.templateRam } : { kind: 'anonymous' };
    if (!this.bootSnapshotDir) return this.start(paths, record, ram, undefined, options, diskPath);

    const snapshot = path.join(this.bootSnapshotDir, `${bootSnapshotKey(record)}.zst`);
    let vm: QemuVm;
    if (await stat(snapshot).then(() => true, () => false)) {
      vm = await this.start(paths, record, ram, { uri: `exec:zstd -dc ${snapshot}`, ignoreShared: false }, options, diskPath);
    } else {
      vm = await this.start(paths, record, ram, undefined, options, diskPath);
      await this.saveBootSnapshot(vm, snapshot, options);
    }
    try {
      await vm.agent.root({ hostname: spec.hostname });
    } catch (error) {
      await this.stop(vm);
      throw error;
    }
    return vm;
  }

  /** Saves a VM still waiting for its root disk as the boot snapshot, then lets it go on. */
  private async saveBootSnapshot(vm: QemuVm, snapshot: string, options: OperationOptions): Promise<void> {
    assertShellSafe(snapshot);
    await mkdir(path.dirname(snapshot), { recursive: true });
    const temp = `${snapshot}.tmp-${process.pid}`;
    try {
      await this.saveState(vm, `exec:zstd -1 -q -c > ${temp}`, false, options);
      await renameDurably(temp, snapshot);
      await vm.qmp.execute('cont');
    } catch (error) {
      await rm(temp, { force: true });
      await this.stop(vm);
      throw error;
    }
  }

  async pause(vm: RunningVm): Promise<void> {
    await asQemuVm(vm).qmp.execute('stop');
  }

  async cont(vm: RunningVm): Promise<void> {
    await asQemuVm(vm).qmp.execute('cont');
  }

  async freezeDisk(running: RunningVm, nextActivePath: string): Promise<string> {
    const vm = asQemuVm(running);
    const frozen = vm.activeDisk;
    await vm.qmp.execute('blockdev-snapshot-sync', { device: 'root', 'snapshot-file': nextActivePath, format: 'qcow2' });
    vm.activeDisk = nextActivePath;
    await fsyncPath(frozen);
    return frozen;
  }

  async snapshotTemplate(running: RunningVm, options: OperationOptions = {}): Promise<TemplateSnapshot> {
    const vm = asQemuVm(running);
    const paths = templatePaths(vm.dir);
    const temp = `${paths.deviceState}.tmp`;
    if (vm.activeDisk !== paths.disk) throw new Error('a template must write to its own disk.qcow2; freeze layers into other files');
    await vm.agent.sync();
    // RAM stays in the shared file (x-ignore-shared); the stream holds only device state.
    await this.saveState(vm, `exec:cat > ${temp}`, true, options);
    await this.stopProcess(vm);
    await Promise.all([fsyncPath(paths.ram), fsyncPath(paths.disk)]);
    await renameDurably(temp, paths.deviceState);
    const { machine } = vm.record;
    const template: TemplateSnapshot = {
      dir: paths.dir,
      memoryMiB: machine.memoryMiB,
      vcpus: machine.vcpus,
      guestPorts: vm.record.guestPorts,
      hostname: /cocoon\.hostname=(\S+)/.exec(machine.kernelCmdline)?.[1] ?? '',
      qemuVersion: this.qemuVersion,
      accelerator: machine.accelerator,
      kernelCmdline: machine.kernelCmdline,
      kernelPath: machine.kernelPath,
      initramfsPath: machine.initramfsPath,
      deviceStateBytes: (await stat(paths.deviceState)).size,
    };
    await writeFileAtomic(paths.meta, JSON.stringify(template, null, 2));
    return template;
  }

  async launch(template: TemplateSnapshot, dir: string, options: OperationOptions = {}): Promise<RunningVm> {
    this.checkCompatible(template.qemuVersion, template.accelerator, template.dir);
    const source = templatePaths(template.dir);
    const paths = vmPaths(dir);
    await mkdir(paths.dir, { recursive: true });
    const record: MachineRecord = {
      machine: {
        accelerator: template.accelerator,
        memoryMiB: template.memoryMiB,
        vcpus: template.vcpus,
        kernelPath: template.kernelPath,
        initramfsPath: template.initramfsPath,
        kernelCmdline: template.kernelCmdline,
      },
      guestPorts: template.guestPorts,
      qemuVersion: template.qemuVersion,
    };
    await Promise.all([
      this.overlays.take(source.disk, paths.disk),
      writeFileAtomic(paths.machine, JSON.stringify(record, null, 2)),
    ]);
    return this.start(paths, record, { kind: 'template-clone', path: source.ram },
      { uri: `exec:cat ${source.deviceState}`, ignoreShared: true }, options);
  }

  async suspend(running: RunningVm, options: OperationOptions = {}): Promise<SuspendedVm> {
    const vm = asQemuVm(running);
    const temp = `${vm.paths.suspendedState}.tmp`;
    try {
      await this.saveState(vm, `exec:zstd -1 -q -c > ${temp}`, false, options);
    } catch (error) {
      await rm(temp, { force: true });
      if (vm.process.running) await vm.qmp.execute('cont').catch(() => {});
      throw error;
    }
    await this.stopProcess(vm);
    await renameDurably(temp, vm.paths.suspendedState);
    return { dir: vm.dir, stateBytes: (await stat(vm.paths.suspendedState)).size };
  }

  async resume(suspended: SuspendedVm, options: OperationOptions = {}): Promise<RunningVm> {
    const paths = vmPaths(suspended.dir);
    const record = JSON.parse(await readFile(paths.machine, 'utf8')) as MachineRecord;
    this.checkCompatible(record.qemuVersion, record.machine.accelerator, paths.dir);
    const vm = await this.start(paths, record, { kind: 'anonymous' },
      { uri: `exec:zstd -dc ${paths.suspendedState}`, ignoreShared: false }, options);
    // The running VM has diverged from the saved state: keeping it would invite resuming stale state.
    await rm(paths.suspendedState, { force: true });
    return vm;
  }

  async stop(running: RunningVm): Promise<void> {
    const vm = asQemuVm(running);
    vm.agent.close();
    if (vm.process.running) await vm.qmp.execute('quit').catch(() => {});
    await vm.process.waitOrKill(5000);
    vm.qmp.close();
    await removeRuntimeFiles(vm.paths);
  }

  private checkCompatible(qemuVersion: string, accelerator: Accelerator, dir: string): void {
    if (qemuVersion !== this.qemuVersion || accelerator !== this.accelerator) {
      throw new AppError('vmm.incompatible_snapshot',
        `snapshot in ${dir} was made by "${qemuVersion}" with ${accelerator}; this host runs "${this.qemuVersion}" with ${this.accelerator}`,
        { snapshotQemuVersion: qemuVersion, hostQemuVersion: this.qemuVersion });
    }
  }

  private async start(
    paths: VmPaths,
    record: MachineRecord,
    ram: RamBacking,
    incoming: { uri: string; ignoreShared: boolean } | undefined,
    options: OperationOptions,
    diskPath = paths.disk,
  ): Promise<QemuVm> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    await removeRuntimeFiles(paths);
    // Only Cocoon may talk to a VM's QMP and agent sockets.
    await mkdir(paths.socketDir, { recursive: true, mode: 0o700 });
    const forwards = await Promise.all(record.guestPorts.map(async (guestPort) => ({ guestPort, hostPort: await freeLoopbackPort() })));
    const argv = qemuArgv({
      machine: record.machine, ram, diskPath, forwards,
      qmpSocket: paths.qmpSocket, agentSocket: paths.agentSocket, serialLog: paths.serialLog, pidFile: paths.pidFile,
      incoming: incoming !== undefined,
    });
    const proc = await QemuProcess.start(argv, { pidFile: paths.pidFile, stderrPath: paths.qemuStderr });
    const died = proc.failOnExit(incoming ? 'restore' : 'boot');
    died.catch(() => {});
    let qmp: QmpClient | undefined;
    let agent: AgentClient | undefined;
    try {
      const connectOptions = { timeoutMs, signal: options.signal };
      qmp = await Promise.race([QmpClient.connect(paths.qmpSocket, connectOptions), died]);
      // Connect to the agent before the restore, so the restored guest never sees its host side
      // disconnected (that would cost it a reconnect wait).
      const agentReady = AgentClient.connect(paths.agentSocket, connectOptions);
      agentReady.catch(() => {});
      if (incoming) {
        await Promise.race([this.loadState(qmp, incoming.uri, incoming.ignoreShared, timeoutMs), died]);
        await qmp.execute('cont');
      }
      agent = await Promise.race([agentReady, died]);
      if (incoming) await Promise.race([agent.afterRestore(), died]);
      const vm = new QemuVm(paths, proc, qmp, agent, forwards, record);
      vm.activeDisk = diskPath;
      return vm;
    } catch (error) {
      agent?.close();
      qmp?.close();
      await proc.kill();
      throw error;
    }
  }

  private async loadState(qmp: QmpClient, uri: string, ignoreShared: boolean, timeoutMs: number): Promise<void> {
    await setMigrationCapabilities(qmp, ignoreShared);
    const done = waitForMigration(qmp, timeoutMs);
    await qmp.execute('migrate-incoming', { uri });
    const status = await done;
    if (status !== 'completed') throw new AppError('vmm.restore_failed', `restore from ${uri} ended as ${status}`);
  }

  private async saveState(vm: QemuVm, uri: string, ignoreShared: boolean, options: OperationOptions): Promise<void> {
    const died = vm.process.failOnExit('save');
    died.catch(() => {});
    const save = async (): Promise<void> => {
      await vm.qmp.execute('stop');
      await setMigrationCapabilities(vm.qmp, ignoreShared);
      await vm.qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNLIMITED_BANDWIDTH });
      const done = waitForMigration(vm.qmp, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      await vm.qmp.execute('migrate', { uri });
      const status = await done;
      if (status !== 'completed') {
        throw new AppError('vmm.snapshot_failed', `saving the VM in ${vm.dir} ended as ${status}: ${vm.process.stderrTail()}`);
      }
    };
    await Promise.race([save(), died]);
  }

  private async stopProcess(vm: QemuVm): Promise<void> {
    vm.agent.close();
    await vm.qmp.execute('quit').catch(() => {});
    await vm.process.waitOrKill(5000);
    vm.qmp.close();
    await removeRuntimeFiles(vm.paths);
  }
}

/** Boot snapshots restore only into the same machine: everything that shapes it is in the key. */
function bootSnapshotKey(record: MachineRecord): string {
  const { machine } = record;
  const shape = {
    qemuVersion: record.qemuVersion, accelerator: machine.accelerator, memoryMiB: machine.memoryMiB, vcpus: machine.vcpus,
    // The kernel and initramfs paths are content-addressed (see pinBootFiles), so they stand for their content.
    kernelPath: machine.kernelPath, initramfsPath: machine.initramfsPath,
    cmdline: machine.kernelCmdline.replace(/cocoon\.hostname=\S+/, ''),
    egress: machine.egressSocket !== undefined,
  };
  return createHash('sha256').update(JSON.stringify(shape)).digest('hex').slice(0, 32);
}

function asQemuVm(vm: RunningVm): QemuVm {
  if (!(vm instanceof QemuVm)) throw new TypeError('not a VM of this driver');
  return vm;
}

async function setMigrationCapabilities(qmp: QmpClient, ignoreShared: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'events', state: true },
      { capability: 'x-ignore-shared', state: ignoreShared },
    ],
  });
}

/** Resolves with the final migration status ('completed', 'failed' or 'cancelled'). */
async function waitForMigration(qmp: QmpClient, timeoutMs: number): Promise<string> {
  const final = new Set(['completed', 'failed', 'cancelled']);
  const event = await qmp.waitForEvent((e) => e.event === 'MIGRATION' && final.has(String(e.data?.status)), timeoutMs);
  return String(event.data!.status);
}

async function removeRuntimeFiles(paths: VmPaths): Promise<void> {
  await Promise.all([paths.socketDir, paths.pidFile].map((file) => rm(file, { recursive: true, force: true })));
}
