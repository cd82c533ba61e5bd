import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat, utimes } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startEgressRelay, sweepStaleEgressDirs } from './egress-relay.ts';

const RELAY = fileURLToPath(new URL('../../../guest/agent/out/cocoon-egress-relay', import.meta.url));
const workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-egress-relay-'));
after(() => rm(workDir, { recursive: true, force: true }));
const self = { uid: process.getuid!(), gid: process.getgid!() };

/** A stand-in for the egress proxy: answers each connection's bytes upper-cased, and ends only after the client has. */
async function upperCaseServer(socketPath: string): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => socket.write(chunk.toString().toUpperCase()));
    socket.on('end', () => socket.end());
  });
  server.listen(socketPath);
  await once(server, 'listening');
  return server;
}

test('the relay program runs from the chroot; its socket, in a private directory, reaches the proxy; close removes it', { skip: existsSync(RELAY) ? false : 'npm run build:guest first' }, async () => {
  const chroot = path.join(workDir, 'chroot');
  await mkdir(chroot);
  const proxy = await upperCaseServer(path.join(workDir, 'proxy.sock'));
  const relay = await startEgressRelay({ chroot, name: 'vm1', user: self, relayPath: RELAY, egressSocket: path.join(workDir, 'proxy.sock') });
  try {
    assert.match(relay.program, /^\/cocoon-egress-relay-[0-9a-f]{16}$/);
    assert.equal(relay.socket, '/cocoon-build-egress-vm1/egress.sock');
    assert.equal((await stat(path.join(chroot, relay.program))).mode & 0o777, 0o755);
    assert.equal((await stat(path.join(chroot, 'cocoon-build-egress-vm1'))).mode & 0o777, 0o700);
    // What libslirp does per guest connection, minus the chroot: the guest's bytes on stdin, the answer on stdout.
    const child = spawn(path.join(chroot, relay.program), [path.join(chroot, relay.socket)], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => { output += text; });
    child.stdin.end('get me out\n');
    const [code] = await once(child, 'close') as [number];
    assert.equal(code, 0);
    assert.equal(output, 'GET ME OUT\n');
  } finally {
    await relay.close();
    proxy.close();
  }
  assert.deepEqual((await readdir(chroot)).filter((name) => name.startsWith('cocoon-build-egress-')), []);
});

test('the relay exits with an error when nothing listens', { skip: existsSync(RELAY) ? false : 'npm run build:guest first' }, async () => {
  const child = spawn(RELAY, [path.join(workDir, 'nobody.sock')], { stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => { stderr += text; });
  const [code] = await once(child, 'close') as [number];
  assert.equal(code, 1);
  assert.match(stderr, /connect .*nobody\.sock/);
});

test('the sweep removes only old egress directories nobody serves, never the relay', { skip: existsSync(RELAY) ? false : 'npm run build:guest first' }, async () => {
  const chroot = path.join(workDir, 'sweep');
  await mkdir(chroot);
  const proxy = await upperCaseServer(path.join(workDir, 'proxy2.sock'));
  const live = await startEgressRelay({ chroot, name: 'live', user: self, relayPath: RELAY, egressSocket: path.join(workDir, 'proxy2.sock') });
  try {
    await mkdir(path.join(chroot, 'cocoon-build-egress-dead'));
    await mkdir(path.join(chroot, 'cocoon-build-egress-young'));
    const old = new Date(Date.now() - 10 * 60_000);
    for (const name of ['cocoon-build-egress-dead', 'cocoon-build-egress-live', live.program.slice(1)]) await utimes(path.join(chroot, name), old, old);
    await sweepStaleEgressDirs(chroot);
    assert.deepEqual((await readdir(chroot)).sort(), ['cocoon-build-egress-live', 'cocoon-build-egress-young', live.program.slice(1)].sort());
  } finally {
    await live.close();
    proxy.close();
  }
});
