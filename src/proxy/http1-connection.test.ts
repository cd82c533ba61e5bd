/**
 * The HTTP/1.1 data plane on real loopback sockets, byte by byte: raw clients, and guests that
 * are either Node's HTTP server (a strict parser: what the proxy sends must be valid HTTP) or raw
 * sockets that misbehave on purpose. Admission is a table here (server.test.ts has real tokens).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { after, test } from 'node:test';
import { ConnectGate } from './connect-gate.ts';
import { Http1Connection, type Http1Deps } from './http1-connection.ts';

const HOST = 'vm.test';
const TOKEN = 'ok';
const servers: net.Server[] = [];
after(() => {
  for (const server of servers) server.close();
});

interface Proxy {
  port: number;
  openLeases: () => number;
  logs: string[];
}

/** A proxy whose only MicroVM is `HOST`, reached at `guestPort`, admitted with X-Cocoon-Auth: ok. */
async function startProxy(guestPort: number, headTimeoutMs?: number): Promise<Proxy> {
  let open = 0;
  const logs: string[] = [];
  const deps: Http1Deps = {
    gate: new ConnectGate(),
    admit: async (host, _port, token) => {
      if (host !== HOST) return { problem: { status: 404, code: 'proxy.unknown_host', message: 'unknown host' } };
      if (token !== TOKEN) return { problem: { status: 401, code: 'token.missing', message: 'no token' } };
      open++;
      let released = false;
      const release = (): void => {
        if (!released) open--;
        released = true;
      };
      return { microvmId: 'vm', lease: { hostAddress: '127.0.0.1', hostPort: guestPort, guestPort: 8080, closed: new AbortController().signal, release } };
    },
    log: (line) => logs.push(line),
    ...(headTimeoutMs !== undefined && { headTimeoutMs }),
  };
  const server = await listen(net.createServer({ allowHalfOpen: true }, (socket) => new Http1Connection(socket, deps)));
  return { port: portOf(server), openLeases: () => open, logs };
}

async function listen(server: net.Server): Promise<net.Server> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

const portOf = (server: net.Server): number => (server.address() as AddressInfo).port;

/** A guest of Node's HTTP server: echoes what it got (method, url, headers, body) as JSON. */
async function echoGuest(): Promise<{ port: number; connections: () => number }> {
  let connections = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString(), trailers: req.trailers });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  server.on('connection', () => connections++);
  await listen(server);
  return { port: portOf(server), connections: () => connections };
}

/** A guest that answers every request head it reads with `answer(requestText, index)`, as raw bytes. */
async function rawGuest(answer: (request: string, index: number, socket: net.Socket) => string | undefined): Promise<{ port: number; requests: string[]; connections: () => number }> {
  const requests: string[] = [];
  let connections = 0;
  const server = net.createServer((socket) => {
    connections++;
    let text = '';
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
      let end: number;
      while ((end = text.indexOf('\r\n\r\n')) !== -1) {
        const request = text.slice(0, end + 4);
        text = text.slice(end + 4);
        requests.push(request);
        const reply = answer(request, requests.length - 1, socket);
        if (reply !== undefined) socket.write(reply, 'latin1');
      }
    });
    socket.on('error', () => {});
  });
  await listen(server);
  return { port: portOf(server), requests, connections: () => connections };
}

/** A raw client connection: what it received so far, and a wait for more. */
class Client {
  readonly socket: net.Socket;
  text = '';
  ended = false;
  private waiters: Array<() => void> = [];

  constructor(port: number) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.on('data', (chunk: Buffer) => {
      this.text += chunk.toString('latin1');
      this.wake();
    });
    this.socket.on('close', () => {
      this.ended = true;
      this.wake();
    });
    this.socket.on('error', () => {});
  }

  send(text: string): this {
    this.socket.write(text, 'latin1');
    return this;
  }

  /** Waits until `condition` holds on what arrived (or the connection closed: then it must hold anyway). */
  async until(condition: (text: string) => boolean, what: string): Promise<string> {
    const deadline = Date.now() + 10_000;
    while (!condition(this.text)) {
      if (this.ended || Date.now() > deadline) assert.fail(`${what}: got ${JSON.stringify(this.text)}${this.ended ? ' and the connection closed' : ''}`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 200);
      });
    }
    return this.text;
  }

  responses(count: number): Promise<string> {
    return this.until((text) => completeBodies(text, count), `${count} response(s)`);
  }

  closed(): Promise<string> {
    return this.until(() => this.ended, 'the connection closed');
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }
}

