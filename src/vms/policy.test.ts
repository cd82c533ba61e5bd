import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { DEFAULT_IDLE_POLICY, parseImageIdentifier, resolvePolicy } from './policy.ts';

test('defaults: the default idle policy and 28800 s', () => {
  assert.deepEqual(resolvePolicy({}), { idlePolicy: DEFAULT_IDLE_POLICY, maximumDurationInSeconds: 28_800 });
  assert.equal(resolvePolicy({ idlePolicy: { suspendedDurationSeconds: 0 } }).idlePolicy.suspendedDurationSeconds, 0);
});

test('bounds: maxIdle ≥ 60, suspended ≥ 0, maximum duration ≤ 28800, whole numbers', () => {
  const invalid = [
    { idlePolicy: { maxIdleDurationSeconds: 59 } }, { idlePolicy: { maxIdleDurationSeconds: 60.5 } }, { idlePolicy: { suspendedDurationSeconds: -1 } },
    { maximumDurationInSeconds: 28_801 }, { maximumDurationInSeconds: 0 }, { idlePolicy: { maxIdleDurationSeconds: 28_801 } },
  ];
  for (const input of invalid) assert.throws(() => resolvePolicy(input), (e) => isAppError(e, 'config.invalid'), JSON.stringify(input));
  assert.equal(resolvePolicy({ idlePolicy: { maxIdleDurationSeconds: 60 } }).idlePolicy.maxIdleDurationSeconds, 60);
});

test('the daemon (not the API) may lower the minimum for tests', () => {
  assert.equal(resolvePolicy({ idlePolicy: { maxIdleDurationSeconds: 2 }, maximumDurationInSeconds: 3 }, { minimumSeconds: 1 }).maximumDurationInSeconds, 3);
});

test('image identifiers: name, name:version, arn', () => {
  assert.deepEqual(parseImageIdentifier('web'), { name: 'web' });
  assert.deepEqual(parseImageIdentifier('web:2.0'), { name: 'web', version: '2.0' });
  assert.deepEqual(parseImageIdentifier('cocoon:image:web:1.0'), { name: 'web', version: '1.0' });
  for (const bad of ['', 'web:', ':1.0', 'a:b:c']) assert.throws(() => parseImageIdentifier(bad), (e) => isAppError(e, 'image.not_found'), bad);
});
