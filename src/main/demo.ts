/**
 * `npm run demo`: the VM engine end to end on this machine. Boots a real VM, starts its app,
 * snapshots it, launches clones from the snapshot, suspends and resumes one, and prints timings.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startEngine } from './engine.ts';
import type { RunningVm } from '../vmm/driver.ts';
import { httpGet, waitUntil } from '../host/http-probe.ts';

const APP_PORT = 8080;

const { values } = parseArgs({
  options: {
    clones: { type: 'string', default: '3' },
    'memory-mib': { type: 'string', default: '256' },
    debian: { type: 'boolean', default: false },
    'data-dir': { type: 'string', default: process.env.COCOON_DATA_DIR ?? '.cocoon' },
  },
});
const cloneCount = Number(values.clones);
const memoryMiB = Number(values['memory-mib']);
const say = (line: string): void => console.log(line);

async function firstAnswer(vm: RunningVm, started: number): Promise<number> {
  await waitUntil(async () => (await httpGet(vm.hostPort(APP_PORT), '/', 5000)).status === 200, 120_000, 20);
  return Date.now() - started;
}

const engine = await startEngine({ debian: values.debian, log: (line) => say(`  ${line}`) });
const rootfsPath = values.debian ? engine.artifacts.rootfs.debian! : engine.artifacts.rootfs.tiny;
const workDir = path.resolve(values['data-dir'], `demo-${process.pid}`);
await mkdir(workDir, { recursive: true });
const live = new Set<RunningVm>();
const stopAll = async (): Promise<void> => {
  await Promise.all([...live].map((vm) => engine.driver.stop(vm)));
  live.clear();
};
process.once('SIGINT', () => { void stopAll().finally(() => process.exit(130)); });

try {
  say(`Cocoon VM engine demo — ${values.debian ? 'debian' : 'tiny'} image, ${memoryMiB} MiB guests, accelerator ${engine.accelerator.accelerator}`);
  let started = Date.now();
  const source = await engine.driver.boot({
    dir: path.join(workDir, 'template'), rootfsPath, hostname: 'cocoon-demo',
    memoryMiB, vcpus: 1, guestPorts: [APP_PORT], templateSource: true,
  });
  live.add(source);
  await source.agent.startApp({ argv: ['/usr/local/bin/cocoon-testapp', String(APP_PORT)] });
  say(`cold boot → app answers:            ${await firstAnswer(source, started)} ms`);

  started = Date.now();
  live.delete(source);
  const template = await engine.driver.snapshotTemplate(source);
  say(`template snapshot:                   ${Date.now() - started} ms (device state ${(template.deviceStateBytes / 1024).toFixed(0)} KiB + RAM file + disk)`);

  const clones: RunningVm[] = [];
  for (let i = 1; i <= cloneCount; i++) {
    started = Date.now();
    const clone = await engine.driver.launch(template, path.join(workDir, `clone-${i}`));
    live.add(clone);
    clones.push(clone);
    say(`launch clone ${i} → app answers:       ${await firstAnswer(clone, started)} ms  (http://127.0.0.1:${clone.hostPort(APP_PORT)}/)`);
  }

  const first = clones[0]!;
  for (let i = 0; i < 3; i++) await httpGet(first.hostPort(APP_PORT), '/count');
  started = Date.now();
  live.delete(first);
  const suspended = await engine.driver.suspend(first);
  say(`suspend clone 1:                     ${Date.now() - started} ms, ${(suspended.stateBytes / 2 ** 20).toFixed(1)} MiB saved`);
  started = Date.now();
  const resumed = await engine.driver.resume(suspended);
  live.add(resumed);
  const resumeMs = await firstAnswer(resumed, started);
  const count = (await httpGet(resumed.hostPort(APP_PORT), '/count')).body.trim();
  say(`resume clone 1 → app answers:        ${resumeMs} ms (in-memory counter kept: 3 requests before, this one is #${count})`);
  say('');
  say('Clones keep running until you press Enter (or Ctrl-C); try:');
  for (const vm of [resumed, ...clones.slice(1)]) say(`  curl http://127.0.0.1:${vm.hostPort(APP_PORT)}/count`);
  if (process.stdin.isTTY) await new Promise((resolve) => process.stdin.once('data', resolve));
} finally {
  await stopAll();
  await engine.driver.idle();
  await rm(workDir, { recursive: true, force: true });
  process.stdin.pause();
  say('all VMs stopped');
}
