/**
 * Crash consistency: `cocoon server` runs as a child process and is killed with SIGKILL in the
 * middle of a build, a run, a suspend and a resume (the moment is observed in its SQLite file and
 * VM directory, never guessed with a sleep), then restarted on the same data directory. The restart
 * must re-adopt live QEMUs, finish or roll back what was half done, and lose no ACTIVE image and no
 * SUSPENDED VM; a graceful SIGTERM keeps running VMs running. One data directory and one image serve
 * every scenario: busybox httpd with a CGI counter that lives in the guest, and runtime hooks whose
 * run and resume hooks take 2 s (a window between a finished launch or restore and RUNNING). Also,
 * in process: adopting a VM whose save was cut short cancels the save and lets the VM go on.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync } from 'node:fs';
import { chown, cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { CocoonClient, type MicroVm, type MicroVmState } from '../../src/client/index.ts';
import { loadConfig } from '../../src/config/config.ts';
import { httpGet } from '../../src/host/http-probe.ts';
import { freeLoopbackPort } from '../../src/host/sockets.ts';
import { vmPaths } from '../../src/host/paths.ts';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import { startEngine } from '../../src/main/engine.ts';
import { qemuCommandLine, qemuPidsUsing } from '../../src/vmm/qemu/process.ts';
import { QmpClient } from '../../src/vmm/qemu/qmp.ts';
import { processUid } from '../../src/vmm/qemu/vm-users.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const IMAGE = 'crash-httpd';
/** TCG on two shared cores: builds, launches and restores can be slow when other tests run too. */
const SLOW_MS = 180_000;
const TEST_TIMEOUT_MS = 400_000;

/** `cocoon server` as a child process; its output is kept for the assertions. */
class Server {
  output = '';
  private readonly exit: Promise<number | null>;

  private constructor(private readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => { this.output += chunk; });
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { this.output += chunk; });
    this.exit = new Promise((resolve) => child.once('exit', (code) => {
      serverNotes.push(`--- server ${child.pid} exited (${code ?? 'killed'})`, ...notesOf(this.output));
      resolve(code);
    }));
  }

  static async start(dataDir: string, port: number): Promise<Server> {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'server', '--data-dir', dataDir, '--port', String(port)], {
      cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'],
    });
    const server = new Server(child);
    const deadline = Date.now() + SLOW_MS;
    while (!server.output.includes('Cocoon API on')) {
      const exited = await Promise.race([server.exit, sleep(100).then(() => 'running' as const)]);
      assert.equal(exited, 'running', `the server exited while starting:\n${server.output}`);
      assert.ok(Date.now() < deadline, `the server did not start:\n${server.output}`);
    }
    return server;
  }

  get pid(): number {
    return this.child.pid!;
  }

  async kill9(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exit;
  }

  /** SIGTERM: a graceful stop. Resolves with the exit code. */
  async stop(): Promise<number | null> {
    this.child.kill('SIGTERM');
    return this.exit;
  }
}

/** What every server said, without its request log (printed at the end, for failures). */
const serverNotes: string[] = [];

/** The server's own lines, and the request log's warnings and errors. */
function notesOf(output: string): string[] {
  return output.split('\n').filter((line) => {
    if (!line.startsWith('{')) return line.trim() !== '';
    try {
      return (JSON.parse(line) as { level?: number }).level! >= 40;
    } catch {
      return true;
    }
  });
}

let workDir: string;
let dataDir: string;
let port: number;
let server: Server;
let client: CocoonClient;
let db: Database.Database;

interface Row {
  microvmId: string;
  state: MicroVmState;
  pid?: number;
  dir: string;
}

function rowOf(raw: { microvm_id: string; state: MicroVmState; data: string }): Row {
  const data = JSON.parse(raw.data) as { pid?: number; dir: string };
  return { microvmId: raw.microvm_id, state: raw.state, pid: data.pid, dir: data.dir };
}

/** The MicroVM's record as the server's SQLite file has it right now. */
function row(microvmId: string): Row {
  const raw = db.prepare('SELECT microvm_id, state, data FROM microvms WHERE microvm_id = ?').get(microvmId) as Parameters<typeof rowOf>[0];
  return rowOf(raw);
}

/** Polls `probe` every `intervalMs` until it returns a value. */
async function waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, intervalMs = 5, timeoutMs = SLOW_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await sleep(intervalMs);
  }
}

