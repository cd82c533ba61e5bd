/**
 * Sizes, host limits and usage on real VMs (TCG). A neighbour MicroVM is watched the whole time
 * (its app must keep answering within a bound) while another MicroVM spins its vCPUs, allocates
 * memory without bound, fills its disk and runs a fork bomb; a VM booted with a fractional CPU
 * quota shows the quota itself (not the vCPU count) holding QEMU back. Then the usage counters:
 * baseline and burst while running, suspended seconds and the snapshot's size while suspended.
 * On this host the limits are cgroup v1 (the v2 writers are unit-tested on a fake hierarchy).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { MicroVmView, toMicroVmView } from '../../src/api/schemas.ts';
import { httpGet, waitUntil } from '../../src/host/http-probe.ts';
import { vmPaths } from '../../src/host/paths.ts';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import { sizeOf } from '../../src/images/sizes.ts';
import type { Engine } from '../../src/main/engine.ts';
import type { ImageService } from '../../src/main/images.ts';
import { MicroVmManager, type MicroVm } from '../../src/vms/manager.ts';
import { Cgroups } from '../../src/vmm/cgroups.ts';
import type { RunningVm, VmDriver } from '../../src/vmm/driver.ts';
import { QEMU_MEMORY_OVERHEAD_MIB } from '../../src/vmm/qemu/driver.ts';
import { startApiFixture } from './api-fixture.ts';

const EXAMPLE = fileURLToPath(new URL('../../examples/tiny-httpd', import.meta.url));
const SIZE = sizeOf(128);
/** The neighbour's app must answer each probe within this, whatever the other VMs do. */
const NEIGHBOUR_BOUND_MS = 3000;
const MIB = 2 ** 20;

let engine: Engine;
let images: ImageService;
let microvms: MicroVmManager;
let workDir: string;
let accountId: string;
const lines: string[] = [];
/** Every VM the manager started, by directory: the test drives their guests through the agent. */
const vms = new Map<string, RunningVm>();
const extraVms = new Set<RunningVm>();

before(async () => {
  let dataDir: string;
  ({ workDir, dataDir, engine, images } = await startApiFixture('cocoon-limits-'));
  accountId = images.adminAccountId;
  const recording = new Proxy(engine.driver, {
    get(target, property) {
      const value = Reflect.get(target, property) as unknown;
      if (typeof value !== 'function') return value;
      const method = (value as (...args: unknown[]) => unknown).bind(target);
      if (property !== 'launch' && property !== 'resume') return method;
      return async (...args: unknown[]) => {
        const vm = (await method(...args)) as RunningVm;
        vms.set(vm.dir, vm);
        return vm;
      };
    },
  }) as VmDriver;
  microvms = new MicroVmManager({ driver: recording, store: images.store, builder: images.builder, dataDir, log: (line) => lines.push(line) },
    { minimumSeconds: 1, hookTimeoutMs: 5000 });
  microvms.start();
  const zip = path.join(workDir, 'tiny-httpd.zip');
  await zipDirectory(EXAMPLE, zip);
  const { done } = await images.builder.create(accountId, { name: 'tiny-httpd', codeArtifactUri: zip, memoryMiB: SIZE.memoryMiB }, (line) => lines.push(line));
  const image = await done;
  assert.equal(image.state, 'ACTIVE', image.stateReason);
});

after(async () => {
  for (const record of images ? await images.store.microvms.listByState(['PENDING', 'RUNNING', 'SUSPENDING', 'SUSPENDED', 'RESUMING']) : []) {
    await microvms.terminate(record.accountId, record.microvmId).catch((error) => console.log(`# teardown ${record.microvmId}: ${String(error)}`));
  }
  for (const vm of extraVms) await engine.driver.stop(vm).catch(() => {});
  await microvms?.close();
  await images?.close();
  await engine?.driver.idle();
  if (lines.length > 0) console.log(lines.map((line) => `# ${line}`).join('\n'));
  await rm(workDir, { recursive: true, force: true });
});

async function run(): Promise<{ view: MicroVm; vm: RunningVm; port: number }> {
  const view = await microvms.run(accountId, { imageIdentifier: 'tiny-httpd' });
  const vm = vms.get(view.record.dir);
  assert.ok(vm && view.localPort);
  return { view, vm, port: view.localPort };
}

async function sh(vm: RunningVm, script: string, timeoutMs = 60_000): Promise<{ exitCode: number; out: string }> {
  const result = await vm.agent.exec({ argv: ['/bin/sh', '-c', script], timeoutMs });
  return { exitCode: result.exitCode, out: `${result.stdout.toString()}${result.stderr.toString()}`.trim() };
}

