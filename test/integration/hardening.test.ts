/**
 * QEMU hardening on real VMs (docs/security.md): every QEMU runs under its seccomp filter with no
 * monitor but QMP; as root, runtime and build VMs' QEMUs run chrooted as uids of their own with
 * no capabilities (a build VM's egress leaves through a relay in the chroot); a VM's files and sockets are Cocoon's alone, and one VM's QEMU user can neither
 * read another VM's files nor signal its QEMU. Suspend, resume and a rolled-back save work without
 * QEMU starting any process. Root-only checks are skipped for a non-root Cocoon.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { chown, mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../src/config/config.ts';
import { startEgressProxy } from '../../src/egress/index.ts';
import { buildZip } from '../../src/images/artifact/test-zip.ts';
import { ImageBuilder } from '../../src/images/builder.ts';
import { run } from '../../src/host/run.ts';
import { openStore } from '../../src/store/index.ts';
import { qemuPidsUsing } from '../../src/vmm/qemu/process.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import { vmPaths } from '../../src/host/paths.ts';
import { httpGet } from '../../src/host/http-probe.ts';
import type { RunningVm, TemplateSnapshot } from '../../src/vmm/driver.ts';
import type { QmpClient } from '../../src/vmm/qemu/qmp.ts';
import { VM_UID_BASE, VM_UID_COUNT } from '../../src/vmm/qemu/vm-users.ts';

const APP_PORT = 8080;
const MEMORY_MIB = 128;
const isRoot = process.getuid?.() === 0;
/** What the stand-in resolver answers for every name: public, so the build policy lets it through. */
const STAND_IN_PUBLIC_ADDRESS = '93.184.215.14';
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

/**
 * Live processes that run a program of the chroot's egress relay as `uid`. Not QEMU's children:
 * libslirp's g_spawn_async forks twice, so the relay is reparented as soon as it starts.
 */