async function restart(): Promise<void> {
  server = await Server.start(dataDir, port);
}

/** The app's CGI counter: each GET increments a file inside the guest and returns the new value. */
async function count(vm: MicroVm): Promise<number> {
  assert.ok(vm.localPort, `${vm.microvmId} has no localPort (${vm.state})`);
  const answer = await httpGet(vm.localPort, '/cgi-bin/count', 30_000);
  assert.equal(answer.status, 200, answer.body);
  return Number(answer.body.trim());
}

function qemuAlive(pid: number): boolean {
  return qemuCommandLine(pid) !== undefined;
}

async function terminate(microvmId: string): Promise<void> {
  const dir = row(microvmId).dir;
  assert.equal((await client.terminateMicroVm(microvmId)).state, 'TERMINATED');
  assert.deepEqual(qemuPidsUsing(dir), [], `no QEMU of ${microvmId} is left`);
  assert.equal(existsSync(dir), false);
}

async function run(): Promise<MicroVm> {
  const vm = await client.runMicroVm({ imageIdentifier: IMAGE });
  assert.equal(vm.state, 'RUNNING', vm.stateReason);
  return vm;
}

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-crash-'));
  dataDir = path.join(workDir, 'data');
  port = await freeLoopbackPort();
  server = await Server.start(dataDir, port);
  client = new CocoonClient({ endpoint: `http://127.0.0.1:${port}`, apiKey: (await readFile(path.join(dataDir, 'admin-api-key'), 'utf8')).trim(), timeoutMs: SLOW_MS });
  db = new Database(path.join(dataDir, 'cocoon.db'), { readonly: true, fileMustExist: true });

  const app = path.join(workDir, 'app');
  await cp(path.join(ROOT, 'examples/tiny-httpd/www'), path.join(app, 'www'), { recursive: true });
  await mkdir(path.join(app, 'www/cgi-bin'));
  await writeFile(path.join(app, 'www/cgi-bin/count'), [
    '#!/bin/sh',
    'n=$(( $(cat /tmp/count 2>/dev/null || echo 0) + 1 ))',
    'echo $n > /tmp/count',
    'printf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$n"',
    '',
  ].join('\n'), { mode: 0o755 });
  await writeFile(path.join(app, 'hook.sh'), [
    '#!/bin/sh',
    'read -r method target _',
    'length=0',
    'while read -r header; do',
    '  header=$(printf "%s" "$header" | tr -d "\\r")',
    '  [ -z "$header" ] && break',
    '  case "$header" in [Cc]ontent-[Ll]ength:*) length=$(printf "%s" "${header#*:}" | tr -dc 0-9) ;; esac',
    'done',
    'head -c "${length:-0}" > /dev/null',
    'case "$target" in */run|*/resume) sleep 2 ;; esac',
    'printf "HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\nok\\n"',
    '',
  ].join('\n'), { mode: 0o755 });
  await writeFile(path.join(app, 'Dockerfile'), [
    'FROM cocoon/tiny',
    'ARG GREETING=hello',
    'COPY www/ /srv/www/',
    'COPY hook.sh /srv/hook.sh',
    'RUN chmod 755 /srv/www/cgi-bin/count /srv/hook.sh && echo "$GREETING" > /srv/www/greeting.txt',
    // The build the test kills: its RUN step is observably running (it prints 42, not the header's text).
    'RUN if [ "$GREETING" = crash ]; then echo "slow step $((40 + 2))"; sleep 600; fi',
    'EXPOSE 8080',
    'CMD ["sh", "-c", "nc -ll -p 9000 -e /srv/hook.sh & exec httpd -f -p 8080 -h /srv/www"]',
    '',
  ].join('\n'));
  await zipDirectory(app, path.join(workDir, 'app.zip'));
  await client.uploadImage(IMAGE, path.join(workDir, 'app.zip'), { memoryMiB: 128 });
  const image = await waitFor('the image build', async () => {
    const version = await client.getImage(IMAGE, '1.0');
    return version.state === 'CREATING' ? undefined : version;
  }, 250);
  assert.equal(image.state, 'ACTIVE', image.stateReason);
});

