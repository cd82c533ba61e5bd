/**
 * The endpoint proxy in process, in front of real servers on loopback (an HTTP/1.1 app with a
 * WebSocket echo, a gRPC server) and with real tokens. The MicroVM side is a fixed table of
 * routes: the manager's part (resume, activity, real VMs) is test/integration/proxy.test.ts.
 */
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WebSocketServer } from 'ws';
import { AppError } from '../errors/errors.ts';
import { lookupLoopback } from '../host/sockets.ts';
import { TokenService } from '../tokens/index.ts';
import type { TrafficLease, TrafficOptions } from '../vms/manager.ts';
import { EndpointProxy } from './server.ts';
import {
  ECHO_SERVICE, echoClient, grpcChat, grpcUnary, metadataOf, nextMessage, openWebSocket, requestH1, requestH2, type Endpoint,
} from './test-support.ts';
import { ensureProxyTls } from './tls.ts';

const DOMAIN = 'cocoon.localhost';
const VM = 'mvm-00000000-0000-4000-8000-000000000001';
const OTHER_VM = 'mvm-00000000-0000-4000-8000-000000000002';
const DOWN_VM = 'mvm-00000000-0000-4000-8000-000000000003';
const APP_PORT = 8080;
const GRPC_PORT = 50051;

let dir: string;
let tokens: TokenService;
let proxy: EndpointProxy;
let app: http.Server;
let grpcServer: grpc.Server;
let ca: string;
let port: number;
let h2cPort: number;
let token: string;
let allPortsToken: string;
const seen: { requests: number; headers: http.IncomingHttpHeaders[]; closedEarly: number } = { requests: 0, headers: [], closedEarly: 0 };
const open = new Map<string, number>();

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-proxy-'));
  tokens = await TokenService.open(dir);
  const tls = await ensureProxyTls({ dataDir: dir, domain: DOMAIN });
  ca = await readFile(tls.caPath!, 'utf8');
  app = await startApp();
  grpcServer = await startGrpc();
  const hostPorts = new Map<number, number>([[APP_PORT, (app.address() as AddressInfo).port], [GRPC_PORT, grpcPortOf(grpcServer)]]);
  const routes = new Map([[VM, hostPorts], [OTHER_VM, hostPorts], [DOWN_VM, new Map([[APP_PORT, 1]])]]);
  const leaseOn = (microvmId: string, chosen: number): TrafficLease => {
    const hostPort = routes.get(microvmId)!.get(chosen);
    if (hostPort === undefined) throw new AppError('proxy.port_not_exposed', `port ${chosen} is not exposed`);
    open.set(microvmId, (open.get(microvmId) ?? 0) + 1);
    let released = false;
    return {
      hostPort, hostAddress: '127.0.0.1', guestPort: chosen, closed: new AbortController().signal,
      release: () => {
        if (!released) open.set(microvmId, open.get(microvmId)! - 1);
        released = true;
      },
    };
  };
  // Like the manager: at once when the token was seen before, else after the (async) check.
  const microvms = {
    async openForTraffic(microvmId: string, guestPort: number | undefined, options: TrafficOptions): Promise<TrafficLease> {
      if (!routes.has(microvmId)) throw new AppError('proxy.unknown_host', `no MicroVM ${microvmId}`);
      await options.authorize(guestPort ?? APP_PORT);
      return leaseOn(microvmId, guestPort ?? APP_PORT);
    },
    openForTrafficNow(microvmId: string, guestPort: number | undefined, authorizeNow: (port: number) => boolean): TrafficLease | undefined {
      if (!routes.has(microvmId)) return undefined;
      return authorizeNow(guestPort ?? APP_PORT) ? leaseOn(microvmId, guestPort ?? APP_PORT) : undefined;
    },
  };
  proxy = new EndpointProxy({ domain: DOMAIN, microvms, tokens, tls, log: (line) => console.log(`# ${line}`) });
  ({ port, h2cPort } = (await proxy.listen({ port: 0, h2cPort: 0 })) as { port: number; h2cPort: number });
  token = (await tokens.mint({ microvmId: VM, ports: { ranges: [{ from: APP_PORT, to: APP_PORT }] }, expiresInMinutes: 5 })).token;
  allPortsToken = (await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 5 })).token;
});