/** Whether the first `count` responses in `text` have all their Content-Length bytes. */
function completeBodies(text: string, count: number): boolean {
  let rest = text;
  for (let i = 0; i < count; i++) {
    const end = rest.indexOf('\r\n\r\n');
    if (end === -1) return false;
    const length = Number(/content-length: (\d+)/i.exec(rest.slice(0, end))?.[1] ?? 0);
    if (rest.length < end + 4 + length) return false;
    rest = rest.slice(end + 4 + length);
  }
  return true;
}

function bodiesOf(text: string): string[] {
  const bodies: string[] = [];
  let rest = text;
  for (let end = rest.indexOf('\r\n\r\n'); end !== -1; end = rest.indexOf('\r\n\r\n')) {
    const head = rest.slice(0, end);
    const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
    bodies.push(rest.slice(end + 4, end + 4 + length));
    rest = rest.slice(end + 4 + length);
  }
  return bodies;
}

const GET = (path = '/', extra = ''): string => `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\n${extra}\r\n`;

test('pipelined requests with bodies (length and chunked) are answered in order over one guest connection; trailers and the token stay right', async () => {
  const guest = await echoGuest();
  const proxy = await startProxy(guest.port);
  const client = new Client(proxy.port);
  client.send(`POST /one HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\nContent-Length: 5\r\n\r\nhello`
    + `POST /two HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n`
    + GET('/three'));
  const echoes = bodiesOf(await client.responses(3)).map((body) => JSON.parse(body) as { method: string; url: string; body: string; headers: Record<string, string>; trailers: Record<string, string> });
  assert.deepEqual(echoes.map((echo) => [echo.url, echo.body]), [['/one', 'hello'], ['/two', 'abcde'], ['/three', '']]);
  assert.deepEqual(echoes[1]!.trailers, { 'x-sum': '5' });
  for (const echo of echoes) assert.equal(echo.headers['x-cocoon-auth'], undefined);
  assert.equal(guest.connections(), 1);
  assert.equal(proxy.openLeases(), 0);
  client.socket.destroy();
});

