import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { debugfsChownScript, planExt4, planTinyRootfs } from './rootfs.ts';

describe('planTinyRootfs', () => {
  const nodes = planTinyRootfs({
    busyboxApplets: ['bin/sh', 'usr/bin/awk', 'sbin/ip', 'linuxrc', 'bin/sh', ''],
    busyboxPath: '/host/busybox',
    testappPath: '/host/testapp',
  });
  const byPath = new Map(nodes.map((node) => [node.path, node]));

  it('links every applet to /bin/busybox, once, except linuxrc', () => {
    assert.deepEqual(byPath.get('/bin/sh'), { kind: 'symlink', path: '/bin/sh', target: '/bin/busybox' });
    assert.deepEqual(byPath.get('/usr/bin/awk'), { kind: 'symlink', path: '/usr/bin/awk', target: '/bin/busybox' });
    assert.ok(byPath.has('/sbin/ip'));
    assert.ok(!byPath.has('/linuxrc'));
    assert.equal(nodes.filter((node) => node.path === '/bin/sh').length, 1);
    assert.deepEqual(byPath.get('/bin/busybox'), { kind: 'copy', path: '/bin/busybox', mode: 0o755, fromPath: '/host/busybox' });
  });

  it('has the users, network files, test app and mount points the agent expects', () => {
    const passwd = byPath.get('/etc/passwd');
    assert.ok(passwd?.kind === 'file');
    assert.match(String(passwd.content), /^root:x:0:0:/m);
    assert.match(String(passwd.content), /^app:x:1000:1000:/m);
    assert.match(String(passwd.content), /^nobody:x:65534:65534:/m);
    const group = byPath.get('/etc/group');
    assert.ok(group?.kind === 'file');
    assert.match(String(group.content), /^app:x:1000:$/m);
    const resolv = byPath.get('/etc/resolv.conf');
    assert.ok(resolv?.kind === 'file');
    assert.equal(resolv.content, 'nameserver 10.0.2.3\n');
    assert.deepEqual(byPath.get('/usr/local/bin/cocoon-testapp'), { kind: 'copy', path: '/usr/local/bin/cocoon-testapp', mode: 0o755, fromPath: '/host/testapp' });
    for (const dir of ['/dev', '/proc', '/sys', '/run', '/root', '/app', '/var/tmp']) assert.equal(byPath.get(dir)?.kind, 'dir', dir);
    assert.deepEqual(byPath.get('/tmp'), { kind: 'dir', path: '/tmp', mode: 0o1777 });
    assert.ok(!nodes.some((node) => node.path.startsWith('/dev/')), '/dev stays empty for devtmpfs');
  });
});

describe('planExt4', () => {
  it('keeps the minimum size for small trees', () => {
    assert.deepEqual(planExt4({ blockBytes: 3 * 2 ** 20, inodeCount: 300 }, { minSizeMiB: 64, headroomRatio: 0 }), { sizeMiB: 64, inodeCount: 8192 });
  });

  it('adds headroom and journal room to large trees, and enough inodes', () => {
    const plan = planExt4({ blockBytes: 700 * 2 ** 20, inodeCount: 60_000 }, { minSizeMiB: 512, headroomRatio: 0.3 });
    assert.ok(plan.sizeMiB >= 700 * 1.3 + 16, `size ${plan.sizeMiB}`);
    assert.ok(plan.sizeMiB < 1000, `size ${plan.sizeMiB}`);
    assert.ok(plan.inodeCount >= 90_000);
  });
});

describe('debugfsChownScript', () => {
  it('sets owner and group of every path to root', () => {
    assert.equal(debugfsChownScript(['/bin', '/bin/sh']), 'sif "/bin" uid 0\nsif "/bin" gid 0\nsif "/bin/sh" uid 0\nsif "/bin/sh" gid 0\n');
  });
});
