/**
 * The MicroVM lifecycle through the REST API in process (fastify's inject) over a real engine,
 * image service, SQLite file and real QEMU VMs: run, get/list, suspend/resume, terminate, the idle
 * controller with test-sized durations, capacity, tenancy, validation, and reconcile. The
 * tiny-httpd example is built once. Every VM started here is terminated in teardown.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { buildApi } from '../../src/api/index.ts';
import { httpGet } from '../../src/host/http-probe.ts';
import { vmPaths } from '../../src/host/paths.ts';
import type { Engine } from '../../src/main/engine.ts';
import type { ImageService } from '../../src/main/images.ts';
import { FINAL_STATES, type MicroVmState } from '../../src/store/index.ts';
import { microvmRecord } from '../../src/store/test-fixtures.ts';
import { MicroVmManager, type MicroVmManagerDeps } from '../../src/vms/manager.ts';
import { startApiFixture, terminateLeftovers } from './api-fixture.ts';

const EXAMPLE = fileURLToPath(new URL('../../examples/tiny-httpd', import.meta.url));
const STATE_TIMEOUT_MS = 60_000;

type View = {
  microvmId: string; state: MicroVmState; stateReason?: string; imageArn: string; imageVersion: string; localPort?: number; endpoint?: string;
  localAddress?: string; egress: { mode: 'none' | 'internet'; allow?: Array<{ cidr: string; ports?: number[] }> };
  resumeCount: number; runningSeconds: number; suspendedAt?: string; terminatedAt?: string; startedAt?: string; lastActivityAt?: string;
  idlePolicy: { maxIdleDurationSeconds: number; suspendedDurationSeconds: number; autoResumeEnabled: boolean };
};

let engine: Engine;
let images: ImageService;
let microvms: MicroVmManager;
let deps: MicroVmManagerDeps;
let app: FastifyInstance;
let workDir: string;
let adminKey: string;
let otherKey: string;
const lines: string[] = [];

before(async () => {
  let dataDir: string;
  ({ workDir, dataDir, engine, images, adminKey, otherKey } = await startApiFixture('cocoon-mvm-'));
  deps = { driver: engine.driver, store: images.store, builder: images.builder, dataDir, log: (line) => lines.push(line) };
  // Test-sized durations: seconds instead of the public minimum of 60.
  microvms = new MicroVmManager(deps, { minimumSeconds: 1, tickMs: 250, hookTimeoutMs: 5000 });
  microvms.start();
  app = buildApi({ images, microvms, uploadDir: path.join(workDir, 'uploads'), allowLocalArtifacts: true });
  const zip = path.join(workDir, 'tiny-httpd.zip');
  const { zipDirectory } = await import('../../src/host/zip-dir.ts');
  await zipDirectory(EXAMPLE, zip);
  const { done } = await images.builder.create(images.adminAccountId, { name: 'tiny-httpd', codeArtifactUri: zip, memoryMiB: 128 });
  const image = await done;
  assert.equal(image.state, 'ACTIVE', image.stateReason);
});

after(async () => {
  // Every VM still alive is terminated by the lifecycle; a QEMU that survives that is killed by its pid.
  if (images && microvms) await terminateLeftovers(images.store, microvms);
  await microvms?.close();
  await app?.close();
  await images?.close();
  await engine?.driver.idle();
  if (lines.length > 0) console.log(lines.map((line) => `# ${line}`).join('\n'));
  await rm(workDir, { recursive: true, force: true });
});

async function call(options: InjectOptions, key = adminKey, target = app): Promise<LightMyRequestResponse> {
  return target.inject({ ...options, headers: { authorization: `Bearer ${key}`, ...options.headers } });
}

function codeOf(response: LightMyRequestResponse): string | undefined {
  return (JSON.parse(response.body) as { error?: { code?: string } }).error?.code;
}

async function run(body: Record<string, unknown> = {}): Promise<View> {
  const response = await call({ method: 'POST', url: '/v1/microvms', payload: { imageIdentifier: 'tiny-httpd', ...body } });
  assert.equal(response.statusCode, 201, response.body);
  const view = JSON.parse(response.body) as View;
  assert.equal(response.headers.location, `/v1/microvms/${view.microvmId}`);
  return view;
}

async function get(microvmId: string): Promise<View> {
  const response = await call({ url: `/v1/microvms/${microvmId}` });
  assert.equal(response.statusCode, 200, response.body);
  return JSON.parse(response.body) as View;
}

async function action(microvmId: string, verb: 'suspend' | 'resume' | 'terminate'): Promise<LightMyRequestResponse> {
  return call({ method: 'POST', url: `/v1/microvms/${microvmId}/${verb}` });
}

/** Polls GET every 250 ms until the MicroVM is in one of `states`. */
async function waitForState(microvmId: string, states: MicroVmState[], timeoutMs = STATE_TIMEOUT_MS): Promise<View> {
  const deadline = Date.now() + timeoutMs;
  const state = states.join(' or ');
  for (;;) {
    const view = await get(microvmId);
    if (states.includes(view.state)) return view;
    assert.ok(!FINAL_STATES.includes(view.state), `${microvmId} ended ${view.state} (${view.stateReason}) while waiting for ${state}`);
    assert.ok(Date.now() < deadline, `${microvmId} still ${view.state} after ${timeoutMs} ms, waiting for ${state}`);
    await sleep(250);
  }
}