after(async () => {
  try {
    if (server) {
      const live = await client.listMicroVms().then((list) => list.microvms, () => []);
      for (const vm of live.filter((v) => v.state !== 'TERMINATED')) {
        await client.terminateMicroVm(vm.microvmId).catch((error: Error) => console.log(`# teardown ${vm.microvmId}: ${error.message}`));
      }
      await server.stop();
    }
  } finally {
    console.log(serverNotes.map((line) => `# ${line}`).join('\n'));
    db?.close();
    const left = dataDir ? qemuPidsUsing(dataDir) : [];
    for (const pid of left) process.kill(pid, 'SIGKILL');
    await rm(workDir, { recursive: true, force: true });
    assert.deepEqual(left, [], 'no QEMU of the test\'s data directory is left');
  }
});

describe('kill -9 of the server, then a restart on the same data directory', { timeout: TEST_TIMEOUT_MS }, () => {
  let vm: MicroVm;
  let counted = 0;

  test('while RUNNING: the same QEMU is re-adopted, its app answers on the same port with its in-guest state', async () => {
    vm = await run();
    assert.equal(await count(vm), ++counted);
    const { pid } = row(vm.microvmId);
    await server.kill9();
    assert.ok(pid && qemuAlive(pid), 'QEMU outlives the server');
    await restart();
    assert.match(server.output, new RegExp(`reconcile: ${vm.microvmId} RUNNING re-adopted`));
    const after = await client.getMicroVm(vm.microvmId);
    assert.equal(after.state, 'RUNNING');
    assert.equal(after.localPort, vm.localPort);
    assert.equal(row(vm.microvmId).pid, pid);
    assert.ok(after.runningSeconds >= vm.runningSeconds);
    assert.equal(await count(after), ++counted);
    vm = after;
  });

  test('during a suspend: SUSPENDED with its saved state, or rolled back to RUNNING; never lost, and it resumes', async () => {
    const paths = vmPaths(row(vm.microvmId).dir);
    const suspending = client.suspendMicroVm(vm.microvmId).catch(() => undefined);
    // Killed while the state is being written (or just committed, its QEMU not yet stopped).
    await waitFor('a save in progress', () => (row(vm.microvmId).state === 'SUSPENDING'
      && (existsSync(`${paths.suspendedState}.tmp`) || existsSync(paths.suspendedState)) ? true : undefined), 2);
    await server.kill9();
    await suspending;
    await restart();
    const settled = await client.getMicroVm(vm.microvmId);
    console.log(`# killed during a suspend → ${settled.state} (${settled.stateReason})`);
    assert.ok(settled.state === 'SUSPENDED' || settled.state === 'RUNNING', `${settled.state}: ${settled.stateReason}`);
    if (settled.state === 'SUSPENDED') {
      assert.ok(existsSync(vmPaths(row(vm.microvmId).dir).suspendedState), 'a SUSPENDED VM keeps its saved state');
      vm = await client.resumeMicroVm(vm.microvmId);
    } else {
      assert.match(settled.stateReason ?? '', /suspend was rolled back/);
      vm = settled;
    }
    assert.equal(vm.state, 'RUNNING');
    assert.equal(await count(vm), ++counted, 'the guest state survived');
  });

  test('during a resume, mid-restore: SUSPENDED with its saved state kept (or RUNNING if the restore finished); the VM then works', async () => {
    assert.equal((await client.suspendMicroVm(vm.microvmId)).state, 'SUSPENDED');
    const { dir } = row(vm.microvmId);
    const resuming = client.resumeMicroVm(vm.microvmId).catch(() => undefined);
    // Killed once the restoring QEMU exists: it is still loading the state, most likely.
    await waitFor('RESUMING with a QEMU', () => (row(vm.microvmId).state === 'RESUMING' && existsSync(path.join(dir, 'runtime.json')) ? true : undefined));
    await server.kill9();
    await resuming;
    await restart();
    const settled = await client.getMicroVm(vm.microvmId);
    console.log(`# killed during a resume → ${settled.state} (${settled.stateReason})`);
    assert.ok(settled.state === 'RUNNING' || settled.state === 'SUSPENDED', `${settled.state}: ${settled.stateReason}`);
    if (settled.state === 'SUSPENDED') {
      assert.ok(existsSync(vmPaths(dir).suspendedState), 'a SUSPENDED VM keeps its saved state');
      assert.deepEqual(qemuPidsUsing(dir), [], 'the unfinished restore was stopped');
      vm = await client.resumeMicroVm(vm.microvmId);
    } else {
      assert.equal(existsSync(vmPaths(dir).suspendedState), false, 'a running VM has no stale saved state');
      vm = settled;
    }
    assert.equal(vm.state, 'RUNNING');
    assert.equal(await count(vm), ++counted, 'the guest state survived');
  });

  test('during a resume, after the restore (in the resume hook): the restored QEMU is re-adopted, RUNNING; then terminated cleanly', async () => {
    assert.equal((await client.suspendMicroVm(vm.microvmId)).state, 'SUSPENDED');
    const { dir } = row(vm.microvmId);
    const resuming = client.resumeMicroVm(vm.microvmId).catch(() => undefined);
    // The driver deletes state.zst only after a successful restore; the 2 s resume hook follows.
    await waitFor('a finished restore', () => (row(vm.microvmId).state === 'RESUMING' && !existsSync(vmPaths(dir).suspendedState) ? true : undefined));
    const { pid } = JSON.parse(await readFile(path.join(dir, 'runtime.json'), 'utf8')) as { pid: number };
    await server.kill9();
    await resuming;
    await restart();
    const settled = await client.getMicroVm(vm.microvmId);
    assert.equal(settled.state, 'RUNNING', settled.stateReason);
    assert.match(settled.stateReason ?? '', /restore had completed/);
    assert.equal(row(vm.microvmId).pid, pid, 'the restored QEMU itself');
    assert.equal(await count(settled), ++counted, 'the guest state survived');
    await terminate(vm.microvmId);
  });

  test('during a run (PENDING): RUNNING (without its run hook) or FAILED, never stuck; terminate leaves no QEMU', async () => {
    const running = client.runMicroVm({ imageIdentifier: IMAGE, runHookPayload: '{"secret":"never stored"}' }).catch(() => undefined);
    // Killed once the launched QEMU's pid is recorded (the app is starting or its run hook is running).
    const pending = await waitFor('a PENDING MicroVM with a QEMU', () => {
      const raw = db.prepare("SELECT microvm_id, state, data FROM microvms WHERE state = 'PENDING'").get() as Parameters<typeof rowOf>[0] | undefined;
      const candidate = raw && rowOf(raw);
      return candidate?.pid ? candidate : undefined;
    });
    await server.kill9();
    await running;
    await restart();
    const settled = await client.getMicroVm(pending.microvmId);
    console.log(`# killed during a run → ${settled.state} (${settled.stateReason})`);
    assert.ok(settled.state === 'RUNNING' || settled.state === 'FAILED', `${settled.state}: ${settled.stateReason}`);
    if (settled.state === 'RUNNING') {
      assert.match(settled.stateReason ?? '', /run hook may not have been delivered/);
      assert.equal(await count(settled), 1);
    } else {
      assert.deepEqual(qemuPidsUsing(pending.dir), []);
    }
    await terminate(pending.microvmId);
  });

  test('during an image build: that version is FAILED, the ACTIVE one stays ACTIVE and runs; no build QEMU is left', async () => {
    // A new build argument: the RUN step is not cached, so a build VM runs it.
    const building = await client.uploadImage(IMAGE, path.join(workDir, 'app.zip'), { memoryMiB: 128, buildArgs: { GREETING: 'crash' } });
    const imagesDir = path.join(dataDir, 'images');
    // Killed while a RUN step runs: a QEMU still restoring a snapshot from the daemon would die
    // with it on its own, and the orphan sweep would have nothing to show.
    await waitFor('the slow RUN step', async () => ((await client.buildLogs(IMAGE, building.version)).includes('slow step 42') ? true : undefined), 250);
    const buildPids = await waitFor('the build VM', () => {
      const versionDirs = readdirSync(imagesDir).map((account) => path.join(imagesDir, account, IMAGE, building.version));
      const pids = versionDirs.flatMap((dir) => qemuPidsUsing(dir));
      return pids.length > 0 ? pids : undefined;
    }, 50);
    await server.kill9();
    await restart();
    assert.ok(buildPids.every((pid) => !qemuAlive(pid)), 'the orphaned build VM was killed');
    assert.match(server.output, new RegExp(`killed QEMU ${buildPids[0]}, an orphan of the previous daemon`));
    const failed = await client.getImage(IMAGE, building.version);
    assert.equal(failed.state, 'FAILED');
    assert.match(failed.stateReason ?? '', /interrupted/);
    const latest = await client.getImage(IMAGE);
    assert.equal(latest.version, '1.0');
    assert.equal(latest.state, 'ACTIVE');
    const vm = await run();
    assert.equal(vm.imageVersion, '1.0');
    assert.equal(await count(vm), 1);
    await terminate(vm.microvmId);
  });
});

