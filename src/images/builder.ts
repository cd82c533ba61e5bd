/**
 * create-microvm-image: zip → Dockerfile plan → steps run inside a build VM, one cached disk layer
 * per step → a fresh VM boots the result and starts the app → readiness → template snapshot →
 * a validation launch → ACTIVE. User Dockerfiles are untrusted: every step runs in a VM.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AppError, isAppError } from '../errors/errors.ts';
import { httpGet, waitUntil } from '../host/http-probe.ts';
import { templatePaths } from '../host/paths.ts';
import type { ExecResult } from '../guest/client.ts';
import type { RunningVm, TemplateSnapshot, VmDriver } from '../vmm/driver.ts';
import { EGRESS_PROXY } from '../vmm/qemu/argv.ts';
import { fetchArtifact, extractZip, locateDockerfile, type S3Config } from './artifact/index.ts';
import { BuildLog } from './build-log.ts';
import { copyArchive } from './copy-archive.ts';
import { copyFromExport, exportFromGuest, exportPath, fileExists } from './stage-copy.ts';
import { describeStep, planBuild, type BuildPlan, type CopyStep, type Stage, type Step } from './dockerfile/index.ts';
import { LayerStore } from './layers.ts';
import { waitUntilReady } from './readiness.ts';
import type { ImageRecord } from './records.ts';
import { DEFAULT_MEMORY_MIB, guestVcpus, hostLimitsOf, sizeOf, type VmSize } from './sizes.ts';
import type { ImageRepository, StoredImage } from '../store/index.ts';

export type BaseImageName = 'tiny' | 'debian';

export interface BaseImage {
  rootfsPath: string;
  sha256: string;
}

export interface BuildRequest {
  name: string;
  codeArtifactUri: string;
  dockerfilePath?: string;
  buildArgs?: Record<string, string>;
  /** Default: the first EXPOSEd port, else 8080. */
  appPort?: number;
  hooksPort?: number;
  /** 1–3600 s; default 300. */
  readinessTimeoutSeconds?: number;
  /** The image's size, named by its baseline memory (src/images/sizes.ts); default 2048. */
  memoryMiB?: number;
}

export interface BuilderDeps {
  driver: VmDriver;
  dataDir: string;
  images: ImageRepository;
  /** Builds (first time) or finds a base root filesystem. */
  baseImage: (name: BaseImageName) => Promise<BaseImage>;
  /** Egress proxy socket for build steps (apt, npm, curl …); runtime VMs get none. */
  egressSocket: string;
  builtWith: { kernel: string; kernelPackageVersion: string; agentVersion: string };
  s3?: S3Config;
}

const DEFAULT_APP_PORT = 8080;
const DEFAULT_HOOKS_PORT = 9000;
/** Build steps run at the 1 GiB size, one vCPU. */
const BUILD_VM_MEMORY_MIB = 1024;
const BUILD_VM_SHAPE = { memoryMiB: BUILD_VM_MEMORY_MIB, vcpus: 1, limits: hostLimitsOf(sizeOf(BUILD_VM_MEMORY_MIB)) };
const PROXY_URL = `http://${EGRESS_PROXY.address}:${EGRESS_PROXY.port}`;
/** Lines a running build keeps in memory for followers that join late; the file keeps them all. */
const LIVE_LOG_MAX_LINES = 10_000;
const PROXY_ENV = { http_proxy: PROXY_URL, https_proxy: PROXY_URL, HTTP_PROXY: PROXY_URL, HTTPS_PROXY: PROXY_URL, no_proxy: 'localhost,127.0.0.1' };

/** Everything one build run carries from step to step. */
interface BuildRun {
  plan: BuildPlan;
  contextDir: string;
  workDir: string;
  log: BuildLog;
  /** VMs to stop when the build ends, however it ends. */
  live: Set<RunningVm>;
  /** Stage export tars ready on the host. */
  exports: Set<string>;
}

/**
 * A build's log while it runs: the lines so far (up to a cap) and the log that emits the next ones.
 * A follower copies `lines` and subscribes in the same tick, so it misses no line and sees none twice.
 */
export interface LiveBuildLog {
  readonly log: BuildLog;
  readonly lines: readonly string[];
  /** Lines past the in-memory cap: in build.log, not in `lines`. */
  readonly omittedLines: number;
  /** The log has emitted 'end' (its file may still be flushing). */
  readonly ended: boolean;
}

