/**
 * The VM engine end to end on real QEMU VMs (TCG here): boot, exec, files, template snapshot,
 * copy-on-write clones, suspend/resume, clock after resume, and QEMU dying mid-operation.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { isAppError } from '../../src/errors/errors.ts';
import { loadConfig } from '../../src/config/config.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import { vmPaths } from '../../src/host/paths.ts';
import type { RunningVm, SuspendedVm, TemplateSnapshot } from '../../src/vmm/driver.ts';
import { httpGet, waitUntil } from '../../src/host/http-probe.ts';

const APP_PORT = 8080;
const MEMORY_MIB = 128;
const CLOCK_GAP_MS = 61_000;

let engine: Engine;
let workDir: string;
const running = new Set<RunningVm>();

async function boot(name: string, templateSource = false): Promise<RunningVm> {
  const vm = await engine.driver.boot({
    dir: path.join(workDir, name), rootDisk: { kind: 'copy', rootfsPath: engine.artifacts.rootfs.tiny }, hostname: name,
    memoryMiB: MEMORY_MIB, vcpus: 1, guestPorts: [APP_PORT], templateSource,
  });
  running.add(vm);
  return vm;
}

async function launch(template: TemplateSnapshot, name: string): Promise<RunningVm> {
  const vm = await engine.driver.launch(template, path.join(workDir, name));
  running.add(vm);
  return vm;
}

async function stop(vm: RunningVm): Promise<void> {
  running.delete(vm);
  await engine.driver.stop(vm);
}

async function sh(vm: RunningVm, script: string): Promise<string> {
  const result = await vm.agent.exec({ argv: ['/bin/sh', '-c', script], timeoutMs: 60_000 });
  assert.equal(result.exitCode, 0, `${script}: ${result.stderr.toString()}`);
  return result.stdout.toString().trim();
}

function pidAlive(pid: number): boolean {
  return existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(safeRead(`/proc/${pid}/status`));
}

function safeRead(file: string): string {
  try { return readFileSync(file, 'utf8'); } catch { return ''; }
}

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-it-'));
  engine = await startEngine({ config: loadConfig({ dataDir: path.join(workDir, 'data') }), log: (line) => console.log(`# ${line}`) });
});

after(async () => {
  // Every VM a test started is stopped here even when the test failed, by its recorded pid.
  await Promise.all([...running].map((vm) => engine.driver.stop(vm).catch(() => process.kill(vm.pid, 'SIGKILL'))));
  await engine.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

describe('a cold-booted tiny VM', () => {
  let vm: RunningVm;
  before(async () => { vm = await boot('cold'); });
  after(() => stop(vm));

  test('reports the agent and protocol versions', () => {
    assert.equal(vm.agent.agentVersion, engine.artifacts.manifest.agent.version);
    assert.ok(vm.pid > 0);
    assert.equal(readPidFile(vm), vm.pid);
  });

  test('exec returns exit code, stdout and stderr separately', async () => {
    const result = await vm.agent.exec({ argv: ['/bin/sh', '-c', 'echo out; echo err >&2; exit 3'] });
    assert.equal(result.exitCode, 3);
    assert.equal(result.stdout.toString(), 'out\n');
    assert.equal(result.stderr.toString(), 'err\n');
  });

  test('exec passes stdin, env, cwd and user', async () => {
    const result = await vm.agent.exec({
      argv: ['/bin/sh', '-c', 'cat; echo "$GREETING"; pwd; id -u'],
      stdin: 'from stdin\n', env: { GREETING: 'hello' }, cwd: '/tmp', user: 'app',
    });
    assert.equal(result.exitCode, 0, result.stderr.toString());
    assert.equal(result.stdout.toString(), 'from stdin\nhello\n/tmp\n1000\n');
  });

  test('exec of a missing program and an exec timeout fail clearly', async () => {
    await assert.rejects(vm.agent.exec({ argv: ['/no/such/program'] }), (error) => isAppError(error, 'guest.request_failed') && /spawn/.test(error.message));
    const started = Date.now();
    const result = await vm.agent.exec({ argv: ['/bin/sleep', '30'], timeoutMs: 500 });
    assert.equal(result.signal, 9);
    assert.ok(Date.now() - started < 20_000);
  });

  test('a 3 MiB file survives a round trip byte for byte', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    await vm.agent.writeFile('/root/blob/data.bin', data, { mkdirs: true, mode: 0o600 });
    const back = await vm.agent.readFile('/root/blob/data.bin');
    assert.ok(back.equals(data));
    const guestHash = await sh(vm, 'sha256sum /root/blob/data.bin | cut -d" " -f1; stat -c %a /root/blob/data.bin');
    assert.equal(guestHash, `${createHash('sha256').update(data).digest('hex')}\n600`);
  });

  test('a paused VM answers nothing until it continues', async () => {
    await engine.driver.pause(vm);
    const answered = vm.agent.sync().then(() => 'answered');
    assert.equal(await Promise.race([answered, sleep(1500).then(() => 'no answer')]), 'no answer');
    await engine.driver.cont(vm);
    assert.equal(await answered, 'answered'); // the request sent while paused is served after cont
  });

  test('the app runs under the agent and answers through its forwarded port', async () => {
    const output: string[] = [];
    vm.agent.on('app-output', (_stream, chunk) => output.push(chunk.toString()));
    await vm.agent.startApp({ argv: ['/usr/local/bin/cocoon-testapp', String(APP_PORT)] });
    await vm.agent.waitPort(APP_PORT, 30_000);
    assert.equal((await httpGet(vm.hostPort(APP_PORT), '/')).body, 'hello from cocoon\n');
    const exit = await vm.agent.stopApp(2000);
    assert.equal(exit.signal, 15);
    assert.match(output.join(''), /listening on :8080/);
  });
});

describe('template snapshot, clones, suspend and resume', () => {
  let template: TemplateSnapshot;
  let templateRamHash: string;
  const clones: RunningVm[] = [];
  let sleeper: SuspendedVm;
  let sleeperSuspendedAt = 0;

  before(async () => {
    const source = await boot('template', true);
    await source.agent.startApp({ argv: ['/usr/local/bin/cocoon-testapp', String(APP_PORT)] });
    await source.agent.waitPort(APP_PORT, 30_000);
    running.delete(source);
    template = await engine.driver.snapshotTemplate(source);
    templateRamHash = await hashFile(path.join(template.dir, 'ram'));
    for (const name of ['clone-a', 'clone-b', 'clone-c']) clones.push(await launch(template, name));
    // The clock check needs a VM that stays suspended for a minute: start its wait now.
    const clockVm = await launch(template, 'clock');
    running.delete(clockVm);
    sleeper = await engine.driver.suspend(clockVm);
    sleeperSuspendedAt = Date.now();
  });

  test('every clone answers HTTP on its own port, with the app already running', async () => {
    const ports = new Set(clones.map((vm) => vm.hostPort(APP_PORT)));
    assert.equal(ports.size, 3);
    for (const vm of clones) assert.equal((await httpGet(vm.hostPort(APP_PORT), '/')).body, 'hello from cocoon\n');
  });

  test('clones have separate memory: the in-app counter and tmpfs files are private', async () => {
    const [a, b] = clones as [RunningVm, RunningVm];
    assert.equal((await httpGet(a.hostPort(APP_PORT), '/count')).body, '1\n');
    assert.equal((await httpGet(a.hostPort(APP_PORT), '/count')).body, '2\n');
    assert.equal((await httpGet(b.hostPort(APP_PORT), '/count')).body, '1\n');
    await sh(a, 'echo only-in-a > /dev/shm/marker');
    assert.equal(await sh(b, 'cat /dev/shm/marker 2>/dev/null || echo absent'), 'absent');
  });

  test('clones have separate disks', async () => {
    const [a, b, c] = clones as [RunningVm, RunningVm, RunningVm];
    await sh(a, 'echo disk-a > /root/disk-marker && sync');
    await sh(b, 'echo disk-b > /root/disk-marker && sync');
    assert.equal(await sh(a, 'cat /root/disk-marker'), 'disk-a');
    assert.equal(await sh(b, 'cat /root/disk-marker'), 'disk-b');
    assert.equal(await sh(c, 'cat /root/disk-marker 2>/dev/null || echo absent'), 'absent');
  });

  test('clones never modify the template RAM file', async () => {
    assert.equal(await hashFile(path.join(template.dir, 'ram')), templateRamHash);
  });

  test('suspend → resume keeps in-memory state and files', async () => {
    const vm = clones[2]!;
    await httpGet(vm.hostPort(APP_PORT), '/count');
    await httpGet(vm.hostPort(APP_PORT), '/count');
    await sh(vm, 'echo kept > /root/kept && echo in-ram > /dev/shm/kept');
    running.delete(vm);
    const suspended = await engine.driver.suspend(vm);
    assert.ok(suspended.stateBytes > 0);
    assert.equal(pidAlive(vm.pid), false, 'QEMU must be gone after a suspend');
    const resumed = await engine.driver.resume(suspended);
    running.add(resumed);
    clones[2] = resumed;
    assert.equal((await httpGet(resumed.hostPort(APP_PORT), '/count')).body, '3\n');
    assert.equal(await sh(resumed, 'cat /root/kept /dev/shm/kept'), 'kept\nin-ram');
  });

  test('killing QEMU during a suspend fails it clearly and leaves nothing behind', async () => {
    const vm = await launch(template, 'killed-suspend');
    const suspending = engine.driver.suspend(vm);
    process.kill(vm.pid, 'SIGKILL');
    await assert.rejects(suspending, (error) => isAppError(error) && ['vmm.exited', 'vmm.snapshot_failed', 'vmm.qmp_error'].includes(error.code));
    running.delete(vm);
    await engine.driver.stop(vm);
    assert.equal(pidAlive(vm.pid), false);
    const leftovers = (await readdir(vm.dir)).filter((f) => /state|\.sock$|\.pid$/.test(f));
    assert.deepEqual(leftovers, []);
    assert.equal(existsSync(vmPaths(vm.dir).socketDir), false, 'the socket directory must be gone');
  });

  test('killing QEMU during an exec fails the exec with guest.disconnected', async () => {
    const vm = await launch(template, 'killed-exec');
    let started!: () => void;
    const sleeping = new Promise<void>((resolve) => { started = resolve; });
    const exec = vm.agent.exec({ argv: ['/bin/sh', '-c', 'echo started; exec sleep 60'], onStdout: () => started() });
    exec.catch(() => {});
    await sleeping;
    process.kill(vm.pid, 'SIGKILL');
    await assert.rejects(exec, (error) => isAppError(error, 'guest.disconnected'));
    running.delete(vm);
    await engine.driver.stop(vm);
    assert.equal(pidAlive(vm.pid), false);
  });

  test('the guest clock is right after a resume a minute later', async () => {
    const waitMs = CLOCK_GAP_MS - (Date.now() - sleeperSuspendedAt);
    if (waitMs > 0) await sleep(waitMs); // the point of the test is time passing while suspended
    const vm = await engine.driver.resume(sleeper);
    running.add(vm);
    const guestSeconds = Number(await sh(vm, 'date +%s'));
    assert.ok(Math.abs(guestSeconds - Date.now() / 1000) < 10, `guest clock off by ${guestSeconds - Date.now() / 1000} s`);
    assert.equal((await httpGet(vm.hostPort(APP_PORT), '/')).status, 200);
  });

  test('a snapshot from another QEMU build is refused', async () => {
    await assert.rejects(
      engine.driver.launch({ ...template, qemuVersion: 'QEMU emulator version 0.0' }, path.join(workDir, 'incompatible')),
      (error) => isAppError(error, 'vmm.incompatible_snapshot'),
    );
  });
});

describe('APP_ATTACH: the app of a clone, whose output began in the template session', () => {
  // Each line written to /tmp/say is printed on stdout and stderr, then acknowledged in /tmp/said.
  const APP = 'mkfifo /tmp/say && echo started && while :; do while read line; do echo "out $line"; echo "err $line" >&2; echo "$line" >> /tmp/said; done < /tmp/say; done';
  let clone: RunningVm;
  const output: string[] = [];

  /** Makes the app print `line` and waits until it has. */
  const say = (vm: RunningVm, line: string) => sh(vm, `echo ${line} > /tmp/say; until grep -qx ${line} /tmp/said 2>/dev/null; do sleep 0.05; done`);
  const printed = (text: string) => waitUntil(async () => output.join('').includes(text), 30_000, 20)
    .catch(() => assert.fail(`"${text}" is not in the app output: ${JSON.stringify(output.join(''))}`));

  before(async () => {
    const source = await boot('attach-template', true);
    const sourceOutput: string[] = [];
    source.agent.on('app-output', (_stream, chunk) => sourceOutput.push(chunk.toString()));
    await source.agent.startApp({ argv: ['/bin/sh', '-c', APP] });
    await waitUntil(async () => sourceOutput.join('').includes('started'), 30_000, 20);
    await say(source, 'in-template');
    // All of it reached the template session before the snapshot.
    await waitUntil(async () => /out in-template[^]*err in-template|err in-template[^]*out in-template/.test(sourceOutput.join('')), 30_000, 20);
    running.delete(source);
    clone = await launch(await engine.driver.snapshotTemplate(source), 'attach-clone');
    clone.agent.on('app-output', (stream, chunk) => output.push(`${stream}:${chunk.toString()}`));
  });
  after(() => stop(clone));

  test('output while detached is kept and comes first; then live output; a second attach is busy', async () => {
    await say(clone, 'detached');
    assert.deepEqual(output, [], 'nothing arrives before the attach (the template session is over)');
    const { pid } = await clone.agent.attachApp();
    assert.ok(pid > 1);
    await printed('stdout:out detached\n');
    await printed('stderr:err detached\n');
    await assert.rejects(clone.agent.attachApp(), (error) => isAppError(error, 'guest.request_failed') && error.details.guestCode === 'busy');
    await say(clone, 'attached');
    await printed('stdout:out attached\n');
    assert.deepEqual(output.join('').split('\n').filter((line) => line.includes('in-template')), [], 'output of the template session is not repeated');
  });

  test('the attach stream ends with APP_EXIT; then there is nothing to attach to', async () => {
    const exited = new Promise<{ signal: number }>((resolve) => clone.agent.once('app-exit', resolve));
    await clone.agent.stopApp(2000);
    assert.equal((await exited).signal, 15);
    await assert.rejects(clone.agent.attachApp(), (error) => isAppError(error, 'guest.request_failed') && error.details.guestCode === 'not_found');
  });
});

function readPidFile(vm: RunningVm): number {
  return Number(safeRead(path.join(vm.dir, 'qemu.pid')).trim());
}

async function hashFile(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

