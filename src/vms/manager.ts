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
 * - Running QEMUs are owned by this process (`running`) but outlive it: after a crash (or a graceful
 *   restart that released them) `reconcile` re-adopts the live ones and finishes or rolls back the
 *   operation a record was in. SUSPENDED VMs survive restarts untouched: their state.zst is on disk
 *   and `resume` needs nothing else; a complete state.zst is never deleted before its VM runs again.
 */
import { randomUUID } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AppError, isAppError } from '../errors/errors.ts';
import { httpGet, waitUntil, type HostEndpoint } from '../host/http-probe.ts';
import { vmPaths } from '../host/paths.ts';
import type { ImageBuilder } from '../images/builder.ts';
import { findSize, type VmSize } from '../images/sizes.ts';
import { FINAL_STATES, type IdlePolicy, type MicroVmFilter, type MicroVmPatchInput, type MicroVmRecord, type MicroVmState, type MicroVmUsage, type Store, type StoredImage, ZERO_USAGE } from '../store/index.ts';
import type { EgressSpec, LimitsEnforcement, RunningVm, VmDriver } from '../vmm/driver.ts';
import { killQemuOf, processAlive } from '../vmm/qemu/process.ts';
import { checkEgressSpec } from '../vmm/netns.ts';
import { AppLogs } from './app-log.ts';
import { callHook, type HookName } from './hooks.ts';
import { KeyedMutex } from './mutex.ts';
import { parseImageIdentifier, resolvePolicy } from './policy.ts';
import { dueAction, runningSecondsOf, type DueAction } from './timers.ts';
import { checkedSources, MEMORY_STATES } from './transitions.ts';
import { UsageSampler } from './usage.ts';

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
  /** A MicroVM's endpoint URL (the server derives it from the proxy's domain and port). Default: the embedded defaults'. */
  endpointOf?: (microvmId: string) => string;
}

export interface RunRequest {
  /** `name`, `name:version` or `cocoon:image:<name>:<version>`; without a version, the latest ACTIVE one. */
  imageIdentifier: string;
  idlePolicy?: Partial<IdlePolicy>;
  maximumDurationInSeconds?: number;
  /** The body of the `run` hook: secrets and per-VM config. Never stored, never logged. */
  runHookPayload?: string | Record<string, unknown>;
  /** What the guest may reach; default `none` (nothing leaves it). `internet` needs a root host (docs/microvms.md). */
  egress?: EgressSpec;
}

/** A record plus what only the daemon knows: live running time and the app's loopback port. */
export interface MicroVm {
  record: MicroVmRecord;
  runningSeconds: number;
  /** Host port of the app while RUNNING, on `localAddress`. */
  localPort?: number;
  /** Where `localPort` listens: 127.0.0.1, or the address of the VM's network namespace (`internet` egress). */
  localAddress?: string;
  /** Its image's size; undefined once the image is deleted. */
  size?: VmSize;
  /** The counters with what accrued since they were last written. */
  usage: MicroVmUsage;
  /** While this daemon runs it: what enforces its CPU and memory limits on the host. */
  limitsEnforcedBy?: LimitsEnforcement;
}

export interface TrafficOptions {
  /** Checks the caller may reach this guest port (the auth token); throws to refuse. Runs before any resume. */
  authorize(guestPort: number): Promise<void>;
  /** How long a request may wait for a resume (or another operation in progress). Default 60 s. */
  resumeTimeoutMs?: number;
}

/** One open request or connection of the endpoint proxy to a RUNNING VM. */
export interface TrafficLease {
  /** The host port forwarded to `guestPort`, on `hostAddress`. */
  hostPort: number;
  /** 127.0.0.1, or the address of the VM's network namespace (`internet` egress). */
  hostAddress: string;
  guestPort: number;
  /** Aborted when the VM leaves RUNNING: upstream connections kept for reuse must close. */
  closed: AbortSignal;
  /** The request or connection ended (idempotent). */
  release(): void;
}

interface TrafficRoute {
  appPort: number;
  proxiedPorts: readonly number[];
  /** Guest port → host port (on `hostAddress`), for the proxied ports. */
  hostPorts: Map<number, number>;
  hostAddress: string;
  closed: AbortController;
}

/** TCG restores of large guests take tens of seconds. */
const DEFAULT_RESUME_TIMEOUT_MS = 60_000;

