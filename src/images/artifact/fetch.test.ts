/**
 * fetchArtifact from local paths and from a real S3 wire protocol (s3rver on loopback, port 0).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { after, before, test } from 'node:test';
import { isAppError, type ErrorCode } from '../../errors/errors.ts';
import { fetchArtifact, parseArtifactUri, storeUploadedArtifact, type S3Config } from './fetch.ts';
import { startTestS3, type TestS3 } from './test-s3.ts';
import { buildZip } from './test-zip.ts';

const dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-fetch-test-'));
const zip = buildZip([{ name: 'Dockerfile', data: 'FROM debian:12\n' }]);
const zipSha256 = createHash('sha256').update(zip).digest('hex');
let server: TestS3;
let s3: S3Config;

before(async () => {
  server = await startTestS3(dir, ['artifacts']);
  s3 = server.config;
  await server.put('artifacts', 'apps/hello world.zip', zip);
});

after(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

async function assertCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isAppError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

let workDirs = 0;
const newWorkDir = (): string => path.join(dir, `work-${++workDirs}`);

test('fetches s3://bucket/key into workDir with its sha256', async () => {
  const workDir = newWorkDir();
  const fetched = await fetchArtifact('s3://artifacts/apps/hello world.zip', { workDir, s3 });
  assert.equal(fetched.sha256, zipSha256);
  assert.equal(fetched.sizeBytes, zip.length);
  assert.equal(fetched.zipPath, path.join(workDir, `artifact-${zipSha256}.zip`));
  assert.deepEqual(await readFile(fetched.zipPath), zip);
});

test('a missing S3 key or bucket is artifact.not_found, with the uri', async () => {
  await assert.rejects(fetchArtifact('s3://artifacts/nope.zip', { workDir: newWorkDir(), s3 }), (error: unknown) => {
    assert.ok(isAppError(error, 'artifact.not_found'));
    assert.equal(error.details.uri, 's3://artifacts/nope.zip');
    return true;
  });
  await assertCode(fetchArtifact('s3://no-such-bucket/app.zip', { workDir: newWorkDir(), s3 }), 'artifact.not_found');
});

test('an S3 object above the size limit is refused and nothing is kept', async () => {
  const workDir = newWorkDir();
  await assertCode(fetchArtifact('s3://artifacts/apps/hello world.zip', { workDir, s3, maxCompressedBytes: 10 }),
    'artifact.too_large');
  assert.deepEqual(await readdir(workDir).catch(() => []), []);
});

test('other S3 errors (bad credentials, unreachable endpoint) are artifact.fetch_failed', async () => {
  const badKey = { ...s3, accessKeyId: 'WRONG' }; // s3rver checks the key id: 403 InvalidAccessKeyId
  await assertCode(fetchArtifact('s3://artifacts/apps/hello world.zip', { workDir: newWorkDir(), s3: badKey }),
    'artifact.fetch_failed');
  const closed = { ...s3, endpoint: 'http://127.0.0.1:9' }; // discard port: nothing listens on loopback
  await assertCode(fetchArtifact('s3://artifacts/app.zip', { workDir: newWorkDir(), s3: closed, timeoutMs: 5_000 }),
    'artifact.fetch_failed');
});

test('fetches local paths: relative, absolute and file://', async () => {
  const local = path.join(dir, 'app.zip');
  await writeFile(local, zip);
  for (const uri of [path.relative(process.cwd(), local), local, pathToFileURL(local).href]) {
    const fetched = await fetchArtifact(uri, { workDir: newWorkDir() });
    assert.equal(fetched.sha256, zipSha256, uri);
    assert.deepEqual(await readFile(fetched.zipPath), zip);
  }
});

test('local refusals: missing file, directory, too large', async () => {
  await assertCode(fetchArtifact(path.join(dir, 'missing.zip'), { workDir: newWorkDir() }), 'artifact.not_found');
  await assertCode(fetchArtifact('./missing/app.zip', { workDir: newWorkDir() }), 'artifact.not_found');
  await assertCode(fetchArtifact(dir, { workDir: newWorkDir() }), 'artifact.not_found');
  const local = path.join(dir, 'big.zip');
  await writeFile(local, Buffer.alloc(2048));
  await assertCode(fetchArtifact(local, { workDir: newWorkDir(), maxCompressedBytes: 1024 }), 'artifact.too_large');
});

test('unsupported URIs', async () => {
  for (const uri of ['http://x/y.zip', 'https://example.com/app.zip', 'ftp://x/y', 's3://bucket-only', 's3:///key', '']) {
    await assertCode(fetchArtifact(uri, { workDir: newWorkDir() }), 'artifact.unsupported_uri');
  }
  assert.deepEqual(parseArtifactUri('s3://b/a/b c.zip'), { kind: 's3', bucket: 'b', key: 'a/b c.zip' });
});

test('uploads are stored like fetched artifacts, and cut off above the limit', async () => {
  const workDir = newWorkDir();
  const stored = await storeUploadedArtifact(Readable.from([zip.subarray(0, 10), zip.subarray(10)]), workDir);
  assert.equal(stored.sha256, zipSha256);
  assert.equal(stored.sizeBytes, zip.length);

  const endless = Readable.from((function* () { for (;;) yield Buffer.alloc(64 * 1024); })());
  await assertCode(storeUploadedArtifact(endless, workDir, { maxCompressedBytes: 1024 * 1024 }), 'artifact.too_large');
  assert.deepEqual(await readdir(workDir), [path.basename(stored.zipPath)], 'no partial file is left');

  const broken = new Readable({ read() { this.destroy(new Error('client went away')); } });
  await assertCode(storeUploadedArtifact(broken, workDir), 'artifact.fetch_failed');
});