after(async () => {
  await proxy?.close();
  app?.closeAllConnections();
  await new Promise((resolve) => app?.close(resolve));
  grpcServer?.forceShutdown();
  await rm(dir, { recursive: true, force: true });
});

function endpoint(microvmId = VM, prefix = ''): Endpoint {
  return { host: `${prefix}${microvmId}.${DOMAIN}`, port, ca };
}

const auth = (value = token) => ({ 'x-cocoon-auth': value });

describe('HTTP/1.1 and HTTP/2', () => {
  for (const [name, send] of [['HTTP/1.1', requestH1], ['HTTP/2', requestH2]] as const) {
    test(`${name}: routed to the app port; x-cocoon-* and hop-by-hop headers stripped, X-Forwarded-* added`, async () => {
      const answer = await send(endpoint(), { path: '/headers?x=1', headers: { ...auth(), 'x-cocoon-port': '8080', 'x-cocoon-other': 'y', 'x-forwarded-for': '192.0.2.7', 'x-mine': 'kept' } });
      assert.equal(answer.status, 200, answer.body.toString());
      assert.equal(answer.httpVersion, name === 'HTTP/1.1' ? '1.1' : '2.0');
      const headers = JSON.parse(answer.body.toString()) as Record<string, string>;
      assert.equal(headers['x-mine'], 'kept');
      assert.deepEqual(Object.keys(headers).filter((key) => key.startsWith('x-cocoon-')), []);
      assert.equal(headers['x-forwarded-for'], '192.0.2.7, 127.0.0.1');
      assert.equal(headers['x-forwarded-proto'], 'https');
      assert.equal(headers['x-forwarded-host'], `${VM}.${DOMAIN}:${port}`);
      assert.equal(headers.host, `${VM}.${DOMAIN}:${port}`);
      assert.equal(answer.headers['x-app'], 'yes');
    });

    test(`${name}: large bodies stream both ways intact`, async () => {
      const body = Buffer.from(Buffer.alloc(24 * 2 ** 20).map((_, i) => (i * 31) % 256));
      const echoed = await send(endpoint(), { method: 'POST', path: '/echo', headers: auth(), body });
      assert.equal(echoed.status, 200);
      assert.equal(sha256(echoed.body), sha256(body));
      const big = await send(endpoint(), { path: '/big?mb=32', headers: auth() });
      assert.equal(big.body.length, 32 * 2 ** 20);
      assert.equal(sha256(big.body), sha256(bigBody(32)));
    });

    test(`${name}: server-sent events arrive one by one, not at the end`, async () => {
      const arrivals: number[] = [];
      const started = Date.now();
      const answer = await send(endpoint(), { path: '/sse?n=5', headers: auth(), onChunk: () => arrivals.push(Date.now() - started) });
      assert.equal(answer.headers['content-type'], 'text/event-stream');
      assert.equal((answer.body.toString().match(/^data: /gm) ?? []).length, 5);
      assert.ok(arrivals.length >= 5, `chunks: ${arrivals.length}`);
      // The events are 100 ms apart: the first must arrive well before the last.
      assert.ok(arrivals.at(-1)! - arrivals[0]! >= 300, `arrivals ${arrivals.join(', ')}`);
    });
  }

  test('the plain-text port speaks HTTP/1.1 and prior-knowledge h2c', async () => {
    const h1 = await plainRequest(h2cPort, `${VM}.${DOMAIN}`);
    assert.equal(h1.status, 200);
    assert.equal(JSON.parse(h1.body)['x-forwarded-proto'], 'http');
    const session = http2.connect(`http://${VM}.${DOMAIN}:${h2cPort}`, { lookup: lookupLoopback });
    try {
      for (const round of [1, 2]) {
        const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
          const stream = session.request({ ':path': '/headers', ...auth() });
          let status = 0;
          let text = '';
          stream.on('response', (h) => { status = Number(h[':status']); });
          stream.on('data', (chunk: Buffer) => { text += chunk.toString(); });
          stream.on('end', () => resolve({ status, body: text }));
          stream.on('error', reject);
        });
        assert.equal(answer.status, 200, `round ${round}`);
        assert.equal(JSON.parse(answer.body)['x-forwarded-proto'], 'http');
      }
    } finally {
      session.close();
    }
  });

  test('a client that goes away mid-response closes the upstream request', async () => {
    const before = seen.closedEarly;
    const req = https.request({ host: endpoint().host, port, ca, lookup: lookupLoopback, path: '/sse?n=100', headers: auth(), agent: false });
    req.on('response', (res) => res.once('data', () => req.destroy()));
    req.on('error', () => {});
    req.end();
    await waitFor(() => seen.closedEarly > before);
  });

  test('leases are released when requests end', async () => {
    await waitFor(() => open.get(VM) === 0);
  });
});

