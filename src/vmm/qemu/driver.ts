/**
 * QEMU implementation of the VM driver: cold boot, template snapshot, copy-on-write launch,
 * suspend and resume. Snapshots are QEMU migration streams that Cocoon serves over unix sockets
 * (state-streams.ts).
 */
import { createHash, randomUUID } from 'node:crypto';
import { chmod, lstat, mkdir, open, readFile, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError, isAppError } from '../../errors/errors.ts';
import { AgentClient } from '../../guest/client.ts';
import { fsyncPath, renameDurably, writeFileAtomic } from '../../host/files.ts';
import { templatePaths, vmPaths, type VmPaths } from '../../host/paths.ts';
import { run } from '../../host/run.ts';
import { freeLoopbackPort } from '../../host/sockets.ts';
import { processUsage, type Cgroup, type Cgroups, type ResourceUsage } from '../cgroups.ts';
import type { EgressSpec, NetworkNamespaces, VmNetwork } from '../netns.ts';
import type {
  BootSpec, GuestArtifacts, HostLimits, LimitsEnforcement, OperationOptions, RunningVm, StartOptions, SuspendedVm, TemplateSnapshot, VmDriver,
} from '../driver.ts';
import { kernelCmdline, layerFds, qemuArgv, tscKhzFromCpuinfo, type Accelerator, type HostForward, type MachineConfig, type RamBacking } from './argv.ts';
import { qemuCommandLine, QemuProcess, QEMU_BINARY } from './process.ts';
import { startEgressRelay, sweepStaleEgressDirs, type EgressRelay } from './egress-relay.ts';
import { OverlayPool } from './overlays.ts';
import { QmpClient } from './qmp.ts';
import { receiveState, sendState, sweepStaleSaveDirs, type StateFile } from './state-streams.ts';
import { allocateVmUser, canDropPrivileges, holdVmUser, processUid, releaseVmUser, type VmUser } from './vm-users.ts';

const DEFAULT_TIMEOUT_MS = 120_000;
/** Re-attaching to a live VM: QMP answers at once, the agent within a few seconds even under TCG. */
const ADOPT_TIMEOUT_MS = 30_000;
/** QEMU's default migration bandwidth cap (128 MiB/s) makes a local save 6x slower. */
const UNLIMITED_BANDWIDTH = 64 * 1024 ** 3;
/**
 * A QEMU's memory beyond guest RAM: TCG's code cache (capped by argv's tb-size), heap, device and
 * I/O buffers. Measured under TCG with a 256 MiB guest: ~90 MiB with guest RAM full, ~170 MiB once
 * varied guest code had filled the code cache. Its memory limit is guest RAM plus this.
 */
export const QEMU_MEMORY_OVERHEAD_MIB = 256;
/** Threads count as pids: vCPUs, I/O workers (up to 64), and the helpers it spawns (a build VM's egress relay or socat). */
const QEMU_PIDS_MAX = 256;

/** What a VM's directory records so that a suspended VM can be started again identically. */
interface MachineRecord {
  machine: MachineConfig;
  guestPorts: number[];
  qemuVersion: string;
  limits?: HostLimits;
}

/**
 * What a running VM's directory records (runtime.json, from QEMU's start until its stop) so that
 * another daemon can re-attach to it: QEMU outlives the daemon that started it.
 */
interface RuntimeRecord {
  pid: number;
  startedAtMs: number;
  forwards: HostForward[];
  /** The network namespace QEMU runs in (`internet` egress); absent: the host's, with loopback forwards. */
  network?: VmNetwork;
  activeDisk: string;
  qmpSocket: string;
  agentSocket: string;
}

/** Run states an adopted VM can be continued from (a save that was cut short leaves it paused). */
const CONTINUABLE_STATES = new Set(['running', 'paused', 'postmigrate', 'finish-migrate']);
/** Migration states that end an outgoing save; any other one means it is still going. */
const SETTLED_MIGRATION_STATES = new Set(['none', 'completed', 'failed', 'cancelled']);