function pidGone(pid: number): boolean {
  return !existsSync(`/proc/${pid}`) || /^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
}

describe('the MicroVM lifecycle over the API', () => {
  let vm: View;

  test('POST /v1/microvms → 201 RUNNING, and the app answers on localPort', async () => {
    vm = await run({ runHookPayload: '{"secret":"s3cr3t"}' });
    assert.match(vm.microvmId, /^mvm-[0-9a-f-]{36}$/);
    assert.equal(vm.state, 'RUNNING');
    assert.equal(vm.imageArn, 'cocoon:image:tiny-httpd:1.0');
    assert.equal(vm.imageVersion, '1.0');
    assert.deepEqual(vm.idlePolicy, { maxIdleDurationSeconds: 900, suspendedDurationSeconds: 300, autoResumeEnabled: true });
    assert.equal(vm.endpoint, `https://${vm.microvmId}.cocoon.localhost:8443`);
    assert.equal(vm.resumeCount, 0);
    assert.ok(vm.startedAt && vm.lastActivityAt);
    assert.ok(vm.localPort);
    const answer = await httpGet(vm.localPort, '/built.txt');
    assert.equal(answer.status, 200);
    assert.match(answer.body, /hello from a Cocoon build step/);
    assert.ok(!lines.some((line) => line.includes('s3cr3t')), 'the hook payload is never logged');
    const stored = await images.store.microvms.getAny(vm.microvmId);
    assert.ok(stored?.pid && !pidGone(stored.pid));
    assert.ok(!JSON.stringify(stored).includes('s3cr3t'), 'the hook payload is never stored');
  });

  test('GET one and list with filters; the OpenAPI document lists the routes', async () => {
    assert.equal((await get(vm.microvmId)).state, 'RUNNING');
    const ids = async (query: string) => {
      const response = await call({ url: `/v1/microvms${query}` });
      assert.equal(response.statusCode, 200, response.body);
      return (JSON.parse(response.body) as { microvms: View[] }).microvms.map((m) => m.microvmId);
    };
    assert.deepEqual(await ids(''), [vm.microvmId]);
    assert.deepEqual(await ids('?state=RUNNING'), [vm.microvmId]);
    assert.deepEqual(await ids('?state=SUSPENDED'), []);
    assert.deepEqual(await ids('?imageVersion=1.0&state=RUNNING'), [vm.microvmId]);
    assert.deepEqual(await ids('?imageVersion=9.0'), []);
    for (const query of ['?state=running', '?imageVersion=1', '?other=1']) {
      const bad = await call({ url: `/v1/microvms${query}` });
      assert.equal(bad.statusCode, 400, query);
    }
    const doc = JSON.parse((await call({ url: '/openapi.json' })).body) as { paths: Record<string, unknown> };
    for (const route of ['/v1/microvms', '/v1/microvms/{microvmId}', '/v1/microvms/{microvmId}/suspend', '/v1/microvms/{microvmId}/resume', '/v1/microvms/{microvmId}/terminate']) {
      assert.ok(doc.paths[route], route);
    }
  });

  test('another account: 404 vm.not_found everywhere, an empty list', async () => {
    for (const options of [{ url: `/v1/microvms/${vm.microvmId}` }, ...(['suspend', 'resume', 'terminate'] as const).map((verb) => ({ method: 'POST' as const, url: `/v1/microvms/${vm.microvmId}/${verb}` }))]) {
      const response = await call(options, otherKey);
      assert.equal(response.statusCode, 404, `${options.url}: ${response.body}`);
      assert.equal(codeOf(response), 'vm.not_found');
    }
    assert.deepEqual(JSON.parse((await call({ url: '/v1/microvms' }, otherKey)).body), { microvms: [] });
    const run = await call({ method: 'POST', url: '/v1/microvms', payload: { imageIdentifier: 'tiny-httpd' } }, otherKey);
    assert.equal(run.statusCode, 404);
    assert.equal(codeOf(run), 'image.not_found');
    assert.equal((await get(vm.microvmId)).state, 'RUNNING', 'untouched');
  });

  test('DELETE of the image in use → 409 image.in_use', async () => {
    const response = await call({ method: 'DELETE', url: '/v1/images/tiny-httpd?version=1.0' });
    assert.equal(response.statusCode, 409, response.body);
    assert.equal(codeOf(response), 'image.in_use');
  });

  test('suspend → SUSPENDED (QEMU gone, state on disk); a concurrent second suspend is 409; resume → RUNNING', async () => {
    const pid = (await images.store.microvms.getAny(vm.microvmId))!.pid!;
    const [first, second] = await Promise.all([action(vm.microvmId, 'suspend'), action(vm.microvmId, 'suspend')]);
    assert.equal(first.statusCode, 200, first.body);
    assert.equal(second.statusCode, 409, 'the second waits its turn, then meets SUSPENDED');
    assert.equal(codeOf(second), 'vm.invalid_state');
    const suspended = JSON.parse(first.body) as View;
    assert.equal(suspended.state, 'SUSPENDED');
    assert.ok(suspended.suspendedAt);
    assert.equal(suspended.localPort, undefined);
    assert.ok(pidGone(pid), 'QEMU stopped');
    const dir = (await images.store.microvms.getAny(vm.microvmId))!.dir;
    assert.ok((await stat(vmPaths(dir).suspendedState)).size > 0);

    const resumed = await action(vm.microvmId, 'resume');
    assert.equal(resumed.statusCode, 200, resumed.body);
    const view = JSON.parse(resumed.body) as View;
    assert.equal(view.state, 'RUNNING');
    assert.equal(view.resumeCount, 1);
    assert.equal(view.suspendedAt, undefined);
    assert.ok(view.localPort);
    assert.match((await httpGet(view.localPort, '/built.txt')).body, /hello from a Cocoon build step/);
    assert.equal(codeOf(await action(vm.microvmId, 'resume')), 'vm.invalid_state');
    const unknownField = await call({ method: 'POST', url: `/v1/microvms/${vm.microvmId}/suspend`, payload: { force: true } });
    assert.equal(unknownField.statusCode, 400);
    assert.equal(codeOf(unknownField), 'request.unknown_field');
    assert.equal((await get(vm.microvmId)).state, 'RUNNING', 'refused before any side effect');
  });

  test('terminate → TERMINATED, QEMU stopped, directory gone; again → 409', async () => {
    const { pid, dir } = (await images.store.microvms.getAny(vm.microvmId))!;
    // As the SDK sends actions: an empty JSON object.
    const response = await call({ method: 'POST', url: `/v1/microvms/${vm.microvmId}/terminate`, payload: {} });
    assert.equal(response.statusCode, 200, response.body);
    const view = JSON.parse(response.body) as View;
    assert.equal(view.state, 'TERMINATED');
    assert.ok(view.terminatedAt);
    assert.equal(view.localPort, undefined);
    assert.ok(pidGone(pid!));
    assert.equal(existsSync(dir), false);
    const again = await action(vm.microvmId, 'terminate');
    assert.equal(again.statusCode, 409);
    assert.equal(codeOf(again), 'vm.invalid_state');
  });
});

