import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { mock, test } from 'node:test';
import { ConnectGate } from './connect-gate.ts';

/** Sockets that connect (or fail) when the test says so: the kernel's timing cannot be ordered from a test. */
class FakeSocket extends EventEmitter {
  destroyed = false;
  destroy(): void {
    this.destroyed = true;
  }
}

function fakeConnects(): { opened: Array<{ port: number; socket: FakeSocket }>; restore: () => void } {
  const opened: Array<{ port: number; socket: FakeSocket }> = [];
  const connect = mock.method(net, 'connect', (options: net.TcpNetConnectOpts) => {
    const socket = new FakeSocket();
    opened.push({ port: options.port, socket });
    return socket;
  });
  return { opened, restore: () => connect.mock.restore() };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

test('connects to one guest port go one at a time; another port does not wait; a failure does not block the next', async () => {
  const { opened, restore } = fakeConnects();
  try {
    const gate = new ConnectGate();
    const first = gate.connect({ host: '127.0.0.1', port: 1001 });
    const second = gate.connect({ host: '127.0.0.1', port: 1001 });
    const third = gate.connect({ host: '127.0.0.1', port: 1001 });
    const elsewhere = gate.connect({ host: '127.0.0.1', port: 2002 });
    await tick();
    assert.deepEqual(opened.map((o) => o.port), [1001, 2002], 'only the first connect to 1001 is under way');

    opened[0]!.socket.emit('connect');
    assert.equal(await first, opened[0]!.socket);
    await tick();
    assert.deepEqual(opened.map((o) => o.port), [1001, 2002, 1001]);

    opened[2]!.socket.emit('error', new Error('ECONNREFUSED'));
    await assert.rejects(second, /ECONNREFUSED/);
    await tick();
    assert.equal(opened.length, 4, 'the failed connect let the next one go');
    opened[3]!.socket.emit('connect');
    opened[1]!.socket.emit('connect');
    assert.equal(await third, opened[3]!.socket);
    assert.equal(await elsewhere, opened[1]!.socket);
  } finally {
    restore();
  }
});

test('a connect not answered at once (a SYN dropped by a full accept queue) gets attempts beside it; the first to connect wins', async () => {
  const { opened, restore } = fakeConnects();
  mock.timers.enable({ apis: ['setTimeout'] });
  try {
    const connecting = new ConnectGate().connect({ host: '127.0.0.1', port: 1001 });
    await tick();
    assert.equal(opened.length, 1);
    mock.timers.tick(19);
    assert.equal(opened.length, 1, 'not before 20 ms');
    mock.timers.tick(1);
    assert.equal(opened.length, 2);
    mock.timers.tick(40);
    assert.equal(opened.length, 3);
    opened[1]!.socket.emit('connect');
    assert.equal(await connecting, opened[1]!.socket);
    assert.deepEqual(opened.map((o) => o.socket.destroyed), [true, false, true], 'the other attempts are dropped');
    mock.timers.tick(10_000);
    assert.equal(opened.length, 3, 'and no more are made');
  } finally {
    mock.timers.reset();
    restore();
  }
});