describe('refusals: nothing reaches the app', () => {
  test('missing, forged, expired, other-VM and wrong-port tokens, unknown hosts and bad ports', async () => {
    const expired = await expiredToken();
    const foreign = (await (await TokenService.open(path.join(dir, 'elsewhere'))).mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 5 })).token;
    const otherVmToken = (await tokens.mint({ microvmId: OTHER_VM, ports: { all: true }, expiresInMinutes: 5 })).token;
    const tampered = `${token.slice(0, -6)}${token.slice(-6) === 'AAAAAA' ? 'BBBBBB' : 'AAAAAA'}`;
    const cases: Array<[string, Endpoint, Record<string, string>, number, string]> = [
      ['missing', endpoint(), {}, 401, 'token.missing'],
      ['garbage', endpoint(), auth('not-a-token'), 401, 'token.invalid'],
      ['tampered', endpoint(), auth(tampered), 401, 'token.invalid'],
      ['another host\'s key', endpoint(), auth(foreign), 401, 'token.invalid'],
      ['expired', endpoint(), auth(expired), 401, 'token.expired'],
      ['other VM', endpoint(), auth(otherVmToken), 403, 'token.wrong_microvm'],
      ['wrong port by header', endpoint(), { ...auth(), 'x-cocoon-port': String(GRPC_PORT) }, 403, 'token.port_not_allowed'],
      ['wrong port by host', endpoint(VM, `${GRPC_PORT}-`), auth(), 403, 'token.port_not_allowed'],
      ['bad port header', endpoint(), { ...auth(), 'x-cocoon-port': 'http' }, 400, 'request.invalid'],
      ['unknown VM', endpoint('mvm-00000000-0000-4000-8000-00000000000f'), auth(), 404, 'proxy.unknown_host'],
      ['not an endpoint', { host: `www.${DOMAIN}`, port, ca }, auth(), 404, 'proxy.unknown_host'],
      ['port not exposed', endpoint(VM, '9999-'), auth(allPortsToken), 404, 'proxy.port_not_exposed'],
    ];
    const before = seen.requests;
    for (const [name, target, headers, status, code] of cases) {
      for (const send of [requestH1, requestH2]) {
        const answer = await send(target, { headers });
        assert.equal(answer.status, status, `${name}: ${answer.body.toString()}`);
        assert.equal(answer.headers['content-type'], 'application/json; charset=utf-8');
        const body = JSON.parse(answer.body.toString()) as { error: { code: string; message: string } };
        assert.equal(body.error.code, code, name);
        assert.ok(!body.error.message.includes(headers['x-cocoon-auth'] ?? '\0'), `${name}: no token in the message`);
      }
    }
    assert.equal(seen.requests, before, 'no refused request reached the app');
  });

  test('a guest that does not answer: 502 proxy.upstream_failed, no internals', async () => {
    const downToken = (await tokens.mint({ microvmId: DOWN_VM, ports: { all: true }, expiresInMinutes: 5 })).token;
    for (const send of [requestH1, requestH2]) {
      const answer = await send(endpoint(DOWN_VM), { headers: auth(downToken) });
      assert.equal(answer.status, 502);
      assert.deepEqual(JSON.parse(answer.body.toString()), { error: { code: 'proxy.upstream_failed', message: 'the MicroVM could not be reached' } });
    }
  });
});

