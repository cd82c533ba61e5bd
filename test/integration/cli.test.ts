/**
 * The `cocoon` CLI as a user runs it: a child process (`node --import tsx src/cli/main.ts`) against
 * the real API (real engine, image service and SQLite file) on a loopback port. Checks the upload
 * of a directory with --wait, --query/--output, and that exit codes are the registry's.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/index.ts';
import { loadConfig } from '../../src/config/config.ts';
import { CocoonApiError, CocoonClient } from '../../src/client/index.ts';
import { errorCodes } from '../../src/errors/errors.ts';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import { startImageService, type ImageService } from '../../src/main/images.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const EXAMPLE = path.join(ROOT, 'examples/tiny-httpd');
const CLI_TIMEOUT_MS = 240_000;

let engine: Engine;
let images: ImageService;
let app: FastifyInstance;
let workDir: string;
let endpoint: string;
let adminKey: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI with only the variables it needs (no inherited COCOON_*), from the repository root. */
function cli(args: string[], env: Record<string, string> = { COCOON_ENDPOINT: endpoint, COCOON_API_KEY: adminKey }): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', COCOON_DATA_DIR: path.join(workDir, 'no-such-dir'), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), CLI_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-cli-'));
  const dataDir = path.join(workDir, 'data');
  engine = await startEngine({ config: loadConfig({ dataDir }), log: (line) => console.log(`# ${line}`) });
  images = await startImageService(engine, { dataDir, s3: {} });
  adminKey = (await readFile(path.join(dataDir, 'admin-api-key'), 'utf8')).trim();
  app = buildApi({ images, uploadDir: path.join(workDir, 'uploads') });
  await app.listen({ host: '127.0.0.1', port: 0 });
  endpoint = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