interface ImageFacts {
  appPort: number;
  hooksPort: number;
  memoryMiB: number;
  /** Guest ports the endpoint proxy reaches: the app port and the EXPOSEd ones, never the hooks port by itself. */
  proxiedPorts: number[];
}

const STATE_REASON_CLEARED = { stateReason: undefined } as const;

export class MicroVmManager {
  private readonly running = new Map<string, { vm: RunningVm; sinceMs: number }>();
  private readonly activity = new Map<string, number>();
  /** Endpoint traffic: where the proxy sends each RUNNING VM's requests, and its open connections. */
  private readonly routes = new Map<string, TrafficRoute>();
  private readonly routing = new Map<string, Promise<TrafficRoute>>();
  private readonly openConnections = new Map<string, number>();
  private readonly locks = new KeyedMutex();
  private readonly facts = new Map<string, ImageFacts>();
  private readonly usage: UsageSampler;
  private admission: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private ticking = false;
  private closed = false;
  private readonly now: () => number;
  readonly memoryBudgetMiB: number;
  /** The apps' runtime logs, in `<dataDir>/logs/microvms/` (they outlive their VMs). */
  readonly appLogs: AppLogs;

  constructor(private readonly deps: MicroVmManagerDeps, private readonly options: MicroVmManagerOptions = {}) {
    this.now = options.now ?? Date.now;
    this.memoryBudgetMiB = options.memoryBudgetMiB ?? Math.floor((os.totalmem() / 2 ** 20) * 0.8);
    this.appLogs = new AppLogs(path.join(deps.dataDir, 'logs', 'microvms'), { log: (line) => this.log(line) });
    this.usage = new UsageSampler({
      store: deps.store,
      runningVm: (microvmId) => this.running.get(microvmId)?.vm,
      baselineVcpus: async (record) => {
        const facts = await this.factsOf(record);
        return facts && findSize(facts.memoryMiB)?.baselineVcpus;
      },
      log: (line) => this.log(line),
    }, { now: this.now });
  }