describe('egress', { skip: process.getuid?.() === 0 ? false : 'internet egress needs root' }, () => {
  let tableExisted = true;
  let forwardingBefore = '';
  before(async () => {
    tableExisted = spawnSync('nft', ['list', 'table', 'inet', 'cocoon']).status === 0;
    forwardingBefore = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim();
  });
  // The first internet VM prepared the host: undone here, even when a test failed.
  after(async () => {
    await engine.networks?.sweep();
    if (!tableExisted) spawnSync('nft', ['delete', 'table', 'inet', 'cocoon']);
    if (forwardingBefore === '0') await writeFile('/proc/sys/net/ipv4/ip_forward', '0');
  });

  test('internet: recorded and shown; the app answers on its namespace address, also after a resume', async () => {
    const vm = await run({ egress: { mode: 'internet', allow: [{ cidr: '203.0.113.9/24', ports: [443, 80] }] } });
    assert.deepEqual(vm.egress, { mode: 'internet', allow: [{ cidr: '203.0.113.0/24', ports: [80, 443] }] });
    assert.notEqual(vm.localAddress, '127.0.0.1');
    assert.equal((await httpGet({ host: vm.localAddress!, port: vm.localPort! }, '/')).status, 200);
    assert.equal((await action(vm.microvmId, 'suspend')).statusCode, 200);
    const resumed = JSON.parse((await action(vm.microvmId, 'resume')).body) as View;
    assert.equal(resumed.state, 'RUNNING');
    assert.deepEqual(resumed.egress, vm.egress);
    assert.equal((await httpGet({ host: resumed.localAddress!, port: resumed.localPort! }, '/')).status, 200);
    assert.equal((await action(vm.microvmId, 'terminate')).statusCode, 200);
    // Its namespace went with its QEMU: nothing is left to sweep.
    assert.deepEqual(await engine.networks?.sweep(), []);
  });

  test('the default is none, on loopback', async () => {
    const vm = await run();
    assert.deepEqual(vm.egress, { mode: 'none' });
    assert.equal(vm.localAddress, '127.0.0.1');
    assert.equal((await action(vm.microvmId, 'terminate')).statusCode, 200);
  });
});

