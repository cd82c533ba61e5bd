/**
 * QEMU hardening on real VMs (docs/security.md): every QEMU runs under its seccomp filter with no
 * monitor but QMP; as root, runtime VMs' QEMUs run chrooted as uids of their own with no
 * capabilities; a VM's files and sockets are Cocoon's alone, and one VM's QEMU user can neither
 * read another VM's files nor signal its QEMU. Suspend, resume and a rolled-back save work without
 * QEMU starting any process. Root-only checks are skipped for a non-root Cocoon.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readlinkSync, statSync } from 'node:fs';
import { chown, mkdtemp, rename, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../src/config/config.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import { vmPaths } from '../../src/host/paths.ts';
import { httpGet } from '../../src/host/http-probe.ts';
import type { RunningVm, TemplateSnapshot } from '../../src/vmm/driver.ts';
import type { QmpClient } from '../../src/vmm/qemu/qmp.ts';
import { VM_UID_BASE, VM_UID_COUNT } from '../../src/vmm/qemu/vm-users.ts';

const APP_PORT = 8080;
const MEMORY_MIB = 128;
const isRoot = process.getuid?.() === 0;
const rootOnly = { skip: isRoot ? false : 'Cocoon does not run as root: QEMU runs as its user' };

let engine: Engine;
let workDir: string;
let template: TemplateSnapshot;
let a: RunningVm;
let b: RunningVm;
const running = new Set<RunningVm>();

function status(pid: number): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const match = /^(\w+):\s*(.*)$/.exec(line);
    if (match) fields[match[1]!] = match[2]!.trim();
  }
  return fields;
}

function cmdline(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
}

function uidOf(vm: RunningVm): number {
  return Number(status(vm.pid).Uid!.split(/\s+/)[0]);
}

/** Runs argv as `uid` (same gid, no supplementary groups, no capabilities): what that VM's QEMU could do. */
function asUser(uid: number, argv: string[]): { status: number | null; stderr: string } {
  const result = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--inh-caps=-all', ...argv], { encoding: 'utf8', timeout: 30_000 });
  return { status: result.status, stderr: result.stderr };
}

function mode(file: string): number {
  return statSync(file).mode & 0o777;
}

/** Moves a listening socket into the VM's chroot; returns its path as the QEMU sees it. */
async function linkIntoChroot(vm: RunningVm, socketPath: string): Promise<string> {
  const name = `test-sink-${path.basename(vm.dir)}.sock`;
  await rename(socketPath, path.join(vmPaths(vm.dir).chrootDir, name));
  return `/${name}`;
}

async function launch(name: string): Promise<RunningVm> {
  const vm = await engine.driver.launch(template, path.join(workDir, name));
  running.add(vm);
  return vm;
}

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-hardening-'));
  engine = await startEngine({ config: loadConfig({ dataDir: path.join(workDir, 'data') }), log: (line) => console.log(`# ${line}`) });
  const source = await engine.driver.boot({
    dir: path.join(workDir, 'template'), rootDisk: { kind: 'copy', rootfsPath: engine.artifacts.rootfs.tiny }, hostname: 'hardening',
    memoryMiB: MEMORY_MIB, vcpus: 1, guestPorts: [APP_PORT], templateSource: true,
  });
  running.add(source);
  await source.agent.startApp({ argv: ['/usr/local/bin/cocoon-testapp', String(APP_PORT)] });
  await source.agent.waitPort(APP_PORT, 30_000);
  template = await engine.driver.snapshotTemplate(source);
  running.delete(source);
  [a, b] = await Promise.all([launch('a'), launch('b')]);
});