class QemuVm implements RunningVm {
  constructor(
    readonly paths: VmPaths,
    readonly process: QemuProcess,
    readonly qmp: QmpClient,
    readonly agent: AgentClient,
    readonly forwards: HostForward[],
    readonly record: MachineRecord,
    readonly startedAtMs: number,
  ) {
    this.activeDisk = paths.disk;
  }

  /** The qcow2 file the guest writes to now (changes with `freezeDisk`). */
  activeDisk: string;
  /** The group that limits its QEMU, if any (src/vmm/cgroups.ts). */
  cgroup: Cgroup | undefined;
  /** The user its QEMU runs as after start-up, when not Cocoon's own (vm-users.ts). */
  user: VmUser | undefined;
  /** Its network namespace, when it has `internet` egress (src/vmm/netns.ts). */
  network: VmNetwork | undefined;
  /**
   * With `user`: the files its disk will be frozen into, created and inherited as fd sets at start
   * (BootSpec.freezePaths), and how many of them are in use.
   */
  layers: readonly string[] = [];
  layersUsed = 0;
  /** With `user` and egress: the listener in its chroot that its guestfwd's relay connects to. */
  egressRelay: EgressRelay | undefined;

  get hostAddress(): string {
    return this.network?.address ?? '127.0.0.1';
  }

  get limitsEnforcedBy(): LimitsEnforcement {
    return this.cgroup ? `cgroup-v${this.cgroup.version}` : 'none';
  }

  usage(): Promise<ResourceUsage> {
    return this.cgroup ? this.cgroup.usage() : processUsage(this.pid);
  }

  get dir(): string { return this.paths.dir; }
  get pid(): number { return this.process.pid; }
  get accelerator(): Accelerator { return this.record.machine.accelerator; }
  get serialLog(): string { return this.paths.serialLog; }

  hostPort(guestPort: number): number {
    const forward = this.forwards.find((f) => f.guestPort === guestPort);
    if (!forward) throw new RangeError(`guest port ${guestPort} is not forwarded`);
    return forward.hostPort;
  }

  runtime(): RuntimeRecord {
    return {
      pid: this.pid, startedAtMs: this.startedAtMs, forwards: this.forwards, activeDisk: this.activeDisk,
      qmpSocket: this.paths.qmpSocket, agentSocket: this.paths.agentSocket, ...(this.network && { network: this.network }),
    };
  }
}

export class QemuDriver implements VmDriver {
  private constructor(
    readonly accelerator: Accelerator,
    private readonly artifacts: GuestArtifacts,
    readonly qemuVersion: string,
    private readonly tscKhz: number | undefined,
    private readonly bootSnapshotDir: string | undefined,
    private readonly cgroups: Cgroups | undefined,
    private readonly networks: NetworkNamespaces | undefined,
    readonly internetEgressUnavailable: string | undefined,
  ) {}

  private readonly overlays = new OverlayPool();

  /** Resolves when background work (overlay refills) is done. */
  async idle(): Promise<void> {
    await this.overlays.idle();
  }

  /**
   * `bootSnapshotDir`: where boot snapshots are kept. With it, `boot` restores a VM saved right
   * after its kernel booted (before the root disk was mounted) instead of booting a kernel.
   * `cgroups`: where VMs with limits get their group; without it their limits are not enforced on the host.
   * `networks`: where VMs with `internet` egress get their namespace; without it (`networksUnavailable`
   * says why) such VMs are refused.
   */
  static async create(options: {
    accelerator: Accelerator; artifacts: GuestArtifacts; bootSnapshotDir?: string; cgroups?: Cgroups;
    networks?: NetworkNamespaces; networksUnavailable?: string;
  }): Promise<QemuDriver> {
    const version = (await run(QEMU_BINARY, ['--version'])).split('\n')[0]!.trim();
    const tscKhz = tscKhzFromCpuinfo(readFileSync('/proc/cpuinfo', 'utf8'));
    const internetEgressUnavailable = options.networks ? undefined : (options.networksUnavailable ?? 'network namespaces are not set up');
    return new QemuDriver(options.accelerator, options.artifacts, version, tscKhz, options.bootSnapshotDir, options.cgroups, options.networks, internetEgressUnavailable);
  }