export class ImageBuilder {
  readonly layers: LayerStore;
  /** Keyed by version directory; removed once build.log is complete on disk. */
  private readonly liveLogs = new Map<string, { log: BuildLog; lines: string[]; omittedLines: number; ended: boolean }>();
  /** One build at a time: builds are CPU-bound VMs, and steps of equal keys must not race. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly deps: BuilderDeps) {
    this.layers = new LayerStore(path.join(deps.dataDir, 'layers'));
  }

  /**
   * After a restart no build is running: a version still CREATING was interrupted. It becomes
   * FAILED (its layers stay cached, so a new create resumes where it stopped).
   */
  async reconcile(): Promise<ImageRecord[]> {
    const interrupted = await this.deps.images.listCreating();
    for (const record of interrupted) {
      record.state = 'FAILED';
      record.stateReason = 'the build was interrupted (Cocoon stopped during it); create the image again to resume from the cached steps';
      record.stateReasonCode = 'image.build_failed';
      await this.deps.images.save(record);
      await rm(path.join(this.versionDir(record), 'work'), { recursive: true, force: true });
    }
    return interrupted;
  }

  /** The template snapshot of an ACTIVE version: what every launch restores. */
  async templateOf(record: Pick<StoredImage, 'accountId' | 'name' | 'version'>): Promise<TemplateSnapshot> {
    return JSON.parse(await readFile(templatePaths(path.join(this.versionDir(record), 'template')).meta, 'utf8')) as TemplateSnapshot;
  }

  /** The version's files: build log, template snapshot, and the build's scratch space. */
  versionDir(record: Pick<StoredImage, 'accountId' | 'name' | 'version'>): string {
    return path.join(this.deps.dataDir, 'images', record.accountId, record.name, record.version);
  }

  /** The log of a version whose build is queued or running; undefined once build.log is complete. */
  liveLog(record: Pick<StoredImage, 'accountId' | 'name' | 'version'>): LiveBuildLog | undefined {
    return this.liveLogs.get(this.versionDir(record));
  }

  /** Records a CREATING version at once; `done` settles with the final record (ACTIVE or FAILED). */
  async create(accountId: string, request: BuildRequest, onLine?: (line: string) => void): Promise<{ record: StoredImage; done: Promise<StoredImage> }> {
    const timeoutSeconds = request.readinessTimeoutSeconds ?? 300;
    if (!Number.isInteger(timeoutSeconds) || timeoutSeconds < 1 || timeoutSeconds > 3600) {
      throw new AppError('config.invalid', 'readinessTimeoutSeconds must be a whole number from 1 to 3600');
    }
    for (const port of [request.appPort, request.hooksPort]) {
      if (port !== undefined && (!Number.isInteger(port) || port < 1 || port > 65535)) throw new AppError('config.invalid', `port ${port} is not 1–65535`);
    }
    const size = sizeOf(request.memoryMiB ?? DEFAULT_MEMORY_MIB);
    const record = await this.deps.images.createVersion(accountId, {
      name: request.name,
      codeArtifact: { uri: request.codeArtifactUri },
      appPort: request.appPort ?? DEFAULT_APP_PORT,
      hooksPort: request.hooksPort ?? DEFAULT_HOOKS_PORT,
      readinessTimeoutSeconds: timeoutSeconds,
      memoryMiB: size.memoryMiB,
    });
    await mkdir(this.versionDir(record), { recursive: true });
    const log = new BuildLog(path.join(this.versionDir(record), 'build.log'));
    const live = { log, lines: [] as string[], omittedLines: 0, ended: false };
    this.liveLogs.set(this.versionDir(record), live);
    log.on('line', (line) => { if (live.lines.length < LIVE_LOG_MAX_LINES) live.lines.push(line); else live.omittedLines++; });
    log.once('end', () => { live.ended = true; });
    if (onLine) log.on('line', onLine);
    const done = this.queue.then(() => this.build(record, request, log));
    this.queue = done.catch(() => {});
    return { record, done };
  }

