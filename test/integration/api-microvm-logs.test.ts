/**
 * MicroVM runtime logs end to end: a real image whose app prints a numbered tick on stdout and a
 * tock on stderr every second, a real VM, the REST API on a loopback port, the SDK and the CLI.
 * Checks the text log (and ?tail), following it live over SSE across a suspend and a resume with
 * no line lost or repeated, the end of the stream at terminate (and at the API's close), the log
 * outliving the VM, the other account's 404, and `cocoon logs --microvm-id`.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../src/api/index.ts';
import { CocoonClient, isCocoonApiError, type MicroVm } from '../../src/client/index.ts';
import { waitUntil } from '../../src/host/http-probe.ts';
import { buildZip } from '../../src/images/artifact/test-zip.ts';
import type { ImageService } from '../../src/main/images.ts';
import type { Engine } from '../../src/main/engine.ts';
import { MicroVmManager } from '../../src/vms/manager.ts';
import { startApiFixture } from './api-fixture.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const RECORD = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (stdout|stderr|cocoon) (.*)$/;
const WAIT_MS = 60_000;
const TICKER_DOCKERFILE = [
  'FROM cocoon/tiny',
  'RUN mkdir -p /srv/www && echo up > /srv/www/index.html',
  'EXPOSE 8080',
  // httpd without -f goes to the background; the loop is the app's main process.
  'CMD ["sh", "-c", "httpd -p 8080 -h /srv/www && i=0 && while :; do i=$((i+1)); echo tick $i; echo tock $i >&2; sleep 1; done"]',
].join('\n');

let engine: Engine;
let images: ImageService;
let microvms: MicroVmManager;
let app: FastifyInstance;
let workDir: string;
let client: CocoonClient;
let other: CocoonClient;
let endpoint: string;
let adminKey: string;
const started = new Set<string>();

before(async () => {
  let dataDir: string;
  let otherKey: string;
  ({ workDir, dataDir, engine, images, adminKey, otherKey } = await startApiFixture('cocoon-logs-'));
  microvms = new MicroVmManager({ driver: engine.driver, store: images.store, builder: images.builder, dataDir, log: (line) => console.log(`# ${line}`) });
  app = buildApi({ images, microvms });
  await app.listen({ host: '127.0.0.1', port: 0 });
  endpoint = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  client = new CocoonClient({ endpoint, apiKey: adminKey });
  other = new CocoonClient({ endpoint, apiKey: otherKey });
  const zip = path.join(workDir, 'ticker.zip');
  await writeFile(zip, buildZip([{ name: 'Dockerfile', data: TICKER_DOCKERFILE }]));
  const { done } = await images.builder.create(images.adminAccountId, { name: 'ticker', codeArtifactUri: zip, memoryMiB: 128 });
  const image = await done;
  assert.equal(image.state, 'ACTIVE', image.stateReason);
});

after(async () => {
  // Terminating stops each QEMU this file started (by its recorded pid if the lifecycle cannot).
  for (const microvmId of started) {
    const record = await images.store.microvms.getAny(microvmId);
    if (!record || record.state === 'TERMINATED') continue;
    await microvms.terminate(record.accountId, microvmId).catch(() => record.pid !== undefined && process.kill(record.pid, 'SIGKILL'));
  }
  await microvms?.close();
  await app?.close();
  await images?.close();
  await engine?.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

async function runTicker(): Promise<MicroVm> {
  const microvm = await client.runMicroVm({ imageIdentifier: 'ticker' });
  started.add(microvm.microvmId);
  return microvm;
}

/** `stream text` of each record, checking the record format on the way. */
function untimed(text: string): string[] {
  return text.split('\n').filter((line) => line !== '').map((line) => {
    const match = RECORD.exec(line);
    assert.ok(match, `not a log record: ${JSON.stringify(line)}`);
    return `${match[1]} ${match[2]}`;
  });
}

function ticks(lines: string[]): number[] {
  return lines.flatMap((line) => {
    const match = /^stdout tick (\d+)$/.exec(line);
    return match ? [Number(match[1])] : [];
  });
}

