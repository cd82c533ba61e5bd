import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { MicroVmRecord } from '../store/index.ts';
import { microvmRecord } from '../store/test-fixtures.ts';
import { dueAction, runningSecondsOf } from './timers.ts';

const T0 = Date.parse('2026-01-01T00:00:00.000Z');
const iso = (ms: number) => new Date(ms).toISOString();

function vm(patch: Partial<MicroVmRecord>): MicroVmRecord {
  return { ...microvmRecord('acct', { arn: 'cocoon:image:a:1.0', name: 'a', version: '1.0' }, 'mvm-1'), state: 'RUNNING', startedAt: iso(T0), lastActivityAt: iso(T0), ...patch };
}

test('a RUNNING VM is suspended after maxIdle without activity, not before', () => {
  const record = vm({ idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 30, autoResumeEnabled: true } });
  assert.equal(dueAction(record, { nowMs: T0 + 59_999, runningSinceMs: T0 }), undefined);
  assert.equal(dueAction(record, { nowMs: T0 + 60_000, runningSinceMs: T0 })?.action, 'suspend');
  assert.equal(dueAction(record, { nowMs: T0 + 60_000, runningSinceMs: T0, lastActivityMs: T0 + 1 }), undefined, 'activity in memory counts');
  assert.equal(dueAction(record, { nowMs: T0 + 90_000, runningSinceMs: T0 + 40_000 }), undefined, 'a resume counts as activity');
});

test('suspendedDurationSeconds 0: idle terminates instead of suspending', () => {
  const record = vm({ idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 0, autoResumeEnabled: true } });
  assert.equal(dueAction(record, { nowMs: T0 + 60_000, runningSinceMs: T0 })?.action, 'terminate');
});

test('a SUSPENDED VM is terminated after suspendedDurationSeconds', () => {
  const record = vm({ state: 'SUSPENDED', suspendedAt: iso(T0), idlePolicy: { maxIdleDurationSeconds: 60, suspendedDurationSeconds: 30, autoResumeEnabled: true } });
  assert.equal(dueAction(record, { nowMs: T0 + 29_000 }), undefined);
  assert.equal(dueAction(record, { nowMs: T0 + 30_000 })?.action, 'terminate');
});

test('the maximum duration counts running time only, across resumes', () => {
  const record = vm({ runningSeconds: 100, maximumDurationInSeconds: 160 });
  assert.equal(runningSecondsOf(record, { nowMs: T0 + 30_000, runningSinceMs: T0 }), 130);
  assert.equal(dueAction(record, { nowMs: T0 + 59_000, runningSinceMs: T0, lastActivityMs: T0 + 58_000 }), undefined);
  assert.deepEqual(dueAction(record, { nowMs: T0 + 60_000, runningSinceMs: T0, lastActivityMs: T0 + 59_000 })?.action, 'terminate');
});

test('nothing is due for a VM this daemon does not run, nor in other states', () => {
  assert.equal(dueAction(vm({}), { nowMs: T0 + 10 ** 9 }), undefined);
  for (const state of ['PENDING', 'SUSPENDING', 'RESUMING', 'TERMINATING', 'TERMINATED', 'FAILED'] as const) {
    assert.equal(dueAction(vm({ state }), { nowMs: T0 + 10 ** 9, runningSinceMs: T0 }), undefined, state);
  }
});