  private async build(record: StoredImage, request: BuildRequest, log: BuildLog): Promise<StoredImage> {
    const versionDir = this.versionDir(record);
    const workDir = path.join(versionDir, 'work');
    const started = Date.now();
    const timings: Record<string, number> = {};
    const live = new Set<RunningVm>();
    try {
      log.line(`building ${record.arn} from ${request.codeArtifactUri}`);
      const artifact = await fetchArtifact(request.codeArtifactUri, { workDir, ...(this.deps.s3 ? { s3: this.deps.s3 } : {}) });
      record.codeArtifact.sha256 = artifact.sha256;
      const extracted = await extractZip(artifact.zipPath, path.join(workDir, 'context'));
      const dockerfile = locateDockerfile(extracted, request.dockerfilePath);
      const files = await hashContext(extracted.rootDir, extracted.files);
      log.line(`artifact sha256:${artifact.sha256}, ${extracted.files.length} files`);

      const plan = await this.plan(await readFile(dockerfile, 'utf8'), files, request.buildArgs);
      for (const warning of plan.warnings) log.line(`warning: ${warning}`);
      const finalStage = plan.stages[plan.finalStage]!;
      record.warnings = plan.warnings;
      record.runtime = plan.runtime;
      record.appPort = request.appPort ?? plan.runtime.exposedPorts[0] ?? DEFAULT_APP_PORT;
      await this.deps.images.save(record);

      timings.stepsMs = -Date.now();
      const build: BuildRun = { plan, contextDir: extracted.rootDir, workDir, log, live, exports: new Set() };
      const appVmSteps = await this.buildStages(build);
      timings.stepsMs += Date.now();
      record.baseImage = rootBaseOf(plan, plan.finalStage);
      record.layers = finalStage.steps.map((s) => s.cacheKey);

      timings.snapshotMs = -Date.now();
      const template = await this.snapshotApp(record, build, appVmSteps, path.join(versionDir, 'template'));
      timings.snapshotMs += Date.now();

      timings.validationMs = -Date.now();
      await this.validate(template, record.appPort, path.join(workDir, 'validate'), log, live);
      timings.validationMs += Date.now();

      record.builtWith = { ...this.deps.builtWith, qemuVersion: template.qemuVersion, accelerator: template.accelerator };
      record.state = 'ACTIVE';
      timings.totalMs = Date.now() - started;
      record.timingsMs = timings;
      log.line(`${record.arn} is ACTIVE (${(timings.totalMs / 1000).toFixed(1)} s)`);
    } catch (error) {
      record.state = 'FAILED';
      record.stateReason = isAppError(error) ? error.message : `internal error: ${String(error)}`;
      record.stateReasonCode = isAppError(error) ? error.code : 'internal';
      log.line(`FAILED: ${record.stateReason}`);
    } finally {
      await Promise.all([...live].map((vm) => this.deps.driver.stop(vm).catch(() => {})));
      await rm(workDir, { recursive: true, force: true });
      try {
        await this.deps.images.save(record);
      } finally {
        // Followers always get their end, even if the record could not be saved.
        await log.close();
        this.liveLogs.delete(versionDir);
      }
    }
    return record;
  }

  /** Plans twice: first to learn which base images are used (a Debian base is built on first use). */
  private async plan(dockerfileText: string, files: Parameters<typeof planBuild>[0]['files'], buildArgs?: Record<string, string>): Promise<BuildPlan> {
    const input = { dockerfileText, files, buildArgs: buildArgs ?? {} };
    const probe = planBuild({ ...input, baseKeys: { tiny: 'tiny', debian: 'debian' } });
    const used = new Set(probe.stages.flatMap((s) => (s.base.kind === 'base-image' ? [s.base.name] : [])));
    const baseKeys = { tiny: 'unused', debian: 'unused' };
    for (const name of used) baseKeys[name] = (await this.deps.baseImage(name)).sha256;
    return planBuild({ ...input, baseKeys });
  }

  /**
   * Builds every stage the final one needs, in order. The final stage's trailing COPY/WORKDIR steps
   * (typically the app's code) are left for the app VM: they need no network, and a code-only
   * rebuild then boots one VM instead of two.
   */
  private async buildStages(build: BuildRun): Promise<Step[]> {
    const final = build.plan.stages[build.plan.finalStage]!;
    let tailStart = final.steps.length;
    while (tailStart > 0 && isOfflineStep(final.steps[tailStart - 1]!)) tailStart--;
    for (const stage of build.plan.stages) {
      if (stage.used) await this.buildStage(build, stage, stage === final ? final.steps.slice(0, tailStart) : stage.steps);
    }
    return final.steps.slice(tailStart);
  }

  /** Logs the cached steps; returns the index of the first step that must run. */
  private async firstUncached(build: BuildRun, steps: readonly Step[]): Promise<number> {
    let firstMiss = 0;
    while (firstMiss < steps.length && (await this.layers.has(steps[firstMiss]!.cacheKey))) {
      build.log.line(`CACHED ${describeStep(steps[firstMiss]!)}`);
      firstMiss++;
    }
    return firstMiss;
  }

