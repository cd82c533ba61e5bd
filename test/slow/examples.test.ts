/**
 * The Debian examples (slow: apt-get inside the build VM through the egress proxy, minutes each):
 * each builds, launches from its snapshot and answers. `npm run test:slow`.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { httpGet, waitUntil } from '../../src/host/http-probe.ts';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import { loadConfig } from '../../src/config/config.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import { startImageService, type ImageService } from '../../src/main/images.ts';

let engine: Engine;
let images: ImageService;
let workDir: string;

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-slow-'));
  engine = await startEngine({ config: loadConfig({ dataDir: path.join(workDir, 'data') }), debian: true, log: (line) => console.log(`# ${line}`) });
  images = await startImageService(engine, { dataDir: path.join(workDir, 'data'), s3: {} });
});

after(async () => {
  await images.close();
  await engine.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

for (const [example, expected] of [['flask', /hello from Flask/], ['node-ws', /hello from Node\.js/]] as const) {
  test(`the ${example} example builds, launches and answers`, async () => {
    const zipPath = path.join(workDir, `${example}.zip`);
    await zipDirectory(fileURLToPath(new URL(`../../examples/${example}`, import.meta.url)), zipPath);
    const log: string[] = [];
    const { done } = await images.builder.create(images.adminAccountId, { name: example, codeArtifactUri: zipPath }, (line) => log.push(line));
    const record = await done;
    assert.equal(record.state, 'ACTIVE', `${record.stateReason}\n${log.slice(-30).join('\n')}`);
    const template = await images.builder.templateOf(record);
    const vm = await engine.driver.launch(template, path.join(workDir, `${example}-vm`));
    try {
      await waitUntil(async () => expected.test((await httpGet(vm.hostPort(8080), '/')).body), 60_000, 100);
    } finally {
      await engine.driver.stop(vm);
    }
  });
}
