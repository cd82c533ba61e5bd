import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { callHook, clampHookTimeoutMs } from './hooks.ts';

/** A stand-in for an app's hooks server (the app is not ours: a fake at the wire). */
async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

test('POSTs the payload to /cocoon/runtime/v1/<hook>: a JSON string as JSON, other text as text', async () => {
  const seen: Array<{ method?: string; url?: string; type?: string; body: string }> = [];
  const server = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk: Buffer) => { body += chunk.toString(); });
    request.on('end', () => {
      seen.push({ method: request.method, url: request.url, type: request.headers['content-type'], body });
      response.writeHead(204).end();
    });
  });
  const port = await listen(server);
  try {
    assert.deepEqual(await callHook(port, 'run', '{"secret":1}', 1000).then((o) => o.kind === 'answered' && o.status), 204);
    assert.equal((await callHook(port, 'resume', 'plain words', 1000)).kind, 'answered');
    assert.equal((await callHook(port, 'suspend', {}, 1000)).kind, 'answered');
    assert.deepEqual(seen, [
      { method: 'POST', url: '/cocoon/runtime/v1/run', type: 'application/json', body: '{"secret":1}' },
      { method: 'POST', url: '/cocoon/runtime/v1/resume', type: 'text/plain; charset=utf-8', body: 'plain words' },
      { method: 'POST', url: '/cocoon/runtime/v1/suspend', type: 'application/json', body: '{}' },
    ]);
  } finally {
    server.close();
  }
});

test('nothing listening, or a connection dropped before any answer (QEMU forward, no guest listener): absent', async () => {
  const closed = net.createServer();
  const port = await listen(closed);
  closed.close();
  assert.deepEqual(await callHook(port, 'run', {}, 1000), { kind: 'absent' });
  const dropper = net.createServer((socket) => socket.destroy());
  const dropPort = await listen(dropper);
  try {
    assert.deepEqual(await callHook(dropPort, 'run', {}, 1000), { kind: 'absent' });
  } finally {
    dropper.close();
  }
});

test('a hook that never answers fails after its timeout, bounded to 1–60 s', async () => {
  assert.equal(clampHookTimeoutMs(10), 1000);
  assert.equal(clampHookTimeoutMs(600_000), 60_000);
  const sockets: net.Socket[] = [];
  const silent = net.createServer((socket) => { sockets.push(socket); });
  const port = await listen(silent);
  try {
    const started = Date.now();
    const outcome = await callHook(port, 'terminate', {}, 1000);
    assert.equal(outcome.kind, 'failed');
    assert.ok(Date.now() - started >= 900);
  } finally {
    for (const socket of sockets) socket.destroy();
    silent.close();
  }
});