describe('gRPC', () => {
  test('unary and bidirectional streaming calls with trailers, by host port or X-Cocoon-Port', async () => {
    for (const target of [endpoint(VM, `${GRPC_PORT}-`), endpoint()]) {
      const client = echoClient(target);
      try {
        const metadata = metadataOf({ 'x-cocoon-auth': allPortsToken, ...(target.host.startsWith(VM) && { 'x-cocoon-port': String(GRPC_PORT) }) });
        const unary = await grpcUnary(client, 'hi', metadata);
        assert.equal(unary.status.code, grpc.status.OK, unary.status.details);
        assert.deepEqual(unary.messages, ['echo: hi']);
        assert.deepEqual(unary.status.metadata.get('x-echo-count'), ['1']);
        const chat = await grpcChat(client, ['a', 'b', 'c'], metadata);
        assert.equal(chat.status.code, grpc.status.OK, chat.status.details);
        assert.deepEqual(chat.messages, ['echo: a', 'echo: b', 'echo: c', 'bye']);
        assert.deepEqual(chat.status.metadata.get('x-echo-count'), ['3']);
      } finally {
        client.close();
      }
    }
  });

  test('refusals are gRPC statuses that carry the code', async () => {
    const client = echoClient(endpoint(VM, `${GRPC_PORT}-`));
    try {
      const missing = await grpcUnary(client, 'hi', metadataOf({}));
      assert.equal(missing.status.code, grpc.status.UNAUTHENTICATED);
      assert.match(missing.status.details, /^token\.missing: /);
      const wrongPort = await grpcUnary(client, 'hi', metadataOf({ 'x-cocoon-auth': token }));
      assert.equal(wrongPort.status.code, grpc.status.PERMISSION_DENIED);
      assert.match(wrongPort.status.details, /^token\.port_not_allowed: /);
    } finally {
      client.close();
    }
  });
});

describe('WebSockets', () => {
  test('header auth: an echo, and the lease held while the socket is open', async () => {
    const { ws } = await openWebSocket(endpoint(), { headers: auth() });
    try {
      const reply = nextMessage(ws);
      ws.send('hello');
      assert.equal(await reply, 'echo: hello');
      assert.equal(open.get(VM), 1);
    } finally {
      ws.close();
    }
    await waitFor(() => open.get(VM) === 0);
  });

  test('subprotocol auth (browsers): ours are stripped, others forwarded, and an answer chosen when needed', async () => {
    const plain = await openWebSocket(endpoint(), { protocols: [`cocoon.auth.${allPortsToken}`, `cocoon.port.${APP_PORT}`] });
    assert.equal(plain.ws.protocol, `cocoon.port.${APP_PORT}`);
    assert.equal(plain.headers['x-offered-protocols'], 'none');
    const reply = nextMessage(plain.ws);
    plain.ws.send('x'.repeat(100_000));
    assert.equal(await reply, `echo: ${'x'.repeat(100_000)}`);
    plain.ws.close();

    const chat = await openWebSocket(endpoint(), { protocols: ['chat', `cocoon.auth.${token}`] });
    assert.equal(chat.ws.protocol, 'chat');
    assert.equal(chat.headers['x-offered-protocols'], 'chat');
    chat.ws.close();
  });

  test('refused upgrades answer with the code and never reach the app', async () => {
    const before = seen.requests;
    await assert.rejects(openWebSocket(endpoint(), { protocols: ['cocoon.auth.forged'] }),
      (error: { status?: number; body?: string }) => error.status === 401 && JSON.parse(error.body!).error.code === 'token.invalid');
    await assert.rejects(openWebSocket(endpoint(), { protocols: [`cocoon.auth.${token}`, `cocoon.port.${GRPC_PORT}`] }),
      (error: { status?: number; body?: string }) => error.status === 403 && JSON.parse(error.body!).error.code === 'token.port_not_allowed');
    assert.equal(seen.requests, before);
  });
});

