import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kernelCmdline, layerFds, qemuArgv, tscKhzFromCpuinfo, type QemuLaunch } from './argv.ts';

const base: QemuLaunch = {
  machine: { accelerator: 'tcg', memoryMiB: 256, vcpus: 1, kernelPath: '/k', initramfsPath: '/i', kernelCmdline: 'console=ttyS0' },
  ram: { kind: 'anonymous' },
  diskPath: '/vm/disk.qcow2',
  forwards: [{ hostPort: 40000, guestPort: 8080 }],
  qmpSocket: '/vm/qmp.sock', agentSocket: '/vm/agent.sock', serialLog: '/vm/serial.log', pidFile: '/vm/qemu.pid',
};

/** Device options with the parts that may legitimately differ between save and restore removed. */
function deviceShape(argv: string[]): string[] {
  return argv
    .filter((_, i) => !['-incoming', '-object', '-S', '-pidfile', '-runas', '-chroot', '-add-fd', '-sandbox'].includes(argv[i - 1] ?? '') && !['-incoming', '-object', '-S', '-runas', '-chroot', '-add-fd'].includes(argv[i]!))
    .map((arg) => arg.replace(/hostfwd=tcp:127\.0\.0\.1:\d+/g, 'hostfwd=PORT').replace(/file=[^,]+(,file\.locking=off)?/, 'file=DISK'));
}

test('user-mode networking is always restricted and forwards only from loopback', () => {
  const argv = qemuArgv(base);
  const netdev = argv[argv.indexOf('-netdev') + 1]!;
  assert.match(netdev, /restrict=on/);
  assert.match(netdev, /hostfwd=tcp:127\.0\.0\.1:40000-:8080/);
  assert.doesNotMatch(argv.join(' '), /restrict=off/);
});

test('inside a network namespace, forwards listen on its address and the guest may connect out', () => {
  const argv = qemuArgv({ ...base, forwardAddress: '10.201.3.2', unrestricted: true });
  const netdev = argv[argv.indexOf('-netdev') + 1]!;
  assert.match(netdev, /restrict=off/);
  assert.match(netdev, /hostfwd=tcp:10\.201\.3\.2:40000-:8080/);
  assert.doesNotMatch(netdev, /127\.0\.0\.1/);
});

test('template source, clone and resume differ only in RAM backing, ports, disk, -incoming and the user QEMU runs as', () => {
  const source = qemuArgv({ ...base, ram: { kind: 'template-source', path: '/t/ram' } });
  const clone = qemuArgv({ ...base, ram: { kind: 'template-clone', path: '/t/ram' }, incomingSocket: '/c/incoming.sock', diskPath: '/c/disk.qcow2', forwards: [{ hostPort: 40001, guestPort: 8080 }] });
  const resumed = qemuArgv({ ...base, incomingSocket: '/vm/incoming.sock', runAs: { uid: 2000000007, gid: 2000000007 }, chrootDir: '/run/empty' });
  assert.deepEqual(deviceShape(clone), deviceShape(source));
  assert.deepEqual(deviceShape(resumed), deviceShape(source));
  assert.ok(source.includes('memory-backend-file,id=mem,size=256M,mem-path=/t/ram,share=on'));
  assert.ok(clone.includes('memory-backend-file,id=mem,size=256M,mem-path=/t/ram,share=off'));
  assert.deepEqual(clone.slice(-3), ['-S', '-incoming', 'unix:/c/incoming.sock']);
});

test('QEMU runs sandboxed, with only the devices and the one QMP monitor it needs', () => {
  const argv = qemuArgv(base);
  const values = (option: string): string[] => argv.flatMap((arg, i) => (argv[i - 1] === option ? [arg] : []));
  assert.deepEqual(values('-sandbox'), ['on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']);
  assert.deepEqual(values('-monitor'), ['none']);
  assert.deepEqual(values('-qmp'), ['unix:/vm/qmp.sock,server=on,wait=off']);
  assert.deepEqual(values('-device').map((device) => device.split(',')[0]),
    ['virtio-blk-device', 'virtio-net-device', 'virtio-serial-device', 'virtserialport', 'virtio-rng-device']);
  for (const flag of ['-nodefaults', '-no-user-config']) assert.ok(argv.includes(flag));
  assert.deepEqual(values('-display'), ['none']);
  for (const option of ['-mon', '-gdb', '-s', '-vnc', '-spice', '-usb', '-usbdevice', '-fsdev', '-virtfs', '-chroot', '-daemonize']) {
    assert.ok(!argv.includes(option), option);
  }
  assert.doesNotMatch(argv.join(' '), /exec:/);
});