  async boot(spec: BootSpec, options: OperationOptions = {}): Promise<RunningVm> {
    const paths = vmPaths(spec.dir);
    await mkdir(paths.dir, { recursive: true });
    const diskPath = (spec.rootDisk.kind === 'overlay' && spec.rootDisk.activePath) || paths.disk;
    await (spec.rootDisk.kind === 'copy'
      ? run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', spec.rootDisk.rootfsPath, diskPath])
      : run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', spec.rootDisk.backingPath, '-F', 'qcow2', diskPath]));
    // Without dropping privileges QEMU creates each layer itself when it freezes the disk (blockdev-snapshot-sync).
    const layers = canDropPrivileges() ? (spec.freezePaths ?? []).map((file) => path.resolve(file)) : [];
    // In chain order, each backed by the real path of the one before: the headers name the files
    // that later builds open from the layer cache, not the fd sets this QEMU reads them through.
    for (const [i, layer] of layers.entries()) {
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', i === 0 ? path.resolve(diskPath) : layers[i - 1]!, '-F', 'qcow2', layer]);
    }
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
      ...(spec.limits && { limits: spec.limits }),
    };
    await writeFileAtomic(paths.machine, JSON.stringify(record, null, 2));
    const ram: RamBacking = spec.templateSource ? { kind: 'template-source', path: paths.templateRam } : { kind: 'anonymous' };
    if (!this.bootSnapshotDir) return this.start(paths, record, ram, undefined, options, diskPath, layers);

    const snapshot = path.join(this.bootSnapshotDir, `${bootSnapshotKey(record)}.zst`);
    let vm: QemuVm;
    if (await stat(snapshot).then(() => true, () => false)) {
      vm = await this.start(paths, record, ram, { file: { path: snapshot, compressed: true }, ignoreShared: false }, options, diskPath, layers);
    } else {
      vm = await this.start(paths, record, ram, undefined, options, diskPath, layers);
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
    await mkdir(path.dirname(snapshot), { recursive: true });
    const temp = `${snapshot}.tmp-${process.pid}`;
    try {
      await this.saveState(vm, { path: temp, compressed: true }, false, options);
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
    if (!vm.user) {
      await vm.qmp.execute('blockdev-snapshot-sync', { device: 'root', 'snapshot-file': nextActivePath, format: 'qcow2' });
    } else {
      // A QEMU that dropped privileges cannot create the file: it was made at boot and is inherited.
      const index = vm.layersUsed;
      if (vm.layers[index] !== path.resolve(nextActivePath)) {
        throw new Error(`${vm.dir} can freeze its disk only into ${vm.layers[index] ?? 'no more files'} (its boot spec's next freezePaths), not ${nextActivePath}`);
      }
      const node = `layer${index}`;
      // blockdev-snapshot-sync cannot turn locking off, and a lock taken through an fd set's
      // descriptor outlives the QEMU's own copy: `cont` after a save then fails on it (argv.ts).
      await vm.qmp.execute('blockdev-add', {
        driver: 'qcow2', 'node-name': node, file: { driver: 'file', filename: `/dev/fdset/${layerFds(index).set}`, locking: 'off' }, backing: null,
      });
      // 'root' names the drive's current top node, however often it was frozen before.
      await vm.qmp.execute('blockdev-snapshot', { node: 'root', overlay: node });
      vm.layersUsed++;
    }
    vm.activeDisk = nextActivePath;
    await Promise.all([fsyncPath(frozen), writeRuntime(vm.paths, vm.runtime())]);
    return frozen;
  }

  async growDisk(running: RunningVm, sizeBytes: number): Promise<void> {
    await asQemuVm(running).qmp.execute('block_resize', { device: 'root', size: sizeBytes });
  }

  async snapshotTemplate(running: RunningVm, options: OperationOptions = {}): Promise<TemplateSnapshot> {
    const vm = asQemuVm(running);
    const paths = templatePaths(vm.dir);
    const temp = `${paths.deviceState}.tmp`;
    if (vm.activeDisk !== paths.disk) throw new Error('a template must write to its own disk.qcow2; freeze layers into other files');
    await vm.agent.sync();
    // RAM stays in the shared file (x-ignore-shared); the stream holds only device state.
    await this.saveState(vm, { path: temp, compressed: false }, true, options);
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
      ...(vm.record.limits && { limits: vm.record.limits }),
    };
    await writeFileAtomic(paths.meta, JSON.stringify(template, null, 2));
    return template;
  }

  async launch(template: TemplateSnapshot, dir: string, options: StartOptions = {}): Promise<RunningVm> {
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
      ...(template.limits && { limits: template.limits }),
    };
    await Promise.all([
      this.overlays.take(source.disk, paths.disk),
      writeFileAtomic(paths.machine, JSON.stringify(record, null, 2)),
    ]);
    return this.start(paths, record, { kind: 'template-clone', path: source.ram },
      { file: { path: source.deviceState, compressed: false }, ignoreShared: true }, options, paths.disk);
  }