describe('validation and capacity', () => {
  test('invalid requests are 400 before anything runs; the public minimum of 60 s holds without the test override', async () => {
    // A second manager with the defaults (minimum 60 s) and a budget smaller than the image (128 MiB).
    const strict = new MicroVmManager(deps, { memoryBudgetMiB: 100 });
    const strictApi = buildApi({ images, microvms: strict });
    try {
      const before = (await images.store.microvms.list(images.adminAccountId)).length;
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ idlePolicy: { maxIdleDurationSeconds: 59 } }, 'config.invalid'],
        [{ maximumDurationInSeconds: 59 }, 'config.invalid'],
        [{ maximumDurationInSeconds: 28_801 }, 'request.invalid'],
        [{ idlePolicy: { suspendedDurationSeconds: -1 } }, 'request.invalid'],
        [{ idlePolicy: { maxIdleDurationSeconds: 90.5 } }, 'request.invalid'],
        [{ idlePolicy: { maxIdleDurationSeconds: '900' } }, 'request.invalid'],
        [{ idlePolicy: { extra: 1 } }, 'request.unknown_field'],
        [{ accountId: 'x' }, 'request.unknown_field'],
        [{ imageIdentifier: '' }, 'request.invalid'],
        [{ runHookPayload: 'x'.repeat(40_000) }, 'request.invalid'],
        [{ egress: { mode: 'open' } }, 'request.invalid'],
        [{ egress: { mode: 'internet', extra: 1 } }, 'request.unknown_field'],
        [{ egress: { mode: 'internet', allow: [{ cidr: '10.0.0.0/8; flush ruleset' }] } }, 'request.invalid'],
        [{ egress: { mode: 'none', allow: [{ cidr: '203.0.113.0/24' }] } }, 'request.invalid'],
      ];
      for (const [body, code] of cases) {
        const response = await call({ method: 'POST', url: '/v1/microvms', payload: { imageIdentifier: 'tiny-httpd', ...body } }, adminKey, strictApi);
        assert.equal(response.statusCode, 400, `${JSON.stringify(body).slice(0, 60)}: ${response.body}`);
        assert.equal(codeOf(response), code, JSON.stringify(body).slice(0, 60));
      }
      for (const [identifier, status, code] of [['nope', 404, 'image.not_found'], ['tiny-httpd:7.0', 404, 'image.not_found'], ['cocoon:image:tiny-httpd:1.0', 503, 'vm.capacity']] as const) {
        const response = await call({ method: 'POST', url: '/v1/microvms', payload: { imageIdentifier: identifier } }, adminKey, strictApi);
        assert.equal(response.statusCode, status, `${identifier}: ${response.body}`);
        assert.equal(codeOf(response), code);
      }
      for (const url of ['/v1/microvms/nope', '/v1/microvms/mvm-1/suspend']) assert.equal((await call({ url, method: url.endsWith('suspend') ? 'POST' : 'GET' })).statusCode, 400);
      const unknown = await call({ url: '/v1/microvms/mvm-00000000-0000-0000-0000-000000000000' });
      assert.equal(unknown.statusCode, 404);
      assert.equal(codeOf(unknown), 'vm.not_found');
      assert.equal((await images.store.microvms.list(images.adminAccountId)).length, before, 'nothing was recorded');
    } finally {
      await strictApi.close();
      await strict.close();
    }
  });
});

