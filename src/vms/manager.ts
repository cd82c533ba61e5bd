/**
 * The MicroVM lifecycle: run (launch from an image's template), suspend, resume, terminate, the
 * idle/suspended/maximum-duration timers, capacity admission and reconcile at startup.
 *
 * - Every state change is checked against the transition table and made by the store's
 *   compare-and-set, and the target state is recorded BEFORE the side effect (PENDING before the
 *   launch, SUSPENDING before the save, RESUMING before the restore, TERMINATING before the stop),
 *   so a crash leaves a record that `reconcile` can settle.
 * - One operation at a time per VM: concurrent calls for the same VM WAIT their turn (in order),
 *   then meet the store's CAS: a second suspend after a first one is `vm.invalid_state` (409).
 * - Running QEMUs are owned by this process (`running`). A daemon restart does not re-adopt them
 *   yet: `reconcile` kills a live QEMU of a RUNNING record by its recorded pid and marks it FAILED.
 *   SUSPENDED VMs survive restarts: their state.zst is on disk and `resume` needs nothing else.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError, isAppError } from '../errors/errors.ts';
import { httpGet, waitUntil } from '../host/http-probe.ts';
import { vmPaths } from '../host/paths.ts';
import type { ImageBuilder } from '../images/builder.ts';
import type { IdlePolicy, MicroVmFilter, MicroVmPatchInput, MicroVmRecord, MicroVmState, Store, StoredImage } from '../store/index.ts';
import type { RunningVm, VmDriver } from '../vmm/driver.ts';
import { callHook, type HookName } from './hooks.ts';
import { KeyedMutex } from './mutex.ts';
import { parseImageIdentifier, resolvePolicy } from './policy.ts';
import { dueAction, runningSecondsOf, type DueAction } from './timers.ts';
import { checkedSources, MEMORY_STATES } from './transitions.ts';

export interface MicroVmManagerDeps {
  driver: VmDriver;
  store: Pick<Store, 'images' | 'microvms'>;
  builder: Pick<ImageBuilder, 'templateOf'>;
  /** VMs live in `<dataDir>/vms/<microvmId>/`. */
  dataDir: string;
  log?: (line: string) => void;
}

export interface MicroVmManagerOptions {
  /** Memory the VMs of this host may take together. Default: 80% of the host's RAM. */
  memoryBudgetMiB?: number;
  /** Period of the idle controller's loop. Default 1000. */
  tickMs?: number;
  /** Lowest maxIdleDurationSeconds / maximumDurationInSeconds accepted. Default 60; tests only lower it. */
  minimumSeconds?: number;
  /** Per hook call, bounded to 1–60 s. Default 10 s. */
  hookTimeoutMs?: number;
  /** How long a launched VM's app may take to answer HTTP. Default 60 s (TCG is slow). */
  appReadyTimeoutMs?: number;
  now?: () => number;
}

export interface RunRequest {
  /** `name`, `name:version` or `cocoon:image:<name>:<version>`; without a version, the latest ACTIVE one. */
  imageIdentifier: string;
  idlePolicy?: Partial<IdlePolicy>;
  maximumDurationInSeconds?: number;
  /** The body of the `run` hook: secrets and per-VM config. Never stored, never logged. */
  runHookPayload?: string | Record<string, unknown>;
}

/** A record plus what only the daemon knows: live running time and the app's loopback port. */
export interface MicroVm {
  record: MicroVmRecord;
  runningSeconds: number;
  /** Host loopback port of the app while RUNNING. */
  localPort?: number;
}

interface ImageFacts {
  appPort: number;
  hooksPort: number;
  memoryMiB: number;
}

const STATE_REASON_CLEARED = { stateReason: undefined } as const;

export class MicroVmManager {
  private readonly running = new Map<string, { vm: RunningVm; sinceMs: number }>();
  private readonly activity = new Map<string, number>();
  private readonly locks = new KeyedMutex();
  private readonly facts = new Map<string, ImageFacts>();
  private admission: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private closed = false;
  private readonly now: () => number;
  readonly memoryBudgetMiB: number;

