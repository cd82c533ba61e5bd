/**
 * Auth tokens through the REST API and the CLI, over a real engine, image service, SQLite file and
 * one real MicroVM (tiny-httpd): mint with defaults and with ports, the token decrypted by the
 * service, tenancy, validation, key rotation (admin only), and refusal once the VM is terminated.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { buildApi } from '../../src/api/index.ts';
import { errorCodes } from '../../src/errors/errors.ts';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import type { Engine } from '../../src/main/engine.ts';
import type { ImageService } from '../../src/main/images.ts';
import { TokenService } from '../../src/tokens/index.ts';
import { MicroVmManager } from '../../src/vms/manager.ts';
import { isLiveQemu, startApiFixture } from './api-fixture.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const EXAMPLE = path.join(ROOT, 'examples/tiny-httpd');
const CLI_TIMEOUT_MS = 120_000;

type Minted = { authToken: { 'X-Cocoon-Auth': string }; expiresAt: string; allowedPorts: unknown[] };

let engine: Engine;
let images: ImageService;
let microvms: MicroVmManager;
let tokens: TokenService;
let app: FastifyInstance;
let workDir: string;
let adminKey: string;
let otherKey: string;
let endpoint: string;
let microvmId: string;
let pid: number | undefined;

before(async () => {
  let dataDir: string;
  ({ workDir, dataDir, engine, images, adminKey, otherKey } = await startApiFixture('cocoon-tokens-'));
  microvms = new MicroVmManager({ driver: engine.driver, store: images.store, builder: images.builder, dataDir, log: (line) => console.log(`# ${line}`) });
  tokens = await TokenService.open(dataDir);
  app = buildApi({ images, microvms, tokens });
  await app.listen({ host: '127.0.0.1', port: 0 });
  endpoint = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const zip = path.join(workDir, 'tiny-httpd.zip');
  await zipDirectory(EXAMPLE, zip);
  const image = await (await images.builder.create(images.adminAccountId, { name: 'tiny-httpd', codeArtifactUri: zip, memoryMiB: 128 })).done;
  assert.equal(image.state, 'ACTIVE', image.stateReason);
  const vm = await microvms.run(images.adminAccountId, { imageIdentifier: 'tiny-httpd' });
  microvmId = vm.record.microvmId;
  pid = (await images.store.microvms.getAny(microvmId))?.pid;
});

after(async () => {
  const record = microvmId === undefined ? undefined : await images.store.microvms.getAny(microvmId);
  if (record && record.state !== 'TERMINATED') await microvms.terminate(record.accountId, microvmId).catch((error) => console.log(`# teardown: ${String(error)}`));
  if (pid !== undefined && isLiveQemu(pid)) process.kill(pid, 'SIGKILL');
  await microvms?.close();
  await app?.close();
  await images?.close();
  await engine?.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

async function call(options: InjectOptions, key = adminKey): Promise<LightMyRequestResponse> {
  return app.inject({ ...options, headers: { authorization: `Bearer ${key}`, ...options.headers } });
}

async function mint(body?: Record<string, unknown>, key = adminKey, id = microvmId): Promise<LightMyRequestResponse> {
  return call({ method: 'POST', url: `/v1/microvms/${id}/auth-token`, ...(body !== undefined && { payload: body }) }, key);
}

function codeOf(response: LightMyRequestResponse): string | undefined {
  return (JSON.parse(response.body) as { error?: { code?: string } }).error?.code;
}

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', COCOON_ENDPOINT: endpoint, COCOON_API_KEY: adminKey, COCOON_DATA_DIR: path.join(workDir, 'none') };
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: ROOT, env, timeout: CLI_TIMEOUT_MS });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: number; stdout: string; stderr: string };
    return { code: typeof failed.code === 'number' ? failed.code : -1, stdout: failed.stdout, stderr: failed.stderr };
  }
}

describe('auth tokens over the API', () => {
  test('POST …/auth-token with no body: 201, 60 minutes, the app port only; the service decrypts it', async () => {
    const before = Date.now();
    const response = await mint();
    assert.equal(response.statusCode, 201, response.body);
    assert.equal(response.headers['cache-control'], 'no-store');
    const minted = JSON.parse(response.body) as Minted;
    assert.deepEqual(Object.keys(minted).sort(), ['allowedPorts', 'authToken', 'expiresAt']);
    assert.deepEqual(minted.allowedPorts, [{ port: 8080 }]);
    const token = minted.authToken['X-Cocoon-Auth'];
    const claims = await tokens.verify(token);
    assert.equal(claims.microvmId, microvmId);
    assert.deepEqual(claims.ports, { ranges: [{ from: 8080, to: 8080 }] });
    assert.equal(claims.expiresAt.toISOString(), minted.expiresAt);
    const lifetimeMs = claims.expiresAt.getTime() - before;
    assert.ok(lifetimeMs > 59 * 60_000 && lifetimeMs <= 60 * 60_000, `${lifetimeMs} ms`);
    await tokens.authorize(token, microvmId, 8080);
    await assert.rejects(tokens.authorize(token, microvmId, 9000), { code: 'token.port_not_allowed' });
  });

  test('expirationInMinutes and allowedPorts (ports, ranges, all) are honoured and normalized', async () => {
    const response = await mint({ expirationInMinutes: 5, allowedPorts: [{ fromPort: 9000, toPort: 9100 }, { port: 8080 }, { port: 9050 }] });
    assert.equal(response.statusCode, 201, response.body);
    const minted = JSON.parse(response.body) as Minted;
    assert.deepEqual(minted.allowedPorts, [{ port: 8080 }, { fromPort: 9000, toPort: 9100 }]);
    const claims = await tokens.verify(minted.authToken['X-Cocoon-Auth']);
    assert.ok(Math.abs(claims.expiresAt.getTime() - Date.now() - 5 * 60_000) < 5000);
    const all = JSON.parse((await mint({ allowedPorts: [{ all: true }], expirationInMinutes: 1 })).body) as Minted;
    assert.deepEqual(all.allowedPorts, [{ all: true }]);
    assert.deepEqual((await tokens.verify(all.authToken['X-Cocoon-Auth'])).ports, { all: true });
  });

  test('another account: 404 vm.not_found; an unknown MicroVM: 404; a malformed id: 400', async () => {
    const other = await mint({}, otherKey);
    assert.equal(other.statusCode, 404, other.body);
    assert.equal(codeOf(other), 'vm.not_found');
    const unknown = await mint({}, adminKey, 'mvm-00000000-0000-0000-0000-000000000000');
    assert.equal(codeOf(unknown), 'vm.not_found');
    assert.equal((await mint({}, adminKey, 'mvm-1')).statusCode, 400);
    assert.equal((await call({ method: 'POST', url: `/v1/microvms/${microvmId}/auth-token`, headers: { authorization: '' } })).statusCode, 401);
  });

  test('bad bodies are 400 with a code, and nothing is minted', async () => {
    const cases: Array<[unknown, string]> = [
      [{ expirationInMinutes: 61 }, 'request.invalid'],
      [{ expirationInMinutes: 0 }, 'request.invalid'],
      [{ expirationInMinutes: 1.5 }, 'request.invalid'],
      [{ expirationInMinutes: '5' }, 'request.invalid'],
      [{ allowedPorts: [] }, 'request.invalid'],
      [{ allowedPorts: [{ port: 0 }] }, 'request.invalid'],
      [{ allowedPorts: [{ port: 65536 }] }, 'request.invalid'],
      [{ allowedPorts: [{ fromPort: 9000, toPort: 8000 }] }, 'request.invalid'],
      [{ allowedPorts: [{ all: true }, { port: 80 }] }, 'request.invalid'],
      [{ allowedPorts: [{ all: false }] }, 'request.invalid'],
      [{ allowedPorts: [{ fromPort: 80 }] }, 'request.invalid'],
      [{ allowedPorts: [{ port: 80, toPort: 90 }] }, 'request.unknown_field'],
      [{ allowedPorts: 'port=80' }, 'request.invalid'],
      [{ microvmId: 'x' }, 'request.unknown_field'],
      [[], 'request.invalid'],
    ];
    for (const [body, code] of cases) {
      const response = await mint(body as Record<string, unknown>);
      assert.equal(response.statusCode, 400, `${JSON.stringify(body)}: ${response.body}`);
      assert.equal(codeOf(response), code, JSON.stringify(body));
      assert.ok(!response.body.includes('eyJ'), 'no token in an error');
    }
  });

  test('key rotation: admin only (403 auth.forbidden otherwise); earlier tokens stay valid', async () => {
    const earlier = (JSON.parse((await mint()).body) as Minted).authToken['X-Cocoon-Auth'];
    const refused = await call({ method: 'POST', url: '/v1/admin/auth-token-keys/rotate' }, otherKey);
    assert.equal(refused.statusCode, 403, refused.body);
    assert.equal(codeOf(refused), 'auth.forbidden');
    const rotated = await call({ method: 'POST', url: '/v1/admin/auth-token-keys/rotate', payload: {} });
    assert.equal(rotated.statusCode, 200, rotated.body);
    const { kid } = JSON.parse(rotated.body) as { kid: string };
    assert.match(kid, /^[A-Za-z0-9_-]+$/);
    await tokens.verify(earlier);
    const later = (JSON.parse((await mint()).body) as Minted).authToken['X-Cocoon-Auth'];
    assert.equal((JSON.parse(Buffer.from(later.split('.')[0]!, 'base64url').toString()) as { kid: string }).kid, kid);
    const doc = JSON.parse((await call({ url: '/openapi.json' })).body) as { paths: Record<string, unknown> };
    for (const route of ['/v1/microvms/{microvmId}/auth-token', '/v1/admin/auth-token-keys/rotate']) assert.ok(doc.paths[route], route);
  });

  test('CLI: create-microvm-auth-token prints authToken; a bad --allowed-ports exits 2 before any request', async () => {
    const run = await cli(['create-microvm-auth-token', '--microvm-id', microvmId, '--expiration-in-minutes', '10', '--allowed-ports', 'port=8080', 'fromPort=9000,toPort=9001']);
    assert.equal(run.code, 0, run.stderr);
    const minted = JSON.parse(run.stdout) as Minted;
    assert.deepEqual(minted.allowedPorts, [{ port: 8080 }, { fromPort: 9000, toPort: 9001 }]);
    assert.equal((await tokens.verify(minted.authToken['X-Cocoon-Auth'])).microvmId, microvmId);
    const text = await cli(['create-microvm-auth-token', '--microvm-id', microvmId, '--query', "authToken.\"X-Cocoon-Auth\"", '--output', 'text']);
    assert.equal(text.code, 0, text.stderr);
    await tokens.authorize(text.stdout.trim(), microvmId, 8080);
    const bad = await cli(['create-microvm-auth-token', '--microvm-id', microvmId, '--allowed-ports', 'port=0']);
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(bad.stderr, /--allowed-ports/);
    const tooLong = await cli(['create-microvm-auth-token', '--microvm-id', microvmId, '--expiration-in-minutes', '61']);
    assert.equal(tooLong.code, errorCodes['request.invalid'].exitCode, tooLong.stderr);
    assert.match(tooLong.stderr, /^cocoon: request\.invalid: /m);
  });

  test('a TERMINATED MicroVM gets no token: 409 vm.invalid_state', async () => {
    await microvms.terminate(images.adminAccountId, microvmId);
    const response = await mint();
    assert.equal(response.statusCode, 409, response.body);
    assert.equal(codeOf(response), 'vm.invalid_state');
  });
});