describe('the idle controller (test-sized durations)', () => {
  test('activity keeps a VM RUNNING; idle for maxIdle → SUSPENDED; suspended for suspendedDuration → TERMINATED', async () => {
    const vm = await run({ idlePolicy: { maxIdleDurationSeconds: 3, suspendedDurationSeconds: 2, autoResumeEnabled: true } });
    // Time passing is the point here: 4 s of activity, past maxIdle, keep it running.
    const until = Date.now() + 4000;
    while (Date.now() < until) {
      microvms.recordActivity(vm.microvmId);
      await sleep(200);
    }
    assert.equal((await get(vm.microvmId)).state, 'RUNNING');
    // A slow poll could step over the short SUSPENDED window: either state is fine here, and the
    // final reason below proves the VM went through SUSPENDED.
    const idle = await waitForState(vm.microvmId, ['SUSPENDED', 'TERMINATED']);
    if (idle.state === 'SUSPENDED') assert.match(idle.stateReason ?? '', /idle for 3 s/);
    const terminated = await waitForState(vm.microvmId, ['TERMINATED']);
    assert.match(terminated.stateReason ?? '', /suspended for 2 s/);
    assert.ok(terminated.runningSeconds >= 4, `ran ${terminated.runningSeconds} s`);
    assert.ok(lines.some((line) => line.includes(`${vm.microvmId} suspend: idle for 3 s`)));
  });

  test('the maximum duration terminates a RUNNING VM', async () => {
    const vm = await run({ maximumDurationInSeconds: 2, idlePolicy: { maxIdleDurationSeconds: 600 } });
    const terminated = await waitForState(vm.microvmId, ['TERMINATED']);
    assert.match(terminated.stateReason ?? '', /maximum duration of 2 s/);
  });
});