after(async () => {
  await Promise.all([...running].map((vm) => engine.driver.stop(vm).catch(() => process.kill(vm.pid, 'SIGKILL'))));
  await engine.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

describe('a runtime VM\'s QEMU', () => {
  test('runs in seccomp filter mode with no_new_privs', () => {
    const fields = status(a.pid);
    assert.equal(fields.Seccomp, '2');
    assert.equal(fields.NoNewPrivs, '1');
  });

  test('has -sandbox on with spawning denied, and no monitor but its QMP socket', () => {
    const argv = cmdline(a.pid);
    const values = (option: string): string[] => argv.flatMap((arg, i) => (argv[i - 1] === option ? [arg] : []));
    assert.match(values('-sandbox')[0] ?? '', /^on,obsolete=deny,elevateprivileges=(deny|allow),spawn=deny,resourcecontrol=deny$/);
    assert.deepEqual(values('-monitor'), ['none']);
    assert.deepEqual(values('-qmp'), [`unix:${vmPaths(a.dir).qmpSocket},server=on,wait=off`]);
    assert.ok(!argv.includes('-mon') && !argv.some((arg) => arg.includes('exec:')));
  });

  test('runs as a uid of its own with no capabilities', rootOnly, () => {
    for (const vm of [a, b]) {
      const fields = status(vm.pid);
      const uids = fields.Uid!.split(/\s+/).map(Number);
      assert.equal(new Set(uids).size, 1, `real, effective, saved and fs uid agree: ${fields.Uid}`);
      assert.ok(uids[0]! >= VM_UID_BASE && uids[0]! < VM_UID_BASE + VM_UID_COUNT, `uid ${uids[0]}`);
      assert.deepEqual(fields.Gid!.split(/\s+/).map(Number), [uids[0], uids[0], uids[0], uids[0]]);
      assert.equal(fields.Groups, String(uids[0]));
      assert.equal(fields.CapEff, '0000000000000000');
      assert.equal(fields.CapPrm, '0000000000000000');
    }
    assert.notEqual(uidOf(a), uidOf(b));
    // Chrooted into a directory that holds only resolv.conf and save sockets: the host's files are out of its sight.
    assert.equal(readlinkSync(`/proc/${a.pid}/root`), vmPaths(a.dir).chrootDir);
  });

  test('runs as Cocoon\'s own user when Cocoon is not root', { skip: isRoot ? 'Cocoon runs as root' : false }, () => {
    assert.equal(uidOf(a), process.getuid!());
  });
});

describe('a build VM\'s QEMU', () => {
  test('is sandboxed too; it may spawn only for its egress guestfwd (whose socat works) and runs as Cocoon\'s user', async () => {
    // A stand-in for the egress proxy: the guest's connection to 10.0.2.100:3128 reaches it through socat.
    const egress = net.createServer((socket) => socket.once('data', () => socket.end('pong\n')));
    egress.listen(path.join(workDir, 'egress.sock'));
    await once(egress, 'listening');
    const vm = await engine.driver.boot({
      dir: path.join(workDir, 'build'), rootDisk: { kind: 'copy', rootfsPath: engine.artifacts.rootfs.tiny }, hostname: 'build',
      memoryMiB: MEMORY_MIB, vcpus: 1, guestPorts: [], templateSource: false, egressSocket: path.join(workDir, 'egress.sock'),
    });
    running.add(vm);
    const fields = status(vm.pid);
    assert.equal(fields.Seccomp, '2');
    assert.equal(uidOf(vm), process.getuid!());
    const argv = cmdline(vm.pid);
    assert.equal(argv[argv.indexOf('-sandbox') + 1], 'on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny');
    assert.ok(!argv.includes('-runas') && !argv.includes('-chroot'));
    const answer = await vm.agent.exec({ argv: ['sh', '-c', '(echo ping; sleep 3) | nc -w 10 10.0.2.100 3128'], timeoutMs: 30_000 });
    assert.equal(answer.stdout.toString(), 'pong\n', `the guestfwd's socat did not connect: ${answer.stderr.toString()}`);
    egress.close();
    running.delete(vm);
    await engine.driver.stop(vm);
  });
});

describe('files and sockets', () => {
  test('a VM\'s directory and socket directory are 0700 and Cocoon\'s; its sockets are not writable by others', () => {
    const paths = vmPaths(a.dir);
    for (const dir of [paths.dir, paths.socketDir, template.dir]) {
      assert.equal(mode(dir), 0o700, dir);
      assert.equal(statSync(dir).uid, process.getuid!(), dir);
    }
    for (const socket of [paths.qmpSocket, paths.agentSocket]) {
      assert.equal(mode(socket) & 0o022, 0, `${socket} is ${mode(socket).toString(8)}`);
      assert.equal(statSync(socket).uid, process.getuid!(), socket);
    }
  });

  test('another VM\'s QEMU user can read none of this VM\'s or the template\'s files, nor signal or trace its QEMU', rootOnly, () => {
    const other = uidOf(b);
    const paths = vmPaths(a.dir);
    for (const file of [paths.disk, paths.serialLog, paths.machine, path.join(template.dir, 'ram'), path.join(template.dir, 'disk.qcow2')]) {
      const attempt = asUser(other, ['cat', file]);
      assert.notEqual(attempt.status, 0, `uid ${other} read ${file}`);
      assert.match(attempt.stderr, /Permission denied/);
    }
    const connect = asUser(other, ['python3', '-c', `import socket; socket.socket(socket.AF_UNIX).connect(${JSON.stringify(paths.qmpSocket)})`]);
    assert.notEqual(connect.status, 0, 'connected to another VM\'s QMP socket');
    assert.match(connect.stderr, /Permission denied/);
    const signal = asUser(other, ['kill', '-0', String(a.pid)]);
    assert.notEqual(signal.status, 0, 'signalled another VM\'s QEMU');
    assert.match(signal.stderr, /Operation not permitted/);
    const environ = asUser(other, ['cat', `/proc/${a.pid}/environ`]);
    assert.notEqual(environ.status, 0, 'read another QEMU\'s /proc files');
    assert.match(environ.stderr, /Permission denied/);
  });

  test('a QEMU that tries to start a program is killed by its filter', async () => {
    const victim = await launch('spawner');
    const qmp = (victim as unknown as { qmp: QmpClient }).qmp;
    // Not awaited: QEMU dies inside the command.
    qmp.execute('migrate', { uri: 'exec:true' }).catch(() => {});
    const exited = (victim as unknown as { process: { exited: Promise<{ signal: NodeJS.Signals | null }> } }).process.exited;
    const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('QEMU still runs after a spawn attempt')), 60_000).unref());
    assert.equal((await Promise.race([exited, timeout])).signal, 'SIGSYS');
    running.delete(victim);
    await engine.driver.stop(victim).catch(() => {});
  });
});