test('smuggling shapes are refused with 400 request.invalid, the connection closed, and nothing reaches the guest', async () => {
  const guest = await rawGuest(() => 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n');
  const proxy = await startProxy(guest.port);
  for (const request of [
    `POST / HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    `POST / HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde`,
    `POST / HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`,
    `GET / HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\nX: a\r\n b\r\n\r\n`,
    `GET / HTTP/1.1\r\nHost: ${HOST}\r\nHost: other\r\nX-Cocoon-Auth: ${TOKEN}\r\n\r\n`,
    `GET http://${HOST}/ HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\n\r\n`,
  ]) {
    const text = await new Client(proxy.port).send(request).closed();
    assert.match(text, /^HTTP\/1\.1 400 Bad Request\r\n/, request);
    assert.match(text, /connection: close/);
    assert.equal(JSON.parse(bodiesOf(text)[0]!).error.code, 'request.invalid');
  }
  // A bad chunk after the head was admitted: the guest saw the head, the client loses its connection.
  const cut = await new Client(proxy.port).send(`POST / HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`).closed();
  assert.equal(cut, '');
  assert.equal(guest.requests.filter((request) => !request.startsWith('POST / HTTP/1.1\r\nHost')).length, 0);
  assert.equal(proxy.openLeases(), 0);
});

test('heads over 32 KiB: 431 request.headers_too_large', async () => {
  const proxy = await startProxy(1);
  const text = await new Client(proxy.port).send(`GET / HTTP/1.1\r\nHost: ${HOST}\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`).closed();
  assert.match(text, /^HTTP\/1\.1 431 /);
  assert.equal(JSON.parse(bodiesOf(text)[0]!).error.code, 'request.headers_too_large');
});

test('a guest that answers more than it was asked loses its connection; the client sees only the real answer', async () => {
  const guest = await rawGuest((_request, index) => (index === 0
    ? 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged'
    : 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal'));
  const proxy = await startProxy(guest.port);
  const client = new Client(proxy.port).send(GET('/first'));
  await client.responses(1);
  client.send(GET('/second'));
  const text = await client.responses(2);
  assert.deepEqual(bodiesOf(text), ['ok', 'real']);
  assert.doesNotMatch(text, /forged/);
  assert.equal(guest.connections(), 2, 'the second request went on a new connection');
  client.socket.destroy();
});

test('guests that break HTTP: 502 proxy.upstream_failed before a response starts (the client connection goes on), a cut after it', async () => {
  const guest = await rawGuest((request, _index, socket) => {
    if (request.startsWith('GET /garbage')) return 'HTTP/1.1 200 OK\r\nBad Header\r\n\r\n';
    if (request.startsWith('GET /both')) return 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n';
    if (request.startsWith('GET /hangup')) {
      socket.end();
      return undefined;
    }
    if (request.startsWith('GET /badchunk')) return 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX';
    return 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';
  });
  const proxy = await startProxy(guest.port);
  const client = new Client(proxy.port);
  let count = 0;
  for (const path of ['/garbage', '/both', '/hangup']) {
    const text = await client.send(GET(path)).responses(++count);
    const last = bodiesOf(text).at(-1)!;
    assert.equal(JSON.parse(last).error.code, 'proxy.upstream_failed', path);
  }
  assert.deepEqual(bodiesOf(await client.send(GET('/fine')).responses(++count)).at(-1), 'ok');
  // A malformed chunk: the response is cut where it broke (its head may or may not have left).
  const text = await new Client(proxy.port).send(GET('/badchunk')).closed();
  assert.doesNotMatch(text, /XX/);
  assert.ok(proxy.logs.some((line) => line.includes('malformed')), proxy.logs.join('\n'));
  client.socket.destroy();
});

test('a body that ends with the guest\'s connection ends the client\'s; HTTP/1.0 clients get one answer per connection', async () => {
  const guest = await rawGuest((request, _index, socket) => {
    socket.end(`HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close from ${request.split(' ')[1]}`);
    return undefined;
  });
  const proxy = await startProxy(guest.port);
  const text = await new Client(proxy.port).send(GET('/stream')).closed();
  assert.match(text, /^HTTP\/1\.1 200 OK\r\nContent-Type: text\/plain\r\nConnection: close\r\n\r\nuntil close from \/stream$/);
  const old = await new Client(proxy.port).send(`GET /old HTTP/1.0\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\n\r\n`).closed();
  assert.match(old, /until close from \/old$/);
  assert.match(guest.requests.at(-1)!, /^GET \/old HTTP\/1\.0\r\n/);
  assert.equal(proxy.openLeases(), 0);
});

test('a kept guest connection closed between requests: the next request is sent again on a new one, unseen by the client', async () => {
  const guest = await rawGuest((_request, index, socket) => {
    socket.end(`HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n${index}`);
    return undefined;
  });
  const proxy = await startProxy(guest.port);
  const client = new Client(proxy.port).send(GET('/a'));
  await client.responses(1);
  const text = await client.send(GET('/b')).responses(2);
  assert.deepEqual(bodiesOf(text), ['0', '1']);
  client.socket.destroy();
});

test('refusals keep the connection when no body is left unread; HEAD gets no body; Expect: 100-continue is answered once admitted', async () => {
  const guest = await echoGuest();
  const proxy = await startProxy(guest.port);
  const client = new Client(proxy.port);
  const head = await client.send(`HEAD / HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`).until((t) => t.includes('\r\n\r\n'), 'a 401');
  assert.match(head, /^HTTP\/1\.1 401 Unauthorized\r\n[^]*content-length: \d+\r\n\r\n$/);
  const text = await client.send(GET('/after')).until((t) => t.length > head.length && completeBodies(t.slice(head.length), 1), 'the next answer');
  assert.equal(JSON.parse(bodiesOf(text.slice(head.length))[0]!).url, '/after');

  const expecting = new Client(proxy.port).send(`PUT /up HTTP/1.1\r\nHost: ${HOST}\r\nX-Cocoon-Auth: ${TOKEN}\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n`);
  await expecting.until((t) => t === 'HTTP/1.1 100 Continue\r\n\r\n', '100 Continue');
  const answer = await expecting.send('abc').until((t) => t.includes('"body":"abc"'), 'the answer');
  assert.equal(JSON.parse(answer.slice(answer.indexOf('{'))).headers.expect, undefined);
  const refused = await new Client(proxy.port).send(`PUT /up HTTP/1.1\r\nHost: ${HOST}\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n`).closed();
  assert.match(refused, /^HTTP\/1\.1 401 [^]*connection: close\r\n/);
  client.socket.destroy();
  expecting.socket.destroy();
});

test('interim 1xx answers pass on; chunked responses arrive as the guest framed them', async () => {
  const guest = await rawGuest(() => 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n'
    + 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n4\r\nwiki\r\n0\r\n\r\n');
  const proxy = await startProxy(guest.port);
  const client = new Client(proxy.port).send(GET('/'));
  const text = await client.until((t) => t.endsWith('0\r\n\r\n'), 'the chunked answer');
  assert.equal(text, 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n');
  client.socket.destroy();
});

test('a client that ends its side after the request still gets the answer, then the connection closes', async () => {
  const guest = await echoGuest();
  const proxy = await startProxy(guest.port);
  const client = new Client(proxy.port);
  client.socket.end(GET('/half'), 'latin1');
  const text = await client.closed();
  assert.equal(JSON.parse(bodiesOf(text)[0]!).url, '/half');
  assert.equal(proxy.openLeases(), 0);
});

test('bulk bodies leave in batches, and a batch never waits for more bytes than the guest sent', async () => {
  let guestSocket: net.Socket | undefined;
  const first = 'a'.repeat(400 * 1024);
  const guest = await rawGuest((_request, _index, socket) => {
    guestSocket = socket;
    // A small piece of its own after the bulk (a separate read): it must not wait for more.
    setTimeout(() => socket.write('5\r\nsmall\r\n'), 50);
    return `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n${first.length.toString(16)}\r\n${first}\r\n`;
  });
  const proxy = await startProxy(guest.port);
  const client = new Client(proxy.port).send(GET('/bulk'));
  // The guest sends nothing more until the client has it all: held bytes would never arrive.
  await client.until((text) => text.includes(`${first}\r\n5\r\nsmall\r\n`), 'all sent so far, while the guest waits');
  guestSocket!.write('3\r\nend\r\n0\r\n\r\n');
  const text = await client.until((t) => t.endsWith('0\r\n\r\n'), 'the end');
  assert.ok(text.endsWith(`${first}\r\n5\r\nsmall\r\n3\r\nend\r\n0\r\n\r\n`));
  client.socket.destroy();
});

test('a request head must be whole in time: a client trickling one loses its connection, one in time is served', async () => {
  const guest = await echoGuest();
  const proxy = await startProxy(guest.port, 300);
  const slow = new Client(proxy.port).send('GET / HTTP/1.1\r\nHost: ');
  const trickle = setInterval(() => slow.send('x'), 50);
  try {
    assert.equal(await slow.closed(), '');
  } finally {
    clearInterval(trickle);
  }
  const client = new Client(proxy.port).send(GET('/first'));
  await client.responses(1);
  // The next head arrives long after the deadline would have passed for the first one.
  await new Promise((resolve) => setTimeout(resolve, 400));
  const text = await client.send(GET('/second')).responses(2);
  assert.equal(JSON.parse(bodiesOf(text)[1]!).url, '/second');
  client.socket.destroy();
});
