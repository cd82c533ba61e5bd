import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { planInitramfs } from './initramfs.ts';

describe('planInitramfs', () => {
  const agent = Buffer.from('\x7fELF agent');
  const entries = planInitramfs(agent, [
    { name: 'virtio_ring', data: Buffer.from('ring') },
    { name: 'virtio-rng', data: Buffer.from('rng') },
  ]);
  const byPath = new Map(entries.map((entry) => [entry.path, entry]));

  it('puts the agent at /init, executable', () => {
    assert.deepEqual(byPath.get('/init'), { kind: 'file', path: '/init', mode: 0o755, data: agent });
  });

  it('lists the modules in /modules.order in load order, by absolute path', () => {
    const order = byPath.get('/modules.order');
    assert.ok(order?.kind === 'file');
    assert.equal(order.data.toString(), '/modules/virtio_ring.ko\n/modules/virtio-rng.ko\n');
    const ring = byPath.get('/modules/virtio_ring.ko');
    assert.ok(ring?.kind === 'file');
    assert.equal(ring.data.toString(), 'ring');
  });

  it('has the mount points and a console node for the agent', () => {
    for (const dir of ['/dev', '/proc', '/sys', '/newroot', '/modules']) assert.equal(byPath.get(dir)?.kind, 'dir', dir);
    assert.deepEqual(byPath.get('/dev/console'), { kind: 'chardev', path: '/dev/console', mode: 0o600, major: 5, minor: 1 });
  });
});
