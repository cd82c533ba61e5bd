/**
 * `npm run bench:launch`: on one image, in one run — cold boot, launch from snapshot, raw QEMU
 * restore (no Cocoon code in the path), suspend, resume, and PSS per clone with N clones alive.
 * Prints human-readable lines, then one JSON object as the last line.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadConfig } from '../src/config/config.ts';
import { startEngine } from '../src/main/engine.ts';
import { httpGet, waitUntil } from '../src/host/http-probe.ts';
import { freeLoopbackPort } from '../src/host/sockets.ts';
import type { RunningVm, TemplateSnapshot } from '../src/vmm/driver.ts';
import { qemuArgv } from '../src/vmm/qemu/argv.ts';
import { QemuDriver } from '../src/vmm/qemu/driver.ts';
import { QEMU_BINARY } from '../src/vmm/qemu/process.ts';

const APP_PORT = 8080;
const { values } = parseArgs({
  options: {
    'memory-mib': { type: 'string', default: '256' },
    runs: { type: 'string', default: '5' },
    clones: { type: 'string', default: '10' },
  },
});
const memoryMiB = Number(values['memory-mib']);
const runs = Number(values.runs);
const cloneCount = Number(values.clones);
const say = (line: string): void => console.log(line);

const workDir = path.join(os.tmpdir(), `cocoon-bench-${process.pid}`);
await mkdir(workDir, { recursive: true });
const engine = await startEngine({ config: loadConfig({ dataDir: workDir }), log: say });
const { driver } = engine;
// Boots without boot snapshots: a real kernel boot, the baseline everything else is measured against.
const coldDriver = await QemuDriver.create({ accelerator: engine.accelerator.accelerator, artifacts: engine.bootFiles });
const live = new Set<RunningVm>();
let seq = 0;
const dirFor = (name: string): string => path.join(workDir, `${name}-${seq++}`);

async function untilAnswer(port: number, started: number): Promise<number> {
  await waitUntil(async () => (await httpGet(port, '/', 5000)).status === 200, 120_000, 10);
  return Date.now() - started;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function stop(vm: RunningVm): Promise<void> {
  live.delete(vm);
  await driver.stop(vm);
}

async function bootToAnswer(via: QemuDriver): Promise<number> {
  const started = Date.now();
  const vm = await via.boot({ dir: dirFor('cold'), rootDisk: { kind: 'copy', rootfsPath: engine.artifacts.rootfs.tiny }, hostname: 'bench', memoryMiB, vcpus: 1, guestPorts: [APP_PORT], templateSource: false });
  live.add(vm);
  await vm.agent.startApp({ argv: ['/usr/local/bin/cocoon-testapp', String(APP_PORT)] });
  const ms = await untilAnswer(vm.hostPort(APP_PORT), started);
  live.delete(vm);
  await via.stop(vm);
  return ms;
}

async function makeTemplate(): Promise<TemplateSnapshot> {
  const vm = await driver.boot({ dir: dirFor('template'), rootDisk: { kind: 'copy', rootfsPath: engine.artifacts.rootfs.tiny }, hostname: 'bench', memoryMiB, vcpus: 1, guestPorts: [APP_PORT], templateSource: true });
  await vm.agent.startApp({ argv: ['/usr/local/bin/cocoon-testapp', String(APP_PORT)] });
  await vm.agent.waitPort(APP_PORT, 60_000);
  return driver.snapshotTemplate(vm);
}

async function launchOnce(template: TemplateSnapshot): Promise<{ ms: number; vm: RunningVm }> {
  const started = Date.now();
  const vm = await driver.launch(template, dirFor('clone'));
  live.add(vm);
  return { ms: await untilAnswer(vm.hostPort(APP_PORT), started), vm };
}

/** The VMM's own floor: QEMU started by hand on the template, QMP typed by hand, no Cocoon code. */
async function rawRestore(template: TemplateSnapshot): Promise<number> {
  const dir = dirFor('raw');
  await mkdir(dir, { recursive: true });
  const port = await freeLoopbackPort();
  await new Promise<void>((resolve, reject) => {
    const img = spawn('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', path.join(template.dir, 'disk.qcow2'), '-F', 'qcow2', path.join(dir, 'disk.qcow2')]);
    img.on('exit', (code) => (code === 0 ? resolve() : reject(new Error('qemu-img failed'))));
  });
  const argv = qemuArgv({
    machine: { accelerator: template.accelerator, memoryMiB: template.memoryMiB, vcpus: template.vcpus, kernelPath: template.kernelPath, initramfsPath: template.initramfsPath, kernelCmdline: template.kernelCmdline },
    ram: { kind: 'template-clone', path: path.join(template.dir, 'ram') },
    diskPath: path.join(dir, 'disk.qcow2'), forwards: [{ hostPort: port, guestPort: APP_PORT }],
    qmpSocket: path.join(dir, 'qmp.sock'), agentSocket: path.join(dir, 'agent.sock'), serialLog: path.join(dir, 'serial.log'), pidFile: path.join(dir, 'qemu.pid'),
    incomingSocket: path.join(dir, 'incoming.sock'),
  });
  const started = Date.now();
  const qemu = spawn(QEMU_BINARY, argv, { stdio: 'ignore' });
  try {
    const qmp = await connectRaw(path.join(dir, 'qmp.sock'));
    // The template was saved paused, so the restored VM stays paused until `cont`.
    let seen = '';
    let capabilitiesSet = (): void => {};
    const capabilities = new Promise<void>((resolve) => { capabilitiesSet = resolve; });
    const completed = new Promise<void>((resolve) => {
      qmp.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.split('"return"').length > 2) capabilitiesSet();
        if (seen.includes('"status": "completed"')) { qmp.write('{"execute":"cont"}\n'); resolve(); }
      });
    });
    qmp.write('{"execute":"qmp_capabilities"}\n');
    qmp.write('{"execute":"migrate-set-capabilities","arguments":{"capabilities":[{"capability":"events","state":true},{"capability":"x-ignore-shared","state":true}]}}\n');
    // QEMU listens for the stream since it started; it loads once the device state arrives.
    await capabilities;
    const incoming = await connectRaw(path.join(dir, 'incoming.sock'));
    createReadStream(path.join(template.dir, 'devices.state')).pipe(incoming);
    await completed;
    const ms = await untilAnswer(port, started);
    qmp.destroy();
    return ms;
  } finally {
    qemu.kill('SIGKILL');
  }
}

