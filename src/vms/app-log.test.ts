/**
 * Runtime logs against a fake guest agent at the wire (a unix socket speaking the protocol) and
 * the real AgentClient: record format, line splitting, the size cap, tail, followers, and an
 * agent without APP_ATTACH.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { AgentClient } from '../guest/client.ts';
import { FrameDecoder, ReplyType, RequestType, encodeFrame, item } from '../guest/protocol.ts';
import { AppLogs } from './app-log.ts';

const dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-app-log-'));
after(() => rm(dir, { recursive: true, force: true }));
let guests = 0;

interface FakeGuest {
  client: AgentClient;
  /** Sends app output (or its exit) under the APP_ATTACH id; resolves once the client has it. */
  stdout(text: string | Buffer): Promise<void>;
  stderr(text: string): Promise<void>;
  exit(code: number): Promise<void>;
  close(): void;
}

/** A guest whose agent answers APP_ATTACH with `attach` (after HELLO), sending `backlog` with the reply. */
async function fakeGuest(attach: 'ok' | 'unsupported', backlog: string[] = []): Promise<FakeGuest> {
  const socketPath = path.join(dir, `agent${guests++}.sock`);
  let guestSocket!: net.Socket;
  let attachId = 0;
  const server = net.createServer((socket) => {
    guestSocket = socket;
    const decoder = new FrameDecoder();
    socket.on('data', (chunk) => {
      for (const frame of decoder.push(chunk)) {
        if (frame.type === RequestType.HELLO) {
          socket.write(encodeFrame({ id: frame.id, type: ReplyType.OK, items: [item.u32(1), item.string('1.2')] }));
        } else if (frame.type === RequestType.APP_ATTACH && attach === 'ok') {
          attachId = frame.id;
          socket.write(Buffer.concat([
            encodeFrame({ id: frame.id, type: ReplyType.OK, items: [item.u32(42)] }),
            ...backlog.map((text) => encodeFrame({ id: frame.id, type: ReplyType.STDOUT, items: [Buffer.from(text)] })),
          ]));
        } else {
          socket.write(encodeFrame({ id: frame.id, type: ReplyType.ERROR, items: [item.string('unsupported'), item.string('unknown request type')] }));
        }
      }
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const client = await AgentClient.connect(socketPath, { timeoutMs: 5000 });
  const send = (type: number, items: Buffer[]): Promise<void> => new Promise((resolve) => {
    const done = (): void => { client.off('app-output', done); client.off('app-exit', done); resolve(); };
    client.on('app-output', done);
    client.on('app-exit', done);
    guestSocket.write(encodeFrame({ id: attachId, type, items }));
  });
  return {
    client,
    stdout: (text) => send(ReplyType.STDOUT, [Buffer.from(text)]),
    stderr: (text) => send(ReplyType.STDERR, [Buffer.from(text)]),
    exit: (code) => send(ReplyType.APP_EXIT, [item.u32(code), item.u32(0)]),
    close: () => { client.close(); server.close(); },
  };
}

const RECORD = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (stdout|stderr|cocoon) (.*)$/;

/** The log's lines without their timestamps: `stream text`. */
function untimed(lines: string[]): string[] {
  return lines.map((line) => {
    const match = RECORD.exec(line);
    assert.ok(match, `not a log record: ${JSON.stringify(line)}`);
    return `${match[1]} ${match[2]}`;
  });
}

async function collect(lines: AsyncIterable<string>): Promise<string[]> {
  const all: string[] = [];
  for await (const line of lines) all.push(line);
  return all;
}

test('attach writes the backlog, then live output, one record per line, stdout and stderr apart', async () => {
  const logs = new AppLogs(path.join(dir, 'logs-a'));
  const guest = await fakeGuest('ok', ['before ', 'attach\nsecond\n']);
  try {
    assert.equal(await logs.attach('mvm-a', guest.client), 42);
    await guest.stdout('part');
    await guest.stderr('oops\r\n');
    await guest.stdout(Buffer.from([0x69, 0x20, 0xe2, 0x9c]));
    await guest.stdout(Buffer.from([0x93, 0x0a])); // a UTF-8 character split between chunks
    await guest.stdout('no newline yet');
    await guest.exit(3);
    assert.deepEqual(untimed(await collect(logs.lines('mvm-a'))), [
      'stdout before attach', 'stdout second', 'stderr oops', 'stdout parti ✓', 'stdout no newline yet', 'cocoon the app exited (code 3)',
    ]);
    assert.deepEqual(untimed(await collect(logs.lines('mvm-a', { tail: 2 }))), ['stdout no newline yet', 'cocoon the app exited (code 3)']);
    assert.deepEqual(await collect(logs.lines('mvm-a', { tail: 0 })), []);
    assert.deepEqual(await collect(logs.lines('mvm-unknown')), []);
  } finally {
    guest.close();
  }
});

test('a follower gets the history and then every new line once; end reaches it', async () => {
  const logs = new AppLogs(path.join(dir, 'logs-b'));
  const guest = await fakeGuest('ok');
  try {
    await logs.attach('mvm-b', guest.client);
    await guest.stdout('one\ntwo\n');
    const live: string[] = [];
    let ended = false;
    const { history, unsubscribe } = logs.subscribe('mvm-b', { line: (line) => live.push(line), end: () => { ended = true; } }, { tail: 1 });
    await guest.stdout('three\n');
    assert.deepEqual(untimed(await collect(history)), ['stdout two']);
    assert.deepEqual(untimed(live), ['stdout three']);
    logs.end('mvm-b');
    assert.equal(ended, true);
    unsubscribe();
  } finally {
    guest.close();
  }
});

test('hostile output: long lines are cut, the file is rotated to .1, the total stays bounded', async () => {
  const logs = new AppLogs(path.join(dir, 'logs-c'), { maxFileBytes: 256 * 1024 });
  const guest = await fakeGuest('ok');
  try {
    await logs.attach('mvm-c', guest.client);
    await guest.stdout(`${'x'.repeat(20_000)}\n`);
    const lines = await collect(logs.lines('mvm-c'));
    assert.deepEqual(lines.map((line) => untimed([line])[0]!.length), ['stdout '.length + 16 * 1024, 'stdout '.length + 20_000 - 16 * 1024]);
    for (let i = 0; i < 60; i++) await guest.stdout(`${String(i).padStart(4, '0')} ${'y'.repeat(10_000)}\n`);
    const file = logs.file('mvm-c');
    const total = readFileSync(file).length + readFileSync(`${file}.1`).length;
    assert.ok(total <= 256 * 1024, `${total} bytes kept`);
    const numbers = (lines: string[]) => untimed(lines).map((line) => line.slice('stdout '.length, 'stdout '.length + 4));
    assert.deepEqual(numbers(await collect(logs.lines('mvm-c', { tail: 2 }))), ['0058', '0059']);
    const all = numbers(await collect(logs.lines('mvm-c')));
    assert.ok(all.length > 13 && all.length < 30, `${all.length} lines kept`);
    assert.deepEqual(all, all.map((_, i) => String(60 - all.length + i).padStart(4, '0')), 'the newest lines, in order, across both files');
    assert.deepEqual(numbers(await collect(logs.lines('mvm-c', { tail: 13 }))), all.slice(-13), 'a tail longer than the current file');
  } finally {
    guest.close();
  }
});

test('an agent without APP_ATTACH: attach throws, the log says why, and the connection stays usable', async () => {
  const logs = new AppLogs(path.join(dir, 'logs-d'));
  const guest = await fakeGuest('unsupported');
  try {
    await assert.rejects(logs.attach('mvm-d', guest.client), (error) => isAppError(error, 'guest.request_failed') && error.details.guestCode === 'unsupported');
    assert.match(untimed(await collect(logs.lines('mvm-d'))).join('\n'), /^cocoon no runtime logs: the VM's guest agent 1\.2 cannot stream/);
    assert.equal(guest.client.closed, false);
  } finally {
    guest.close();
  }
  assert.equal(existsSync(path.join(dir, 'logs-d', 'mvm-d.log.1')), false);
});
