import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GUEST_MODULES, moduleNameFromPath, orderModules, parseModulesDep } from './modules.ts';

// The relevant lines of Debian 6.1.0-56-amd64's modules.dep, plus distractors.
const DEBIAN_61_MODULES_DEP = `
kernel/fs/mbcache.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/fs/fuse/fuse.ko:
kernel/crypto/crc32c_generic.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
`;

function assertTopological(modulesDep: string, order: readonly { path: string }[]): void {
  const modules = parseModulesDep(modulesDep);
  const position = new Map(order.map((module, index) => [module.path, index]));
  for (const module of order) {
    const entry = [...modules.values()].find((candidate) => candidate.path === module.path);
    assert.ok(entry, module.path);
    for (const dep of entry.deps) {
      const depIndex = position.get(dep);
      assert.ok(depIndex !== undefined, `${dep} (needed by ${module.path}) is missing`);
      assert.ok(depIndex < (position.get(module.path) ?? -1), `${dep} must come before ${module.path}`);
    }
  }
}

describe('orderModules', () => {
  it('orders the guest modules of Debian 6.1 with dependencies first', () => {
    const order = orderModules(DEBIAN_61_MODULES_DEP, GUEST_MODULES);
    assert.deepEqual(
      order.map((module) => module.name),
      [
        'virtio_ring', 'virtio', 'virtio_mmio', 'virtio_blk', 'failover', 'net_failover', 'virtio_net',
        'virtio_console', 'virtio-rng', 'crc32c_generic', 'jbd2', 'mbcache', 'crc16', 'ext4',
      ],
    );
    assertTopological(DEBIAN_61_MODULES_DEP, order);
    assert.equal(order.find((module) => module.name === 'virtio-rng')?.path, 'kernel/drivers/char/hw_random/virtio-rng.ko');
  });

  it('treats - and _ alike and lists each module once', () => {
    const order = orderModules(DEBIAN_61_MODULES_DEP, ['virtio_rng', 'virtio-blk', 'virtio_mmio']);
    assert.deepEqual(order.map((module) => module.name), ['virtio_ring', 'virtio', 'virtio-rng', 'virtio_blk', 'virtio_mmio']);
  });

  it('handles compressed module file names', () => {
    const text = [
      'kernel/a/dep.ko.zst:',
      'kernel/a/top.ko.xz: kernel/a/dep.ko.zst',
    ].join('\n');
    const order = orderModules(text, ['top']);
    assert.deepEqual(order, [
      { name: 'dep', path: 'kernel/a/dep.ko.zst' },
      { name: 'top', path: 'kernel/a/top.ko.xz' },
    ]);
  });

  it('follows each dependency\'s own dependencies even if a line lists them out of order', () => {
    // A hand-edited or partial list: c depends on b and a, b depends on a, listed a-first.
    const text = ['m/a.ko:', 'm/b.ko: m/a.ko', 'm/c.ko: m/a.ko m/b.ko'].join('\n');
    const order = orderModules(text, ['c']);
    assert.deepEqual(order.map((module) => module.name), ['a', 'b', 'c']);
  });

  it('skips built-in modules and rejects unknown ones', () => {
    const order = orderModules(DEBIAN_61_MODULES_DEP, ['crc32c-intel', 'ext4'], 'kernel/arch/x86/crypto/crc32c-intel.ko\n');
    assert.deepEqual(order.map((module) => module.name), ['jbd2', 'mbcache', 'crc16', 'ext4']);
    assert.throws(() => orderModules(DEBIAN_61_MODULES_DEP, ['virtio_pci']), /no module virtio_pci/);
    assert.throws(() => orderModules('m/a.ko: m/missing.ko\n', ['a']), /no module missing \(needed by a\)/);
  });

  it('rejects dependency cycles', () => {
    assert.throws(() => orderModules('m/a.ko: m/b.ko\nm/b.ko: m/a.ko\n', ['a']), /cycle a → b → a/);
  });

  it('derives module names from paths', () => {
    assert.equal(moduleNameFromPath('kernel/drivers/char/hw_random/virtio-rng.ko'), 'virtio-rng');
    assert.equal(moduleNameFromPath('kernel/fs/ext4/ext4.ko.zst'), 'ext4');
    assert.equal(moduleNameFromPath('jbd2.ko.xz'), 'jbd2');
  });
});