function relaysRunningAs(uid: string): number[] {
  return readdirSync('/proc').filter((name) => /^\d+$/.test(name)).map(Number).filter((pid) => {
    try {
      return cmdline(pid)[0]?.startsWith('/cocoon-egress-relay-') && status(pid).Uid === uid;
    } catch {
      return false;
    }
  });
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
  test('while it runs a RUN step: sandboxed, chrooted as a uid of its own (as root), and its egress reaches the build proxy through the relay', { timeout: 900_000 }, async () => {
    const dataDir = path.join(workDir, 'builds');
    await mkdir(dataDir, { recursive: true });
    const store = openStore(path.join(dataDir, 'cocoon.db'));
    const observed: Array<{ pid: number; status: Record<string, string>; root: string; argv: string[]; relays: Array<{ status: Record<string, string>; root: string; argv: string[] }> }> = [];
    // The origin the RUN step fetches from: on loopback, reached only through the real egress proxy
    // (build policy) via a resolver and dialler that stand in for the internet, so nothing leaves
    // this host. While it answers, the step is running: the build VM's QEMU is inspected then.
    const origin = http.createServer((request, response) => {
      try {
        const [pid] = qemuPidsUsing(dataDir);
        if (pid !== undefined) {
          observed.push({
            pid, status: status(pid), root: readlinkSync(`/proc/${pid}/root`), argv: cmdline(pid),
            relays: relaysRunningAs(status(pid).Uid!).map((child) => ({ status: status(child), root: readlinkSync(`/proc/${child}/root`), argv: cmdline(child) })),
          });
        }
      } finally {
        response.end(`hello from the origin, ${request.url}\n`);
      }
    });
    origin.listen(0, '127.0.0.1');
    await once(origin, 'listening');
    const originPort = (origin.address() as net.AddressInfo).port;
    const egress = await startEgressProxy({
      socketPath: path.join(dataDir, 'egress.sock'), policy: { mode: 'internet' },
      resolve: async () => [STAND_IN_PUBLIC_ADDRESS],
      connect: ({ address, port }) => {
        assert.ok(address === STAND_IN_PUBLIC_ADDRESS && (port === 80 || port === 443), `dialled ${address}:${port}`);
        return net.connect(originPort, '127.0.0.1');
      },
    });
    try {
      const builder = new ImageBuilder({
        driver: engine.driver, dataDir, images: store.images, egressSocket: egress.socketPath!,
        baseImage: async () => ({ rootfsPath: engine.artifacts.rootfs.tiny, sha256: engine.artifacts.manifest.artifacts['rootfs-tiny']!.sha256 }),
        builtWith: { kernel: 'test', kernelPackageVersion: 'test', agentVersion: 'test' },
      });
      const request = 'GET http://egress-test.example/relay HTTP/1.1\\r\\nHost: egress-test.example\\r\\nConnection: close\\r\\n\\r\\n';
      // What apt and curl do for https: a CONNECT tunnel (here with plain HTTP inside, to the same origin).
      const connect = 'CONNECT egress-test.example:443 HTTP/1.1\\r\\nHost: egress-test.example:443\\r\\n\\r\\n';
      const tunnelled = 'GET /tunnel HTTP/1.1\\r\\nHost: egress-test.example\\r\\nConnection: close\\r\\n\\r\\n';
      const dockerfile = [
        'FROM cocoon/tiny',
        'RUN echo first > /first',
        // The step fails (and so the build) unless the origin's answer came back through the relay.
        `RUN (printf '${request}'; sleep 5) | nc -w 10 10.0.2.100 3128 > /answer; cat /answer; grep -q 'hello from the origin, /relay' /answer`,
        `RUN (printf '${connect}'; sleep 2; printf '${tunnelled}'; sleep 5) | nc -w 10 10.0.2.100 3128 > /tunnel; cat /tunnel; grep -q ' 200 ' /tunnel && grep -q 'hello from the origin, /tunnel' /tunnel`,
        'RUN echo third > /third',
        'CMD ["httpd", "-f", "-p", "8080"]',
      ].join('\n');
      const zipPath = path.join(workDir, 'egress-build.zip');
      await writeFile(zipPath, buildZip([{ name: 'Dockerfile', data: `${dockerfile}\n` }]));
      const admin = await store.accounts.ensureAdmin();
      const lines: string[] = [];
      const { done } = await builder.create(admin.account.id, { name: 'egress-build', codeArtifactUri: zipPath, memoryMiB: 128 }, (line) => lines.push(line));
      const record = await done;
      assert.equal(record.state, 'ACTIVE', `${record.stateReason}\n${lines.join('\n')}`);

      assert.equal(observed.length, 2, `the origin was asked twice during the build:\n${lines.join('\n')}`);
      const [qemu] = observed;
      assert.equal(qemu!.status.Seccomp, '2');
      assert.equal(qemu!.status.NoNewPrivs, '1');
      const sandbox = qemu!.argv[qemu!.argv.indexOf('-sandbox') + 1];
      assert.equal(sandbox, 'on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny');
      const uid = Number(qemu!.status.Uid!.split(/\s+/)[0]);
      if (isRoot) {
        assert.ok(uid >= VM_UID_BASE && uid < VM_UID_BASE + VM_UID_COUNT && uid !== process.getuid!(), `QEMU runs as uid ${uid}`);
        assert.equal(new Set(qemu!.status.Uid!.split(/\s+/)).size, 1, qemu!.status.Uid);
        assert.equal(qemu!.status.CapEff, '0000000000000000');
        assert.equal(qemu!.status.CapPrm, '0000000000000000');
        const chroot = vmPaths(workDir).chrootDir;
        assert.equal(qemu!.root, chroot);
        // The guestfwd spawned the relay (not socat), which runs in the same chroot as the same uid.
        assert.equal(qemu!.relays.length, 1, JSON.stringify(qemu!.relays));
        const [relay] = qemu!.relays;
        assert.match(relay!.argv[0]!, /^\/cocoon-egress-relay-[0-9a-f]{16}$/);
        assert.equal(relay!.root, chroot);
        assert.equal(relay!.status.Uid, qemu!.status.Uid);
        // The relay's socket directory (named after the VM's socket directory) went with the build VM.
        const serial = /path=([^,]+\/serial\.log)/.exec(qemu!.argv.join(' '))![1]!;
        const socketDirName = path.basename(vmPaths(path.dirname(serial)).socketDir);
        assert.match(relay!.argv[1]!, new RegExp(`^/cocoon-build-egress-${socketDirName}/egress\\.sock$`));
        assert.ok(!(await readdir(chroot)).includes(`cocoon-build-egress-${socketDirName}`));
      } else {
        assert.equal(uid, process.getuid!());
        assert.ok(!qemu!.argv.includes('-runas') && !qemu!.argv.includes('-chroot'));
        assert.match(qemu!.argv.join(' '), /cmd:socat - UNIX-CONNECT:/);
      }
      // The layers made for a QEMU that reads them through inherited descriptors name their real backing files.
      const template = await builder.templateOf(record);
      const chain = JSON.parse(await run('qemu-img', ['info', '--output=json', '--backing-chain', '-U', path.join(template.dir, 'disk.qcow2')])) as Array<{ filename: string; 'backing-filename'?: string }>;
      assert.equal(chain.length, 6, chain.map((image) => image.filename).join(' <- '));
      for (const image of chain.slice(0, -1)) assert.match(image['backing-filename'] ?? '', new RegExp(`^${dataDir}/layers/[0-9a-f]+\\.qcow2$`));
      assert.deepEqual(qemuPidsUsing(dataDir), [], 'no QEMU of the build is left');
    } finally {
      for (const pid of qemuPidsUsing(dataDir)) process.kill(pid, 'SIGKILL');
      await egress.close();
      origin.close();
      store.close();
    }
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