describe('a QEMU that dies', () => {
  test('a RUNNING VM whose QEMU exits on its own becomes FAILED with a reason; terminate then cleans it up', async () => {
    const vm = await run();
    const { pid, dir } = (await images.store.microvms.getAny(vm.microvmId))!;
    process.kill(pid!, 'SIGKILL');
    const failed = await waitForState(vm.microvmId, ['FAILED']);
    assert.match(failed.stateReason ?? '', /exited unexpectedly/);
    assert.equal(failed.localPort, undefined);
    const terminated = await action(vm.microvmId, 'terminate');
    assert.equal(terminated.statusCode, 200, terminated.body);
    assert.equal((JSON.parse(terminated.body) as View).stateReason, failed.stateReason, 'the failure reason is kept');
    assert.equal(existsSync(dir), false);
  });
});

describe('reconcile at startup', () => {
  test('RUNNING with a dead pid → FAILED; SUSPENDING with a saved state → SUSPENDED; RESUMING without → FAILED; SUSPENDED stays', async () => {
    const image = await images.store.images.get(images.adminAccountId, 'tiny-httpd', '1.0');
    const deadPid = spawnSync('true').pid!;
    const fake = async (suffix: string, state: MicroVmState, withState: boolean) => {
      const microvmId = `mvm-00000000-0000-0000-0000-00000000000${suffix}`;
      const dir = path.join(workDir, 'fake', microvmId);
      await mkdir(dir, { recursive: true });
      if (withState) await writeFile(vmPaths(dir).suspendedState, 'saved');
      await images.store.microvms.insert({ ...microvmRecord(images.adminAccountId, image, microvmId), dir, pid: deadPid });
      if (state !== 'PENDING') {
        const path_: Record<string, MicroVmState[]> = { RUNNING: ['RUNNING'], SUSPENDING: ['RUNNING', 'SUSPENDING'], RESUMING: ['RUNNING', 'SUSPENDING', 'SUSPENDED', 'RESUMING'], SUSPENDED: ['RUNNING', 'SUSPENDING', 'SUSPENDED'] };
        let from: MicroVmState = 'PENDING';
        for (const to of path_[state]!) {
          await images.store.microvms.transition(microvmId, [from], to, to === 'SUSPENDED' ? { suspendedAt: new Date().toISOString(), pid: undefined } : {});
          from = to;
        }
      }
      return microvmId;
    };
    const running = await fake('1', 'RUNNING', false);
    const suspending = await fake('2', 'SUSPENDING', true);
    const resuming = await fake('3', 'RESUMING', false);
    const suspended = await fake('4', 'SUSPENDED', true);
    const pending = await fake('5', 'PENDING', false);

    const changed = await microvms.reconcile();
    assert.deepEqual(changed.map((r) => r.microvmId).sort(), [running, suspending, resuming, pending].sort());
    const states = async () => Object.fromEntries(await Promise.all([running, suspending, resuming, suspended, pending].map(async (id) => [id, (await get(id)).state])));
    assert.deepEqual(await states(), { [running]: 'FAILED', [suspending]: 'SUSPENDED', [resuming]: 'FAILED', [suspended]: 'SUSPENDED', [pending]: 'FAILED' });
    assert.match((await get(running)).stateReason ?? '', /QEMU process is gone/);
    assert.match((await get(suspending)).stateReason ?? '', /saved state was kept/);
    assert.deepEqual(await microvms.reconcile(), [], 'a second pass changes nothing');
    // The fakes go away through the lifecycle too: FAILED and SUSPENDED VMs can be terminated.
    for (const id of [running, suspending, suspended]) assert.equal((await action(id, 'terminate')).statusCode, 200);
  });
});
