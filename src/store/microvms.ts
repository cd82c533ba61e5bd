/**
 * MicroVM records. A state change is a compare-and-set in one transaction (`transition`), so two
 * callers racing to suspend and terminate the same VM cannot both win. `get` is account-scoped;
 * `getAny` and `listByState` are for the daemon's own reconcile and timers.
 */
import { AppError } from '../errors/errors.ts';
import type { EgressSpec } from '../vmm/netns.ts';
import { nowIso, writeTransaction, type Db } from './db.ts';

export const MICROVM_STATES = ['PENDING', 'RUNNING', 'SUSPENDING', 'SUSPENDED', 'RESUMING', 'TERMINATING', 'TERMINATED', 'FAILED'] as const;
export type MicroVmState = (typeof MICROVM_STATES)[number];
/** States in which a MicroVM no longer holds on to its image. */
export const FINAL_STATES: readonly MicroVmState[] = ['TERMINATED', 'FAILED'];

export interface IdlePolicy {
  maxIdleDurationSeconds: number;
  suspendedDurationSeconds: number;
  autoResumeEnabled: boolean;
}

/** Usage counters, the basis of cost reports (sampled each second by src/vms/usage.ts). */
export interface MicroVmUsage {
  /** Seconds RUNNING: billed at the baseline size. */
  baselineSeconds: number;
  /** CPU-seconds used above the baseline vCPUs while RUNNING. */
  burstCpuSeconds: number;
  suspendedSeconds: number;
  /** Size of its last suspend snapshot: saved state plus disk overlay. */
  snapshotBytes: number;
}

export const ZERO_USAGE: MicroVmUsage = Object.freeze({ baselineSeconds: 0, burstCpuSeconds: 0, suspendedSeconds: 0, snapshotBytes: 0 });

export interface MicroVmRecord {
  microvmId: string;
  accountId: string;
  imageArn: string;
  imageName: string;
  imageVersion: string;
  state: MicroVmState;
  stateReason?: string;
  idlePolicy: IdlePolicy;
  maximumDurationInSeconds: number;
  /** What the guest may reach, fixed at run (every resume restores it). */
  egress: EgressSpec;
  endpoint?: string;
  /** The VM's directory on this host (overlay, suspended state, sockets, pidfile). */
  dir: string;
  pid?: number;
  /** Guest port → port on the host (on loopback, or on the VM's namespace address with `internet` egress). */
  hostPorts: Record<string, number>;
  createdAt: string;
  updatedAt: string;
  startedAt?: string;
  lastActivityAt?: string;
  suspendedAt?: string;
  terminatedAt?: string;
  resumeCount: number;
  runningSeconds: number;
  usage: MicroVmUsage;
}

/** Set at insert (or by the store), never by a patch: `state` moves only through `transition`. */
const IDENTITY_FIELDS = ['microvmId', 'accountId', 'imageArn', 'imageName', 'imageVersion', 'state', 'createdAt', 'updatedAt'] as const;

/** Fields a transition or update may change; a key present with `undefined` clears the field. */
export type MicroVmPatch = Partial<Omit<MicroVmRecord, (typeof IDENTITY_FIELDS)[number]>>;
/** A patch, or a function of the current record computing one inside the transaction (for counters). */
export type MicroVmPatchInput = MicroVmPatch | ((current: MicroVmRecord) => MicroVmPatch);

export interface MicroVmFilter {
  state?: string;
  imageName?: string;
  imageVersion?: string;
}

export interface MicroVmRepository {
  /** Records a new MicroVM; `image.not_found` if its image was deleted meanwhile. */
  insert(record: MicroVmRecord): Promise<MicroVmRecord>;
  /** Undefined for an unknown id or another account's MicroVM: the caller raises its not-found. */
  get(accountId: string, microvmId: string): Promise<MicroVmRecord | undefined>;
  getAny(microvmId: string): Promise<MicroVmRecord | undefined>;
  /** The account's MicroVMs, oldest first. */
  list(accountId: string, filter?: MicroVmFilter): Promise<MicroVmRecord[]>;
  /** Every account's MicroVMs in the given states, oldest first. */
  listByState(states: readonly MicroVmState[]): Promise<MicroVmRecord[]>;
  /** Moves the VM to `to` if its current state is in `from`, else `vm.invalid_state`; one transaction. */
  transition(microvmId: string, from: readonly MicroVmState[], to: MicroVmState, patch?: MicroVmPatchInput): Promise<MicroVmRecord>;
  /** Changes non-state fields (activity time, counters, pid); `vm.invalid_state` if the VM is unknown. */
  update(microvmId: string, patch: MicroVmPatchInput): Promise<MicroVmRecord>;
  /** MicroVMs of the account using the image in any state but TERMINATED and FAILED. */
  countActiveForImage(accountId: string, imageArn: string): Promise<number>;
}

type MicroVmRow = {
  microvm_id: string;
  account_id: string;
  image_arn: string;
  image_name: string;
  image_version: string;
  state: string;
  state_reason: string | null;
  created_at: string;
  updated_at: string;
  data: string;
};

const COLUMNS = ['microvmId', 'accountId', 'imageArn', 'imageName', 'imageVersion', 'state', 'stateReason', 'createdAt', 'updatedAt'] as const;
const IDENTITY = new Set<string>(IDENTITY_FIELDS);

function dataOf(record: MicroVmRecord): string {
  const data: Record<string, unknown> = { ...record };
  for (const key of COLUMNS) delete data[key];
  return JSON.stringify(data);
}