// --- the servers behind the proxy ---

function bigBody(mb: number): Buffer {
  const block = Buffer.alloc(64 * 1024).map((_, i) => i % 251);
  return Buffer.concat(Array.from({ length: mb * 16 }, () => block));
}

async function startApp(): Promise<http.Server> {
  const block = bigBody(1).subarray(0, 64 * 1024);
  const server = http.createServer((req, res) => {
    seen.requests += 1;
    seen.headers.push(req.headers);
    res.setHeader('x-app', 'yes');
    const url = new URL(req.url!, 'http://app');
    if (url.pathname === '/headers') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(req.headers));
    } else if (url.pathname === '/echo') {
      req.pipe(res);
    } else if (url.pathname === '/big') {
      let left = Number(url.searchParams.get('mb')) * 16;
      const write = (): void => {
        while (left-- > 0) if (!res.write(block)) return void res.once('drain', write);
        res.end();
      };
      write();
    } else if (url.pathname === '/sse') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      let sent = 0;
      const timer = setInterval(() => {
        res.write(`data: ${sent}\n\n`);
        if (++sent >= Number(url.searchParams.get('n'))) {
          clearInterval(timer);
          res.end();
        }
      }, 100);
      res.on('close', () => {
        clearInterval(timer);
        if (!res.writableFinished) seen.closedEarly += 1;
      });
    } else {
      res.end('ok');
    }
  });
  const wss = new WebSocketServer({ noServer: true, handleProtocols: (protocols) => (protocols.has('chat') ? 'chat' : false) });
  server.on('upgrade', (req, socket, head) => {
    const offered = req.headers['sec-websocket-protocol'] ?? 'none';
    wss.once('headers', (headers) => headers.push(`X-Offered-Protocols: ${offered}`));
    wss.handleUpgrade(req, socket, head, (ws) => ws.on('message', (data) => ws.send(`echo: ${String(data)}`)));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

async function startGrpc(): Promise<grpc.Server> {
  const server = new grpc.Server();
  server.addService(ECHO_SERVICE, {
    Unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      callback(null, Buffer.concat([Buffer.from('echo: '), call.request]), metadataOf({ 'x-echo-count': '1' }));
    },
    Chat: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      let count = 0;
      call.on('data', (message: Buffer) => {
        count += 1;
        call.write(Buffer.concat([Buffer.from('echo: '), message]));
      });
      call.on('end', () => {
        call.write(Buffer.from('bye'));
        call.end(metadataOf({ 'x-echo-count': String(count) }));
      });
    },
  });
  const boundPort = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, p) => (error ? reject(error) : resolve(p))));
  (server as unknown as { boundPort: number }).boundPort = boundPort;
  return server;
}

function grpcPortOf(server: grpc.Server): number {
  return (server as unknown as { boundPort: number }).boundPort;
}

async function expiredToken(): Promise<string> {
  const past = await TokenService.open(dir, { now: () => Date.now() - 2 * 3_600_000 });
  return (await past.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 1 })).token;
}

function plainRequest(plainPort: number, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: plainPort, path: '/headers', headers: { host, ...auth() }, agent: false }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => { body += chunk.toString(); });
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    }).on('error', reject);
  });
}

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
