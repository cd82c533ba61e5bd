/**
 * Refusals, with the REAL forbidden-range predicate. Each case must be answered with the right
 * status and `X-Cocoon-Egress-Refused` code, and nothing may be dialled: the loopback origin's
 * connection counter stays at 0 and the recording dialler sees no attempt.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { defaultResolve } from './dial.ts';
import type { EgressLogEvent } from './forward.ts';
import { startEgressProxy, type EgressProxy } from './proxy.ts';
import { exchange, recordingConnect, startHttpOrigin, tableResolve, type Origin, type RawResponse } from './test-support.ts';

let origin: Origin;
let proxy: EgressProxy;
let events: EgressLogEvent[] = [];
const dialler = recordingConnect();
const names = tableResolve({
  'internal.test': ['10.0.0.5'],
  'metadata.test': ['169.254.169.254'],
  'rebind.test': ['203.0.113.7', '127.0.0.1'],
  'mapped.test': ['::ffff:127.0.0.1'],
  'public.test': ['203.0.113.7'],
});
// `localhost` and `*.localhost` go through the real default resolver, which answers it without asking DNS.
const resolve = (hostname: string): Promise<string[]> => (hostname === 'localhost' || hostname.endsWith('.localhost') ? defaultResolve(hostname) : names.resolve(hostname));

before(async () => {
  origin = await startHttpOrigin();
  proxy = await startEgressProxy({ port: 0, policy: { mode: 'internet' }, resolve, connect: dialler.connect, log: (event) => events.push(event) });
});
beforeEach(() => { events = []; });
after(async () => {
  await proxy.close();
  await origin.close();
});

function assertRefused(response: RawResponse, status: number, code: string): void {
  assert.equal(response.status, status, `status for ${code}: ${response.body}`);
  assert.equal(response.headers['x-cocoon-egress-refused'], code);
  assert.match(response.headers['content-type'] ?? '', /^text\/plain/);
  assert.match(response.body, /^cocoon egress proxy refused: /);
  assert.equal(origin.connections(), 0, 'the loopback origin was never reached');
  assert.deepEqual(dialler.attempts, [], 'no connection was attempted');
}

const connectTo = (target: string): Promise<RawResponse> => exchange({ port: proxy.port! }, `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
const getUrl = (url: string, via = proxy): Promise<RawResponse> =>
  exchange({ port: via.port! }, `GET ${url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);

const forbidden: Array<[string, () => Promise<RawResponse>]> = [
  ['CONNECT to the loopback origin by IP', () => connectTo(`127.0.0.1:${origin.port}`)],
  ['CONNECT localhost', () => connectTo(`localhost:${origin.port}`)],
  ['CONNECT sub.localhost', () => connectTo(`api.localhost:${origin.port}`)],
  ['GET the cloud metadata service', () => getUrl('http://169.254.169.254/latest/meta-data/')],
  ['a name that resolves to 10.0.0.5', () => connectTo('internal.test:443')],
  ['a name that resolves to the metadata address', () => getUrl('http://metadata.test/latest/meta-data/')],
  ['a name with one public and one loopback address (rebinding)', () => connectTo(`rebind.test:${origin.port}`)],
  ['a name that resolves to ::ffff:127.0.0.1', () => connectTo(`mapped.test:${origin.port}`)],
  ['CONNECT [::1]', () => connectTo(`[::1]:${origin.port}`)],
  ['CONNECT [::ffff:127.0.0.1]', () => connectTo(`[::ffff:127.0.0.1]:${origin.port}`)],
  ['CONNECT [::ffff:7f00:1]', () => connectTo(`[::ffff:7f00:1]:${origin.port}`)],
  ['CONNECT [64:ff9b::7f00:1] (NAT64 of loopback)', () => connectTo(`[64:ff9b::7f00:1]:${origin.port}`)],
  ['CONNECT [fe80::1%lo]', () => connectTo('[fe80::1%lo]:80')],
  ['CONNECT 0x7f000001 (hex IPv4)', () => connectTo(`0x7f000001:${origin.port}`)],
  ['CONNECT 2130706433 (decimal IPv4)', () => connectTo(`2130706433:${origin.port}`)],
  ['CONNECT 127.1 (short IPv4)', () => connectTo(`127.1:${origin.port}`)],
  ['CONNECT 0177.0.0.1 (octal IPv4)', () => connectTo(`0177.0.0.1:${origin.port}`)],
  ['CONNECT 0.0.0.0', () => connectTo(`0.0.0.0:${origin.port}`)],
  ['GET http://2130706433/ (decimal IPv4 in a URL)', () => getUrl(`http://2130706433:${origin.port}/`)],
  ['GET http://[::1]/', () => getUrl(`http://[::1]:${origin.port}/`)],
  ['GET the proxy\'s own guest-side address', () => getUrl('http://10.0.2.100:3128/')],
  ['GET slirp\'s host alias 10.0.2.2', () => getUrl(`http://10.0.2.2:${origin.port}/`)],
  ['CONNECT to private 192.168.1.1', () => connectTo('192.168.1.1:22')],
  ['CONNECT to CGNAT 100.64.0.1', () => connectTo('100.64.0.1:443')],
];

for (const [name, send] of forbidden) {
  test(`refused as forbidden_destination: ${name}`, async () => {
    assertRefused(await send(), 403, 'egress.forbidden_destination');
    assert.equal(events.length, 1);
    assert.equal(events[0]!.kind, 'refused');
    assert.equal(events[0]!.reason, 'egress.forbidden_destination');
  });
}

test('the host\'s own interface addresses are forbidden', async () => {
  const { networkInterfaces } = await import('node:os');
  const own = Object.values(networkInterfaces()).flatMap((entries) => entries ?? []).map((entry) => entry.address);
  for (const address of own) {
    const target = address.includes(':') ? `[${address}]:80` : `${address}:80`;
    assertRefused(await connectTo(target), 403, 'egress.forbidden_destination');
  }
});

test('mode none refuses everything, without resolving the name', async () => {
  const asked = names.asked.length;
  const closed = await startEgressProxy({ port: 0, policy: { mode: 'none' }, resolve, connect: dialler.connect });
  try {
    assertRefused(await exchange({ port: closed.port! }, 'CONNECT public.test:443 HTTP/1.1\r\n\r\n'), 403, 'egress.mode_none');
    assertRefused(await getUrl('http://public.test/', closed), 403, 'egress.mode_none');
    assertRefused(await exchange({ port: closed.port! }, `CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\n\r\n`), 403, 'egress.mode_none');
    assert.equal(names.asked.length, asked);
  } finally {
    await closed.close();
  }
});

test('allow-list misses are refused as not_allowed; names off the list are never resolved', async () => {
  const listed = await startEgressProxy({
    port: 0, policy: { mode: 'internet', allow: [{ domain: 'public.test', ports: [443] }] }, resolve, connect: dialler.connect,
  });
  try {
    const asked = names.asked.length;
    assertRefused(await exchange({ port: listed.port! }, 'CONNECT elsewhere.test:443 HTTP/1.1\r\n\r\n'), 403, 'egress.not_allowed');
    assertRefused(await exchange({ port: listed.port! }, 'CONNECT public.test:22 HTTP/1.1\r\n\r\n'), 403, 'egress.not_allowed');
    assertRefused(await getUrl('http://203.0.113.7/', listed), 403, 'egress.not_allowed');
    assert.equal(names.asked.length, asked, 'no name was sent to the resolver');
  } finally {
    await listed.close();
  }
});

test('an allow-list entry cannot re-open a forbidden range', async () => {
  const listed = await startEgressProxy({
    port: 0, policy: { mode: 'internet', allow: [{ cidr: '127.0.0.0/8' }, { domain: 'internal.test' }] }, resolve, connect: dialler.connect,
  });
  try {
    assertRefused(await exchange({ port: listed.port! }, `CONNECT 127.0.0.1:${origin.port} HTTP/1.1\r\n\r\n`), 403, 'egress.forbidden_destination');
    assertRefused(await exchange({ port: listed.port! }, 'CONNECT internal.test:443 HTTP/1.1\r\n\r\n'), 403, 'egress.forbidden_destination');
  } finally {
    await listed.close();
  }
});

test('a name that does not resolve gives 502 egress.dns_failed', async () => {
  assertRefused(await connectTo('nxdomain.test:443'), 502, 'egress.dns_failed');
  assertRefused(await getUrl('http://nxdomain.test/'), 502, 'egress.dns_failed');
});

const malformed: Array<[string, string | Buffer]> = [
  ['origin-form GET', 'GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n'],
  ['https:// absolute URL', 'GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n'],
  ['OPTIONS *', 'OPTIONS * HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n'],
  ['CONNECT without a port', 'CONNECT example.com HTTP/1.1\r\n\r\n'],
  ['CONNECT with port 0', 'CONNECT example.com:0 HTTP/1.1\r\n\r\n'],
  ['CONNECT with an unbracketed IPv6', 'CONNECT ::1:443 HTTP/1.1\r\n\r\n'],
  ['CONNECT with userinfo', 'CONNECT user@example.com:443 HTTP/1.1\r\n\r\n'],
  ['CONNECT to a URL', 'CONNECT http://example.com:443/ HTTP/1.1\r\n\r\n'],
  ['a websocket upgrade', 'GET http://public.test/ HTTP/1.1\r\nHost: public.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n'],
  ['binary garbage', Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x0d, 0x0a, 0x0d, 0x0a])],
  ['a header line without a colon', 'GET http://public.test/ HTTP/1.1\r\nno colon here\r\n\r\n'],
  ['a request line with no version', 'GET http://public.test/\r\n\r\n'],
  ['headers above 16 KiB', `GET http://public.test/ HTTP/1.1\r\nHost: public.test\r\nX-Big: ${'a'.repeat(17 * 1024)}\r\n\r\n`],
  ['both Content-Length and Transfer-Encoding', 'POST http://public.test/ HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'],
];

for (const [name, request] of malformed) {
  test(`refused as bad_request (400): ${name}`, async () => {
    assertRefused(await exchange({ port: proxy.port! }, request), 400, 'egress.bad_request');
  });
}

test('a refused request with a body closes the connection; without one it keeps serving', async () => {
  const withBody = await exchange({ port: proxy.port! }, 'POST http://10.0.0.1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd');
  assertRefused(withBody, 403, 'egress.forbidden_destination');
  assert.equal(withBody.headers['connection'], 'close');
  const twice = await exchange({ port: proxy.port! },
    'GET http://10.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\nGET http://10.0.0.2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assertRefused(twice, 403, 'egress.forbidden_destination');
  assert.equal(twice.body.match(/X-Cocoon-Egress-Refused/gi)?.length, 1, 'the second answer follows in the first one\'s body');
  assert.equal(events.filter((event) => event.kind === 'refused').length, 3);
});

test('log events carry no headers or bodies', async () => {
  await exchange({ port: proxy.port! }, 'GET http://user:hunter2@10.9.9.9/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n');
  assert.deepEqual(events, [{ kind: 'refused', host: '10.9.9.9', port: 80, addresses: ['10.9.9.9'], reason: 'egress.forbidden_destination' }]);
});

test('the proxy survives a burst of garbage and keeps answering', async () => {
  let seed = 7;
  const random = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff; };
  await Promise.all(Array.from({ length: 50 }, async () => {
    const bytes = Buffer.from(Array.from({ length: 1 + Math.floor(random() * 300) }, () => Math.floor(random() * 256)));
    await exchange({ port: proxy.port! }, Buffer.concat([bytes, Buffer.from('\r\n\r\n')])).catch(() => undefined);
  }));
  assertRefused(await connectTo('internal.test:443'), 403, 'egress.forbidden_destination');
});