  async suspend(running: RunningVm, options: OperationOptions = {}): Promise<SuspendedVm> {
    const vm = asQemuVm(running);
    const temp = `${vm.paths.suspendedState}.tmp`;
    try {
      await this.saveState(vm, { path: temp, compressed: true }, false, options);
      // The stream is whole once the migration completed and zstd has exited.
      // It is committed before QEMU stops, so a crash in between leaves a complete state.zst and a
      // paused QEMU (which reconcile stops), never a finished save that only a temp file holds.
      await renameDurably(temp, vm.paths.suspendedState);
    } catch (error) {
      // A failed suspend leaves nothing behind: the VM goes on running.
      await Promise.all([rm(temp, { force: true }), rm(vm.paths.suspendedState, { force: true })]);
      if (vm.process.running) await vm.qmp.execute('cont').catch(() => {});
      throw error;
    }
    await this.stopProcess(vm);
    return { dir: vm.dir, stateBytes: (await stat(vm.paths.suspendedState)).size };
  }

  async resume(suspended: SuspendedVm, options: StartOptions = {}): Promise<RunningVm> {
    const paths = vmPaths(suspended.dir);
    const record = JSON.parse(await readFile(paths.machine, 'utf8')) as MachineRecord;
    this.checkCompatible(record.qemuVersion, record.machine.accelerator, paths.dir);
    const vm = await this.start(paths, record, { kind: 'anonymous' },
      { file: { path: paths.suspendedState, compressed: true }, ignoreShared: false }, options, paths.disk);
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
    releaseVmUser(vm.user);
    await Promise.all([removeRuntimeFiles(vm.paths), removeCgroup(vm.cgroup), this.removeNetwork(vm.network, vm.dir), vm.egressRelay?.close()]);
  }

