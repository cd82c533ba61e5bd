/**
 * What the idle controller should do to a MicroVM now. Pure: the manager's timer loop feeds it the
 * record, the clock and what it knows in memory (when the VM last started running, its latest
 * activity), and carries the answer out under the VM's lock.
 */
import type { MicroVmRecord } from '../store/index.ts';

export type DueAction =
  | { action: 'suspend'; reason: string }
  | { action: 'terminate'; reason: string };

export interface Observed {
  nowMs: number;
  /** When the current run began (launch or resume); undefined if this daemon does not run the VM. */
  runningSinceMs?: number;
  /** The latest activity known in memory (the proxy reports it), newer than the record's perhaps. */
  lastActivityMs?: number;
}

/** Seconds the VM has been RUNNING in total, the current run included. */
export function runningSecondsOf(record: Pick<MicroVmRecord, 'state' | 'runningSeconds'>, observed: Observed): number {
  const current = record.state === 'RUNNING' && observed.runningSinceMs !== undefined ? (observed.nowMs - observed.runningSinceMs) / 1000 : 0;
  return record.runningSeconds + Math.max(0, current);
}

export function dueAction(record: MicroVmRecord, observed: Observed): DueAction | undefined {
  const { nowMs } = observed;
  const policy = record.idlePolicy;
  if (record.state === 'RUNNING') {
    if (observed.runningSinceMs === undefined) return undefined;
    if (runningSecondsOf(record, observed) >= record.maximumDurationInSeconds) {
      return { action: 'terminate', reason: `ran for its maximum duration of ${record.maximumDurationInSeconds} s` };
    }
    const recorded = Date.parse(record.lastActivityAt ?? record.startedAt ?? record.createdAt);
    const lastActivity = Math.max(recorded, observed.lastActivityMs ?? 0, observed.runningSinceMs);
    if (nowMs - lastActivity >= policy.maxIdleDurationSeconds * 1000) {
      // suspendedDurationSeconds 0 means "terminate instead of keeping it suspended": skip the save.
      return policy.suspendedDurationSeconds === 0
        ? { action: 'terminate', reason: `idle for ${policy.maxIdleDurationSeconds} s (suspendedDurationSeconds is 0)` }
        : { action: 'suspend', reason: `idle for ${policy.maxIdleDurationSeconds} s` };
    }
    return undefined;
  }
  if (record.state === 'SUSPENDED') {
    const since = Date.parse(record.suspendedAt ?? record.updatedAt);
    if (nowMs - since >= policy.suspendedDurationSeconds * 1000) {
      return { action: 'terminate', reason: `suspended for ${policy.suspendedDurationSeconds} s` };
    }
  }
  return undefined;
}
