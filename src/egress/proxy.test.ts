/**
 * The allowed paths, on loopback only: `origin.test` resolves (by an injected table) to 127.0.0.1,
 * and the forbidden-range predicate is the real one except that it lets 127.0.0.1 through.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { defaultIsForbidden } from './dial.ts';
import type { EgressLogEvent } from './forward.ts';
import { startEgressProxy, type EgressProxy } from './proxy.ts';
import {
  exchange, openTunnel, readUntil, recordingConnect, startEchoOrigin, startHttpOrigin, tableResolve, type Origin,
} from './test-support.ts';

/** Leaves a socket file behind the way a crashed process does: a child listens and is SIGKILLed. */
async function leaveStaleSocket(socketPath: string): Promise<void> {
  const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`]);
  try {
    await new Promise((resolve, reject) => { child.stdout.once('data', resolve); child.once('exit', reject); });
  } finally {
    child.kill('SIGKILL');
  }
  await new Promise((resolve) => child.once('exit', resolve));
  assert.ok((await stat(socketPath)).isSocket());
}

const permitLoopbackOrigin = (address: string): string | undefined => (address === '127.0.0.1' ? undefined : defaultIsForbidden(address));

let dir: string;
let httpOrigin: Origin;
let echoOrigin: Origin;
let proxy: EgressProxy;
const events: EgressLogEvent[] = [];
const dialler = recordingConnect();
const names = tableResolve({ 'origin.test': ['127.0.0.1'] });

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-egress-test-'));
  httpOrigin = await startHttpOrigin();
  echoOrigin = await startEchoOrigin();
  proxy = await startEgressProxy({
    port: 0, policy: { mode: 'internet' }, resolve: names.resolve, connect: dialler.connect,
    isForbidden: permitLoopbackOrigin, log: (event) => events.push(event),
  });
});

after(async () => {
  await proxy.close();
  await httpOrigin.close();
  await echoOrigin.close();
  await rm(dir, { recursive: true, force: true });
  assert.ok(dialler.attempts.every((attempt) => attempt.address === '127.0.0.1'), 'nothing but 127.0.0.1 was ever dialled');
});

const viaProxy = (options: { path: string; method?: string; headers?: http.OutgoingHttpHeaders; agent?: http.Agent; body?: Buffer }) =>
  new Promise<{ response: http.IncomingMessage; body: Buffer; localPort: number | undefined }>((resolve, reject) => {
    const request = http.request({
      host: '127.0.0.1', port: proxy.port, method: options.method ?? 'GET', path: options.path,
      headers: options.headers, agent: options.agent,
    });
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ response, body: Buffer.concat(chunks), localPort: request.socket?.localPort }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(options.body);
  });

test('CONNECT tunnels bytes both ways, including bytes sent before the 200', async () => {
  const { socket, rest } = await openTunnel({ port: proxy.port! }, `origin.test:${echoOrigin.port}`, 'early;');
  try {
    const greeted = await readUntil(socket, rest, (text) => text.includes('hello\nearly;'));
    assert.equal(greeted, 'hello\nearly;');
    socket.write('ping');
    await readUntil(socket, Buffer.from(greeted), (text) => text.endsWith('ping'));
  } finally {
    socket.destroy();
  }
  assert.deepEqual(events.at(-1), { kind: 'allowed', host: 'origin.test', port: echoOrigin.port, addresses: ['127.0.0.1'] });
});

test('CONNECT tunnel half-close: the guest finishing its upload still gets the whole answer', async () => {
  const { socket, rest } = await openTunnel({ port: proxy.port! }, `origin.test:${echoOrigin.port}`);
  const chunks: Buffer[] = [rest];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.end('bye');
  await new Promise((resolve) => socket.once('close', resolve));
  assert.equal(Buffer.concat(chunks).toString(), 'hello\nbye');
});

test('plain GET is forwarded with the origin-form path, filtered headers and the origin\'s answer', async () => {
  const { response, body } = await viaProxy({
    path: `http://origin.test:${httpOrigin.port}/echo?x=1`,
    headers: { 'Proxy-Authorization': 'Basic c2VjcmV0', 'Proxy-Connection': 'keep-alive', 'X-Keep': 'me', Connection: 'close' },
  });
  assert.equal(response.statusCode, 201);
  assert.equal(response.statusMessage, 'Made It');
  assert.deepEqual(response.headers['set-cookie'], ['a=1', 'b=2']);
  assert.equal(response.headers['x-origin'], 'yes');
  const seen = JSON.parse(body.toString()) as { method: string; url: string; rawHeaders: string[] };
  assert.equal(seen.method, 'GET');
  assert.equal(seen.url, '/echo?x=1');
  const headerNames = seen.rawHeaders.filter((_, i) => i % 2 === 0).map((name) => name.toLowerCase());
  assert.ok(!headerNames.some((name) => name.startsWith('proxy-')), `no Proxy-* header reached the origin: ${headerNames}`);
  assert.equal(seen.rawHeaders[seen.rawHeaders.indexOf('Host') + 1], `origin.test:${httpOrigin.port}`);
  assert.equal(seen.rawHeaders[seen.rawHeaders.indexOf('X-Keep') + 1], 'me');
  // One origin connection per request: the proxy tells the origin so.
  assert.equal(seen.rawHeaders[seen.rawHeaders.indexOf('Connection') + 1], 'close');
});

