/**
 * The endpoint proxy in front of real MicroVMs: the protocols example (built once) behind the real
 * manager, tokens and proxy on an ephemeral loopback port. curl over HTTPS (HTTP/1.1 and HTTP/2),
 * gRPC streaming with trailers, WebSockets with header and subprotocol auth, SSE, large bodies,
 * refused tokens (nothing reaches the guest), unknown and terminated VMs, auto-resume, and a
 * WebSocket keeping its VM awake while an idle twin is suspended. Every VM is terminated in teardown.
 */
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import type { Engine } from '../../src/main/engine.ts';
import type { ImageService } from '../../src/main/images.ts';
import { startEndpointProxy, type StartedProxy } from '../../src/main/proxy.ts';
import { endpointUrl } from '../../src/proxy/index.ts';
import {
  echoClient, grpcChat, grpcUnary, metadataOf, nextMessage, openWebSocket, requestH1, requestH2, type Endpoint,
} from '../../src/proxy/test-support.ts';
import type { IdlePolicy, MicroVmState } from '../../src/store/index.ts';
import { TokenService } from '../../src/tokens/index.ts';
import { MicroVmManager } from '../../src/vms/manager.ts';
import { startApiFixture, terminateLeftovers } from './api-fixture.ts';

const EXAMPLE = fileURLToPath(new URL('../../examples/protocols', import.meta.url));
const DOMAIN = 'cocoon.localhost';
const STATE_TIMEOUT_MS = 120_000;
const LONG_IDLE: Partial<IdlePolicy> = { maxIdleDurationSeconds: 3600, suspendedDurationSeconds: 3600, autoResumeEnabled: true };

let engine: Engine;
let images: ImageService;
let microvms: MicroVmManager;
let tokens: TokenService;
let endpoints: StartedProxy;
let workDir: string;
let dataDir: string;
let accountId: string;
let ca: string;
const lines: string[] = [];
const minted: string[] = [];

before(async () => {
  ({ workDir, dataDir, engine, images } = await startApiFixture('cocoon-proxy-'));
  accountId = images.adminAccountId;
  const log = (line: string): void => void lines.push(line);
  let proxyPort = 0;
  microvms = new MicroVmManager({ driver: engine.driver, store: images.store, builder: images.builder, dataDir, log },
    { minimumSeconds: 1, tickMs: 250, hookTimeoutMs: 5000, appReadyTimeoutMs: 120_000, endpointOf: (id) => endpointUrl(DOMAIN, proxyPort, id) });
  microvms.start();
  tokens = await TokenService.open(dataDir);
  endpoints = await startEndpointProxy({ config: { dataDir, domain: DOMAIN, proxyPort: 0 }, microvms, tokens, log, resumeTimeoutMs: STATE_TIMEOUT_MS });
  proxyPort = endpoints.port;
  ca = await readFile(endpoints.caPath!, 'utf8');
  const zip = path.join(workDir, 'protocols.zip');
  await zipDirectory(EXAMPLE, zip);
  const build: string[] = [];
  const { done } = await images.builder.create(accountId, { name: 'protocols', codeArtifactUri: zip, memoryMiB: 256 }, (line) => build.push(line));
  const image = await done;
  assert.equal(image.state, 'ACTIVE', `${image.stateReason}\n${build.slice(-30).join('\n')}`);
});

after(async () => {
  if (images && microvms) await terminateLeftovers(images.store, microvms);
  await endpoints?.proxy.close();
  await microvms?.close();
  await images?.close();
  await engine?.driver.idle();
  if (lines.length > 0) console.log(lines.map((line) => `# ${line}`).join('\n'));
  await rm(workDir, { recursive: true, force: true });
});

// --- helpers ---

async function run(idlePolicy: Partial<IdlePolicy> = LONG_IDLE): Promise<string> {
  const microvm = await microvms.run(accountId, { imageIdentifier: 'protocols', idlePolicy });
  assert.equal(microvm.record.state, 'RUNNING');
  assert.equal(microvm.record.endpoint, `https://${microvm.record.microvmId}.${DOMAIN}:${endpoints.port}`);
  return microvm.record.microvmId;
}

async function mint(microvmId: string, ports: 'app' | 'all' = 'app'): Promise<string> {
  const { token } = await tokens.mint({ microvmId, ports: ports === 'all' ? { all: true } : { ranges: [{ from: 8080, to: 8080 }] }, expiresInMinutes: 10 });
  minted.push(token);
  return token;
}

function endpoint(microvmId: string, prefix = ''): Endpoint {
  return { host: `${prefix}${microvmId}.${DOMAIN}`, port: endpoints.port, ca };
}