  /**
   * The files a VM that runs steps from `first` on freezes its disk into, in order: one layer per
   * later step, then `afterLast`. Unfinished layers among them are discarded now, before the VM
   * boots: the driver creates them all at boot (a QEMU that dropped privileges cannot create them
   * later), so a discard during the build would delete a file the VM is about to write.
   */
  private async freezePaths(steps: readonly Step[], first: number, afterLast: string): Promise<string[]> {
    for (const step of steps.slice(first)) await this.layers.discardUnfinished(step.cacheKey);
    return [...steps.slice(first + 1).map((step) => this.layers.pathOf(step.cacheKey)), afterLast];
  }

  /** Runs steps from `first` on, freezing one layer per step; after the last, the VM writes to `afterLast`. */
  private async runSteps(build: BuildRun, vm: RunningVm, steps: readonly Step[], first: number, afterLast: string): Promise<void> {
    for (let j = first; j < steps.length; j++) {
      const step = steps[j]!;
      const label = describeStep(step);
      build.log.line(label);
      const stepStarted = Date.now();
      await this.runStep(build, vm, step, label);
      await vm.agent.sync();
      const next = steps[j + 1];
      await this.deps.driver.freezeDisk(vm, next ? this.layers.pathOf(next.cacheKey) : afterLast);
      await this.layers.markDone(step.cacheKey, { parent: step.parentKey, description: label });
      build.log.line(`  done in ${((Date.now() - stepStarted) / 1000).toFixed(1)} s`);
    }
  }

  /** Runs a stage's steps that are not cached yet, in one build VM, one frozen layer per step. */
  private async buildStage(build: BuildRun, stage: Stage, steps: readonly Step[]): Promise<void> {
    const { log } = build;
    if (stage.base.kind === 'base-image') {
      const base = await this.deps.baseImage(stage.base.name);
      await this.layers.baseLayer(base.rootfsPath, base.sha256);
    }
    const firstMiss = await this.firstUncached(build, steps);
    if (firstMiss === steps.length) return;
    // Files that later steps copy from earlier stages are exported before this stage's VM boots.
    for (const step of steps.slice(firstMiss)) {
      if (step.kind === 'copy' && step.sources.some((s) => s.from === 'stage')) await this.stageExport(build, step);
    }

    log.line(`booting the build VM${stage.name ? ` for stage ${stage.name}` : ''}`);
    const vmDir = path.join(build.workDir, `build-${stage.index}`);
    const scratch = path.join(vmDir, 'scratch.qcow2');
    const vm = await this.deps.driver.boot({
      dir: vmDir, hostname: 'cocoon-build', ...BUILD_VM_SHAPE, guestPorts: [], templateSource: false,
      rootDisk: { kind: 'overlay', backingPath: this.layers.pathOf(steps[firstMiss]!.parentKey), activePath: this.layers.pathOf(steps[firstMiss]!.cacheKey) },
      freezePaths: await this.freezePaths(steps, firstMiss, scratch),
      egressSocket: this.deps.egressSocket,
    });
    build.live.add(vm);
    try {
      await this.runSteps(build, vm, steps, firstMiss, scratch);
    } finally {
      build.live.delete(vm);
      await this.deps.driver.stop(vm);
    }
  }

  /** A tar of the paths a COPY --from step takes from earlier stages (cached by stage result). */
  private async stageExport(build: BuildRun, step: CopyStep): Promise<void> {
    for (const source of step.sources) {
      if (source.from !== 'stage') continue;
      const stage = build.plan.stages[source.stage]!;
      const file = exportPath(this.layers.dir, stage.resultKey, source.path);
      if (build.exports.has(file) || (await fileExists(file))) { build.exports.add(file); continue; }
      build.log.line(`exporting ${source.path} from stage ${stage.name ?? stage.index}`);
      const vm = await this.deps.driver.boot({
        dir: path.join(build.workDir, `export-${build.exports.size}`), hostname: 'cocoon-build', ...BUILD_VM_SHAPE,
        guestPorts: [], templateSource: false, rootDisk: { kind: 'overlay', backingPath: this.layers.pathOf(stage.resultKey) },
      });
      build.live.add(vm);
      try {
        await exportFromGuest(vm, source.path, file);
        build.exports.add(file);
      } finally {
        build.live.delete(vm);
        await this.deps.driver.stop(vm);
      }
    }
  }

