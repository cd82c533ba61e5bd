/**
 * Usage sampling, the basis of cost reports. Once a second: a RUNNING MicroVM accrues baseline
 * seconds and the CPU-seconds its QEMU used above the baseline vCPUs of its size; a SUSPENDED one
 * accrues suspended seconds and its snapshot is measured. Counters accrue in memory and are written
 * every `persistEveryMs` and at close, one update per VM: never a write per VM per second. A
 * VM's first second after each start is not counted (accrual needs two samples).
 */
import { stat } from 'node:fs/promises';
import { vmPaths } from '../host/paths.ts';
import type { MicroVmRecord, MicroVmUsage, Store } from '../store/index.ts';
import type { RunningVm } from '../vmm/driver.ts';

/** What accrued since the last write; `snapshotBytes` is a measurement, not an increment. */
export interface UsageDelta {
  baselineSeconds: number;
  burstCpuSeconds: number;
  suspendedSeconds: number;
  snapshotBytes?: number;
}

export interface UsageSamplerDeps {
  store: Pick<Store, 'microvms'>;
  /** The VM's QEMU while this daemon runs it. */
  runningVm(microvmId: string): RunningVm | undefined;
  /** Baseline vCPUs of the VM's size; undefined when unknown (its image is gone). */
  baselineVcpus(record: MicroVmRecord): Promise<number | undefined>;
  log(line: string): void;
}

export interface UsageSamplerOptions {
  periodMs?: number;
  /** Default 10 s. */
  persistEveryMs?: number;
  now?: () => number;
}

type Sample = { state: 'RUNNING'; atMs: number; vm: RunningVm; cpuNs: number } | { state: 'SUSPENDED'; atMs: number };

const NO_DELTA: UsageDelta = { baselineSeconds: 0, burstCpuSeconds: 0, suspendedSeconds: 0 };

/** A RUNNING interval: all of it at the baseline, and the CPU used beyond the baseline as burst. */
export function runningDelta(seconds: number, cpuSeconds: number, baselineVcpus: number): UsageDelta {
  return { baselineSeconds: seconds, burstCpuSeconds: Math.max(0, cpuSeconds - baselineVcpus * seconds), suspendedSeconds: 0 };
}

/** Sums to the millisecond: sampling is not more precise, and sums of floats grow noisy digits. */
export function addDelta<T extends UsageDelta>(base: T, delta: UsageDelta): T {
  const sum = (a: number, b: number) => Math.round((a + b) * 1000) / 1000;
  return {
    ...base,
    baselineSeconds: sum(base.baselineSeconds, delta.baselineSeconds),
    burstCpuSeconds: sum(base.burstCpuSeconds, delta.burstCpuSeconds),
    suspendedSeconds: sum(base.suspendedSeconds, delta.suspendedSeconds),
    ...(delta.snapshotBytes !== undefined && { snapshotBytes: delta.snapshotBytes }),
  };
}

export class UsageSampler {
  private readonly last = new Map<string, Sample>();
  private readonly pending = new Map<string, UsageDelta>();
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> = Promise.resolve();
  private persistedAtMs: number;
  private readonly now: () => number;

  constructor(private readonly deps: UsageSamplerDeps, private readonly options: UsageSamplerOptions = {}) {
    this.now = options.now ?? Date.now;
    this.persistedAtMs = this.now();
  }

  /** Its timer never keeps the process alive. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      this.inFlight = this.inFlight.then(() => this.tick());
    }, this.options.periodMs ?? 1000);
    this.timer.unref();
  }

  /** Stops sampling and writes what accrued. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.inFlight;
    await this.persist();
  }

  /** The record's counters with what has accrued since they were last written. */
  current(record: MicroVmRecord): MicroVmUsage {
    const delta = this.pending.get(record.microvmId);
    return delta ? addDelta(record.usage, delta) : record.usage;
  }

  /** One sampling pass (public for tests that drive time themselves). */
  async tick(): Promise<void> {
    try {
      const nowMs = this.now();
      const records = await this.deps.store.microvms.listByState(['RUNNING', 'SUSPENDED']);
      for (const record of records) await this.sample(record, nowMs);
      const live = new Set(records.map((record) => record.microvmId));
      for (const id of this.last.keys()) if (!live.has(id)) this.last.delete(id);
      if (nowMs - this.persistedAtMs >= (this.options.persistEveryMs ?? 10_000)) await this.persist();
    } catch (error) {
      this.deps.log(`usage sampler: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  private async sample(record: MicroVmRecord, nowMs: number): Promise<void> {
    const id = record.microvmId;
    const previous = this.last.get(id);
    if (record.state === 'SUSPENDED') {
      this.last.set(id, { state: 'SUSPENDED', atMs: nowMs });
      if (previous?.state === 'SUSPENDED') {
        this.accrue(id, { ...NO_DELTA, suspendedSeconds: (nowMs - previous.atMs) / 1000 });
        return;
      }
      // A snapshot does not change while its VM stays suspended: measured once per suspend.
      const bytes = await snapshotBytes(record.dir);
      if (bytes !== undefined) this.accrue(id, { ...NO_DELTA, snapshotBytes: bytes });
      return;
    }
    const vm = this.deps.runningVm(id);
    const usage = await vm?.usage().catch(() => undefined);
    if (!vm || !usage) {
      this.last.delete(id);
      return;
    }
    this.last.set(id, { state: 'RUNNING', atMs: nowMs, vm, cpuNs: usage.cpuNs });
    // Another QEMU (a resume) restarts the CPU counter: only two samples of one process make an interval.
    if (previous?.state !== 'RUNNING' || previous.vm !== vm) return;
    const baseline = await this.deps.baselineVcpus(record);
    if (baseline === undefined) return;
    this.accrue(id, runningDelta((nowMs - previous.atMs) / 1000, (usage.cpuNs - previous.cpuNs) / 1e9, baseline));
  }

  private accrue(microvmId: string, delta: UsageDelta): void {
    this.pending.set(microvmId, addDelta(this.pending.get(microvmId) ?? NO_DELTA, delta));
  }

  private async persist(): Promise<void> {
    this.persistedAtMs = this.now();
    for (const [id, delta] of [...this.pending]) {
      this.pending.delete(id);
      await this.deps.store.microvms.update(id, (current) => ({ usage: addDelta(current.usage, delta) }))
        .catch((error: unknown) => this.deps.log(`usage sampler: ${id}: ${error instanceof Error ? error.message : String(error)}`));
    }
  }
}

/** Bytes of a complete suspend snapshot (saved state plus disk overlay); undefined without one. */
async function snapshotBytes(dir: string): Promise<number | undefined> {
  const paths = vmPaths(dir);
  const [state, disk] = await Promise.all([paths.suspendedState, paths.disk].map((file) => stat(file).then((s) => s.size, () => undefined)));
  return state === undefined ? undefined : state + (disk ?? 0);
}