async function curl(microvmId: string, version: '--http1.1' | '--http2', token: string, urlPath = '/'): Promise<{ status: number; version: string; body: string }> {
  const host = `${microvmId}.${DOMAIN}`;
  const { stdout } = await promisify(execFile)('curl', [
    '-sS', '--max-time', '120', '--cacert', endpoints.caPath!, '--resolve', `${host}:${endpoints.port}:127.0.0.1`, version,
    '-H', `X-Cocoon-Auth: ${token}`, '-w', '\n%{http_version} %{http_code}', `https://${host}:${endpoints.port}${urlPath}`,
  ]);
  const lastNewline = stdout.lastIndexOf('\n');
  const [httpVersion, status] = stdout.slice(lastNewline + 1).split(' ');
  return { status: Number(status), version: httpVersion!, body: stdout.slice(0, lastNewline) };
}

type Stats = { requests: number; openWebSockets: number; hooks: Record<string, number>; grpcCalls: number };
async function stats(microvmId: string, token: string): Promise<Stats> {
  const answer = await requestH2(endpoint(microvmId), { path: '/stats', headers: { 'x-cocoon-auth': token } });
  assert.equal(answer.status, 200, answer.body.toString());
  return JSON.parse(answer.body.toString()) as Stats;
}

async function stateOf(microvmId: string): Promise<MicroVmState> {
  return (await microvms.get(accountId, microvmId)).record.state;
}

async function waitForState(microvmId: string, state: MicroVmState, timeoutMs = STATE_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const current = await stateOf(microvmId);
    if (current === state) return;
    assert.ok(Date.now() < deadline, `${microvmId} still ${current} after ${timeoutMs} ms, waiting for ${state}`);
    await sleep(250);
  }
}

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

