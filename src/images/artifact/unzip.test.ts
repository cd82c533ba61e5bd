/**
 * extractZip against zips built in the test: the happy path keeps layout and the executable bit;
 * every hostile or broken zip is refused with a stable code, and leaves neither destDir nor a
 * temp dir behind.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { isAppError, type ErrorCode } from '../../errors/errors.ts';
import { extractZip, type ZipLimits } from './unzip.ts';
import { buildZip, unixDir, unixFile, unixSymlink, type ZipEntrySpec } from './test-zip.ts';

const root = await mkdtemp(path.join(os.tmpdir(), 'cocoon-unzip-test-'));
after(() => rm(root, { recursive: true, force: true }));
let cases = 0;

/** Writes the zip in its own dir and returns an empty parent for the destination. */
async function prepare(zip: Buffer): Promise<{ zipPath: string; parent: string; destDir: string }> {
  const caseDir = path.join(root, `case-${++cases}`);
  const zipPath = path.join(root, `case-${cases}.zip`);
  await writeFile(zipPath, zip);
  return { zipPath, parent: caseDir, destDir: path.join(caseDir, 'out') };
}

async function assertRefused(
  entries: ZipEntrySpec[] | Buffer,
  code: ErrorCode,
  options: { limits?: Partial<ZipLimits>; messageIncludes?: string } = {},
): Promise<void> {
  const { zipPath, parent, destDir } = await prepare(Array.isArray(entries) ? buildZip(entries) : entries);
  await assert.rejects(extractZip(zipPath, destDir, options.limits), (error: unknown) => {
    assert.ok(isAppError(error, code), `expected ${code}, got ${String(error)}`);
    if (options.messageIncludes) assert.match(error.message, new RegExp(escapeRegExp(options.messageIncludes)));
    return true;
  });
  // Neither the destination nor a temp dir beside it survives a refusal.
  assert.deepEqual(await readdir(parent), []);
}

const escapeRegExp = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const dockerfile: ZipEntrySpec = { name: 'Dockerfile', data: 'FROM debian:12\n' };

test('extracts nested dirs, empty dirs, and keeps only the executable bit', async () => {
  const { zipPath, destDir } = await prepare(buildZip([
    dockerfile,
    { name: 'bin/', unixMode: unixDir(0o700) },
    { name: 'bin/run.sh', data: '#!/bin/sh\necho hi\n', unixMode: unixFile(0o755) },
    { name: 'bin/setuid-tool', data: 'x', unixMode: unixFile(0o4755 | 0o2000) },
    { name: 'src/lib/util.js', data: 'export const x = 1;\n'.repeat(100), method: 'deflate', unixMode: unixFile(0o600) },
    { name: 'windows.txt', data: 'made on windows', externalAttributes: 0x20 },
    { name: 'empty/' },
    { name: 'data/nested/' },
    { name: './dot/file.txt', data: 'dot' },
  ]));
  const extracted = await extractZip(zipPath, destDir);

  assert.equal(extracted.rootDir, destDir);
  assert.deepEqual(extracted.files.map((f) => [f.path, f.mode]), [
    ['Dockerfile', 0o644],
    ['bin/run.sh', 0o755],
    ['bin/setuid-tool', 0o755],
    ['dot/file.txt', 0o644],
    ['src/lib/util.js', 0o644],
    ['windows.txt', 0o644],
  ]);
  assert.deepEqual(extracted.directories, ['bin', 'data', 'data/nested', 'dot', 'empty', 'src', 'src/lib']);
  assert.equal(extracted.totalBytes, extracted.files.reduce((sum, f) => sum + f.sizeBytes, 0));
  assert.equal(await readFile(path.join(destDir, 'src/lib/util.js'), 'utf8'), 'export const x = 1;\n'.repeat(100));

  const modeOf = async (relative: string): Promise<number> => (await stat(path.join(destDir, relative))).mode & 0o7777;
  assert.equal(await modeOf('.'), 0o755);
  assert.equal(await modeOf('bin/run.sh'), 0o755);
  assert.equal(await modeOf('bin/setuid-tool'), 0o755, 'setuid/setgid bits are dropped');
  assert.equal(await modeOf('src/lib/util.js'), 0o644);
  assert.equal(await modeOf('bin'), 0o755);
  assert.equal(await modeOf('empty'), 0o755);
  assert.deepEqual(await readdir(path.join(destDir, 'empty')), []);
  assert.deepEqual(await readdir(path.dirname(destDir)), ['out'], 'no temp dir left beside destDir');
});