  private async runStep(build: BuildRun, vm: RunningVm, step: Step, label: string): Promise<void> {
    const output = { onStdout: (c: Buffer) => build.log.output(c), onStderr: (c: Buffer) => build.log.output(c) };
    const exec = async (argv: string[], options: { env?: Record<string, string>; cwd?: string; user?: string } = {}): Promise<void> => {
      const result = await vm.agent.exec({ argv, ...options, ...output }).catch((error: unknown) => { throw wrapSpawn(error, label, step.line); });
      if (result.exitCode !== 0) throw stepFailed(label, step.line, result.exitCode, result.signal);
    };
    switch (step.kind) {
      case 'run':
        return exec(step.argv, { env: { ...PROXY_ENV, ...step.env }, cwd: step.cwd, user: step.user });
      case 'workdir':
        await exec(['mkdir', '-p', step.path]);
        if (step.user && step.user !== 'root' && step.user !== '0') await exec(['chown', step.user, step.path]);
        return;
      case 'copy': {
        const fromStages = step.sources.some((s) => s.from === 'stage');
        if (fromStages) {
          for (const source of step.sources) {
            if (source.from !== 'stage') continue;
            const stage = build.plan.stages[source.stage]!;
            const entries = step.entries.filter((e) => e.source === source.path);
            await copyFromExport(vm, exportPath(this.layers.dir, stage.resultKey, source.path), entries, step.destIsDirectory, exec);
          }
        } else {
          const archive = await copyArchive(build.contextDir, step.entries, step.chmod);
          const tarPath = `/tmp/.cocoon-copy-${step.cacheKey.slice(0, 12)}.tar`;
          await vm.agent.writeFile(tarPath, archive, { mode: 0o600 });
          await exec(['tar', '-x', '-f', tarPath, '-C', '/']);
          await exec(['rm', '-f', tarPath]);
        }
        if (step.chown) {
          const dests = step.entries.map((e) => e.dest);
          for (let i = 0; i < dests.length; i += 500) await exec(['chown', ...(fromStages ? ['-R'] : []), step.chown, ...dests.slice(i, i + 500)]);
        }
        return;
      }
    }
  }

  /**
   * Boots the built disk fresh (like `docker run`; no egress), runs the trailing offline steps,
   * starts the app, waits until it is ready, and snapshots it.
   */
  private async snapshotApp(record: ImageRecord, build: BuildRun, steps: readonly Step[], templateDir: string): Promise<TemplateSnapshot> {
    const { log, live } = build;
    const runtime = record.runtime!;
    const final = build.plan.stages[build.plan.finalStage]!;
    const firstMiss = await this.firstUncached(build, steps);
    const pending = firstMiss < steps.length ? steps[firstMiss]! : undefined;
    const templateDisk = templatePaths(templateDir).disk;
    const size = sizeOf(record.memoryMiB);
    const vm = await this.deps.driver.boot({
      dir: templateDir, hostname: 'cocoon', memoryMiB: size.memoryMiB, vcpus: guestVcpus(size, os.availableParallelism()),
      limits: hostLimitsOf(size), templateSource: true,
      // EXPOSEd ports too: the endpoint proxy reaches them (e.g. gRPC beside the HTTP app).
      guestPorts: [...new Set([record.appPort, record.hooksPort, ...runtime.exposedPorts])],
      rootDisk: pending
        ? { kind: 'overlay', backingPath: this.layers.pathOf(pending.parentKey), activePath: this.layers.pathOf(pending.cacheKey) }
        : { kind: 'overlay', backingPath: this.layers.pathOf(final.resultKey) },
      ...(pending && { freezePaths: await this.freezePaths(steps, firstMiss, templateDisk) }),
    });
    live.add(vm);
    await this.runSteps(build, vm, steps, firstMiss, templateDisk);
    await growRootDisk(this.deps.driver, vm, size, log);
    log.line(`starting the app: ${JSON.stringify(runtime.argv)} (app port ${record.appPort}, hooks port ${record.hooksPort})`);
    vm.agent.on('app-output', (_stream, chunk) => log.output(chunk));
    const appExited = new Promise<never>((_, reject) => vm.agent.once('app-exit', (status) => reject(new AppError('image.build_failed',
      `the app exited (${status.signal ? `signal ${status.signal}` : `code ${status.exitCode}`}) before it was ready`))));
    appExited.catch(() => {});
    await vm.agent.startApp({ argv: runtime.argv, env: runtime.env, cwd: runtime.cwd, user: runtime.user })
      .catch((error: unknown) => { throw wrapSpawn(error, 'starting the app', 0); });
    const via = await waitUntilReady({
      hooksHostPort: vm.hostPort(record.hooksPort), appHostPort: vm.hostPort(record.appPort),
      timeoutMs: record.readinessTimeoutSeconds * 1000, appExited,
    });
    log.line(`the app is ready (${via === 'hooks' ? 'ready hook answered 200' : 'app port answered HTTP'}); taking the snapshot`);
    live.delete(vm);
    return this.deps.driver.snapshotTemplate(vm);
  }