/** Probes the neighbour's app every 250 ms until stopped: the slowest answer and any failure. */
function watch(port: number): { stop: () => Promise<{ maxMs: number; probes: number; failures: string[] }> } {
  let stopped = false;
  let maxMs = 0;
  let probes = 0;
  const failures: string[] = [];
  const loop = (async () => {
    while (!stopped) {
      const started = Date.now();
      await httpGet(port, '/built.txt', NEIGHBOUR_BOUND_MS).then(
        (answer) => { if (answer.status !== 200) failures.push(`status ${answer.status}`); },
        (error: unknown) => failures.push(String(error)),
      );
      maxMs = Math.max(maxMs, Date.now() - started);
      probes++;
      await sleep(250);
    }
  })();
  return { stop: async () => { stopped = true; await loop; return { maxMs, probes, failures }; } };
}

/** CPU cores the VM's QEMU used over `ms`. */
async function coresOver(vm: RunningVm, ms: number): Promise<number> {
  const before = await vm.usage();
  const started = process.hrtime.bigint();
  await sleep(ms);
  const used = (await vm.usage()).cpuNs - before.cpuNs;
  return used / Number(process.hrtime.bigint() - started);
}

function cgroupFile(vm: RunningVm, controller: 'cpu' | 'memory', file: string): string {
  return readFileSync(path.join(engine.cgroups!.group(vmPaths(vm.dir).cgroup).dirOf(controller)!, file), 'utf8');
}

function cpuStat(vm: RunningVm, key: string): number {
  return Number(new RegExp(`^${key} (\\d+)$`, 'm').exec(cgroupFile(vm, 'cpu', 'cpu.stat'))?.[1]);
}

function threadsOf(pid: number): number {
  return Number(/^Threads:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
}

function hostProcesses(): number {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[3]!.split('/')[1]);
}