  /** Starts the idle controller (call after `reconcile`). Its timer never keeps the process alive. */
  start(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => void this.tick(), this.options.tickMs ?? 1000);
    this.timer.unref();
    this.usage.start();
  }

  /** Stops the timers and waits for operations in flight. Running VMs are left as they are. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.locks.idle();
    await this.usage.close();
  }

  /** Inbound traffic reached the VM (the proxy calls this); the API's own routes do not count. */
  recordActivity(microvmId: string): void {
    this.activity.set(microvmId, this.now());
  }

  async run(accountId: string, request: RunRequest): Promise<MicroVm> {
    const policy = resolvePolicy(request, { minimumSeconds: this.options.minimumSeconds ?? 60 });
    const egress = checkEgressSpec(request.egress ?? { mode: 'none' });
    const unavailable = egress.mode === 'internet' ? this.deps.driver.internetEgressUnavailable : undefined;
    if (unavailable) {
      throw new AppError('vm.egress_unavailable', `egress mode "internet" is not available on this host (${unavailable}); use "none"`, { reason: unavailable });
    }
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
        state: 'PENDING', ...policy, egress,
        endpoint: this.options.endpointOf?.(microvmId) ?? `https://${microvmId}.cocoon.localhost:8443`,
        dir: path.join(this.deps.dataDir, 'vms', microvmId),
        hostPorts: {}, createdAt, updatedAt: createdAt, resumeCount: 0, runningSeconds: 0, usage: ZERO_USAGE,
      }));
      let vm: RunningVm | undefined;
      try {
        vm = await this.deps.driver.launch(template, record.dir, { egress });
        this.running.set(microvmId, { vm, sinceMs: this.now() });
        await this.attachAppLog(microvmId, vm);
        await this.deps.store.microvms.update(microvmId, { pid: vm.pid, hostPorts: hostPortsOf(vm) });
        const app = { host: vm.hostAddress, port: vm.hostPort(image.appPort) };
        const timeoutMs = this.options.appReadyTimeoutMs ?? 60_000;
        await waitUntil(async () => (await httpGet(app, '/', 5000)).status > 0, timeoutMs, 100)
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
   * At startup, before `start`: settles the records a previous daemon left behind (it was killed at
   * any moment, or stopped and left its VMs running). A live QEMU of the VM's directory is
   * re-adopted through the driver, which never takes a recycled pid for it:
   * - RUNNING: re-adopted and still RUNNING (its running time goes on); if that fails, FAILED.
   * - PENDING (a launch cut short): re-adopted and RUNNING once its app answers, without a run hook
   *   (its payload is never stored; the stateReason says so); else FAILED.
   * - SUSPENDING: a complete state.zst → SUSPENDED; else a live QEMU is re-adopted and continues
   *   (the suspend is rolled back to RUNNING); else FAILED.
   * - RESUMING: a live QEMU that answers → RUNNING (the restore happened; state.zst goes); else its
   *   QEMU is stopped and the VM is SUSPENDED again with its state.zst (FAILED without one).
   * - TERMINATING finishes. SUSPENDED VMs are never touched.
   * Returns the records it settled, re-adopted RUNNING ones included.
   */
  async reconcile(): Promise<MicroVmRecord[]> {
    const settled: MicroVmRecord[] = [];
    const leftovers = await this.deps.store.microvms.listByState(['PENDING', 'RUNNING', 'SUSPENDING', 'RESUMING', 'TERMINATING']);
    for (const record of leftovers) {
      if (this.running.has(record.microvmId)) continue;
      const next = await this.settle(record);
      const readopted = record.state === 'RUNNING' && next.state === 'RUNNING';
      this.log(`reconcile: ${record.microvmId} ${readopted ? 'RUNNING re-adopted' : `${record.state} → ${next.state}`}`);
      settled.push(next);
    }
    return settled;
  }

  /**
   * Lets every running VM outlive this daemon (a graceful restart of the server): their QEMUs are
   * not killed at exit and the next daemon's `reconcile` re-adopts them. Call after `close`.
   * Returns how many keep running.
   */
  releaseAll(): number {
    const count = this.running.size;
    for (const { vm } of this.running.values()) this.deps.driver.release(vm);
    this.running.clear();
    return count;
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
        if (record.state === 'RUNNING' && entry && !processAlive(entry.vm.pid)) {
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

  // --- endpoint traffic (the proxy's one entry point) ---

  /**
   * Opens the way for one request or connection of the endpoint proxy to `guestPort` of the
   * MicroVM (default: the image's app port) and counts it as open until `release()`: a VM with an
   * open connection is active, so a long WebSocket keeps it awake. `authorize` sees the guest port
   * before anything reaches the VM, a resume included. A SUSPENDED VM with autoResumeEnabled is
   * resumed (concurrent requests share the one resume), bounded by `resumeTimeoutMs`. For a RUNNING
   * VM this is a map lookup: routes live in memory and every state change drops them.
   */
  async openForTraffic(microvmId: string, guestPort: number | undefined, options: TrafficOptions): Promise<TrafficLease> {
    const cached = this.routes.get(microvmId);
    const target = cached ?? (await this.trafficTarget(microvmId));
    const port = guestPort ?? target.appPort;
    if (!target.proxiedPorts.includes(port)) throw portNotExposed(microvmId, port, target.proxiedPorts);
    await options.authorize(port);
    let route = this.routes.get(microvmId);
    if (!route) {
      if (!cached && 'state' in target && target.state === 'SUSPENDED' && !target.autoResume) throw notRunning(microvmId, 'SUSPENDED');
      route = await this.routeWhenRunning(microvmId, options);
    }
    return this.lease(microvmId, route, port);
  }

  /**
   * `openForTraffic` without waiting, for the proxy's hot path: a lease when the VM's route is at
   * hand (RUNNING) and `authorizeNow` decides at once (true, or it throws to refuse); undefined
   * when only `openForTraffic` can tell.
   */
  openForTrafficNow(microvmId: string, guestPort: number | undefined, authorizeNow: (guestPort: number) => boolean): TrafficLease | undefined {
    const route = this.routes.get(microvmId);
    if (!route) return undefined;
    const port = guestPort ?? route.appPort;
    if (!route.proxiedPorts.includes(port)) throw portNotExposed(microvmId, port, route.proxiedPorts);
    return authorizeNow(port) ? this.lease(microvmId, route, port) : undefined;
  }

  /** What the proxy needs to know of a VM without a route (not RUNNING, or not asked for yet). */
  private async trafficTarget(microvmId: string): Promise<Pick<TrafficRoute, 'appPort' | 'proxiedPorts'> & { state: MicroVmState; autoResume: boolean }> {
    const record = await this.deps.store.microvms.getAny(microvmId);
    if (!record || record.state === 'TERMINATED') throw unknownHost(microvmId);
    const facts = await this.factsOf(record);
    if (!facts) throw notRunning(microvmId, record.state);
    return { appPort: facts.appPort, proxiedPorts: facts.proxiedPorts, state: record.state, autoResume: record.idlePolicy.autoResumeEnabled };
  }

  /** Waits its turn on the VM's lock (a suspend or launch in progress ends first), resuming the VM if its policy says so. */
  private async routeWhenRunning(microvmId: string, options: TrafficOptions): Promise<TrafficRoute> {
    let routing = this.routing.get(microvmId);
    if (!routing) {
      routing = this.locks.run(microvmId, () => this.routeUnderLock(microvmId)).finally(() => this.routing.delete(microvmId));
      // Every waiter may give up (timeout, client gone): the resume still completes, unobserved.
      routing.catch(() => {});
      this.routing.set(microvmId, routing);
    }
    const timeoutMs = options.resumeTimeoutMs ?? DEFAULT_RESUME_TIMEOUT_MS;
    return withDeadline(routing, timeoutMs,
      () => new AppError('proxy.resume_timeout', `MicroVM ${microvmId} was not ready within ${timeoutMs / 1000} s; try again`, { microvmId }));
  }

  private async routeUnderLock(microvmId: string): Promise<TrafficRoute> {
    const existing = this.routes.get(microvmId);
    if (existing) return existing;
    let record = await this.deps.store.microvms.getAny(microvmId);
    if (!record || record.state === 'TERMINATED') throw unknownHost(microvmId);
    if (record.state === 'SUSPENDED' && record.idlePolicy.autoResumeEnabled) {
      this.log(`${microvmId}: resuming for inbound traffic`);
      record = await this.resumeNow(record);
    }
    const entry = this.running.get(microvmId);
    const facts = await this.factsOf(record);
    if (record.state !== 'RUNNING' || !entry || !facts) throw notRunning(microvmId, record.state);
    const hostPorts = new Map(entry.vm.forwards.filter((f) => facts.proxiedPorts.includes(f.guestPort)).map((f) => [f.guestPort, f.hostPort]));
    const route: TrafficRoute = {
      appPort: facts.appPort, proxiedPorts: facts.proxiedPorts, hostPorts, hostAddress: entry.vm.hostAddress, closed: new AbortController(),
    };
    this.routes.set(microvmId, route);
    return route;
  }

  private lease(microvmId: string, route: TrafficRoute, guestPort: number): TrafficLease {
    const hostPort = route.hostPorts.get(guestPort);
    // A VM launched from a template made before EXPOSEd ports were forwarded.
    if (hostPort === undefined) throw portNotExposed(microvmId, guestPort, [...route.hostPorts.keys()]);
    this.openConnections.set(microvmId, (this.openConnections.get(microvmId) ?? 0) + 1);
    this.recordActivity(microvmId);
    let open = true;
    return {
      hostPort,
      hostAddress: route.hostAddress,
      guestPort,
      closed: route.closed.signal,
      release: () => {
        if (!open) return;
        open = false;
        const left = (this.openConnections.get(microvmId) ?? 1) - 1;
        if (left > 0) this.openConnections.set(microvmId, left);
        else this.openConnections.delete(microvmId);
        // Idle time counts from the end of the last connection.
        if (this.running.has(microvmId)) this.recordActivity(microvmId);
      },
    };
  }

  /** The VM's state changes: new requests look it up again, and the proxy closes what it keeps open to it (`closed`). */
  private dropRoute(microvmId: string): void {
    const route = this.routes.get(microvmId);
    if (!route) return;
    this.routes.delete(microvmId);
    route.closed.abort();
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
      if (processAlive(entry.vm.pid)) {
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
      vm = await this.deps.driver.resume({ dir: record.dir, stateBytes: 0 }, { egress: record.egress });
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
    await this.attachAppLog(id, vm);
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
      await killQemuOf(record.pid, record.dir);
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
    if (record?.state !== 'RUNNING' || this.running.get(microvmId)?.vm !== vm || processAlive(vm.pid)) return;
    await this.fail(microvmId, 'RUNNING', `its QEMU process (pid ${vm.pid}) exited unexpectedly`, vm);
  }

  private dueFor(record: MicroVmRecord): DueAction | undefined {
    const entry = this.running.get(record.microvmId);
    const latest = this.latestActivity(record.microvmId);
    return dueAction(record, {
      nowMs: this.now(),
      ...(entry && { runningSinceMs: entry.sinceMs }),
      ...(latest !== undefined && { lastActivityMs: latest }),
    });
  }

  /** The latest activity known in memory: now while a connection is open (a WebSocket, a long stream is traffic for as long as it lasts). */
  private latestActivity(microvmId: string): number | undefined {
    return this.openConnections.has(microvmId) ? this.now() : this.activity.get(microvmId);
  }

  /** Writes in-memory activity to the record, at most once a second per VM. */
  private async persistActivity(record: MicroVmRecord): Promise<void> {
    const latest = this.latestActivity(record.microvmId);
    if (latest === undefined || record.state !== 'RUNNING') return;
    if (latest - Date.parse(record.lastActivityAt ?? record.createdAt) < 1000) return;
    await this.deps.store.microvms.update(record.microvmId, { lastActivityAt: new Date(latest).toISOString() });
  }

  // --- reconcile ---

  /** One leftover record of a previous daemon (see `reconcile`). */
  private async settle(record: MicroVmRecord): Promise<MicroVmRecord> {
    const id = record.microvmId;
    const stateFile = vmPaths(record.dir).suspendedState;
    const restarted = `the daemon restarted while the VM was ${record.state}`;
    if (record.state === 'TERMINATING') {
      if (record.pid !== undefined) await killQemuOf(record.pid, record.dir);
      await rm(record.dir, { recursive: true, force: true });
      return this.move(id, ['TERMINATING'], 'TERMINATED', { terminatedAt: this.iso(), pid: undefined, hostPorts: {} });
    }
    if (record.state === 'SUSPENDING' && (await isFile(stateFile))) {
      // The state file appears only by an atomic rename once complete: a whole save. Its QEMU may
      // not have stopped yet; it is paused with inactive disks and has nothing more to give.
      if (record.pid !== undefined) await killQemuOf(record.pid, record.dir);
      return this.move(id, ['SUSPENDING'], 'SUSPENDED', {
        stateReason: `${restarted}; its saved state was kept`, suspendedAt: record.suspendedAt ?? this.iso(), pid: undefined, hostPorts: {},
      });
    }
    let vm: RunningVm;
    try {
      vm = await this.deps.driver.adopt(record.dir);
    } catch (error) {
      const why = isAppError(error, 'vmm.exited')
        ? `its QEMU process is gone (the daemon or the host restarted while it was ${record.state})`
        : `${restarted} and its QEMU could not be re-adopted: ${messageOf(error)}`;
      // The driver deletes state.zst only after a successful restore: with it, the VM is still suspended.
      if (record.state === 'RESUMING' && (await isFile(stateFile))) {
        return this.move(id, ['RESUMING'], 'SUSPENDED', { stateReason: `${why}; its saved state was kept`, pid: undefined, hostPorts: {} });
      }
      return this.move(id, [record.state], 'FAILED', { stateReason: why, pid: undefined, hostPorts: {} });
    }
    this.running.set(id, { vm, sinceMs: vm.startedAtMs });
    await this.attachAppLog(id, vm);
    const running = { pid: vm.pid, hostPorts: hostPortsOf(vm) };
    const facts = await this.factsOf(record);
    switch (record.state) {
      case 'RUNNING':
        return this.deps.store.microvms.update(id, running);
      case 'PENDING': {
        const timeoutMs = this.options.appReadyTimeoutMs ?? 60_000;
        if (facts && !(await appAnswers({ host: vm.hostAddress, port: vm.hostPort(facts.appPort) }, timeoutMs))) {
          return this.fail(id, 'PENDING', `${restarted}; the re-adopted VM's app did not answer HTTP on port ${facts.appPort} within ${timeoutMs / 1000} s`);
        }
        const startedAt = this.iso();
        return this.move(id, ['PENDING'], 'RUNNING', {
          ...running, startedAt, lastActivityAt: startedAt,
          stateReason: `${restarted}; the VM was re-adopted, but its run hook may not have been delivered (the runHookPayload is never stored, so it is not sent again)`,
        });
      }
      case 'SUSPENDING':
        return this.move(id, ['SUSPENDING'], 'RUNNING', { ...running, stateReason: `${restarted}; the suspend was rolled back and the VM kept running` });
      default: {
        // RESUMING, and the restore had happened: the running VM has diverged from the saved state.
        await rm(stateFile, { force: true });
        // The previous daemon may have died before it called the hook; a second call is the lesser harm.
        if (facts) await this.hook(id, vm, facts.hooksPort, 'resume', {});
        const now = this.iso();
        return this.move(id, ['RESUMING'], 'RUNNING', (current) => ({
          ...running, resumeCount: current.resumeCount + 1, lastActivityAt: now, suspendedAt: undefined,
          stateReason: `${restarted}; its restore had completed and the VM was re-adopted`,
        }));
      }
    }
  }

  // --- helpers ---

  private async move(microvmId: string, from: readonly MicroVmState[], to: MicroVmState, patch?: MicroVmPatchInput): Promise<MicroVmRecord> {
    // Before the first await: no request takes the route of a VM whose state is changing.
    this.dropRoute(microvmId);
    const record = await this.deps.store.microvms.transition(microvmId, checkedSources(from, to), to, patch);
    if (FINAL_STATES.includes(to)) this.appLogs.end(microvmId);
    return record;
  }

  /**
   * Streams a running VM's app output into its runtime log until QEMU stops (the agent connection
   * closes with it). Never fails the caller: without logs (an agent before 1.2) the VM still runs.
   */
  private async attachAppLog(microvmId: string, vm: RunningVm): Promise<void> {
    await this.appLogs.attach(microvmId, vm.agent).catch((error: unknown) => this.log(`${microvmId}: no runtime logs: ${messageOf(error)}`));
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
      await killQemuOf(vm.pid, vm.dir);
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
    const facts = {
      appPort: image.appPort, hooksPort: image.hooksPort, memoryMiB: image.memoryMiB,
      proxiedPorts: [...new Set([image.appPort, ...(image.runtime?.exposedPorts ?? [])])],
    };
    this.facts.set(key, facts);
    return facts;
  }

  private async describe(record: MicroVmRecord): Promise<MicroVm> {
    const entry = this.running.get(record.microvmId);
    const runningSeconds = Math.floor(runningSecondsOf(record, { nowMs: this.now(), ...(entry && { runningSinceMs: entry.sinceMs }) }));
    const facts = await this.factsOf(record);
    const appPort = record.state === 'RUNNING' ? facts?.appPort : undefined;
    const localPort = appPort === undefined ? undefined : record.hostPorts[String(appPort)];
    const size = facts && findSize(facts.memoryMiB);
    return {
      record, runningSeconds, usage: this.usage.current(record),
      ...(localPort !== undefined && { localPort, localAddress: entry?.vm.hostAddress ?? '127.0.0.1' }),
      ...(size && { size }),
      ...(entry && { limitsEnforcedBy: entry.vm.limitsEnforcedBy }),
    };
  }

  private async hook(microvmId: string, vm: RunningVm, hooksPort: number, hook: HookName, body: unknown): Promise<void> {
    let port: number;
    try {
      port = vm.hostPort(hooksPort);
    } catch {
      return; // the image forwards no hooks port
    }
    const outcome = await callHook({ host: vm.hostAddress, port }, hook, body, this.options.hookTimeoutMs ?? 10_000);
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

function unknownHost(microvmId: string): AppError {
  return new AppError('proxy.unknown_host', `no MicroVM ${microvmId} (it may have been terminated)`, { microvmId });
}

function notRunning(microvmId: string, state: MicroVmState): AppError {
  const why = state === 'SUSPENDED' ? 'SUSPENDED and its idle policy does not resume it on traffic (resume it with resume-microvm)' : state;
  return new AppError('proxy.vm_not_running', `MicroVM ${microvmId} is ${why}`, { microvmId, state });
}

function portNotExposed(microvmId: string, port: number, proxiedPorts: readonly number[]): AppError {
  return new AppError('proxy.port_not_exposed', `MicroVM ${microvmId} does not expose port ${port} (its image exposes ${proxiedPorts.join(', ')})`,
    { microvmId, port, exposedPorts: [...proxiedPorts] });
}

/** `work`'s outcome, unless `timeoutMs` passes first (then `onTimeout()`). */
async function withDeadline<T>(work: Promise<T>, timeoutMs: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), timeoutMs);
  });
  try {
    return await Promise.race([work, limit]);
  } finally {
    clearTimeout(timer);
  }
}

async function isFile(file: string): Promise<boolean> {
  return stat(file).then((s) => s.isFile(), () => false);
}

/** True once the app answers HTTP on its forwarded port (any status), false after `timeoutMs`. */
async function appAnswers(app: HostEndpoint, timeoutMs: number): Promise<boolean> {
  return waitUntil(async () => (await httpGet(app, '/', 5000)).status > 0, timeoutMs, 100).then(() => true, () => false);
}
