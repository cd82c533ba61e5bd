/**
 * `npm run demo`: Cocoon end to end on this machine with its embedded defaults. Builds a MicroVM
 * image from an example (zip + Dockerfile, steps run inside a VM, running app snapshotted),
 * launches clones from the snapshot, suspends and resumes one, and prints timings.
 */
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { httpGet, waitUntil } from '../host/http-probe.ts';
import { zipDirectory } from '../host/zip-dir.ts';
import type { RunningVm } from '../vmm/driver.ts';
import { loadConfig } from '../config/config.ts';
import { startEngine } from './engine.ts';
import { startImageService } from './images.ts';

const { values } = parseArgs({
  options: {
    example: { type: 'string', default: 'tiny-httpd' },
    clones: { type: 'string', default: '3' },
    'data-dir': { type: 'string' },
  },
});
const say = (line: string): void => console.log(line);
const exampleDir = fileURLToPath(new URL(`../../examples/${values.example}`, import.meta.url));
const config = loadConfig(values['data-dir'] ? { dataDir: values['data-dir'] } : {});
const { dataDir } = config;

async function firstAnswer(vm: RunningVm, port: number, started: number): Promise<number> {
  await waitUntil(async () => (await httpGet(vm.hostPort(port), '/', 5000)).status > 0, 120_000, 20);
  return Date.now() - started;
}

const engine = await startEngine({ config, log: (line) => say(`  ${line}`) });
const images = await startImageService(engine, config, (line) => say(`  ${line}`));
const runDir = path.join(dataDir, 'demo', String(process.pid));
await mkdir(runDir, { recursive: true });
const live = new Set<RunningVm>();
const stopAll = async (): Promise<void> => {
  await Promise.all([...live].map((vm) => engine.driver.stop(vm)));
  live.clear();
};
process.once('SIGINT', () => { void stopAll().finally(() => process.exit(130)); });

try {
  say(`Cocoon demo — accelerator ${engine.accelerator.accelerator} (${engine.accelerator.reason}), data in ${dataDir}`);
  const zipPath = path.join(runDir, `${values.example}.zip`);
  await zipDirectory(exampleDir, zipPath);
  say(`\n== create-microvm-image --name ${values.example} --code-artifact uri=${path.relative(process.cwd(), zipPath)}`);
  const { record: creating, done } = await images.builder.create(images.adminAccountId, { name: values.example, codeArtifactUri: zipPath }, (line) => say(`  build | ${line.slice(25)}`));
  say(`  ${creating.arn}: ${creating.state}`);
  const image = await done;
  say(`  ${image.arn}: ${image.state}${image.stateReason ? ` — ${image.stateReason}` : ''}`);
  if (image.state !== 'ACTIVE') process.exitCode = 1;
  else {
    const template = await images.builder.templateOf(image);
    say(`  build took ${((image.timingsMs?.totalMs ?? 0) / 1000).toFixed(1)} s (steps ${((image.timingsMs?.stepsMs ?? 0) / 1000).toFixed(1)} s)`);

    say(`\n== launching ${values.clones} MicroVMs from the snapshot`);
    const clones: RunningVm[] = [];
    for (let i = 1; i <= Number(values.clones); i++) {
      const started = Date.now();
      const vm = await engine.driver.launch(template, path.join(runDir, `vm-${i}`));
      live.add(vm);
      clones.push(vm);
      say(`  vm ${i}: app answered ${await firstAnswer(vm, image.appPort, started)} ms after launch — http://127.0.0.1:${vm.hostPort(image.appPort)}/`);
    }

    const first = clones[0]!;
    await first.agent.writeFile('/root/note.txt', `written before suspend at ${new Date().toISOString()}\n`);
    let started = Date.now();
    live.delete(first);
    const suspended = await engine.driver.suspend(first);
    say(`\n== suspend vm 1: ${Date.now() - started} ms, ${(suspended.stateBytes / 2 ** 20).toFixed(1)} MiB saved (memory + disk overlay kept)`);
    started = Date.now();
    const resumed = await engine.driver.resume(suspended);
    live.add(resumed);
    clones[0] = resumed;
    say(`== resume vm 1: app answered ${await firstAnswer(resumed, image.appPort, started)} ms after resume; ${(await resumed.agent.readFile('/root/note.txt')).toString().trim()}`);

    say('\nThe VMs keep running until you press Enter (or Ctrl-C). Try:');
    for (const vm of clones) say(`  curl http://127.0.0.1:${vm.hostPort(image.appPort)}/`);
    if (process.stdin.isTTY) await new Promise((resolve) => process.stdin.once('data', resolve));
  }
} finally {
  await stopAll();
  await images.close();
  await engine.driver.idle();
  await rm(runDir, { recursive: true, force: true });
  process.stdin.pause();
  say('all VMs stopped');
}