describe('limits', { timeout: 170_000 }, () => {
  let neighbour: Awaited<ReturnType<typeof run>>;
  let noisy: Awaited<ReturnType<typeof run>>;
  const seen: string[] = [];

  before(async () => {
    assert.ok(engine.cgroups, 'cgroups are available on this host (root, cgroupfs writable)');
    assert.ok(os.availableParallelism() >= 2, 'two cores: a VM spinning one must leave room for the neighbour');
    neighbour = await run();
    noisy = await run();
  });

  after(() => console.log(`# neighbour: ${seen.join('; ')}`));

  async function whileWatched<T>(what: string, work: () => Promise<T>): Promise<T> {
    const watcher = watch(neighbour.port);
    const result = await work();
    const { maxMs, probes, failures } = await watcher.stop();
    seen.push(`${what}: ${probes} probes, slowest ${maxMs} ms`);
    assert.deepEqual(failures, [], `the neighbour failed to answer during ${what}`);
    assert.ok(maxMs < NEIGHBOUR_BOUND_MS, `the neighbour took ${maxMs} ms during ${what}`);
    return result;
  }

  test('a MicroVM runs in its own cgroup with its size\'s quota, weight and memory limit; the view says so', async () => {
    const view = toMicroVmView(await microvms.get(accountId, noisy.view.record.microvmId));
    MicroVmView.parse(view);
    assert.equal(view.limitsEnforcedBy, `cgroup-v${engine.cgroups!.version}`);
    assert.deepEqual(view.size, SIZE);
    if (engine.cgroups!.version === 1) {
      assert.equal(cgroupFile(noisy.vm, 'cpu', 'cpu.cfs_quota_us').trim(), String(SIZE.burstVcpus * 100_000));
      assert.equal(cgroupFile(noisy.vm, 'cpu', 'cpu.shares').trim(), String(SIZE.baselineVcpus * 1024));
      assert.equal(Number(cgroupFile(noisy.vm, 'memory', 'memory.limit_in_bytes')), (SIZE.memoryMiB + QEMU_MEMORY_OVERHEAD_MIB) * MIB);
    }
    assert.equal((await sh(noisy.vm, 'cat /sys/block/vda/size')).out, String((SIZE.diskGiB * 2 ** 30) / 512), 'the root disk has the size\'s disk');
  });

  test('a guest spinning its vCPU stays within its quota and accrues burst CPU; the neighbour keeps answering', async () => {
    const spinners = (await sh(noisy.vm, 'for i in 1 2 3; do (while :; do :; done) </dev/null >/dev/null 2>&1 & echo $!; done')).out.split(/\s+/);
    const burstBefore = (await microvms.get(accountId, noisy.view.record.microvmId)).usage.burstCpuSeconds;
    const cores = await whileWatched('spinning', () => coresOver(noisy.vm, 6000));
    // How much CPU it gets depends on what else this host runs; it must never exceed its quota.
    assert.ok(cores > 0.05 && cores <= SIZE.burstVcpus * 1.1, `the spinning VM used ${cores.toFixed(2)} cores (quota ${SIZE.burstVcpus})`);
    const burst = (await microvms.get(accountId, noisy.view.record.microvmId)).usage.burstCpuSeconds - burstBefore;
    const expected = Math.max(0, cores - SIZE.baselineVcpus) * 6;
    seen.push(`spinning VM: ${cores.toFixed(2)} cores, burst +${burst.toFixed(2)} CPU-s (expected ~${expected.toFixed(2)})`);
    // The sampler's one-second windows are not the test's window: up to a second apart at each end.
    assert.ok(Math.abs(burst - expected) <= 1.5, `burst CPU-seconds grew by ${burst.toFixed(2)}, expected about ${expected.toFixed(2)}`);
    assert.equal((await sh(noisy.vm, `kill ${spinners.join(' ')}`)).exitCode, 0);
  });

  test('a fractional CPU quota holds a 2-vCPU guest to it (the cgroup throttles, not the vCPU count)', async () => {
    const vm = await engine.driver.boot({
      dir: path.join(workDir, 'quota'), rootDisk: { kind: 'copy', rootfsPath: engine.artifacts.rootfs.tiny }, hostname: 'quota',
      memoryMiB: 128, vcpus: 2, guestPorts: [], templateSource: false, limits: { cpuBaselineCores: 0.25, cpuBurstCores: 0.5 },
    });
    extraVms.add(vm);
    try {
      await sh(vm, 'for i in 1 2 3 4; do (while :; do :; done) </dev/null >/dev/null 2>&1 & done');
      const throttledBefore = cpuStat(vm, 'nr_throttled');
      const cores = await whileWatched('a 0.5-core quota', () => coresOver(vm, 6000));
      seen.push(`quota 0.5: ${cores.toFixed(3)} cores`);
      assert.ok(cores > 0.05 && cores < 0.55, `a guest with 2 spinning vCPUs and a 0.5-core quota used ${cores.toFixed(3)} cores`);
      assert.ok(cpuStat(vm, 'nr_throttled') > throttledBefore, 'the quota throttled it');
    } finally {
      extraVms.delete(vm);
      await engine.driver.stop(vm);
    }
    await assert.rejects(stat(engine.cgroups!.group(vmPaths(vm.dir).cgroup).dirOf('cpu')!), { code: 'ENOENT' }, 'its group is removed once it stops');
  });

  test('a guest allocating memory without bound: its own OOM killer ends it, QEMU stays within its limit', async () => {
    // Eight processes holding 16 MiB each ask for more than the guest has: all of its RAM gets used.
    const hog = 'for i in 1 2 3 4 5 6 7 8; do awk \'BEGIN { s = "x"; while (length(s) < 16777216) s = s s; system("sleep 3") }\' & done; wait; '
      + 'dmesg | grep -c "Out of memory"';
    const result = await whileWatched('a memory hog', () => sh(noisy.vm, hog, 120_000));
    assert.ok(Number(result.out.split('\n').pop()) > 0, `the guest's OOM killer acted: ${result.out}`);
    const peak = Number(cgroupFile(noisy.vm, 'memory', engine.cgroups!.version === 1 ? 'memory.max_usage_in_bytes' : 'memory.peak'));
    const limit = (SIZE.memoryMiB + QEMU_MEMORY_OVERHEAD_MIB) * MIB;
    seen.push(`memory hog: QEMU peaked at ${(peak / MIB).toFixed(0)} MiB of its ${limit / MIB} MiB limit`);
    assert.ok(peak <= limit);
    const view = await microvms.get(accountId, noisy.view.record.microvmId);
    assert.equal(view.record.state, 'RUNNING', view.record.stateReason);
    assert.equal((await httpGet(noisy.port, '/built.txt')).status, 200, 'its app survived');
  });

  test('a full disk: ENOSPC inside the guest, the host file stays within the disk size', async () => {
    const fill = await whileWatched('a disk fill', () => sh(noisy.vm, 'dd if=/dev/zero of=/fill bs=1M; sync; df -k / | tail -1', 120_000));
    assert.match(fill.out, /No space left on device/);
    const overlay = (await stat(vmPaths(noisy.view.record.dir).disk)).size;
    seen.push(`disk fill: overlay ${(overlay / MIB).toFixed(0)} MiB (disk ${SIZE.diskGiB} GiB)`);
    assert.ok(overlay <= SIZE.diskGiB * 2 ** 30, `overlay ${overlay} bytes`);
    assert.equal((await sh(noisy.vm, 'rm /fill && echo ok')).out, 'ok');
  });

  test('a fork bomb inside a guest leaves the host and the neighbour healthy', async () => {
    const processesBefore = hostProcesses();
    const threadsBefore = threadsOf(noisy.vm.pid);
    await whileWatched('a fork bomb', async () => {
      await sh(noisy.vm, 'b() { b | b & }; b </dev/null >/dev/null 2>&1; echo started', 10_000).catch(() => {});
      const cores = await coresOver(noisy.vm, 8000);
      seen.push(`fork bomb: ${cores.toFixed(2)} cores`);
      assert.ok(cores <= SIZE.burstVcpus * 1.1, `${cores} cores`);
    });
    assert.ok(hostProcesses() < processesBefore + 50, 'the bomb stays inside the guest');
    assert.ok(threadsOf(noisy.vm.pid) < threadsBefore + 50);
    const stopped = await microvms.terminate(accountId, noisy.view.record.microvmId);
    assert.equal(stopped.record.state, 'TERMINATED');
  });

  test('usage: baseline seconds follow running time; suspended seconds and the snapshot while suspended', async () => {
    const id = neighbour.view.record.microvmId;
    const running = await microvms.get(accountId, id);
    assert.ok(Math.abs(running.usage.baselineSeconds - running.runningSeconds) <= 3,
      `baseline ${running.usage.baselineSeconds.toFixed(1)} s vs running ${running.runningSeconds} s`);
    // Counters reach the store every 10 s; the file has run longer than that.
    assert.ok((await images.store.microvms.getAny(id))!.usage.baselineSeconds > 0, 'persisted');
    await microvms.suspend(accountId, id);
    await waitUntil(async () => {
      const { usage } = await microvms.get(accountId, id);
      return usage.suspendedSeconds >= 2 && usage.snapshotBytes > 0;
    }, 20_000, 250);
    const suspended = await microvms.get(accountId, id);
    const files = (await stat(vmPaths(suspended.record.dir).suspendedState)).size + (await stat(vmPaths(suspended.record.dir).disk)).size;
    assert.equal(suspended.usage.snapshotBytes, files);
    assert.equal(suspended.limitsEnforcedBy, undefined);
    seen.push(`usage: ${JSON.stringify(suspended.usage)}`);
    const baselineWhileSuspended = suspended.usage.baselineSeconds;
    const resumed = await microvms.resume(accountId, id);
    assert.equal(resumed.record.state, 'RUNNING');
    assert.ok(resumed.usage.baselineSeconds - baselineWhileSuspended < 1, 'suspended time is not baseline time');
    const port = resumed.localPort!;
    assert.equal((await httpGet(port, '/built.txt')).status, 200);
    assert.equal(resumed.limitsEnforcedBy, `cgroup-v${engine.cgroups!.version}`);
  });
});

