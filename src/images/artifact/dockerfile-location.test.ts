import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { isAppError } from '../../errors/errors.ts';
import { locateDockerfile } from './dockerfile-location.ts';
import { buildZip } from './test-zip.ts';
import { extractZip, type ExtractedArtifact } from './unzip.ts';

const rootDir = '/work/ctx';
const artifact = (paths: string[], directories: string[] = []): ExtractedArtifact => ({
  rootDir,
  files: paths.map((p) => ({ path: p, sizeBytes: 1, mode: 0o644 })),
  directories,
  totalBytes: paths.length,
});

test('finds the Dockerfile at the root or at a given relative path', () => {
  assert.equal(locateDockerfile(artifact(['Dockerfile', 'app.js'])), '/work/ctx/Dockerfile');
  assert.equal(locateDockerfile(artifact(['docker/prod.Dockerfile']), 'docker/prod.Dockerfile'),
    '/work/ctx/docker/prod.Dockerfile');
  assert.equal(locateDockerfile(artifact(['docker/Dockerfile']), './docker/Dockerfile'), '/work/ctx/docker/Dockerfile');
});

test('a missing Dockerfile lists the first 20 root names', () => {
  const paths = Array.from({ length: 25 }, (_, i) => `file-${String(i).padStart(2, '0')}.txt`);
  assert.throws(() => locateDockerfile(artifact([...paths, 'src/index.js'], ['assets'])), (error: unknown) => {
    assert.ok(isAppError(error, 'artifact.no_dockerfile'));
    assert.equal((error.details.rootEntries as string[]).length, 20);
    assert.equal(error.details.rootEntryCount, 27);
    assert.match(error.message, /its root contains: assets\/, file-00\.txt, .* \(and 7 more\)/);
    return true;
  });
});

test('hints at the two usual mistakes', () => {
  assert.throws(() => locateDockerfile(artifact(['myapp/Dockerfile', 'myapp/app.js'])),
    /zip the contents of "myapp\/", not the folder itself/);
  assert.throws(() => locateDockerfile(artifact(['dockerfile'])), /found "dockerfile": names are case-sensitive/);
  assert.throws(() => locateDockerfile(artifact([])), /the zip is empty/);
});

test('the Dockerfile path itself cannot escape the artifact', () => {
  for (const bad of ['../Dockerfile', '/etc/Dockerfile', 'a\\Dockerfile']) {
    assert.throws(() => locateDockerfile(artifact(['Dockerfile']), bad),
      (error: unknown) => isAppError(error, 'artifact.unsafe_path'));
  }
});

test('an extracted zip without a Dockerfile is refused', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-dockerfile-test-'));
  after(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'app.zip'), buildZip([{ name: 'app.js', data: 'x' }, { name: 'lib/' }]));
  const extracted = await extractZip(path.join(dir, 'app.zip'), path.join(dir, 'ctx'));
  assert.throws(() => locateDockerfile(extracted), (error: unknown) => {
    assert.ok(isAppError(error, 'artifact.no_dockerfile'));
    assert.deepEqual(error.details.rootEntries, ['app.js', 'lib/']);
    return true;
  });
});