describe('snapshots under the sandbox', () => {
  test('a VM whose completed save is rolled back continues (its disk comes back from the inherited descriptors)', async () => {
    // What a failed suspend, or the adoption of a VM whose daemon died mid-suspend, does: `cont`
    // after a finished migration, which reactivates the disk.
    const vm = await launch('rollback');
    const qmp = (vm as unknown as { qmp: QmpClient }).qmp;
    const sinkPath = path.join(workDir, 'sink.sock');
    const sink = net.createServer((socket) => socket.resume()).listen(sinkPath);
    try {
      await once(sink, 'listening');
      if (isRoot) await chown(sinkPath, uidOf(vm), uidOf(vm));
      await qmp.execute('stop');
      // The QEMU is chrooted when it dropped privileges: the sink must be reachable from there.
      const uri = isRoot ? `unix:${await linkIntoChroot(vm, sinkPath)}` : `unix:${sinkPath}`;
      await qmp.execute('migrate', { uri });
      for (let status = ''; status !== 'completed';) {
        status = (await qmp.execute<{ status?: string }>('query-migrate')).status ?? '';
        assert.notEqual(status, 'failed');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await qmp.execute('cont');
      const result = await vm.agent.exec({ argv: ['/bin/sh', '-c', 'echo written > /root/after-rollback && sync && cat /root/after-rollback'] });
      assert.equal(result.stdout.toString().trim(), 'written');
    } finally {
      sink.close();
      await rm(path.join(vmPaths(vm.dir).chrootDir, `test-sink-${path.basename(vm.dir)}.sock`), { force: true });
    }
  });

  test('suspend and resume work with spawning denied; the saved state is Cocoon\'s only', async () => {
    running.delete(a);
    const suspended = await engine.driver.suspend(a);
    const state = vmPaths(suspended.dir).suspendedState;
    assert.equal(mode(state), 0o600);
    assert.equal(statSync(state).uid, process.getuid!());
    a = await engine.driver.resume(suspended);
    running.add(a);
    assert.equal(status(a.pid).Seccomp, '2');
    assert.match(cmdline(a.pid).join(' '), /spawn=deny/);
    if (isRoot) assert.ok(uidOf(a) >= VM_UID_BASE);
    assert.equal((await httpGet(a.hostPort(APP_PORT), '/', 60_000)).body, 'hello from cocoon\n');
  });
});