test('a base with resize2fs: the image\'s filesystem grows to its size\'s disk', { timeout: 150_000 }, async (t) => {
  if (!engine.artifacts.manifest.artifacts['rootfs-debian']) {
    t.skip('the Debian base is not built yet (the slow suite builds it)');
    return;
  }
  const dir = path.join(workDir, 'debian-app');
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'Dockerfile'), 'FROM cocoon/debian:bookworm\nCOPY index.html /srv/\nEXPOSE 8080\nCMD ["python3", "-m", "http.server", "8080", "-d", "/srv"]\n');
  await writeFile(path.join(dir, 'index.html'), 'hello\n');
  const zip = path.join(workDir, 'debian-app.zip');
  await zipDirectory(dir, zip);
  const { done } = await images.builder.create(accountId, { name: 'debian-app', codeArtifactUri: zip, memoryMiB: SIZE.memoryMiB }, (line) => lines.push(line));
  const image = await done;
  assert.equal(image.state, 'ACTIVE', image.stateReason);
  const view = await microvms.run(accountId, { imageIdentifier: 'debian-app' });
  const vm = vms.get(view.record.dir)!;
  const df = (await sh(vm, 'df -k / | tail -1')).out.split(/\s+/);
  const totalMiB = Number(df[1]) / 1024;
  assert.ok(totalMiB > SIZE.diskGiB * 1024 * 0.9, `the root filesystem has ${totalMiB.toFixed(0)} MiB on a ${SIZE.diskGiB} GiB disk`);
  await microvms.terminate(accountId, view.record.microvmId);
});

test('opening cgroups removes empty VM groups older than a minute, never young ones', async (t) => {
  if (!engine.cgroups) {
    t.skip('no cgroups on this host');
    return;
  }
  const old = engine.cgroups.group(`leftover-${process.pid}`);
  const young = engine.cgroups.group(`young-${process.pid}`);
  for (const dir of [...old.directories, ...young.directories]) await mkdir(dir, { recursive: true });
  for (const dir of old.directories) await utimes(dir, new Date('2020-01-01'), new Date('2020-01-01'));
  try {
    await Cgroups.open();
    for (const dir of old.directories) await assert.rejects(stat(dir), { code: 'ENOENT' });
    for (const dir of young.directories) assert.ok((await stat(dir)).isDirectory());
  } finally {
    await old.remove();
    await young.remove();
  }
});