describe('a graceful stop (SIGTERM)', { timeout: TEST_TIMEOUT_MS }, () => {
  test('keeps a RUNNING VM running, and the next start re-adopts it', async () => {
    const vm = await run();
    assert.equal(await count(vm), 1);
    const { pid } = row(vm.microvmId);
    assert.equal(await server.stop(), 0, server.output);
    assert.match(server.output, /1 MicroVM keeps running/);
    assert.ok(pid && qemuAlive(pid), 'QEMU outlives the server');
    await restart();
    assert.match(server.output, new RegExp(`reconcile: ${vm.microvmId} RUNNING re-adopted`));
    const after = await client.getMicroVm(vm.microvmId);
    assert.equal(after.state, 'RUNNING');
    assert.equal(row(vm.microvmId).pid, pid);
    assert.equal(await count(after), 2);
    await terminate(vm.microvmId);
  });
});

describe('adopting a VM whose save was cut short (in process)', { timeout: TEST_TIMEOUT_MS }, () => {
  test('the save is cancelled, the VM continues, and it can then be suspended and resumed', async () => {
    const engine = await startEngine({ config: loadConfig({ dataDir: path.join(workDir, 'engine') }) });
    const dir = path.join(workDir, 'engine', 'vm');
    const first = await engine.driver.boot({
      dir, rootDisk: { kind: 'copy', rootfsPath: engine.artifacts.rootfs.tiny }, hostname: 'adopt', memoryMiB: 128, vcpus: 1, guestPorts: [], templateSource: false,
    });
    const pids = [first.pid];
    // A QEMU that dropped privileges (Cocoon is root) is chrooted: a daemon's save socket is in the
    // chroot and belongs to the QEMU's uid, and so is this stand-in.
    const uid = processUid(first.pid)!;
    const chroot = uid === process.getuid?.() ? undefined : vmPaths(dir).chrootDir;
    const sinkPath = chroot ? path.join(chroot, `test-stalled-save-${process.pid}.sock`) : path.join(workDir, 'stalled-save.sock');
    const sink = net.createServer({ pauseOnConnect: true }).listen(sinkPath);
    try {
      // What a daemon killed mid-suspend leaves: the VM paused, its state streaming into a sink
      // that has stopped reading (the daemon's save socket), and nobody on QMP or the agent socket.
      engine.driver.release(first);
      await once(sink, 'listening');
      if (chroot) await chown(sinkPath, uid, uid);
      const qmp = await QmpClient.connect(vmPaths(dir).qmpSocket, { timeoutMs: 10_000 });
      await qmp.execute('stop');
      await qmp.execute('migrate', { uri: chroot ? `unix:/${path.basename(sinkPath)}` : `unix:${sinkPath}` });
      await waitFor('an active save', async () => ((await qmp.execute<{ status?: string }>('query-migrate')).status === 'active' ? true : undefined), 20);
      qmp.close();

      const adopted = await engine.driver.adopt(dir);
      pids.push(adopted.pid);
      assert.equal(adopted.pid, first.pid);
      const echo = await adopted.agent.exec({ argv: ['echo', 'still here'] });
      assert.equal(echo.stdout.toString().trim(), 'still here');
      const suspended = await engine.driver.suspend(adopted);
      assert.equal(qemuAlive(adopted.pid), false);
      const resumed = await engine.driver.resume(suspended);
      pids.push(resumed.pid);
      assert.equal((await resumed.agent.exec({ argv: ['echo', 'resumed'] })).stdout.toString().trim(), 'resumed');
      await engine.driver.stop(resumed);
    } finally {
      for (const pid of pids) if (qemuAlive(pid)) process.kill(pid, 'SIGKILL');
      sink.close();
      await rm(sinkPath, { force: true });
      await engine.driver.idle();
    }
  });
});