function toRecord(row: MicroVmRow): MicroVmRecord {
  return {
    microvmId: row.microvm_id,
    accountId: row.account_id,
    imageArn: row.image_arn,
    imageName: row.image_name,
    imageVersion: row.image_version,
    state: row.state as MicroVmState,
    ...(row.state_reason !== null && { stateReason: row.state_reason }),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    ...(JSON.parse(row.data) as Omit<MicroVmRecord, (typeof COLUMNS)[number]>),
  };
}

/** Applies a patch; keys whose value is undefined are removed, so optional fields can be cleared. */
function applyPatch(current: MicroVmRecord, input: MicroVmPatchInput | undefined): MicroVmRecord {
  const patch = typeof input === 'function' ? input(current) : (input ?? {});
  const next: Record<string, unknown> = { ...current };
  for (const [key, value] of Object.entries(patch)) {
    if (IDENTITY.has(key)) continue;
    if (value === undefined) delete next[key];
    else next[key] = value;
  }
  return next as unknown as MicroVmRecord;
}

function unknownVm(microvmId: string): AppError {
  return new AppError('vm.invalid_state', `MicroVM ${microvmId} does not exist`, { microvmId, state: null });
}

export class SqliteMicroVms implements MicroVmRepository {
  constructor(private readonly db: Db) {}

  async insert(record: MicroVmRecord): Promise<MicroVmRecord> {
    return writeTransaction(this.db, () => {
      const image = this.db.prepare('SELECT 1 FROM images WHERE account_id = ? AND arn = ?').get(record.accountId, record.imageArn);
      if (!image) throw new AppError('image.not_found', `image ${record.imageArn} does not exist`, { imageArn: record.imageArn });
      this.db
        .prepare(
          `INSERT INTO microvms (microvm_id, account_id, image_arn, image_name, image_version, state, state_reason, created_at, updated_at, data)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(record.microvmId, record.accountId, record.imageArn, record.imageName, record.imageVersion, record.state, record.stateReason ?? null, record.createdAt, record.updatedAt, dataOf(record));
      return this.read(record.microvmId)!;
    });
  }

  async get(accountId: string, microvmId: string): Promise<MicroVmRecord | undefined> {
    const row = this.db.prepare('SELECT * FROM microvms WHERE microvm_id = ? AND account_id = ?').get(microvmId, accountId) as MicroVmRow | undefined;
    return row && toRecord(row);
  }

  async getAny(microvmId: string): Promise<MicroVmRecord | undefined> {
    return this.read(microvmId);
  }

  async list(accountId: string, filter: MicroVmFilter = {}): Promise<MicroVmRecord[]> {
    const where = ['account_id = ?'];
    const params: string[] = [accountId];
    for (const [column, value] of [['state', filter.state], ['image_name', filter.imageName], ['image_version', filter.imageVersion]] as const) {
      if (value === undefined) continue;
      where.push(`${column} = ?`);
      params.push(value);
    }
    const rows = this.db.prepare(`SELECT * FROM microvms WHERE ${where.join(' AND ')} ORDER BY created_at, microvm_id`).all(...params) as MicroVmRow[];
    return rows.map(toRecord);
  }

  async listByState(states: readonly MicroVmState[]): Promise<MicroVmRecord[]> {
    if (states.length === 0) return [];
    const rows = this.db
      .prepare(`SELECT * FROM microvms WHERE state IN (${states.map(() => '?').join(', ')}) ORDER BY created_at, microvm_id`)
      .all(...states) as MicroVmRow[];
    return rows.map(toRecord);
  }

  async transition(microvmId: string, from: readonly MicroVmState[], to: MicroVmState, patch?: MicroVmPatchInput): Promise<MicroVmRecord> {
    return writeTransaction(this.db, () => {
      const current = this.read(microvmId);
      if (!current) throw unknownVm(microvmId);
      if (!from.includes(current.state)) {
        throw new AppError('vm.invalid_state', `MicroVM ${microvmId} is ${current.state}; moving to ${to} needs ${from.join(' or ')}`, {
          microvmId,
          state: current.state,
          expected: [...from],
          target: to,
        });
      }
      const next = { ...applyPatch(current, patch), state: to, updatedAt: nowIso() };
      this.write(next);
      return next;
    });
  }

  async update(microvmId: string, patch: MicroVmPatchInput): Promise<MicroVmRecord> {
    return writeTransaction(this.db, () => {
      const current = this.read(microvmId);
      if (!current) throw unknownVm(microvmId);
      const next = { ...applyPatch(current, patch), updatedAt: nowIso() };
      this.write(next);
      return next;
    });
  }

  async countActiveForImage(accountId: string, imageArn: string): Promise<number> {
    const { count } = this.db
      .prepare(`SELECT count(*) AS count FROM microvms WHERE account_id = ? AND image_arn = ? AND state NOT IN (${FINAL_STATES.map(() => '?').join(', ')})`)
      .get(accountId, imageArn, ...FINAL_STATES) as { count: number };
    return count;
  }

  private read(microvmId: string): MicroVmRecord | undefined {
    const row = this.db.prepare('SELECT * FROM microvms WHERE microvm_id = ?').get(microvmId) as MicroVmRow | undefined;
    return row && toRecord(row);
  }

  private write(record: MicroVmRecord): void {
    this.db
      .prepare(
        `UPDATE microvms SET state = ?, state_reason = ?, updated_at = ?, data = ? WHERE microvm_id = ?`,
      )
      .run(record.state, record.stateReason ?? null, record.updatedAt, dataOf(record), record.microvmId);
  }
}
