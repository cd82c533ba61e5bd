import assert from 'node:assert/strict';
import { test } from 'node:test';
import { offeredProtocols, requestHeadH1, requestHeaders, responseHeadH1, responseHeadersH2 } from './headers.ts';
import { parseRequestHead, parseResponseHead } from './http1-parse.ts';

const forwarded = { clientAddress: '10.1.2.3', proto: 'https' as const, host: 'mvm-x.cocoon.localhost' };

test('requests lose hop-by-hop, x-cocoon-* and the client\'s X-Forwarded-Proto/Host; X-Forwarded-For is appended', () => {
  const out = requestHeaders({
    host: 'mvm-x.cocoon.localhost', 'x-cocoon-auth': 'secret', 'x-cocoon-port': '9000', connection: 'keep-alive, x-drop-me', 'x-drop-me': '1',
    'keep-alive': 'timeout=5', 'transfer-encoding': 'chunked', te: 'trailers', upgrade: 'h2c', 'http2-settings': 'AAA', expect: '100-continue',
    'x-forwarded-for': '192.0.2.1', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'evil', accept: 'text/plain', cookie: 'a=1',
  }, forwarded, 'http1');
  assert.deepEqual(out, {
    host: 'mvm-x.cocoon.localhost', accept: 'text/plain', cookie: 'a=1',
    'x-forwarded-for': '192.0.2.1, 10.1.2.3', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'mvm-x.cocoon.localhost',
  });
});

test('HTTP/2 requests: to HTTP/1.1 the pseudo-headers go and Host comes from :authority; to gRPC they stay, with te', () => {
  const h2 = { ':method': 'POST', ':path': '/svc/M', ':authority': 'mvm-x.cocoon.localhost', ':scheme': 'https', te: 'trailers', 'content-type': 'application/grpc', 'x-cocoon-auth': 't' };
  assert.deepEqual(requestHeaders(h2, forwarded, 'http1'), {
    'content-type': 'application/grpc', host: 'mvm-x.cocoon.localhost',
    'x-forwarded-for': '10.1.2.3', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'mvm-x.cocoon.localhost',
  });
  assert.deepEqual(requestHeaders(h2, forwarded, 'h2c'), {
    ':method': 'POST', ':path': '/svc/M', ':authority': 'mvm-x.cocoon.localhost', ':scheme': 'http', te: 'trailers', 'content-type': 'application/grpc',
    'x-forwarded-for': '10.1.2.3', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'mvm-x.cocoon.localhost',
  });
});

test('HTTP/1.1 data plane: request heads filtered as objects are, Transfer-Encoding and the bytes of values kept', () => {
  const head = parseRequestHead(Buffer.from('POST /p?q=1 HTTP/1.1\r\nHost: mvm-x.cocoon.localhost\r\nX-Cocoon-Auth: secret\r\nConnection: keep-alive, X-Drop-Me\r\n'
    + 'X-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nUpgrade: h2c\r\nExpect: 100-continue\r\nX-Forwarded-For: 192.0.2.1\r\n'
    + 'X-Forwarded-Proto: http\r\nx-forwarded-for: 192.0.2.2\r\nCookie: a=\xe9\r\n\r\n', 'latin1'), 4096)!;
  assert.equal(requestHeadH1(head, forwarded, { close: false }), 'POST /p?q=1 HTTP/1.1\r\nHost: mvm-x.cocoon.localhost\r\nTransfer-Encoding: chunked\r\nCookie: a=\xe9\r\n'
    + 'X-Forwarded-For: 192.0.2.1, 192.0.2.2, 10.1.2.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: mvm-x.cocoon.localhost\r\n\r\n');
  const old = parseRequestHead(Buffer.from('GET / HTTP/1.0\r\nHost: h\r\n\r\n'), 4096)!;
  assert.match(requestHeadH1(old, forwarded, { close: true }), /^GET \/ HTTP\/1\.0\r\nHost: h\r\nConnection: close\r\n/);
});

test('responses lose hop-by-hop headers but Transfer-Encoding (HTTP/1.1) and keep the rest (duplicates and case too)', () => {
  const head = parseResponseHead(Buffer.from('HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\nSet-Cookie: a=1\r\n'
    + 'Set-Cookie: b=2\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n'), 4096)!;
  assert.equal(responseHeadH1(head, { close: false }), 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nTransfer-Encoding: chunked\r\n\r\n');
  assert.ok(responseHeadH1(head, { close: true }).endsWith('Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n'));
  assert.ok(responseHeadH1({ ...head, reason: '' }, { close: false }).startsWith('HTTP/1.1 200 \r\n'));
  assert.deepEqual(responseHeadersH2(200, ['Content-Type', 'text/plain', 'Connection', 'close, X-Internal', 'X-Internal', '1', 'Set-Cookie', 'a=1', 'set-cookie', 'b=2', 'Transfer-Encoding', 'chunked']),
    { ':status': 200, 'content-type': 'text/plain', 'set-cookie': ['a=1', 'b=2'] });
});

test('WebSocket subprotocols: token and port come out, others go on; browsers get an answer when they offered only ours', () => {
  const onlyOurs = offeredProtocols('cocoon.auth.abc.def-_, cocoon.port.8080');
  assert.deepEqual(onlyOurs, { token: 'abc.def-_', port: '8080', others: [], fallback: 'cocoon.port.8080' });
  assert.deepEqual(offeredProtocols('cocoon.auth.tok'), { token: 'tok', others: [], fallback: 'cocoon.auth.tok' });
  const mixed = offeredProtocols(['chat, cocoon.auth.tok', 'superchat']);
  assert.deepEqual(mixed, { token: 'tok', others: ['chat', 'superchat'] });
  assert.deepEqual(offeredProtocols(undefined), { others: [] });

  const upgrade = parseRequestHead(Buffer.from('GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\n'
    + 'Sec-WebSocket-Protocol: chat, cocoon.auth.tok\r\nX-Cocoon-Auth: t\r\n\r\n'), 4096)!;
  const out = requestHeadH1(upgrade, forwarded, { close: true, upgrade: mixed });
  assert.match(out, /\r\nSec-WebSocket-Protocol: chat, superchat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n/);
  assert.doesNotMatch(out, /cocoon\.auth|x-cocoon-|Connection: close/i);
  assert.doesNotMatch(requestHeadH1(upgrade, forwarded, { close: true, upgrade: onlyOurs }), /Sec-WebSocket-Protocol/);

  const switching = parseResponseHead(Buffer.from('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: a\r\n\r\n'), 4096)!;
  assert.equal(responseHeadH1(switching, { close: true, fallbackProtocol: 'cocoon.port.8080' }),
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: cocoon.port.8080\r\n\r\n');
});