test('QEMU may spawn only for the egress guestfwd, and raises no privileges unless it drops to a VM user', () => {
  const sandbox = (launch: QemuLaunch): string => { const argv = qemuArgv(launch); return argv[argv.indexOf('-sandbox') + 1]!; };
  assert.match(sandbox({ ...base, machine: { ...base.machine, egressSocket: '/run/egress.sock' } }), /spawn=allow/);
  const dropped = qemuArgv({ ...base, runAs: { uid: 2000000007, gid: 2000000007 }, chrootDir: '/run/empty' });
  assert.equal(dropped[dropped.indexOf('-runas') + 1], '2000000007:2000000007');
  assert.equal(dropped[dropped.indexOf('-chroot') + 1], '/run/empty');
  // The disk comes from inherited descriptors: after the chroot and the drop QEMU opens no path.
  assert.ok(dropped.includes('id=root,file=/dev/fdset/1,file.locking=off,format=qcow2,if=none,cache=writeback,discard=unmap'));
  // -runas calls setuid after the filter is installed: denying it would kill QEMU.
  assert.match(dropped[dropped.indexOf('-sandbox') + 1]!, /elevateprivileges=allow,spawn=deny/);
  assert.ok(!qemuArgv(base).includes('-runas') && !qemuArgv({ ...base, chrootDir: '/run/empty' }).includes('-chroot'));
});

test('a build VM that drops privileges inherits its later layers as fd sets and reaches the egress proxy through the relay in its chroot', () => {
  const egressSocket = '/data/egress/build.sock';
  const machine = { ...base.machine, egressSocket };
  const build = qemuArgv({
    ...base, machine, runAs: { uid: 2000000007, gid: 2000000007 }, chrootDir: '/run/chroot', layerCount: 2,
    egressRelay: { program: '/cocoon-egress-relay-0123456789abcdef', socket: '/cocoon-egress-abc/egress.sock' },
  });
  const addFds = build.flatMap((arg, i) => (build[i - 1] === '-add-fd' ? [arg] : []));
  assert.deepEqual(addFds, ['fd=3,set=1', 'fd=4,set=1', 'fd=5,set=2', 'fd=6,set=2', 'fd=7,set=3', 'fd=8,set=3']);
  assert.deepEqual([layerFds(0), layerFds(1)], [{ set: 2, readWrite: 5, readOnly: 6 }, { set: 3, readWrite: 7, readOnly: 8 }]);
  const netdev = build[build.indexOf('-netdev') + 1]!;
  assert.match(netdev, /,guestfwd=tcp:10\.0\.2\.100:3128-cmd:\/cocoon-egress-relay-0123456789abcdef \/cocoon-egress-abc\/egress\.sock$/);
  assert.doesNotMatch(build.join(' '), /socat/);
  assert.equal(build[build.indexOf('-sandbox') + 1], 'on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny');
  // Without privileges to drop: socat to the proxy's own socket, and no layer fd sets.
  const own = qemuArgv({ ...base, machine, layerCount: 2 });
  assert.match(own[own.indexOf('-netdev') + 1]!, /-cmd:socat - UNIX-CONNECT:\/data\/egress\/build\.sock$/);
  assert.ok(!own.includes('-add-fd'));
  assert.throws(() => qemuArgv({ ...base, machine, runAs: { uid: 2000000007, gid: 2000000007 }, chrootDir: '/c', egressRelay: { program: '/r', socket: '/a b' } }), RangeError);
});

test('KVM uses the host CPU; TCG caps its code cache and uses multi-threading only with several vCPUs', () => {
  const kvm = qemuArgv({ ...base, machine: { ...base.machine, accelerator: 'kvm' } });
  assert.deepEqual(kvm.slice(kvm.indexOf('-accel'), kvm.indexOf('-accel') + 4), ['-accel', 'kvm', '-cpu', 'host']);
  const tcg1 = qemuArgv(base);
  assert.equal(tcg1[tcg1.indexOf('-accel') + 1], 'tcg,tb-size=128');
  const tcg2 = qemuArgv({ ...base, machine: { ...base.machine, vcpus: 2 } });
  assert.equal(tcg2[tcg2.indexOf('-accel') + 1], 'tcg,tb-size=128,thread=multi');
});

test('kernel command line carries the TSC frequency and hostname', () => {
  const cmdline = kernelCmdline({ tscKhz: 2445430, hostname: 'vm1' });
  assert.match(cmdline, /tsc_early_khz=2445430/);
  assert.match(cmdline, /cocoon\.hostname=vm1/);
  assert.doesNotMatch(kernelCmdline({ tscKhz: undefined, hostname: 'x' }), /tsc_early_khz/);
  assert.equal(tscKhzFromCpuinfo('processor\t: 0\ncpu MHz\t\t: 2445.430\n'), 2445430);
  assert.equal(tscKhzFromCpuinfo('nothing'), undefined);
});
