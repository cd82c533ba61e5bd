import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ZERO_USAGE } from '../store/index.ts';
import { addDelta, runningDelta } from './usage.ts';

test('a running second counts at the baseline; CPU beyond the baseline vCPUs is burst', () => {
  assert.deepEqual(runningDelta(1, 0.1, 0.25), { baselineSeconds: 1, burstCpuSeconds: 0, suspendedSeconds: 0 });
  assert.deepEqual(runningDelta(2, 1.5, 0.25), { baselineSeconds: 2, burstCpuSeconds: 1, suspendedSeconds: 0 });
});

test('deltas add up; the snapshot size is a measurement that replaces the last one', () => {
  const once = addDelta(ZERO_USAGE, { baselineSeconds: 1, burstCpuSeconds: 0.5, suspendedSeconds: 0 });
  const twice = addDelta(once, { baselineSeconds: 0, burstCpuSeconds: 0, suspendedSeconds: 3, snapshotBytes: 100 });
  assert.deepEqual(addDelta(twice, { baselineSeconds: 0, burstCpuSeconds: 0, suspendedSeconds: 1, snapshotBytes: 80 }),
    { baselineSeconds: 1, burstCpuSeconds: 0.5, suspendedSeconds: 4, snapshotBytes: 80 });
  assert.deepEqual(ZERO_USAGE, { baselineSeconds: 0, burstCpuSeconds: 0, suspendedSeconds: 0, snapshotBytes: 0 });
});