  /**
   * Re-attaches to the live QEMU of `dir` that a previous daemon started. The pid comes from
   * runtime.json and must be a QEMU with this directory's QMP socket (never a recycled pid). The VM
   * is left running: a save that a crash cut short is cancelled and the VM continued, and the
   * guest's clock is set again (a crash may have come between a restore and its clock fix).
   * `vmm.exited` when no such QEMU runs; `vmm.adopt_failed` when it runs but cannot be driven —
   * it is killed then, as nothing else ever could drive it.
   */
  async adopt(dir: string, options: OperationOptions = {}): Promise<RunningVm> {
    const paths = vmPaths(dir);
    const runtime = await readFile(runtimeFile(paths), 'utf8').then((text) => JSON.parse(text) as RuntimeRecord, () => undefined);
    if (!runtime) throw new AppError('vmm.exited', `no QEMU runs for ${paths.dir}: it has no runtime.json`);
    const argv = qemuCommandLine(runtime.pid);
    if (!argv?.some((arg) => arg.startsWith(`unix:${paths.qmpSocket},`))) {
      await Promise.all([removeCgroup(this.cgroups?.group(paths.cgroup)), this.removeNetwork(runtime.network, paths.dir)]);
      throw new AppError('vmm.exited', `no QEMU runs for ${paths.dir}: process ${runtime.pid} is ${argv ? 'the QEMU of another VM' : 'gone or not a QEMU'}`);
    }
    const record = JSON.parse(await readFile(paths.machine, 'utf8')) as MachineRecord;
    const proc = QemuProcess.adopt(runtime.pid, paths.qemuStderr);
    const died = proc.failOnExit('adoption');
    died.catch(() => {});
    const connectOptions = { timeoutMs: options.timeoutMs ?? ADOPT_TIMEOUT_MS, signal: options.signal };
    let qmp: QmpClient | undefined;
    let agent: AgentClient | undefined;
    try {
      qmp = await Promise.race([QmpClient.connect(paths.qmpSocket, connectOptions), died]);
      await Promise.race([continueAdopted(qmp, paths, connectOptions.timeoutMs), died]);
      agent = await Promise.race([AgentClient.connect(paths.agentSocket, connectOptions), died]);
      await Promise.race([agent.afterRestore(), died]);
      const vm = new QemuVm(paths, proc, qmp, agent, runtime.forwards, record, runtime.startedAtMs);
      vm.activeDisk = runtime.activeDisk;
      vm.network = runtime.network;
      vm.cgroup = await this.cgroups?.find(paths.cgroup);
      const uid = processUid(runtime.pid);
      if (uid !== undefined && uid !== process.getuid?.()) {
        holdVmUser(uid);
        vm.user = { uid, gid: uid };
      }
      return vm;
    } catch (error) {
      agent?.close();
      qmp?.close();
      await proc.kill();
      await Promise.all([removeCgroup(this.cgroups?.group(paths.cgroup)), this.removeNetwork(runtime.network, paths.dir)]);
      if (isAppError(error, 'vmm.exited')) throw error;
      throw new AppError('vmm.adopt_failed', `could not re-attach to the QEMU (pid ${runtime.pid}) of ${paths.dir}, so it was stopped: ${(error as Error).message}`,
        { pid: runtime.pid }, { cause: error });
    }
  }

