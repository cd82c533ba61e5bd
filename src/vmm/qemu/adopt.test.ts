/**
 * Adoption without a VM: `adopt` trusts no recorded pid (a dead one, another program, the QEMU of
 * another VM), stops a QEMU of its own directory that cannot be driven, and an adopted process
 * reports its exit by polling /proc. Fake QEMUs are idle Node processes whose argv[0] says qemu-system.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isAppError } from '../../errors/errors.ts';
import { vmPaths } from '../../host/paths.ts';
import { QemuDriver } from './driver.ts';
import { QemuProcess, qemuCommandLine, qemuPidsUsing } from './process.ts';

let workDir: string;
let driver: QemuDriver;
const fakes: ChildProcess[] = [];

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-adopt-'));
  driver = await QemuDriver.create({ accelerator: 'tcg', artifacts: { kernelPath: '/nonexistent', initramfsPath: '/nonexistent' } });
});

after(async () => {
  for (const fake of fakes) fake.kill('SIGKILL');
  await rm(workDir, { recursive: true, force: true });
});

/**
 * A process that looks like the QEMU of `vmDir` to /proc (argv[0], its -qmp and -pidfile arguments).
 * It never forks: a shell loop's children share its command line for an instant and were counted
 * as QEMUs of the directory too, now and then.
 */
async function fakeQemu(vmDir: string): Promise<ChildProcess> {
  const paths = vmPaths(vmDir);
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)', '--', '-qmp', `unix:${paths.qmpSocket},server=on,wait=off`, '-pidfile', paths.pidFile], {
    argv0: 'qemu-system-x86_64', stdio: 'ignore',
  });
  await new Promise((resolve, reject) => child.once('spawn', resolve).once('error', reject));
  fakes.push(child);
  return child;
}

async function vmDir(name: string, pid?: number): Promise<string> {
  const dir = path.join(workDir, name);
  await mkdir(dir, { recursive: true });
  await writeFile(vmPaths(dir).machine, JSON.stringify({ machine: {}, guestPorts: [], qemuVersion: driver.qemuVersion }));
  if (pid !== undefined) {
    const paths = vmPaths(dir);
    await writeFile(path.join(dir, 'runtime.json'), JSON.stringify({
      pid, startedAtMs: Date.now(), forwards: [], activeDisk: paths.disk, qmpSocket: paths.qmpSocket, agentSocket: paths.agentSocket,
    }));
  }
  return dir;
}

function alive(pid: number): boolean {
  return qemuCommandLine(pid) !== undefined;
}

async function rejectsWith(promise: Promise<unknown>, code: 'vmm.exited' | 'vmm.adopt_failed', message: RegExp): Promise<void> {
  await assert.rejects(promise, (error: Error) => {
    assert.ok(isAppError(error, code), `${code} expected, got ${String(error)}`);
    assert.match(error.message, message);
    return true;
  });
}

test('adopt refuses a directory whose VM never started or was stopped (no runtime.json)', async () => {
  await rejectsWith(driver.adopt(await vmDir('never')), 'vmm.exited', /no runtime\.json/);
});

test('adopt refuses a recorded pid that is not a QEMU, and leaves that process alone', async () => {
  await rejectsWith(driver.adopt(await vmDir('not-qemu', process.pid)), 'vmm.exited', /not a QEMU/);
});

test('adopt refuses the QEMU of another VM (a recycled pid), and leaves it running', async () => {
  const other = await fakeQemu(path.join(workDir, 'other'));
  await rejectsWith(driver.adopt(await vmDir('recycled', other.pid!)), 'vmm.exited', /QEMU of another VM/);
  assert.ok(alive(other.pid!));
});

test('a QEMU of this directory that does not answer QMP is stopped: nothing else could drive it', async () => {
  const dir = await vmDir('silent');
  const fake = await fakeQemu(dir);
  await vmDir('silent', fake.pid!);
  assert.deepEqual(qemuPidsUsing(dir), [fake.pid], 'found by its command line');
  await rejectsWith(driver.adopt(dir, { timeoutMs: 300 }), 'vmm.adopt_failed', /could not re-attach .* so it was stopped/);
  assert.equal(alive(fake.pid!), false);
});

test('an adopted process: exited resolves when it dies, kill() kills it, both by polling /proc', async () => {
  const first = await fakeQemu(path.join(workDir, 'poll-1'));
  const adopted = QemuProcess.adopt(first.pid!, '/nonexistent');
  assert.equal(adopted.running, true);
  first.kill('SIGKILL');
  assert.deepEqual(await adopted.exited, { code: null, signal: null });
  assert.equal(adopted.running, false);
  await assert.rejects(adopted.failOnExit('a test'), /it was not our child/);

  const second = await fakeQemu(path.join(workDir, 'poll-2'));
  await QemuProcess.adopt(second.pid!, '/nonexistent').kill();
  assert.equal(alive(second.pid!), false);
  assert.throws(() => QemuProcess.adopt(second.pid!, '/nonexistent'), /is not running/);
});