after(async () => {
  await app?.close();
  await images?.close();
  await engine?.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

describe('the cocoon CLI against the real API', () => {
  test('create-microvm-image uploads a directory as a zip; --wait follows the build and ends ACTIVE', async () => {
    const run = await cli(['create-microvm-image', '--name', 'tiny-httpd', '--code-artifact', `uri=${EXAMPLE}`, '--memory-mib', '128', '--wait']);
    assert.equal(run.code, 0, run.stderr);
    const image = JSON.parse(run.stdout) as { name: string; version: string; state: string; codeArtifact: { uri: string } };
    assert.equal(image.state, 'ACTIVE');
    assert.equal(image.name, 'tiny-httpd');
    assert.equal(image.version, '1.0');
    assert.match(image.codeArtifact.uri, /^upload:/, 'the directory went through the upload route');
    assert.match(run.stderr, /build \| .*\[1\/3\] WORKDIR/, 'the build log is followed on stderr');
  });

  test('get-microvm-image --query state --output text prints ACTIVE', async () => {
    const run = await cli(['get-microvm-image', '--image-identifier', 'tiny-httpd', '--query', 'state', '--output', 'text']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'ACTIVE\n');
    const pinned = await cli(['get-microvm-image', '--image-identifier', 'tiny-httpd:1.0', '--query', '[name, version]', '--output', 'text']);
    assert.equal(pinned.stdout, 'tiny-httpd\t1.0\n');
  });

  test('list-microvm-images --output table shows the image; versions and logs answer', async () => {
    const run = await cli(['list-microvm-images', '--output', 'table']);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^\|\s+images\s+\|$/m);
    assert.match(run.stdout, /\| tiny-httpd \| 1\.0 /);
    const versions = await cli(['list-microvm-image-versions', '--image-identifier', 'tiny-httpd', '--query', 'versions[].version']);
    assert.deepEqual(JSON.parse(versions.stdout), ['1.0']);
    const logs = await cli(['logs', '--image-identifier', 'tiny-httpd']);
    assert.equal(logs.code, 0, logs.stderr);
    assert.match(logs.stdout, /\[3\/3\] RUN/);
  });

  test('a missing image exits with the registry exit code of image.not_found, the code on stderr', async () => {
    for (const args of [['get-microvm-image', '--image-identifier', 'nope'], ['delete-microvm-image', '--image-identifier', 'tiny-httpd', '--image-version', '9.0']]) {
      const run = await cli(args);
      assert.equal(run.code, errorCodes['image.not_found'].exitCode, run.stderr);
      assert.match(run.stderr, /^cocoon: image\.not_found: /m);
      assert.equal(run.stdout, '');
    }
  });

  test('a wrong API key exits with the code of auth.invalid_key; usage mistakes exit 2 without a request', async () => {
    const wrong = await cli(['list-microvm-images'], { COCOON_ENDPOINT: endpoint, COCOON_API_KEY: `ck_${'A'.repeat(43)}` });
    assert.equal(wrong.code, errorCodes['auth.invalid_key'].exitCode, wrong.stderr);
    assert.match(wrong.stderr, /auth\.invalid_key/);
    assert.ok(!wrong.stderr.includes(adminKey));
    for (const args of [['get-microvm-image'], ['list-microvm-images', '--output', 'yaml'], ['list-microvm-images', '--query', '[[['], ['no-such-command'],
      ['create-microvm-image', '--name', 'x', '--code-artifact', `uri=${path.join(workDir, 'missing.zip')}`]]) {
      const run = await cli(args);
      assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
    }
    assert.deepEqual(await images.store.images.names(images.adminAccountId), ['tiny-httpd']);
  });

  test('a build that FAILS: --wait prints the FAILED record and exits with the code of its reason', async () => {
    const bad = path.join(workDir, 'bad-app');
    await mkdir(bad, { recursive: true });
    await writeFile(path.join(bad, 'Dockerfile'), 'FROM cocoon/tiny\nHEALTHCHECK CMD true\n');
    const run = await cli(['create-microvm-image', '--name', 'bad', '--code-artifact', `uri=${bad}`, '--wait']);
    const image = JSON.parse(run.stdout) as { state: string; stateReasonCode?: string };
    assert.equal(image.state, 'FAILED');
    const code = image.stateReasonCode as keyof typeof errorCodes;
    assert.ok(code in errorCodes, `${code} is a registered code`);
    assert.equal(run.code, errorCodes[code].exitCode, run.stderr);
    assert.notEqual(run.code, 0);
    assert.match(run.stderr, new RegExp(`^cocoon: ${code.replace('.', '\\.')}: bad:1\\.0 FAILED`, 'm'));
    const followed = await cli(['logs', '--image-identifier', 'bad', '--follow']);
    assert.equal(followed.code, errorCodes[code].exitCode, followed.stderr);
  });
});

describe('the SDK against the real API', () => {
  test('upload from a Buffer, follow the live log to the end, then the typed error of a missing version', async () => {
    const client = new CocoonClient({ endpoint, apiKey: adminKey });
    const zip = path.join(workDir, 'sdk.zip');
    await zipDirectory(EXAMPLE, zip);
    const created = await client.uploadImage('tiny-httpd', await readFile(zip), { memoryMiB: 128, buildArgs: { GREETING: 'sdk' } });
    assert.equal(created.state, 'CREATING');
    assert.equal(created.version, '2.0');
    const lines: string[] = [];
    const end = await client.followBuildLogs('tiny-httpd', '2.0', (line) => lines.push(line));
    assert.deepEqual(end, { state: 'ACTIVE' });
    assert.ok(lines.some((line) => line.includes('[3/3] RUN')), lines.join('\n'));
    assert.equal((await client.buildLogs('tiny-httpd', '2.0')).trimEnd().split('\n').length, lines.length);
    assert.deepEqual((await client.listImageVersions('tiny-httpd')).versions.map((v) => v.version), ['1.0', '2.0']);

    const missing = await client.getImage('tiny-httpd', '7.0').catch((error: unknown) => error);
    assert.ok(missing instanceof CocoonApiError);
    assert.equal(missing.code, 'image.not_found');
    assert.equal(missing.status, 404);
    const unknownField = await client.createImage({ name: 'x', codeArtifact: { uri: 's3://b/k' }, ...({ extra: 1 } as object) }).catch((error: unknown) => error);
    assert.ok(unknownField instanceof CocoonApiError);
    assert.equal(unknownField.code, 'request.unknown_field');
    assert.deepEqual(unknownField.details.fields, ['extra']);
    const anonymous = await new CocoonClient({ endpoint }).listImages().catch((error: unknown) => error);
    assert.equal((anonymous as CocoonApiError).code, 'auth.missing_key');
  });
});
