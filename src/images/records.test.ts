import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { ImageRecords } from './records.ts';

const dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-records-'));
after(() => rm(dir, { recursive: true, force: true }));
const fields = { codeArtifact: { uri: './a.zip' }, appPort: 8080, hooksPort: 9000, readinessTimeoutSeconds: 60, memoryMiB: 128 };

test('each create of a name adds a major version; concurrent creates get distinct versions', async () => {
  const records = new ImageRecords(dir);
  const versions = await Promise.all([1, 2, 3].map(() => records.createVersion({ name: 'web', ...fields })));
  assert.deepEqual(versions.map((r) => r.version).sort(), ['1.0', '2.0', '3.0']);
  assert.equal(versions.find((r) => r.version === '2.0')!.arn, 'cocoon:image:web:2.0');
  assert.ok(versions.every((r) => r.state === 'CREATING'));
});

test('get without a version returns the latest ACTIVE one', async () => {
  const records = new ImageRecords(dir);
  await assert.rejects(records.get('web'), (e) => isAppError(e, 'image.not_found'));
  for (const version of ['1.0', '2.0']) {
    const record = await records.get('web', version);
    record.state = 'ACTIVE';
    await records.save(record);
  }
  assert.equal((await records.get('web')).version, '2.0');
  await assert.rejects(records.get('web', '9.0'), (e) => isAppError(e, 'image.not_found'));
  await assert.rejects(records.get('../etc', '1.0'), (e) => isAppError(e, 'image.not_found'));
});

test('names are validated', async () => {
  const records = new ImageRecords(dir);
  for (const name of ['', 'UPPER', '../x', 'a'.repeat(64), 'has space']) {
    await assert.rejects(records.createVersion({ name, ...fields }), (e) => isAppError(e, 'config.invalid'), name);
  }
  assert.deepEqual(await records.names(), ['web']);
});
