import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kernelCmdline, qemuArgv, tscKhzFromCpuinfo, type QemuLaunch } from './argv.ts';

const base: QemuLaunch = {
  machine: { accelerator: 'tcg', memoryMiB: 256, vcpus: 1, kernelPath: '/k', initramfsPath: '/i', kernelCmdline: 'console=ttyS0' },
  ram: { kind: 'anonymous' },
  diskPath: '/vm/disk.qcow2',
  forwards: [{ hostPort: 40000, guestPort: 8080 }],
  qmpSocket: '/vm/qmp.sock', agentSocket: '/vm/agent.sock', serialLog: '/vm/serial.log', pidFile: '/vm/qemu.pid',
  incoming: false,
};

/** Device options with the parts that may legitimately differ between save and restore removed. */
function deviceShape(argv: string[]): string[] {
  return argv
    .filter((_, i) => !['-incoming', '-object', '-S', '-pidfile'].includes(argv[i - 1] ?? '') && !['-incoming', '-object', '-S'].includes(argv[i]!))
    .map((arg) => arg.replace(/hostfwd=tcp:127\.0\.0\.1:\d+/g, 'hostfwd=PORT').replace(/file=[^,]+/, 'file=DISK'));
}

test('user-mode networking is always restricted and forwards only from loopback', () => {
  const argv = qemuArgv(base);
  const netdev = argv[argv.indexOf('-netdev') + 1]!;
  assert.match(netdev, /restrict=on/);
  assert.match(netdev, /hostfwd=tcp:127\.0\.0\.1:40000-:8080/);
  assert.doesNotMatch(argv.join(' '), /restrict=off/);
});

test('template source, clone and resume differ only in RAM backing, ports, disk and -incoming', () => {
  const source = qemuArgv({ ...base, ram: { kind: 'template-source', path: '/t/ram' } });
  const clone = qemuArgv({ ...base, ram: { kind: 'template-clone', path: '/t/ram' }, incoming: true, diskPath: '/c/disk.qcow2', forwards: [{ hostPort: 40001, guestPort: 8080 }] });
  const resumed = qemuArgv({ ...base, incoming: true });
  assert.deepEqual(deviceShape(clone), deviceShape(source));
  assert.deepEqual(deviceShape(resumed), deviceShape(source));
  assert.ok(source.includes('memory-backend-file,id=mem,size=256M,mem-path=/t/ram,share=on'));
  assert.ok(clone.includes('memory-backend-file,id=mem,size=256M,mem-path=/t/ram,share=off'));
  assert.deepEqual(clone.slice(-3), ['-S', '-incoming', 'defer']);
});

test('KVM uses the host CPU; TCG uses multi-threading only with several vCPUs', () => {
  const kvm = qemuArgv({ ...base, machine: { ...base.machine, accelerator: 'kvm' } });
  assert.deepEqual(kvm.slice(kvm.indexOf('-accel'), kvm.indexOf('-accel') + 4), ['-accel', 'kvm', '-cpu', 'host']);
  const tcg2 = qemuArgv({ ...base, machine: { ...base.machine, vcpus: 2 } });
  assert.equal(tcg2[tcg2.indexOf('-accel') + 1], 'tcg,thread=multi');
});

test('kernel command line carries the TSC frequency and hostname', () => {
  const cmdline = kernelCmdline({ tscKhz: 2445430, hostname: 'vm1' });
  assert.match(cmdline, /tsc_early_khz=2445430/);
  assert.match(cmdline, /cocoon\.hostname=vm1/);
  assert.doesNotMatch(kernelCmdline({ tscKhz: undefined, hostname: 'x' }), /tsc_early_khz/);
  assert.equal(tscKhzFromCpuinfo('processor\t: 0\ncpu MHz\t\t: 2445.430\n'), 2445430);
  assert.equal(tscKhzFromCpuinfo('nothing'), undefined);
});
