/**
 * The runtime hooks with an app that serves them (examples/hooks): `ready` during the build, then
 * `run` with the caller's payload, `suspend`, `resume` and `terminate` in lifecycle order. The
 * payload (a secret) must reach the app and never be stored or logged by Cocoon.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { httpGet } from '../../src/host/http-probe.ts';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import type { Engine } from '../../src/main/engine.ts';
import type { ImageService } from '../../src/main/images.ts';
import { MicroVmManager } from '../../src/vms/manager.ts';
import { startApiFixture } from './api-fixture.ts';

const EXAMPLE = fileURLToPath(new URL('../../examples/hooks', import.meta.url));
const SECRET = `per-vm-secret-${process.pid}-${Date.now()}`;

let engine: Engine;
let images: ImageService;
let microvms: MicroVmManager;
let workDir: string;
let dataDir: string;
const lines: string[] = [];

before(async () => {
  ({ workDir, dataDir, engine, images } = await startApiFixture('cocoon-hooks-'));
  microvms = new MicroVmManager({ driver: engine.driver, store: images.store, builder: images.builder, dataDir, log: (line) => lines.push(line) }, { hookTimeoutMs: 10_000 });
  const zip = path.join(workDir, 'hooks.zip');
  await zipDirectory(EXAMPLE, zip);
  const { done } = await images.builder.create(images.adminAccountId, { name: 'hooks', codeArtifactUri: zip, memoryMiB: 128 });
  const image = await done;
  assert.equal(image.state, 'ACTIVE', image.stateReason);
});

after(async () => {
  for (const record of await images.store.microvms.listByState(['RUNNING', 'SUSPENDED'])) {
    await microvms.terminate(record.accountId, record.microvmId).catch(() => {});
  }
  await microvms?.close();
  await images?.close();
  await engine?.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

async function hooksSeen(localPort: number): Promise<string[]> {
  const answer = await httpGet(localPort, '/hooks.log', 10_000);
  assert.equal(answer.status, 200);
  return answer.body.split('\n').filter((line) => line !== '');
}

test('ready at build, run with the payload, suspend, resume reach the app once each, in order; no hook fails', { timeout: 300_000 }, async () => {
  const account = images.adminAccountId;
  const ran = await microvms.run(account, { imageIdentifier: 'hooks', runHookPayload: { apiToken: SECRET, tenant: 'acme' } });
  const id = ran.record.microvmId;
  assert.ok(ran.localPort);
  const afterRun = await hooksSeen(ran.localPort);
  assert.match(afterRun[0]!, /^GET \/cocoon\/runtime\/v1\/ready/, 'the build waited for the ready hook');
  assert.deepEqual(afterRun.slice(1), [`POST /cocoon/runtime/v1/run {"apiToken":"${SECRET}","tenant":"acme"}`]);

  await microvms.suspend(account, id);
  const resumed = await microvms.resume(account, id);
  assert.ok(resumed.localPort);
  assert.deepEqual((await hooksSeen(resumed.localPort)).slice(2), ['POST /cocoon/runtime/v1/suspend {}', 'POST /cocoon/runtime/v1/resume {}'],
    'the suspend hook ran before the save (its line survived in the saved state), resume after the restore');

  await microvms.terminate(account, id);
  assert.deepEqual(lines.filter((line) => /hook (failed|answered)/.test(line)), [], 'every hook answered 2xx');

  // Never stored: neither in the SQLite file (and its WAL) nor anywhere else in the data directory's files we write.
  for (const file of (await readdir(dataDir)).filter((name) => name.startsWith('cocoon.db'))) {
    assert.ok(!(await readFile(path.join(dataDir, file))).includes(SECRET), `${file} holds the run hook payload`);
  }
  assert.ok(!lines.join('\n').includes(SECRET), 'the payload was logged');
});