test('several requests on one keep-alive client connection, each answered correctly', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const results = await Promise.all([1, 2, 3, 4].map((n) => viaProxy({ path: `http://origin.test:${httpOrigin.port}/echo/${n}`, agent })));
    assert.deepEqual(results.map(({ body }) => (JSON.parse(body.toString()) as { url: string }).url), ['/echo/1', '/echo/2', '/echo/3', '/echo/4']);
    assert.equal(new Set(results.map(({ localPort }) => localPort)).size, 1, 'all four used one client connection');
  } finally {
    agent.destroy();
  }
});

test('pipelined requests written in one go are answered in order', async () => {
  const target = `origin.test:${httpOrigin.port}`;
  const request = (n: number, last: boolean): string =>
    `GET http://${target}/echo/p${n} HTTP/1.1\r\nHost: ${target}\r\n${last ? 'Connection: close\r\n' : ''}\r\n`;
  const { body } = await exchange({ port: proxy.port! }, request(1, false) + request(2, false) + request(3, true));
  const order = [...body.matchAll(/"url":"(\/echo\/p\d)"/g)].map((match) => match[1]);
  assert.deepEqual(order, ['/echo/p1', '/echo/p2', '/echo/p3']);
});

test('request and response bodies stream through (5 MiB each way, chunked upload)', async () => {
  const upload = Buffer.alloc(5 * 1024 * 1024, 0x62);
  const posted = await viaProxy({
    method: 'POST', path: `http://origin.test:${httpOrigin.port}/echo`, headers: { 'Transfer-Encoding': 'chunked' }, body: upload,
  });
  const seen = JSON.parse(posted.body.toString()) as { length: number; sha256: string };
  assert.equal(seen.length, upload.length);
  assert.equal(seen.sha256, createHash('sha256').update(upload).digest('hex'));
  const big = await viaProxy({ path: `http://origin.test:${httpOrigin.port}/big?bytes=${5 * 1024 * 1024}` });
  assert.equal(big.body.length, 5 * 1024 * 1024);
  assert.equal(big.response.headers['content-length'], String(5 * 1024 * 1024));
});

test('an origin that refuses the connection gives 502 egress.connect_failed', async () => {
  const closed = net.createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as net.AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  const response = await exchange({ port: proxy.port! }, `CONNECT origin.test:${port} HTTP/1.1\r\n\r\n`);
  assert.equal(response.status, 502);
  assert.equal(response.headers['x-cocoon-egress-refused'], 'egress.connect_failed');
});

test('a connection that never completes times out with egress.connect_failed', async () => {
  const hanging = await startEgressProxy({
    port: 0, policy: { mode: 'internet' }, resolve: names.resolve, isForbidden: permitLoopbackOrigin,
    connect: () => new net.Socket(), connectTimeoutMs: 200,
  });
  try {
    const started = Date.now();
    const response = await exchange({ port: hanging.port! }, `GET http://origin.test:${httpOrigin.port}/ HTTP/1.1\r\nConnection: close\r\n\r\n`);
    assert.equal(response.status, 502);
    assert.equal(response.headers['x-cocoon-egress-refused'], 'egress.connect_failed');
    assert.ok(Date.now() - started < 5000);
  } finally {
    await hanging.close();
  }
});