test('small, highly compressible files pass the ratio check', async () => {
  const { zipPath, destDir } = await prepare(buildZip([
    dockerfile,
    { name: 'zeros.bin', data: Buffer.alloc(512 * 1024), method: 'deflate' },
  ]));
  const extracted = await extractZip(zipPath, destDir);
  assert.equal(extracted.files.find((f) => f.path === 'zeros.bin')?.sizeBytes, 512 * 1024);
});

test('refuses to extract over an existing destination', async () => {
  const { zipPath, destDir } = await prepare(buildZip([dockerfile]));
  await extractZip(zipPath, destDir);
  await assert.rejects(extractZip(zipPath, destDir), /already exists/);
});

for (const name of ['../evil', 'a/../../evil', 'a/b/..', '/etc/passwd', 'C:\\x', 'C:/x', '..\\evil', 'a\\..\\..\\evil', 'nul\0byte']) {
  test(`refuses unsafe path ${JSON.stringify(name)}`, async () => {
    await assertRefused([dockerfile, { name, data: 'x' }], 'artifact.unsafe_path',
      { messageIncludes: `zip entry "${name.replace('\0', '\\x00')}"` });
  });
}

test('refuses a path longer than the limit', async () => {
  await assertRefused([{ name: `${'a/'.repeat(60)}f`, data: 'x' }], 'artifact.unsafe_path', { limits: { maxPathLength: 100 } });
});

test('refuses symlink entries', async () => {
  await assertRefused([dockerfile, { name: 'link', data: '/etc/passwd', unixMode: unixSymlink }], 'artifact.symlink',
    { messageIncludes: 'zip entry "link" is a symbolic link' });
});

test('refuses more entries than the limit', async () => {
  const entries = ['a', 'b', 'c', 'd'].map((name) => ({ name, data: name }));
  await assertRefused(entries, 'artifact.too_many_files', { limits: { maxEntries: 3 } });
});

test('refuses more uncompressed bytes than the limit', async () => {
  await assertRefused([dockerfile, { name: 'big.bin', data: Buffer.alloc(4096, 1) }], 'artifact.too_large',
    { limits: { maxTotalUncompressedBytes: 1024 }, messageIncludes: '"big.bin"' });
});

test('refuses a bomb whose real size exceeds what its header declares', async () => {
  await assertRefused([dockerfile, {
    name: 'bomb.bin', data: Buffer.alloc(3 * 2 ** 20), method: 'deflate', declaredUncompressedSize: 1000,
  }], 'artifact.invalid_zip', { messageIncludes: 'zip entry "bomb.bin" holds more data than its header declares' });
});

test('refuses an entry with a compression ratio above the limit', async () => {
  await assertRefused([dockerfile, { name: 'zeros.bin', data: Buffer.alloc(4 * 2 ** 20), method: 'deflate' }],
    'artifact.compression_ratio', { messageIncludes: 'zip entry "zeros.bin"' });
});

test('refuses a zip whose overall ratio is above the limit, even if each entry is small', async () => {
  const entries = Array.from({ length: 8 }, (_, i) => ({
    name: `part-${i}.bin`, data: Buffer.alloc(900 * 1024), method: 'deflate' as const,
  }));
  await assertRefused(entries, 'artifact.compression_ratio', { messageIncludes: 'overall compression ratio' });
});

test('refuses duplicate entries and a file used as a directory', async () => {
  await assertRefused([dockerfile, { name: 'Dockerfile', data: 'FROM evil' }], 'artifact.invalid_zip',
    { messageIncludes: 'conflicts with an earlier entry' });
  await assertRefused([dockerfile, { name: 'Dockerfile/x', data: 'x' }], 'artifact.invalid_zip');
});

test('refuses a corrupt entry (CRC-32 mismatch)', async () => {
  const zip = buildZip([{ name: 'Dockerfile', data: 'FROM debian:12\n' }]);
  const firstDataByte = 30 + 'Dockerfile'.length; // of the stored entry, right after its local header
  zip.writeUInt8(zip.readUInt8(firstDataByte) ^ 0xff, firstDataByte);
  await assertRefused(zip, 'artifact.invalid_zip', { messageIncludes: 'CRC-32 mismatch' });
});

test('refuses truncated and garbage zips', async () => {
  const zip = buildZip([dockerfile, { name: 'app.js', data: 'console.log(1)', method: 'deflate' }]);
  await assertRefused(zip.subarray(0, zip.length - 10), 'artifact.invalid_zip');
  await assertRefused(zip.subarray(0, 40), 'artifact.invalid_zip');
  await assertRefused(Buffer.from('this is not a zip file at all, just some text'), 'artifact.invalid_zip');
  await assertRefused(Buffer.alloc(0), 'artifact.invalid_zip');
});