  constructor(private readonly deps: MicroVmManagerDeps, private readonly options: MicroVmManagerOptions = {}) {
    this.now = options.now ?? Date.now;
    this.memoryBudgetMiB = options.memoryBudgetMiB ?? Math.floor((os.totalmem() / 2 ** 20) * 0.8);
  }

  /** Starts the idle controller (call after `reconcile`). Its timer never keeps the process alive. */
  start(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => void this.tick(), this.options.tickMs ?? 1000);
    this.timer.unref();
  }

  /** Stops the timers and waits for operations in flight. Running VMs are left as they are. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.locks.idle();
  }

  /** Inbound traffic reached the VM (the proxy calls this); the API's own routes do not count. */
  recordActivity(microvmId: string): void {
    this.activity.set(microvmId, this.now());
  }

  async run(accountId: string, request: RunRequest): Promise<MicroVm> {
    const policy = resolvePolicy(request, { minimumSeconds: this.options.minimumSeconds ?? 60 });
    const { name, version } = parseImageIdentifier(request.imageIdentifier);
    const image = await this.deps.store.images.get(accountId, name, version);
    if (image.state !== 'ACTIVE') {
      throw new AppError('image.invalid_state', `image ${image.arn} is ${image.state}; only ACTIVE images can run`, { imageArn: image.arn, state: image.state });
    }
    const template = await this.deps.builder.templateOf(image);
    const microvmId = `mvm-${randomUUID()}`;
    return this.locks.run(microvmId, async () => {
      const createdAt = this.iso();
      const record = await this.admit(image.memoryMiB, () => this.deps.store.microvms.insert({
        microvmId, accountId, imageArn: image.arn, imageName: image.name, imageVersion: image.version,
        state: 'PENDING', ...policy,
        // Placeholder until the endpoint proxy exists.
        endpoint: `https://${microvmId}.cocoon.localhost:8443`,
        dir: path.join(this.deps.dataDir, 'vms', microvmId),
        hostPorts: {}, createdAt, updatedAt: createdAt, resumeCount: 0, runningSeconds: 0,
      }));
      let vm: RunningVm | undefined;
      try {
        vm = await this.deps.driver.launch(template, record.dir);
        this.running.set(microvmId, { vm, sinceMs: this.now() });
        await this.deps.store.microvms.update(microvmId, { pid: vm.pid, hostPorts: hostPortsOf(vm) });
        const port = vm.hostPort(image.appPort);
        const timeoutMs = this.options.appReadyTimeoutMs ?? 60_000;
        await waitUntil(async () => (await httpGet(port, '/', 5000)).status > 0, timeoutMs, 100)
          .catch(() => { throw new AppError('vm.launch_failed', `the app did not answer HTTP on port ${image.appPort} within ${timeoutMs / 1000} s`); });
      } catch (error) {
        const reason = `launch failed: ${messageOf(error)}`;
        await this.fail(microvmId, 'PENDING', reason, vm);
        throw new AppError('vm.launch_failed', `MicroVM ${microvmId} failed to start (${reason}); it is FAILED`, { microvmId }, { cause: error });
      }
      await this.hook(microvmId, vm, image.hooksPort, 'run', request.runHookPayload ?? {});
      const startedAt = this.iso();
      return this.describe(await this.move(microvmId, ['PENDING'], 'RUNNING', { startedAt, lastActivityAt: startedAt }));
    });
  }

  async get(accountId: string, microvmId: string): Promise<MicroVm> {
    return this.describe(await this.owned(accountId, microvmId));
  }

  async list(accountId: string, filter: Pick<MicroVmFilter, 'state' | 'imageVersion'> = {}): Promise<MicroVm[]> {
    const records = await this.deps.store.microvms.list(accountId, filter);
    return Promise.all(records.map((record) => this.describe(record)));
  }

  async suspend(accountId: string, microvmId: string): Promise<MicroVm> {
    return this.locks.run(microvmId, async () => this.describe(await this.suspendNow(await this.owned(accountId, microvmId))));
  }

  async resume(accountId: string, microvmId: string): Promise<MicroVm> {
    return this.locks.run(microvmId, async () => this.describe(await this.resumeNow(await this.owned(accountId, microvmId))));
  }

  async terminate(accountId: string, microvmId: string): Promise<MicroVm> {
    return this.locks.run(microvmId, async () => this.describe(await this.terminateNow(await this.owned(accountId, microvmId))));
  }

  /**
   * At startup, before `start`: settles records a previous daemon left mid-way. A VM whose save
   * completed (SUSPENDING/RESUMING with a state.zst) becomes SUSPENDED; RUNNING and PENDING VMs
   * become FAILED (a live QEMU is killed by its recorded pid: re-adoption is not implemented);
   * TERMINATING ones finish. SUSPENDED VMs are left alone. Returns the records it changed.
   */
  async reconcile(): Promise<MicroVmRecord[]> {
    const changed: MicroVmRecord[] = [];
    const leftovers = await this.deps.store.microvms.listByState(['PENDING', 'RUNNING', 'SUSPENDING', 'RESUMING', 'TERMINATING']);
    for (const record of leftovers) {
      if (this.running.has(record.microvmId)) continue;
      const killed = record.pid !== undefined && (await killQemu(record.pid));
      const id = record.microvmId;
      let next: MicroVmRecord;
      if (record.state === 'TERMINATING') {
        await rm(record.dir, { recursive: true, force: true });
        next = await this.move(id, ['TERMINATING'], 'TERMINATED', { terminatedAt: this.iso(), pid: undefined, hostPorts: {} });
      } else if ((record.state === 'SUSPENDING' || record.state === 'RESUMING') && (await isFile(vmPaths(record.dir).suspendedState))) {
        // The state file appears only by an atomic rename once complete: its presence means a whole save.
        next = await this.move(id, [record.state], 'SUSPENDED', {
          stateReason: `the daemon restarted while the VM was ${record.state}; its saved state was kept`,
          suspendedAt: record.suspendedAt ?? this.iso(), pid: undefined, hostPorts: {},
        });
      } else {
        const reason = killed
          ? `the daemon restarted while the VM was ${record.state}; running VMs are not re-adopted yet, so its QEMU was stopped`
          : `its QEMU process is gone (the daemon or the host restarted while it was ${record.state})`;
        next = await this.move(id, [record.state], 'FAILED', { stateReason: reason, pid: undefined, hostPorts: {} });
      }
      this.log(`reconcile: ${id} ${record.state} → ${next.state}`);
      changed.push(next);
    }
    return changed;
  }

  /** One pass of the idle controller; public for tests that drive time themselves. */
  async tick(): Promise<void> {
    if (this.ticking || this.closed) return;
    this.ticking = true;
    try {
      for (const record of await this.deps.store.microvms.listByState(['RUNNING', 'SUSPENDED'])) {
        const id = record.microvmId;
        if (this.locks.isLocked(id)) continue;
        const entry = this.running.get(id);
        if (record.state === 'RUNNING' && entry && !pidAlive(entry.vm.pid)) {
          void this.locks.run(id, () => this.failIfExited(id, entry.vm)).catch((error) => this.log(`idle controller: ${id}: ${messageOf(error)}`));
        } else if (this.dueFor(record)) {
          // Not awaited: one slow suspend must not hold back the others. The lock is taken at once,
          // so the next pass skips this VM.
          void this.locks.run(id, () => this.carryOut(id)).catch((error) => this.log(`idle controller: ${id}: ${messageOf(error)}`));
        } else {
          await this.persistActivity(record);
        }
      }
    } catch (error) {
      this.log(`idle controller: ${messageOf(error)}`);
    } finally {
      this.ticking = false;
    }
  }

  // --- transitions (each runs under the VM's lock) ---

  private async suspendNow(record: MicroVmRecord, reason?: string): Promise<MicroVmRecord> {
    const id = record.microvmId;
    await this.move(id, ['RUNNING'], 'SUSPENDING', reason ? { stateReason: reason } : STATE_REASON_CLEARED);
    const entry = this.running.get(id);
    if (!entry) return this.fail(id, 'SUSPENDING', 'its QEMU is not owned by this daemon');
    const facts = await this.factsOf(record);
    if (facts) await this.hook(id, entry.vm, facts.hooksPort, 'suspend', {});
    try {
      await this.deps.driver.suspend(entry.vm);
    } catch (error) {
      // The driver lets QEMU continue when the save fails and QEMU still runs: roll back.
      if (pidAlive(entry.vm.pid)) {
        await this.move(id, ['SUSPENDING'], 'RUNNING', { stateReason: `suspend failed: ${messageOf(error)}` });
      } else {
        await this.fail(id, 'SUSPENDING', `suspend failed: ${messageOf(error)}`, entry.vm);
      }
      throw error;
    }
    this.running.delete(id);
    this.activity.delete(id);
    const elapsed = (this.now() - entry.sinceMs) / 1000;
    return this.move(id, ['SUSPENDING'], 'SUSPENDED', (current) => ({
      suspendedAt: this.iso(), runningSeconds: current.runningSeconds + elapsed, pid: undefined, hostPorts: {},
    }));
  }

  private async resumeNow(record: MicroVmRecord): Promise<MicroVmRecord> {
    const id = record.microvmId;
    const facts = await this.factsOf(record);
    await this.admit(facts?.memoryMiB ?? 0, () => this.move(id, ['SUSPENDED'], 'RESUMING', STATE_REASON_CLEARED));
    let vm: RunningVm;
    try {
      vm = await this.deps.driver.resume({ dir: record.dir, stateBytes: 0 });
    } catch (error) {
      // The driver removes the saved state only after a successful restore.
      if (await isFile(vmPaths(record.dir).suspendedState)) {
        await this.move(id, ['RESUMING'], 'SUSPENDED', { stateReason: `resume failed: ${messageOf(error)}` });
      } else {
        await this.fail(id, 'RESUMING', `resume failed: ${messageOf(error)}`);
      }
      throw error;
    }
    this.running.set(id, { vm, sinceMs: this.now() });
    const ports = hostPortsOf(vm);
    if (facts) await this.hook(id, vm, facts.hooksPort, 'resume', {});
    const now = this.iso();
    return this.move(id, ['RESUMING'], 'RUNNING', (current) => ({
      resumeCount: current.resumeCount + 1, lastActivityAt: now, suspendedAt: undefined, pid: vm.pid, hostPorts: ports,
    }));
  }

  private async terminateNow(record: MicroVmRecord, reason?: string): Promise<MicroVmRecord> {
    const id = record.microvmId;
    // A FAILED VM keeps its reason; any other loses a stale one (e.g. of a rolled-back suspend).
    await this.move(id, ['PENDING', 'RUNNING', 'SUSPENDED', 'FAILED'], 'TERMINATING',
      reason ? { stateReason: reason } : record.state === 'FAILED' ? {} : STATE_REASON_CLEARED);
    const entry = this.running.get(id);
    if (entry) {
      const facts = await this.factsOf(record);
      if (facts && record.state === 'RUNNING') await this.hook(id, entry.vm, facts.hooksPort, 'terminate', {});
      await this.stopVm(entry.vm);
      this.running.delete(id);
    } else if (record.pid !== undefined) {
      await killQemu(record.pid);
    }
    this.activity.delete(id);
    await rm(record.dir, { recursive: true, force: true });
    const elapsed = entry ? (this.now() - entry.sinceMs) / 1000 : 0;
    return this.move(id, ['TERMINATING'], 'TERMINATED', (current) => ({
      terminatedAt: this.iso(), runningSeconds: current.runningSeconds + elapsed, pid: undefined, hostPorts: {},
    }));
  }

  /** Under the lock: re-reads the record (it may have changed since the pass saw it) and acts. */
  private async carryOut(microvmId: string): Promise<void> {
    const record = await this.deps.store.microvms.getAny(microvmId);
    const due: DueAction | undefined = record && this.dueFor(record);
    if (!record || !due) return;
    this.log(`idle controller: ${microvmId} ${due.action}: ${due.reason}`);
    if (due.action === 'suspend') await this.suspendNow(record, due.reason);
    else await this.terminateNow(record, due.reason);
  }

  /** A QEMU that exited on its own (crash, OOM kill) makes its RUNNING VM FAILED. */
  private async failIfExited(microvmId: string, vm: RunningVm): Promise<void> {
    const record = await this.deps.store.microvms.getAny(microvmId);
    if (record?.state !== 'RUNNING' || this.running.get(microvmId)?.vm !== vm || pidAlive(vm.pid)) return;
    await this.fail(microvmId, 'RUNNING', `its QEMU process (pid ${vm.pid}) exited unexpectedly`, vm);
  }

  private dueFor(record: MicroVmRecord): DueAction | undefined {
    const entry = this.running.get(record.microvmId);
    return dueAction(record, {
      nowMs: this.now(),
      ...(entry && { runningSinceMs: entry.sinceMs }),
      ...(this.activity.has(record.microvmId) && { lastActivityMs: this.activity.get(record.microvmId)! }),
    });
  }

  /** Writes in-memory activity to the record, at most once a second per VM. */
  private async persistActivity(record: MicroVmRecord): Promise<void> {
    const latest = this.activity.get(record.microvmId);
    if (latest === undefined || record.state !== 'RUNNING') return;
    if (latest - Date.parse(record.lastActivityAt ?? record.createdAt) < 1000) return;
    await this.deps.store.microvms.update(record.microvmId, { lastActivityAt: new Date(latest).toISOString() });
  }

  // --- helpers ---

  private async move(microvmId: string, from: readonly MicroVmState[], to: MicroVmState, patch?: MicroVmPatchInput): Promise<MicroVmRecord> {
    return this.deps.store.microvms.transition(microvmId, checkedSources(from, to), to, patch);
  }

  /** Stops the VM (if any) and records FAILED with the reason; the directory stays for inspection until terminate. */
  private async fail(microvmId: string, from: MicroVmState, reason: string, vm?: RunningVm): Promise<MicroVmRecord> {
    const entry = this.running.get(microvmId);
    const running = vm ?? entry?.vm;
    if (running) await this.stopVm(running);
    this.running.delete(microvmId);
    this.activity.delete(microvmId);
    const elapsed = entry ? (this.now() - entry.sinceMs) / 1000 : 0;
    this.log(`${microvmId} FAILED: ${reason}`);
    return this.move(microvmId, [from], 'FAILED', (current) => ({
      stateReason: reason, runningSeconds: current.runningSeconds + elapsed, pid: undefined, hostPorts: {},
    }));
  }

  private async stopVm(vm: RunningVm): Promise<void> {
    await this.deps.driver.stop(vm).catch(async (error) => {
      this.log(`stopping QEMU ${vm.pid} failed (${messageOf(error)}); killing it`);
      await killQemu(vm.pid);
    });
  }

  /**
   * Capacity admission: checks the memory budget and records the state that reserves memory
   * (PENDING or RESUMING) as one step, one admission at a time, so two requests cannot both take
   * the last free memory.
   */
  private async admit<T>(memoryMiB: number, reserve: () => Promise<T>): Promise<T> {
    const turn = this.admission.then(async () => {
      let usedMiB = 0;
      for (const record of await this.deps.store.microvms.listByState(MEMORY_STATES)) usedMiB += (await this.factsOf(record))?.memoryMiB ?? 0;
      if (usedMiB + memoryMiB > this.memoryBudgetMiB) {
        throw new AppError('vm.capacity', `not enough memory on this host: ${usedMiB} MiB of ${this.memoryBudgetMiB} MiB are in use and the MicroVM needs ${memoryMiB} MiB`,
          { usedMiB, budgetMiB: this.memoryBudgetMiB, requiredMiB: memoryMiB });
      }
      return reserve();
    });
    this.admission = turn.catch(() => {});
    return turn;
  }

  private async owned(accountId: string, microvmId: string): Promise<MicroVmRecord> {
    const record = await this.deps.store.microvms.get(accountId, microvmId);
    if (!record) throw new AppError('vm.not_found', `MicroVM ${microvmId} does not exist`, { microvmId });
    return record;
  }

  /** The image's ports and size; images are immutable once ACTIVE, so they are cached. Undefined once the image is deleted. */
  private async factsOf(record: Pick<MicroVmRecord, 'accountId' | 'imageName' | 'imageVersion' | 'imageArn'>): Promise<ImageFacts | undefined> {
    const key = `${record.accountId}/${record.imageArn}`;
    const cached = this.facts.get(key);
    if (cached) return cached;
    let image: StoredImage;
    try {
      image = await this.deps.store.images.get(record.accountId, record.imageName, record.imageVersion);
    } catch (error) {
      if (isAppError(error, 'image.not_found')) return undefined;
      throw error;
    }
    const facts = { appPort: image.appPort, hooksPort: image.hooksPort, memoryMiB: image.memoryMiB };
    this.facts.set(key, facts);
    return facts;
  }

  private async describe(record: MicroVmRecord): Promise<MicroVm> {
    const entry = this.running.get(record.microvmId);
    const runningSeconds = Math.floor(runningSecondsOf(record, { nowMs: this.now(), ...(entry && { runningSinceMs: entry.sinceMs }) }));
    const appPort = record.state === 'RUNNING' ? (await this.factsOf(record))?.appPort : undefined;
    const localPort = appPort === undefined ? undefined : record.hostPorts[String(appPort)];
    return { record, runningSeconds, ...(localPort !== undefined && { localPort }) };
  }

  private async hook(microvmId: string, vm: RunningVm, hooksPort: number, hook: HookName, body: unknown): Promise<void> {
    let port: number;
    try {
      port = vm.hostPort(hooksPort);
    } catch {
      return; // the image forwards no hooks port
    }
    const outcome = await callHook(port, hook, body, this.options.hookTimeoutMs ?? 10_000);
    if (outcome.kind === 'failed') this.log(`${microvmId}: ${hook} hook failed after ${outcome.ms} ms: ${outcome.error} (ignored)`);
    else if (outcome.kind === 'answered' && (outcome.status < 200 || outcome.status > 299)) {
      this.log(`${microvmId}: ${hook} hook answered ${outcome.status} (ignored)`);
    }
  }

  private iso(): string {
    return new Date(this.now()).toISOString();
  }

  private log(line: string): void {
    this.deps.log?.(line);
  }
}

/** Guest port → host loopback port; new ports on every launch and resume. */
function hostPortsOf(vm: RunningVm): Record<string, number> {
  return Object.fromEntries(vm.forwards.map((forward) => [String(forward.guestPort), forward.hostPort]));
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function isFile(file: string): Promise<boolean> {
  return stat(file).then((s) => s.isFile(), () => false);
}

function pidAlive(pid: number): boolean {
  if (!existsSync(`/proc/${pid}`)) return false;
  try {
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/** Kills `pid` if it is a live QEMU (never a recycled pid of something else); true if it was. */
async function killQemu(pid: number): Promise<boolean> {
  let cmdline: string;
  try {
    cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return false;
  }
  if (!cmdline.includes('qemu-system') || !pidAlive(pid)) return false;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return false;
  }
  for (let i = 0; i < 100 && pidAlive(pid); i++) await sleep(50);
  return true;
}