  /** Restores the snapshot once, as every launch will, and checks the app answers. */
  private async validate(template: TemplateSnapshot, appPort: number, dir: string, log: BuildLog, live: Set<RunningVm>): Promise<void> {
    const started = Date.now();
    const vm = await this.deps.driver.launch(template, dir);
    live.add(vm);
    try {
      await waitUntil(async () => (await httpGet(vm.hostPort(appPort), '/', 5000)).status > 0, 60_000, 100)
        .catch(() => { throw new AppError('image.build_failed', 'validation launch: the restored app did not answer HTTP within 60 s'); });
      log.line(`validation launch answered in ${Date.now() - started} ms`);
    } finally {
      live.delete(vm);
      await this.deps.driver.stop(vm);
    }
  }
}

/**
 * Grows the template's own disk to the size's disk, and its ext4 filesystem online with the
 * guest's resize2fs. Only the template's file grows: layers keep the base's size, so one cached
 * layer serves images of every size. A base without resize2fs (cocoon/tiny) keeps its filesystem.
 */
async function growRootDisk(driver: VmDriver, vm: RunningVm, size: VmSize, log: BuildLog): Promise<void> {
  const sizeBytes = size.diskGiB * 2 ** 30;
  await driver.growDisk(vm, sizeBytes);
  // The guest learns the new capacity from a config interrupt: resize2fs must wait for its kernel.
  const sectors = async () => Number((await vm.agent.exec({ argv: ['cat', '/sys/block/vda/size'], timeoutMs: 10_000 })).stdout.toString().trim());
  await waitUntil(async () => (await sectors()) * 512 >= sizeBytes, 30_000, 100)
    .catch(() => { throw new AppError('image.build_failed', `the guest did not see its root disk grow to ${size.diskGiB} GiB`); });
  let result: ExecResult;
  try {
    result = await vm.agent.exec({ argv: ['resize2fs', '/dev/vda'], timeoutMs: 300_000 });
  } catch (error) {
    if (!isAppError(error, 'guest.request_failed')) throw error;
    log.line(`root disk: ${size.diskGiB} GiB; the base has no resize2fs, so its filesystem keeps its size`);
    return;
  }
  if (result.exitCode !== 0) throw new AppError('image.build_failed', `growing the root filesystem failed: ${result.stderr.toString().trim()}`);
  log.line(`root disk and filesystem: ${size.diskGiB} GiB`);
}

/** Steps that need no network and no earlier stage: they can run in the app VM. */
function isOfflineStep(step: Step): boolean {
  return step.kind === 'workdir' || (step.kind === 'copy' && step.sources.every((source) => source.from === 'context'));
}

function rootBaseOf(plan: BuildPlan, index: number): string {
  const stage = plan.stages[index]!;
  return stage.base.kind === 'stage' ? rootBaseOf(plan, stage.base.index) : `cocoon/${stage.base.name}`;
}

async function hashContext(rootDir: string, files: ReadonlyArray<{ path: string; sizeBytes: number; mode: number }>): Promise<Map<string, { sizeBytes: number; mode: number; sha256: string }>> {
  const map = new Map<string, { sizeBytes: number; mode: number; sha256: string }>();
  for (const file of files) {
    const sha256 = createHash('sha256').update(await readFile(path.join(rootDir, file.path))).digest('hex');
    map.set(file.path, { sizeBytes: file.sizeBytes, mode: file.mode, sha256 });
  }
  return map;
}

function stepFailed(label: string, line: number, exitCode: number, signal: number): AppError {
  const how = signal ? `was killed by signal ${signal}` : `exited with code ${exitCode}`;
  return new AppError('image.build_failed', `step ${label} (Dockerfile line ${line}) ${how}`, { line, exitCode, signal });
}

function wrapSpawn(error: unknown, label: string, line: number): unknown {
  if (!isAppError(error, 'guest.request_failed')) return error;
  return new AppError('image.build_failed', `${label}${line ? ` (Dockerfile line ${line})` : ''} could not start: ${error.message}`, { line });
}