describe('one RUNNING MicroVM behind the proxy', () => {
  let vm: string;
  let token: string;

  before(async () => {
    vm = await run();
    token = await mint(vm);
  });

  test('curl over HTTPS: HTTP/1.1 and HTTP/2 reach the app port', async () => {
    for (const [flag, expected] of [['--http1.1', '1.1'], ['--http2', '2']] as const) {
      const answer = await curl(vm, flag, token);
      assert.equal(answer.status, 200, answer.body);
      assert.equal(answer.version, expected);
      assert.match(answer.body, /hello from the protocols example/);
    }
  });

  test('x-cocoon-* headers never reach the guest; X-Forwarded-* do', async () => {
    const answer = await requestH1(endpoint(vm), { path: '/headers', headers: { 'x-cocoon-auth': token, 'x-cocoon-port': '8080', 'x-cocoon-trace': 'x', 'x-kept': 'y' } });
    const headers = JSON.parse(answer.body.toString()) as Record<string, string>;
    assert.deepEqual(Object.keys(headers).filter((name) => name.startsWith('x-cocoon-')), []);
    assert.equal(headers['x-kept'], 'y');
    assert.equal(headers['x-forwarded-proto'], 'https');
    assert.equal(headers['x-forwarded-host'], `${vm}.${DOMAIN}:${endpoints.port}`);
    assert.equal(headers['x-forwarded-for'], '127.0.0.1');
  });

  test('server-sent events arrive as they are sent', async () => {
    for (const send of [requestH1, requestH2]) {
      const arrivals: number[] = [];
      const started = Date.now();
      const answer = await send(endpoint(vm), { path: '/sse?n=10', headers: { 'x-cocoon-auth': token }, onChunk: () => arrivals.push(Date.now() - started) });
      assert.equal((answer.body.toString().match(/^data: event \d+$/gm) ?? []).length, 10);
      // Ten events 100 ms apart: a proxy that buffered would deliver them in one piece at the end.
      assert.ok(arrivals.length >= 3 && arrivals.at(-1)! - arrivals[0]! >= 500, `arrivals (ms): ${arrivals.join(', ')}`);
    }
  });

  test('large bodies stream both ways', async () => {
    const block = Buffer.from(Buffer.alloc(64 * 1024).map((_, i) => i % 251));
    const expected = sha256(Buffer.concat(Array.from({ length: 16 * 16 }, () => block)));
    const upload = Buffer.from(Buffer.alloc(8 * 2 ** 20).map((_, i) => (i * 7) % 256));
    for (const send of [requestH1, requestH2]) {
      const big = await send(endpoint(vm), { path: '/big?mb=16', headers: { 'x-cocoon-auth': token } });
      assert.equal(big.body.length, 16 * 2 ** 20);
      assert.equal(sha256(big.body), expected);
      const echoed = await send(endpoint(vm), { method: 'POST', path: '/echo', headers: { 'x-cocoon-auth': token }, body: upload });
      assert.equal(echoed.status, 200);
      assert.equal(sha256(echoed.body), sha256(upload));
    }
  });

  test('gRPC: unary and bidirectional streaming with trailers, by host prefix and by X-Cocoon-Port', async () => {
    const allPorts = await mint(vm, 'all');
    for (const [target, metadata] of [
      [endpoint(vm, '50051-'), { 'x-cocoon-auth': allPorts }],
      [endpoint(vm), { 'x-cocoon-auth': allPorts, 'x-cocoon-port': '50051' }],
    ] as const) {
      const client = echoClient(target);
      try {
        const unary = await grpcUnary(client, 'ping', metadataOf(metadata));
        assert.equal(unary.status.code, grpc.status.OK, unary.status.details);
        assert.deepEqual(unary.messages, ['echo: ping']);
        assert.deepEqual(unary.status.metadata.get('x-echo-count'), ['1']);
        const chat = await grpcChat(client, ['one', 'two', 'three'], metadataOf(metadata));
        assert.equal(chat.status.code, grpc.status.OK, chat.status.details);
        assert.deepEqual(chat.messages, ['echo: one', 'echo: two', 'echo: three', 'bye']);
        assert.deepEqual(chat.status.metadata.get('x-echo-count'), ['3']);
      } finally {
        client.close();
      }
    }
    const refused = echoClient(endpoint(vm, '50051-'));
    try {
      const outcome = await grpcUnary(refused, 'ping', metadataOf({ 'x-cocoon-auth': token }));
      assert.equal(outcome.status.code, grpc.status.PERMISSION_DENIED);
      assert.match(outcome.status.details, /^token\.port_not_allowed/);
    } finally {
      refused.close();
    }
  });

  test('WebSocket echo with header auth and with subprotocol auth', async () => {
    const byHeader = await openWebSocket(endpoint(vm), { headers: { 'x-cocoon-auth': token } });
    let reply = nextMessage(byHeader.ws);
    byHeader.ws.send('over a header');
    assert.equal(await reply, 'over a header');
    byHeader.ws.close();

    const browserLike = await openWebSocket(endpoint(vm), { protocols: ['chat', `cocoon.auth.${token}`, 'cocoon.port.8080'] });
    assert.equal(browserLike.ws.protocol, 'chat');
    assert.equal(browserLike.headers['x-offered-protocols'], 'chat', 'the cocoon.* subprotocols stay at the proxy');
    reply = nextMessage(browserLike.ws);
    browserLike.ws.send('over a subprotocol');
    assert.equal(await reply, 'over a subprotocol');
    browserLike.ws.close();

    const onlyOurs = await openWebSocket(endpoint(vm), { protocols: [`cocoon.auth.${token}`, 'cocoon.port.8080'] });
    assert.equal(onlyOurs.ws.protocol, 'cocoon.port.8080');
    assert.equal(onlyOurs.headers['x-offered-protocols'], 'none');
    onlyOurs.ws.close();
  });

  test('refused tokens: codes, and nothing reaches the guest', async () => {
    // Minted two hours ago (the same key, another clock): long expired.
    const past = await TokenService.open(dataDir, { now: () => Date.now() - 2 * 3_600_000 });
    const expired = (await past.mint({ microvmId: vm, ports: { all: true }, expiresInMinutes: 1 })).token;
    const otherVm = (await tokens.mint({ microvmId: 'mvm-00000000-0000-4000-8000-000000000000', ports: { all: true }, expiresInMinutes: 5 })).token;
    const forged = `${token.slice(0, 40)}${token[40] === 'A' ? 'B' : 'A'}${token.slice(41)}`;
    const before = await stats(vm, token);
    const cases: Array<[string, Record<string, string>, number, string, string?]> = [
      ['missing', {}, 401, 'token.missing'],
      ['forged', { 'x-cocoon-auth': forged }, 401, 'token.invalid'],
      ['expired', { 'x-cocoon-auth': expired }, 401, 'token.expired'],
      ['other VM', { 'x-cocoon-auth': otherVm }, 403, 'token.wrong_microvm'],
      ['wrong port', { 'x-cocoon-auth': token, 'x-cocoon-port': '50051' }, 403, 'token.port_not_allowed'],
    ];
    for (const [name, headers, status, code] of cases) {
      for (const send of [requestH1, requestH2]) {
        const answer = await send(endpoint(vm), { path: '/', headers });
        assert.equal(answer.status, status, `${name}: ${answer.body.toString()}`);
        assert.equal((JSON.parse(answer.body.toString()) as { error: { code: string } }).error.code, code, name);
      }
      await assert.rejects(openWebSocket(endpoint(vm), { headers }), (error: { status?: number }) => error.status === status, `${name} (WebSocket)`);
    }
    const afterwards = await stats(vm, token);
    assert.equal(afterwards.requests, before.requests, 'no refused request reached the app');
  });

  test('auto-resume: the first request to a SUSPENDED MicroVM is answered by the resumed app', async () => {
    await microvms.suspend(accountId, vm);
    assert.equal(await stateOf(vm), 'SUSPENDED');
    const answers = await Promise.all([curl(vm, '--http2', token), curl(vm, '--http1.1', token), curl(vm, '--http2', token, '/headers')]);
    for (const answer of answers) assert.equal(answer.status, 200, answer.body);
    const resumed = await microvms.get(accountId, vm);
    assert.equal(resumed.record.state, 'RUNNING');
    assert.equal(resumed.record.resumeCount, 1, 'concurrent requests share one resume');
    assert.equal((await stats(vm, token)).hooks.resume, 1);
  });
});