describe('a MicroVM runtime log', () => {
  let microvm: MicroVm;
  const followed: string[] = [];
  let follow: ReturnType<CocoonClient['followMicroVmLogs']>;

  before(async () => {
    microvm = await runTicker();
  });

  test('GET logs has the app output as records, stdout and stderr apart; ?tail=N the newest N', async () => {
    let lines: string[] = [];
    await waitUntil(async () => {
      lines = untimed(await client.microvmLogs(microvm.microvmId));
      return lines.some((line) => line.startsWith('stdout tick')) && lines.some((line) => line.startsWith('stderr tock'));
    }, WAIT_MS, 100);
    const first = ticks(lines);
    assert.deepEqual(first, first.map((_, i) => first[0]! + i), 'consecutive ticks');
    assert.equal(untimed(await client.microvmLogs(microvm.microvmId, { tail: 1 })).length, 1);
    assert.equal(await client.microvmLogs(microvm.microvmId, { tail: 0 }), '');
  });

  test('another account: 404 vm.not_found, for the text and the stream; a bad query is a 400', async () => {
    for (const attempt of [() => other.microvmLogs(microvm.microvmId), () => other.followMicroVmLogs(microvm.microvmId, () => {})]) {
      await assert.rejects(attempt(), (error) => isCocoonApiError(error, 'vm.not_found') && error.status === 404);
    }
    for (const [query, code] of [['tail=-1', 'request.invalid'], ['tail=x', 'request.invalid'], ['follow=yes', 'request.invalid'], ['since=1', 'request.unknown_field']]) {
      const response = await fetch(`${endpoint}/v1/microvms/${microvm.microvmId}/logs?${query}`, { headers: { authorization: `Bearer ${adminKey}` } });
      assert.equal(response.status, 400, query);
      assert.equal(((await response.json()) as { error: { code: string } }).error.code, code, query);
    }
  });

  test('follow (SSE) gets lines printed after it started, and keeps going across suspend and resume', async () => {
    follow = client.followMicroVmLogs(microvm.microvmId, (line) => followed.push(line), { tail: 0 });
    follow.catch(() => {});
    const followedTicks = () => ticks(untimed(followed.join('\n')));
    await waitUntil(async () => followedTicks().length > 0, WAIT_MS, 100);
    const live = followedTicks()[0]!;
    await client.suspendMicroVm(microvm.microvmId);
    const beforeResume = followed.length;
    await client.resumeMicroVm(microvm.microvmId);
    await waitUntil(async () => ticks(untimed(followed.slice(beforeResume).join('\n'))).length > 0, WAIT_MS, 100);
    const all = followedTicks();
    assert.deepEqual(all, all.map((_, i) => live + i), 'no tick lost or repeated across the suspend and the resume');
  });

  test('closing the API ends its open follows instead of waiting for them', async () => {
    const second = buildApi({ images, microvms });
    await second.listen({ host: '127.0.0.1', port: 0 });
    const viaSecond = new CocoonClient({ endpoint: `http://127.0.0.1:${(second.server.address() as AddressInfo).port}`, apiKey: adminKey });
    let lines = 0;
    const stream = viaSecond.followMicroVmLogs(microvm.microvmId, () => lines++);
    stream.catch(() => {});
    await waitUntil(async () => lines > 0, WAIT_MS, 100);
    await second.close();
    await assert.rejects(stream, (error) => isCocoonApiError(error, 'client.stream_ended'));
  });

  test('terminate ends the stream with the final state; the log outlives the VM', async () => {
    await client.terminateMicroVm(microvm.microvmId);
    assert.deepEqual(await follow, { state: 'TERMINATED' });
    assert.ok(existsSync(microvms.appLogs.file(microvm.microvmId)));
    const text = await client.microvmLogs(microvm.microvmId);
    assert.ok(untimed(text).some((line) => line.startsWith('stdout tick')));
    const replayed: string[] = [];
    assert.deepEqual(await client.followMicroVmLogs(microvm.microvmId, (line) => replayed.push(line)), { state: 'TERMINATED' });
    assert.equal(`${replayed.join('\n')}\n`, text, 'a follow of an ended VM replays the log, then ends');
  });

  test('cocoon logs --microvm-id prints the log; --follow ends with the VM; a usage error without exactly one source', async () => {
    const cocoon = (args: string[]) => promisify(execFile)(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
      cwd: ROOT, env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', COCOON_ENDPOINT: endpoint, COCOON_API_KEY: adminKey },
    });
    const text = await client.microvmLogs(microvm.microvmId);
    assert.equal((await cocoon(['logs', '--microvm-id', microvm.microvmId])).stdout, text);
    assert.equal((await cocoon(['logs', '--microvm-id', microvm.microvmId, '--follow', '--tail', '2'])).stdout, `${text.trimEnd().split('\n').slice(-2).join('\n')}\n`);
    await assert.rejects(cocoon(['logs']), (error: { code?: number; stderr?: string }) => error.code === 2 && /exactly one of --image-identifier/.test(error.stderr ?? ''));
  });
});
