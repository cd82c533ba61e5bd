/**
 * The agent client against a hostile guest: a unix socket peer that answers HELLO properly and
 * then breaks the protocol. Every case must fail the pending request with a clear code, close the
 * connection, and leave the host process running.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { AgentClient } from './client.ts';
import { FrameDecoder, ReplyType, RequestType, encodeFrame, item, type Frame } from './protocol.ts';

const dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-agent-test-'));
after(() => rm(dir, { recursive: true, force: true }));
let sockets = 0;

/**
 * Starts a fake guest that answers HELLO (after `beforeHello`: frames of a session before a
 * snapshot restore) and then replies to the next request with `misbehave`.
 */
async function hostileGuest(misbehave: (request: Frame) => Buffer, beforeHello = Buffer.alloc(0)): Promise<{ client: AgentClient; close: () => void }> {
  const socketPath = path.join(dir, `agent${sockets++}.sock`);
  const server = net.createServer((socket) => {
    const decoder = new FrameDecoder();
    socket.on('data', (chunk) => {
      for (const frame of decoder.push(chunk)) {
        if (frame.type === RequestType.HELLO) {
          socket.write(Buffer.concat([beforeHello, encodeFrame({ id: frame.id, type: ReplyType.OK, items: [item.u32(1), item.string('hostile')] })]));
        } else {
          socket.write(misbehave(frame));
        }
      }
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const client = await AgentClient.connect(socketPath, { timeoutMs: 5000, requestTimeoutMs: 300 });
  return { client, close: () => { client.close(); server.close(); } };
}

const lengthOnly = (length: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(length); return b; };

const cases: Array<[string, (request: Frame) => Buffer]> = [
  ['an oversized frame length', () => lengthOnly(0xfffffff0)],
  ['a frame shorter than its header', () => Buffer.concat([lengthOnly(2), Buffer.alloc(2)])],
  ['an item that overruns its frame', (r) => { const f = encodeFrame({ id: r.id, type: ReplyType.OK, items: [item.string('x')] }); f.writeUInt32BE(999, 12); return f; }],
  ['a reply to a request never made', () => encodeFrame({ id: 4242, type: ReplyType.OK, items: [] })],
  ['an unknown reply type', (r) => encodeFrame({ id: r.id, type: 0x7777, items: [] })],
  ['an EXIT with the wrong item count', (r) => encodeFrame({ id: r.id, type: ReplyType.EXIT, items: [item.u32(0)] })],
  ['an i32 item of the wrong size', (r) => encodeFrame({ id: r.id, type: ReplyType.EXIT, items: [Buffer.alloc(3), item.u32(0)] })],
  ['an output chunk above 32 KiB', (r) => encodeFrame({ id: r.id, type: ReplyType.STDOUT, items: [Buffer.alloc(40_000)] })],
  ['a LOG line above 4 KiB', () => encodeFrame({ id: 0, type: ReplyType.LOG, items: [Buffer.alloc(5000, 0x41)] })],
  ['random garbage', () => Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
];

for (const [name, misbehave] of cases) {
  test(`a guest sending ${name} fails the request with guest.protocol_violation`, async () => {
    const { client, close } = await hostileGuest(misbehave);
    try {
      await assert.rejects(client.exec({ argv: ['true'] }), (error) => isAppError(error, 'guest.protocol_violation'));
      assert.equal(client.closed, true);
      await assert.rejects(client.sync(), (error) => isAppError(error, 'guest.protocol_violation'));
    } finally {
      close();
    }
  });
}

test('a guest that answers with ERROR fails only that request', async () => {
  const { client, close } = await hostileGuest((r) => encodeFrame({ id: r.id, type: ReplyType.ERROR, items: [item.string('spawn'), item.string('nope')] }));
  try {
    await assert.rejects(client.exec({ argv: ['missing'] }), (error) => isAppError(error, 'guest.request_failed') && /spawn: nope/.test(error.message));
    assert.equal(client.closed, false);
  } finally {
    close();
  }
});

test('a guest that never answers times out without closing', async () => {
  const { client, close } = await hostileGuest(() => Buffer.alloc(0));
  try {
    await assert.rejects(client.sync(), (error) => isAppError(error, 'guest.timeout'));
    assert.equal(client.closed, false);
  } finally {
    close();
  }
});

test('frames of the guest\'s previous session are dropped until HELLO is answered, not after', async () => {
  const stale = encodeFrame({ id: 4242, type: ReplyType.STDOUT, items: [item.string('from before the snapshot')] });
  const { client, close } = await hostileGuest(() => stale, Buffer.concat([stale, stale]));
  try {
    assert.equal(client.closed, false);
    await assert.rejects(client.sync(), (error) => isAppError(error, 'guest.protocol_violation') && /unknown request id 4242/.test(error.message));
  } finally {
    close();
  }
});

test('APP_ATTACH: the pid, then output events; an oversized chunk on the app stream closes the connection', async () => {
  const { client, close } = await hostileGuest((r) => Buffer.concat([
    encodeFrame({ id: r.id, type: ReplyType.OK, items: [item.u32(7)] }),
    encodeFrame({ id: r.id, type: ReplyType.STDERR, items: [item.string('kept while detached\n')] }),
    encodeFrame({ id: r.id, type: ReplyType.STDOUT, items: [Buffer.alloc(40_000)] }),
  ]));
  try {
    const output: string[] = [];
    client.on('app-output', (stream, chunk) => output.push(`${stream}: ${chunk.toString()}`));
    const closed = new Promise<Error>((resolve) => client.once('close', resolve));
    assert.deepEqual(await client.attachApp(), { pid: 7 });
    assert.ok(isAppError(await closed, 'guest.protocol_violation'));
    assert.deepEqual(output, ['stderr: kept while detached\n']);
  } finally {
    close();
  }
});

test('APP_ATTACH refused by an older agent: guestCode unsupported, the connection stays', async () => {
  const { client, close } = await hostileGuest((r) => encodeFrame({ id: r.id, type: ReplyType.ERROR, items: [item.string('unsupported'), item.string('unknown request type 0x0d')] }));
  try {
    await assert.rejects(client.attachApp(), (error) => isAppError(error, 'guest.request_failed') && error.details.guestCode === 'unsupported');
    assert.equal(client.closed, false);
  } finally {
    close();
  }
});

test('an APP_ATTACH that is never answered times out like any request', async () => {
  const { client, close } = await hostileGuest(() => Buffer.alloc(0));
  try {
    await assert.rejects(client.attachApp(), (error) => isAppError(error, 'guest.timeout'));
    assert.equal(client.closed, false);
  } finally {
    close();
  }
});