describe('MicroVMs that are not RUNNING', () => {
  test('without auto-resume: 409 proxy.vm_not_running and it stays SUSPENDED; terminated: 404 proxy.unknown_host', async () => {
    const vm = await run({ ...LONG_IDLE, autoResumeEnabled: false });
    const token = await mint(vm);
    await microvms.suspend(accountId, vm);
    const suspended = await requestH2(endpoint(vm), { headers: { 'x-cocoon-auth': token } });
    assert.equal(suspended.status, 409, suspended.body.toString());
    assert.equal((JSON.parse(suspended.body.toString()) as { error: { code: string } }).error.code, 'proxy.vm_not_running');
    assert.equal(await stateOf(vm), 'SUSPENDED');

    await microvms.terminate(accountId, vm);
    for (const send of [requestH1, requestH2]) {
      const gone = await send(endpoint(vm), { headers: { 'x-cocoon-auth': token } });
      assert.equal(gone.status, 404, gone.body.toString());
      assert.equal((JSON.parse(gone.body.toString()) as { error: { code: string } }).error.code, 'proxy.unknown_host');
    }
    const unknown = await requestH1({ host: `nothing.${DOMAIN}`, port: endpoints.port, ca });
    assert.equal(unknown.status, 404);
  });

  test('a resume slower than the bound: 503 proxy.resume_timeout, and the resume still completes', async () => {
    const vm = await run();
    const token = await mint(vm);
    await microvms.suspend(accountId, vm);
    const impatient = await startEndpointProxy({ config: { dataDir, domain: DOMAIN, proxyPort: 0 }, microvms, tokens, log: () => {}, resumeTimeoutMs: 1 });
    try {
      const answer = await requestH2({ ...endpoint(vm), port: impatient.port }, { headers: { 'x-cocoon-auth': token } });
      assert.equal(answer.status, 503, answer.body.toString());
      assert.equal((JSON.parse(answer.body.toString()) as { error: { code: string } }).error.code, 'proxy.resume_timeout');
    } finally {
      await impatient.proxy.close();
    }
    await waitForState(vm, 'RUNNING');
    assert.equal((await requestH1(endpoint(vm), { headers: { 'x-cocoon-auth': token } })).status, 200);
  });
});

describe('activity', () => {
  test('an open WebSocket keeps its MicroVM RUNNING past its idle time, while an idle twin is suspended', async () => {
    const policy: Partial<IdlePolicy> = { maxIdleDurationSeconds: 6, suspendedDurationSeconds: 3600, autoResumeEnabled: false };
    const busy = await run(policy);
    const { ws } = await openWebSocket(endpoint(busy), { headers: { 'x-cocoon-auth': await mint(busy) } });
    try {
      // The twin starts later than the busy VM went quiet: once it is idle long enough to be suspended, so was the busy one.
      const idle = await run(policy);
      await waitForState(idle, 'SUSPENDED');
      assert.equal(await stateOf(busy), 'RUNNING', 'the WebSocket counts as activity');
      const reply = nextMessage(ws);
      ws.send('still here');
      assert.equal(await reply, 'still here');
    } finally {
      ws.close();
    }
    // Closed, the connection no longer counts: the busy VM idles out too.
    await waitForState(busy, 'SUSPENDED');
  });
});

describe('logs', () => {
  test('no token ever appears in a log line', () => {
    assert.ok(minted.length > 0);
    for (const token of minted) assert.ok(!lines.some((line) => line.includes(token)), 'a token was logged');
  });
});