async function connectRaw(socketPath: string): Promise<net.Socket> {
  for (;;) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const socket = net.createConnection(socketPath, () => resolve(socket));
        socket.once('error', reject);
      });
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  }
}

async function pssKiB(pid: number): Promise<{ pss: number; rss: number }> {
  const text = await readFile(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  return { pss: field('Pss'), rss: field('Rss') };
}

try {
  say(`bench:launch — tiny image, ${memoryMiB} MiB guests, accelerator ${engine.accelerator.accelerator}, ${runs} runs each (median)`);
  const cold: number[] = [];
  for (let i = 0; i < runs; i++) cold.push(await bootToAnswer(coldDriver));
  say(`cold boot → first HTTP answer:        ${median(cold)} ms  (${cold.join(', ')})`);
  await bootToAnswer(driver); // makes the boot snapshot
  const snapshotBoots: number[] = [];
  for (let i = 0; i < runs; i++) snapshotBoots.push(await bootToAnswer(driver));
  say(`boot from boot snapshot → answer:     ${median(snapshotBoots)} ms  (${snapshotBoots.join(', ')}; kernel already booted, fresh root disk)`);

  const template = await makeTemplate();
  const launches: number[] = [];
  const raws: number[] = [];
  // Interleaved, so that a noisy neighbour hurts both series alike.
  for (let i = 0; i < runs; i++) {
    const { ms, vm } = await launchOnce(template);
    launches.push(ms);
    await stop(vm);
    raws.push(await rawRestore(template));
  }
  say(`launch from snapshot → first answer:  ${median(launches)} ms  (${launches.join(', ')})`);
  say(`raw qemu -incoming → first answer:    ${median(raws)} ms  (${raws.join(', ')})`);

  const { vm: victim } = await launchOnce(template);
  for (let i = 0; i < 5; i++) await httpGet(victim.hostPort(APP_PORT), '/count');
  let started = Date.now();
  live.delete(victim);
  const suspended = await driver.suspend(victim);
  const suspendMs = Date.now() - started;
  const suspendMiB = suspended.stateBytes / 2 ** 20;
  say(`suspend:                              ${suspendMs} ms, ${suspendMiB.toFixed(1)} MiB (zstd)`);
  started = Date.now();
  const resumed = await driver.resume(suspended);
  live.add(resumed);
  const resumeMs = await untilAnswer(resumed.hostPort(APP_PORT), started);
  say(`resume → first answer:                ${resumeMs} ms`);
  await stop(resumed);

  const clones: RunningVm[] = [];
  for (let i = 0; i < cloneCount; i++) clones.push((await launchOnce(template)).vm);
  for (const vm of clones) await httpGet(vm.hostPort(APP_PORT), '/count');
  const usage = await Promise.all(clones.map((vm) => pssKiB(vm.pid)));
  const pssPerCloneMiB = usage.reduce((sum, u) => sum + u.pss, 0) / usage.length / 1024;
  const rssPerCloneMiB = usage.reduce((sum, u) => sum + u.rss, 0) / usage.length / 1024;
  say(`PSS per clone with ${cloneCount} alive:          ${pssPerCloneMiB.toFixed(1)} MiB (RSS ${rssPerCloneMiB.toFixed(1)} MiB)`);
  await Promise.all(clones.map(stop));

  const coldBootMs = median(cold);
  const launchMs = median(launches);
  const rawRestoreMs = median(raws);
  say(`launch / cold boot: ${(launchMs / coldBootMs).toFixed(3)} (target ≤ 0.1); launch / raw restore: ${(launchMs / rawRestoreMs).toFixed(2)} (target ≤ 1.2)`);
  console.log(JSON.stringify({
    accelerator: engine.accelerator.accelerator,
    memoryMiB,
    coldBootMs, bootSnapshotBootMs: median(snapshotBoots), launchMs, rawRestoreMs,
    launchOverColdBoot: Number((launchMs / coldBootMs).toFixed(4)),
    launchOverRawRestore: Number((launchMs / rawRestoreMs).toFixed(3)),
    suspendMs, suspendMiB: Number(suspendMiB.toFixed(2)), resumeMs,
    pssPerCloneMiB: Number(pssPerCloneMiB.toFixed(1)), rssPerCloneMiB: Number(rssPerCloneMiB.toFixed(1)), clones: cloneCount,
  }));
} finally {
  await Promise.all([...live].map((vm) => driver.stop(vm)));
  await driver.idle();
  await rm(workDir, { recursive: true, force: true });
}