test('unix socket: mode 0600, stale socket replaced, live socket and regular files left alone', async () => {
  const socketPath = path.join(dir, 'egress.sock');
  await leaveStaleSocket(socketPath);
  const unixProxy = await startEgressProxy({
    socketPath, policy: { mode: 'internet' }, resolve: names.resolve, connect: dialler.connect, isForbidden: permitLoopbackOrigin,
  });
  try {
    assert.equal(unixProxy.socketPath, socketPath);
    assert.equal(unixProxy.port, undefined);
    assert.equal((await stat(socketPath)).mode & 0o777, 0o600);
    const { socket, rest } = await openTunnel({ socketPath }, `origin.test:${echoOrigin.port}`);
    socket.write('over unix');
    await readUntil(socket, rest, (text) => text === 'hello\nover unix');
    socket.destroy();
    const refused = await exchange({ socketPath }, 'CONNECT 10.1.2.3:22 HTTP/1.1\r\n\r\n');
    assert.equal(refused.status, 403);
    await assert.rejects(startEgressProxy({ socketPath, policy: { mode: 'none' } }), (error) => isAppError(error, 'config.invalid'));
  } finally {
    await unixProxy.close();
  }
  await assert.rejects(stat(socketPath), { code: 'ENOENT' });
  const regularFile = path.join(dir, 'not-a-socket');
  await writeFile(regularFile, 'keep me');
  await assert.rejects(startEgressProxy({ socketPath: regularFile, policy: { mode: 'none' } }), (error) => isAppError(error, 'config.invalid'));
  assert.equal((await stat(regularFile)).size, 7);
});

test('TCP listeners are loopback only, and some listener is required', async () => {
  await assert.rejects(startEgressProxy({ host: '0.0.0.0', port: 0, policy: { mode: 'none' } }), (error) => isAppError(error, 'config.invalid'));
  await assert.rejects(startEgressProxy({ policy: { mode: 'none' } }), (error) => isAppError(error, 'config.invalid'));
  await assert.rejects(startEgressProxy({ port: 0, policy: { mode: 'internet', allow: [{ cidr: 'nope' }] } }), (error) => isAppError(error, 'config.invalid'));
});

test('stats count allowed and refused destinations and origin bytes', async () => {
  await exchange({ port: proxy.port! }, 'CONNECT 10.1.2.3:443 HTTP/1.1\r\n\r\n');
  await new Promise((resolve) => setTimeout(resolve, 50));
  const stats = proxy.stats();
  assert.ok(stats.allowed >= 5, JSON.stringify(stats));
  assert.ok((stats.refusedByCode['egress.forbidden_destination'] ?? 0) >= 1, JSON.stringify(stats));
  assert.ok(stats.bytesFromOrigins > 5 * 1024 * 1024, JSON.stringify(stats));
  assert.ok(stats.bytesToOrigins > 5 * 1024 * 1024, JSON.stringify(stats));
  for (const event of events) assert.deepEqual(Object.keys(event).sort(), event.kind === 'allowed' ? ['addresses', 'host', 'kind', 'port'] : ['addresses', 'host', 'kind', 'port', 'reason']);
});

test('an idle tunnel is closed after idleTimeoutMs', async () => {
  const idle = await startEgressProxy({
    port: 0, policy: { mode: 'internet' }, resolve: names.resolve, connect: dialler.connect, isForbidden: permitLoopbackOrigin, idleTimeoutMs: 200,
  });
  try {
    const { socket } = await openTunnel({ port: idle.port! }, `origin.test:${echoOrigin.port}`);
    const started = Date.now();
    socket.resume();
    await new Promise((resolve) => socket.once('close', resolve));
    assert.ok(Date.now() - started >= 150 && Date.now() - started < 5000);
  } finally {
    await idle.close();
  }
});

test('a guest that leaves while its name is resolving causes no connection', async () => {
  let answer: (addresses: string[]) => void = () => {};
  const attemptsBefore = dialler.attempts.length;
  const connectionsBefore = echoOrigin.connections();
  const slow = await startEgressProxy({
    port: 0, policy: { mode: 'internet' }, connect: dialler.connect, isForbidden: permitLoopbackOrigin,
    resolve: () => new Promise((resolve) => { answer = resolve; }),
  });
  try {
    const socket = net.connect(slow.port!, '127.0.0.1');
    socket.write(`CONNECT slow.test:${echoOrigin.port} HTTP/1.1\r\n\r\n`);
    await new Promise((resolve) => setTimeout(resolve, 100));
    socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    answer(['127.0.0.1']);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(dialler.attempts.length, attemptsBefore);
    assert.equal(echoOrigin.connections(), connectionsBefore);
    assert.equal(slow.stats().activeUpstreamConnections, 0);
  } finally {
    await slow.close();
  }
});
