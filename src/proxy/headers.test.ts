import assert from 'node:assert/strict';
import { test } from 'node:test';
import { offeredProtocols, requestHeaders, responseHeadersH1, responseHeadersH2, upgradeRequestHeaders } from './headers.ts';

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

test('responses lose hop-by-hop headers, keep the rest (duplicates and case too)', () => {
  assert.deepEqual(responseHeadersH1(['Content-Type', 'text/plain', 'Connection', 'keep-alive, X-Internal', 'X-Internal', '1', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'Transfer-Encoding', 'chunked', 'Keep-Alive', 'timeout=5']),
    ['Content-Type', 'text/plain', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2']);
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

  const headers = { host: 'h', upgrade: 'websocket', connection: 'Upgrade', 'sec-websocket-key': 'k', 'sec-websocket-protocol': 'chat, cocoon.auth.tok', 'x-cocoon-auth': 't' };
  const out = upgradeRequestHeaders(headers, forwarded, mixed);
  assert.equal(out['sec-websocket-protocol'], 'chat, superchat');
  assert.equal(out.connection, 'Upgrade');
  assert.equal(out.upgrade, 'websocket');
  assert.equal(out['x-cocoon-auth'], undefined);
  assert.equal(upgradeRequestHeaders(headers, forwarded, onlyOurs)['sec-websocket-protocol'], undefined);
});