  /** Lets the VM outlive this daemon: its QEMU is no longer killed at exit, and `adopt` can take it over. */
  release(running: RunningVm): void {
    const vm = asQemuVm(running);
    vm.agent.close();
    vm.qmp.close();
    vm.process.release();
    releaseVmUser(vm.user);
    // Only MicroVMs outlive a daemon; a build VM's egress ends with the daemon that serves it.
    vm.egressRelay?.close().catch(() => {});
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
    incoming: { file: StateFile; ignoreShared: boolean } | undefined,
    options: StartOptions,
    diskPath = paths.disk,
    layers: readonly string[] = [],
  ): Promise<QemuVm> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    await removeRuntimeFiles(paths);
    // Only Cocoon may talk to a VM's QMP and agent sockets, and only Cocoon (and QEMU while it
    // opens its files, before -runas) may enter its directory.
    await mkdir(paths.socketDir, { recursive: true, mode: 0o700 });
    await assertPrivate(path.dirname(paths.socketDir));
    await chmod(paths.dir, 0o700);
    const chroot = canDropPrivileges() ? await chrootDir(paths.chrootDir) : undefined;
    const network = await this.createNetwork(paths, options.egress);
    // A VM's own namespace is empty: every port is free there, so each forward keeps its guest port.
    const forwards = await Promise.all(record.guestPorts.map(async (guestPort) => ({ guestPort, hostPort: network ? guestPort : await freeLoopbackPort() })));
    const user = chroot ? allocateVmUser() : undefined;
    const diskFds: FileHandle[] = [];
    let egressRelay: EgressRelay | undefined;
    let proc: QemuProcess;
    try {
      const { egressSocket } = record.machine;
      if (user && egressSocket) egressRelay = await this.relayEgress(paths, chroot!, user, egressSocket);
      const argv = qemuArgv({
        machine: record.machine, ram, diskPath, forwards,
        qmpSocket: paths.qmpSocket, agentSocket: paths.agentSocket, serialLog: paths.serialLog, pidFile: paths.pidFile,
        ...(incoming && { incomingSocket: paths.incomingSocket }),
        ...(user && { runAs: user, chrootDir: chroot, layerCount: layers.length }),
        ...(egressRelay && { egressRelay: { program: egressRelay.program, socket: egressRelay.socket } }),
        ...(network && { forwardAddress: network.address, unrestricted: true }),
      });
      if (user) {
        // In argv's order: the disk's fd set, then each layer's (fds 3, 4, 5, … as layerFds numbers them).
        for (const file of [diskPath, ...layers]) diskFds.push(await open(file, 'r+'), await open(file, 'r'));
      }
      proc = await QemuProcess.start(argv, {
        pidFile: paths.pidFile, stderrPath: paths.qemuStderr, ...(network && { execPrefix: this.networks!.execPrefix(network) }),
        inheritedFds: diskFds.map((handle) => handle.fd),
      });
    } catch (error) {
      releaseVmUser(user);
      await Promise.all([this.removeNetwork(network, paths.dir), egressRelay?.close()]);
      throw error;
    } finally {
      await Promise.all(diskFds.map((handle) => handle.close()));
    }
    const startedAtMs = Date.now();
    // Written while QEMU starts (a launch does not wait for the disk); a daemon that dies before it
    // lands leaves an orphan that the next one reclaims.
    const recorded = writeRuntime(paths, {
      pid: proc.pid, startedAtMs, forwards, activeDisk: diskPath, qmpSocket: paths.qmpSocket, agentSocket: paths.agentSocket,
      ...(network && { network }),
    });
    recorded.catch(() => {});
    const died = proc.failOnExit(incoming ? 'restore' : 'boot');
    died.catch(() => {});
    let qmp: QmpClient | undefined;
    let agent: AgentClient | undefined;
    let cgroup: Cgroup | undefined;
    try {
      // Before it boots or restores anything, so that all of its memory is charged to its group.
      cgroup = await this.limit(paths, proc.pid, record);
      const connectOptions = { timeoutMs, signal: options.signal };
      qmp = await Promise.race([QmpClient.connect(paths.qmpSocket, connectOptions), died]);
      // Connect to the agent before the restore, so the restored guest never sees its host side
      // disconnected (that would cost it a reconnect wait).
      const agentReady = AgentClient.connect(paths.agentSocket, connectOptions);
      agentReady.catch(() => {});
      if (incoming) {
        await Promise.race([this.loadState(qmp, paths.incomingSocket, incoming.file, incoming.ignoreShared, timeoutMs), died]);
        await qmp.execute('cont');
      }
      agent = await Promise.race([agentReady, died]);
      if (incoming) await Promise.race([agent.afterRestore(), died]);
      await recorded;
      const vm = new QemuVm(paths, proc, qmp, agent, forwards, record, startedAtMs);
      vm.activeDisk = diskPath;
      vm.cgroup = cgroup;
      vm.user = user;
      vm.network = network;
      if (user) vm.layers = layers;
      vm.egressRelay = egressRelay;
      return vm;
    } catch (error) {
      agent?.close();
      qmp?.close();
      await proc.kill();
      releaseVmUser(user);
      await Promise.all([removeCgroup(cgroup), this.removeNetwork(network, paths.dir), egressRelay?.close()]);
      throw error;
    }
  }

  /** A build VM's egress when its QEMU is chrooted as `user` (egress-relay.ts). */
  private async relayEgress(paths: VmPaths, chroot: string, user: VmUser, egressSocket: string): Promise<EgressRelay> {
    const relayPath = this.artifacts.egressRelayPath;
    if (!relayPath) throw new AppError('vmm.start_failed', 'a build VM with egress needs the egress relay (npm run build:guest) to drop privileges');
    // Named after the VM's socket directory: one per VM.
    return startEgressRelay({ chroot, name: path.basename(paths.socketDir), user, relayPath, egressSocket });
  }

  /** Puts the QEMU of a VM with limits into its own cgroup; undefined without limits or cgroups. */
  private async limit(paths: VmPaths, pid: number, record: MachineRecord): Promise<Cgroup | undefined> {
    const { limits } = record;
    if (!limits || !this.cgroups) return undefined;
    try {
      return await this.cgroups.place(paths.cgroup, pid, {
        cpuQuotaCores: limits.cpuBurstCores,
        cpuWeightCores: limits.cpuBaselineCores,
        memoryBytes: (record.machine.memoryMiB + QEMU_MEMORY_OVERHEAD_MIB) * 2 ** 20,
        pidsMax: QEMU_PIDS_MAX,
      });
    } catch (error) {
      throw new AppError('vmm.start_failed', `could not put QEMU (pid ${pid}) under its limits: ${(error as Error).message}`, {}, { cause: error });
    }
  }

  /** QEMU has listened on `socket` since it started (-incoming); the load begins when Cocoon connects. */
  private async loadState(qmp: QmpClient, socket: string, file: StateFile, ignoreShared: boolean, timeoutMs: number): Promise<void> {
    await setMigrationCapabilities(qmp, ignoreShared);
    const done = waitForMigration(qmp, timeoutMs);
    const [status, sendError] = await Promise.all([done, sendState(socket, file)]);
    if (status !== 'completed') {
      throw new AppError('vmm.restore_failed', `restore from ${file.path} ended as ${status}${sendError ? ` (${sendError.message})` : ''}`);
    }
  }

  private async saveState(vm: QemuVm, file: StateFile, ignoreShared: boolean, options: OperationOptions): Promise<void> {
    const died = vm.process.failOnExit('save');
    died.catch(() => {});
    const receiver = await receiveState(file, { parent: await chrootDir(vm.paths.chrootDir), ...(vm.user && { chrootedAs: vm.user }) });
    const save = async (): Promise<void> => {
      await vm.qmp.execute('stop');
      await setMigrationCapabilities(vm.qmp, ignoreShared);
      await vm.qmp.execute('migrate-set-parameters', { 'max-bandwidth': UNLIMITED_BANDWIDTH });
      const done = waitForMigration(vm.qmp, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      // If `migrate` fails (QEMU died), `done` rejects too, with nobody awaiting it yet.
      done.catch(() => {});
      await vm.qmp.execute('migrate', { uri: receiver.uri });
      const status = await done;
      if (status !== 'completed') {
        const { 'error-desc': why } = await vm.qmp.execute<{ 'error-desc'?: string }>('query-migrate').catch(() => ({ 'error-desc': undefined }));
        throw new AppError('vmm.snapshot_failed', `saving the VM in ${vm.dir} ended as ${status}: ${why ?? vm.process.stderrTail()}`);
      }
      await receiver.done;
    };
    const saving = save();
    // When QEMU dies first, the save still fails afterwards; that failure is already reported.
    saving.catch(() => {});
    try {
      await Promise.race([saving, died]);
    } finally {
      await receiver.close();
    }
  }

  private async stopProcess(vm: QemuVm): Promise<void> {
    vm.agent.close();
    await vm.qmp.execute('quit').catch(() => {});
    await vm.process.waitOrKill(5000);
    vm.qmp.close();
    releaseVmUser(vm.user);
    await Promise.all([removeRuntimeFiles(vm.paths), removeCgroup(vm.cgroup), this.removeNetwork(vm.network, vm.dir), vm.egressRelay?.close()]);
  }

  /** A namespace for a VM with `internet` egress; undefined for `none` (restricted user-mode networking). */
  private async createNetwork(paths: VmPaths, egress: EgressSpec | undefined): Promise<VmNetwork | undefined> {
    if (egress?.mode !== 'internet') return undefined;
    if (!this.networks) {
      throw new AppError('vm.egress_unavailable', `internet egress is not available on this host: ${this.internetEgressUnavailable}`);
    }
    return this.networks.create(paths.dir, egress);
  }

  /** After its QEMU exited. Failures only leave a namespace that the next startup sweep removes. */
  private async removeNetwork(network: VmNetwork | undefined, dir: string): Promise<void> {
    if (network) await this.networks?.remove(dir).catch(() => {});
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

/**
 * Leaves an adopted VM running. A daemon that died mid-suspend leaves it paused, perhaps with the
 * save still streaming: the save is cancelled (its file would be incomplete) and the VM continues.
 * A VM still waiting for (or loading) a restore stream has no state to continue from.
 */
async function continueAdopted(qmp: QmpClient, paths: VmPaths, timeoutMs: number): Promise<void> {
  const { status } = await qmp.execute<{ status: string }>('query-status');
  if (!CONTINUABLE_STATES.has(status)) {
    throw new AppError('vmm.adopt_failed', status === 'inmigrate' ? 'its restore had not finished' : `QEMU is in state ${status}`);
  }
  const deadline = Date.now() + timeoutMs;
  let migration = await qmp.execute<{ status?: string }>('query-migrate');
  if (migration.status && !SETTLED_MIGRATION_STATES.has(migration.status)) await qmp.execute('migrate_cancel');
  while (migration.status && !SETTLED_MIGRATION_STATES.has(migration.status)) {
    if (Date.now() > deadline) throw new AppError('vmm.timeout', `an interrupted save did not stop within ${timeoutMs} ms`);
    await sleep(50);
    migration = await qmp.execute<{ status?: string }>('query-migrate');
  }
  // Whatever save a previous daemon started is void now; its temp file would only linger.
  await rm(`${paths.suspendedState}.tmp`, { force: true });
  if (status !== 'running') await qmp.execute('cont');
}

/**
 * The sockets' parent lives in the shared temp directory: another local user could have made it
 * first and would then reach every VM's QMP socket. It must be ours and closed to everyone else.
 */
async function assertPrivate(dir: string): Promise<void> {
  const info = await lstat(dir);
  if (!info.isDirectory() || info.uid !== process.getuid?.() || (info.mode & 0o077) !== 0) {
    throw new AppError('vmm.start_failed', `${dir} must be a directory of this user (uid ${process.getuid?.()}) with mode 0700; remove it or set TMPDIR`);
  }
}

/**
 * Inside the private socket root, so only Cocoon puts anything there; VM users may only pass
 * through. It holds the host's resolv.conf, which slirp reads when a guest with `internet` egress
 * first asks its DNS (10.0.2.3), long after the chroot, every save's socket directory, and the
 * build egress relay with each build VM's egress socket directory (egress-relay.ts).
 */
async function chrootDir(dir: string): Promise<string> {
  await mkdir(path.join(dir, 'etc'), { recursive: true });
  await chmod(dir, 0o711);
  await Promise.all([sweepStaleSaveDirs(dir), sweepStaleEgressDirs(dir)]);
  const resolvConf = await readFile('/etc/resolv.conf', 'utf8').catch(() => '');
  const copy = path.join(dir, 'etc', 'resolv.conf');
  if (await readFile(copy, 'utf8').catch(() => undefined) !== resolvConf) {
    const temp = `${copy}.tmp-${randomUUID()}`;
    await writeFile(temp, resolvConf, { mode: 0o644 });
    await rename(temp, copy);
  }
  return dir;
}

/** After its QEMU exited. A group the kernel does not let go of yet stays empty; the VM's next start reuses it. */
async function removeCgroup(cgroup: Cgroup | undefined): Promise<void> {
  await cgroup?.remove().catch(() => {});
}

function runtimeFile(paths: VmPaths): string {
  return path.join(paths.dir, 'runtime.json');
}

async function writeRuntime(paths: VmPaths, runtime: RuntimeRecord): Promise<void> {
  await writeFileAtomic(runtimeFile(paths), JSON.stringify(runtime, null, 2));
}

async function removeRuntimeFiles(paths: VmPaths): Promise<void> {
  await Promise.all([paths.socketDir, paths.pidFile, runtimeFile(paths)].map((file) => rm(file, { recursive: true, force: true })));
}
