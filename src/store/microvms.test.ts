import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import type { Store } from './store.ts';
import { openStore } from './store.ts';
import { freshDbFile, imageFields, microvmRecord } from './test-support.ts';

async function setup(): Promise<{ store: Store; a: string; b: string; image: { arn: string; name: string; version: string } }> {
  const store = openStore(freshDbFile());
  const a = (await store.accounts.createAccount('a')).id;
  const b = (await store.accounts.createAccount('b')).id;
  const image = await store.images.createVersion(a, imageFields('web'));
  image.state = 'ACTIVE';
  await store.images.save(image);
  return { store, a, b, image };
}

const invalidState = (state: string | null) => (e: unknown) => isAppError(e, 'vm.invalid_state') && e.details.state === state;

test('a record round-trips; transition is a compare-and-set', async () => {
  const { store, a, image } = await setup();
  const record = microvmRecord(a, image, 'mvm-1');
  assert.deepEqual(await store.microvms.insert(record), record);
  assert.deepEqual(await store.microvms.getAny('mvm-1'), record);

  const running = await store.microvms.transition('mvm-1', ['PENDING'], 'RUNNING', { pid: 100, startedAt: '2024-01-01T00:00:00.000Z', endpoint: 'mvm-1.cocoon.localhost' });
  assert.equal(running.state, 'RUNNING');
  assert.equal(running.pid, 100);
  assert.ok(running.updatedAt >= record.updatedAt);
  assert.deepEqual(await store.microvms.get(a, 'mvm-1'), running);

  // A stale caller that still believes the VM is PENDING loses, and changes nothing.
  await assert.rejects(store.microvms.transition('mvm-1', ['PENDING'], 'TERMINATING', { pid: 1 }), invalidState('RUNNING'));
  assert.deepEqual(await store.microvms.get(a, 'mvm-1'), running);

  const suspended = await store.microvms.transition('mvm-1', ['RUNNING'], 'SUSPENDED', { pid: undefined, suspendedAt: '2024-01-01T00:01:00.000Z', stateReason: 'idle' });
  assert.equal('pid' in suspended, false);
  assert.equal(suspended.stateReason, 'idle');
  const resumed = await store.microvms.transition('mvm-1', ['SUSPENDED'], 'RUNNING', (vm) => ({ resumeCount: vm.resumeCount + 1, stateReason: undefined }));
  assert.equal(resumed.resumeCount, 1);
  assert.equal('stateReason' in (await store.microvms.getAny('mvm-1'))!, false);
  await assert.rejects(store.microvms.transition('mvm-nope', ['RUNNING'], 'SUSPENDING'), invalidState(null));
  store.close();
});

test('update changes non-state fields only, atomically', async () => {
  const { store, a, image } = await setup();
  await store.microvms.insert(microvmRecord(a, image, 'mvm-1'));
  const patch = { lastActivityAt: '2024-01-01T00:00:05.000Z', state: 'TERMINATED', accountId: 'acct-other', microvmId: 'mvm-2' } as never;
  const updated = await store.microvms.update('mvm-1', patch);
  assert.equal(updated.lastActivityAt, '2024-01-01T00:00:05.000Z');
  assert.deepEqual([updated.state, updated.accountId, updated.microvmId], ['PENDING', a, 'mvm-1']);
  await Promise.all(Array.from({ length: 5 }, () => store.microvms.update('mvm-1', (vm) => ({ runningSeconds: vm.runningSeconds + 10 }))));
  assert.equal((await store.microvms.getAny('mvm-1'))!.runningSeconds, 50);
  await assert.rejects(store.microvms.update('mvm-nope', {}), invalidState(null));
  store.close();
});

test('another account sees none of it', async () => {
  const { store, a, b, image } = await setup();
  await store.microvms.insert(microvmRecord(a, image, 'mvm-1'));
  assert.equal(await store.microvms.get(b, 'mvm-1'), undefined);
  assert.deepEqual(await store.microvms.list(b), []);
  assert.equal(await store.microvms.countActiveForImage(b, image.arn), 0);
  // B cannot launch from A's image either: it does not exist for B.
  await assert.rejects(store.microvms.insert(microvmRecord(b, image, 'mvm-2')), (e) => isAppError(e, 'image.not_found'));
  store.close();
});

test('list filters; listByState spans accounts; countActiveForImage ignores TERMINATED and FAILED', async () => {
  const { store, a, b, image } = await setup();
  const other = await store.images.createVersion(b, imageFields('api'));
  await store.microvms.insert(microvmRecord(a, image, 'mvm-1'));
  await store.microvms.insert(microvmRecord(a, image, 'mvm-2'));
  await store.microvms.insert(microvmRecord(a, image, 'mvm-3'));
  await store.microvms.insert(microvmRecord(b, other, 'mvm-4'));
  await store.microvms.transition('mvm-2', ['PENDING'], 'RUNNING');
  await store.microvms.transition('mvm-4', ['PENDING'], 'RUNNING');
  const ids = (vms: { microvmId: string }[]) => vms.map((vm) => vm.microvmId).sort();
  assert.deepEqual(ids(await store.microvms.list(a)), ['mvm-1', 'mvm-2', 'mvm-3']);
  assert.deepEqual(ids(await store.microvms.list(a, { state: 'RUNNING' })), ['mvm-2']);
  assert.deepEqual(ids(await store.microvms.list(a, { imageName: 'web', imageVersion: '1.0' })), ['mvm-1', 'mvm-2', 'mvm-3']);
  assert.deepEqual(ids(await store.microvms.list(a, { imageVersion: '2.0' })), []);
  assert.deepEqual(ids(await store.microvms.listByState(['RUNNING'])), ['mvm-2', 'mvm-4']);
  assert.deepEqual(ids(await store.microvms.listByState(['PENDING', 'RUNNING'])), ['mvm-1', 'mvm-2', 'mvm-3', 'mvm-4']);
  assert.deepEqual(await store.microvms.listByState([]), []);

  assert.equal(await store.microvms.countActiveForImage(a, image.arn), 3);
  await store.microvms.transition('mvm-1', ['PENDING'], 'FAILED', { stateReason: 'boot failed' });
  await store.microvms.transition('mvm-2', ['RUNNING'], 'TERMINATING');
  await store.microvms.transition('mvm-3', ['PENDING'], 'TERMINATED');
  assert.equal(await store.microvms.countActiveForImage(a, image.arn), 1);
  store.close();
});
