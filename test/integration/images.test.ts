/**
 * create-microvm-image end to end on real VMs with the tiny base: build from a zip inside a VM,
 * snapshot the running app, launch from it; cached rebuilds; failing steps and hostile zips.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startTestS3, type TestS3 } from '../../src/images/artifact/test-s3.ts';
import { buildZip, unixSymlink } from '../../src/images/artifact/test-zip.ts';
import type { StoredImage } from '../../src/store/index.ts';
import { httpGet } from '../../src/host/http-probe.ts';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import { loadConfig } from '../../src/config/config.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import { startImageService, type ImageService } from '../../src/main/images.ts';
import type { TemplateSnapshot } from '../../src/vmm/driver.ts';

const EXAMPLE = fileURLToPath(new URL('../../examples/tiny-httpd', import.meta.url));
let engine: Engine;
let images: ImageService;
let workDir: string;
let s3: TestS3;

before(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-img-'));
  s3 = await startTestS3(workDir, ['artifacts']);
  engine = await startEngine({ config: loadConfig({ dataDir: path.join(workDir, 'data') }), log: (line) => console.log(`# ${line}`) });
  images = await startImageService(engine, { dataDir: path.join(workDir, 'data'), s3: s3.config });
});

after(async () => {
  await images.close();
  await s3.close();
  await engine.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

async function zipOf(files: Record<string, string>, name: string): Promise<string> {
  const zipPath = path.join(workDir, `${name}.zip`);
  await writeFile(zipPath, buildZip(Object.entries(files).map(([file, data]) => ({ name: file, data }))));
  return zipPath;
}

async function build(name: string, uri: string, extra: { readinessTimeoutSeconds?: number } = {}): Promise<{ record: StoredImage; log: string[] }> {
  const log: string[] = [];
  const { record, done } = await images.builder.create(images.adminAccountId, { name, codeArtifactUri: uri, memoryMiB: 128, ...extra }, (line) => log.push(line));
  assert.equal(record.state, 'CREATING');
  return { record: await done, log };
}

function templateOf(record: StoredImage): Promise<TemplateSnapshot> {
  return images.builder.templateOf(record);
}

describe('the tiny-httpd example', () => {
  let first: StoredImage;

  test('builds inside a VM and becomes ACTIVE with its build facts recorded', async () => {
    const zipPath = path.join(workDir, 'tiny-httpd.zip');
    await zipDirectory(EXAMPLE, zipPath);
    const { record, log } = await build('tiny-httpd', zipPath);
    assert.equal(record.state, 'ACTIVE', `${record.stateReason}\n${log.join('\n')}`);
    first = record;
    assert.equal(record.version, '1.0');
    assert.equal(record.arn, 'cocoon:image:tiny-httpd:1.0');
    assert.equal(record.appPort, 8080);
    assert.match(record.codeArtifact.sha256 ?? '', /^[0-9a-f]{64}$/);
    assert.equal(record.baseImage, 'cocoon/tiny');
    assert.ok(record.builtWith?.qemuVersion.includes('QEMU'));
    assert.ok(log.some((line) => line.includes('validation launch answered')));
  });

  test('a launch from the image serves the app with files from COPY and RUN', async () => {
    const template = await templateOf(first);
    const vm = await engine.driver.launch(template, path.join(workDir, 'run-1'));
    try {
      assert.match((await httpGet(vm.hostPort(8080), '/')).body, /restored from a snapshot/);
      assert.equal((await httpGet(vm.hostPort(8080), '/built.txt')).body, 'hello from a Cocoon build step\n');
    } finally {
      await engine.driver.stop(vm);
    }
  });

  test('a code-only change reruns only the steps from the changed COPY on', async () => {
    const changed = path.join(workDir, 'tiny-httpd-changed');
    await cp(EXAMPLE, changed, { recursive: true });
    await writeFile(path.join(changed, 'www', 'index.html'), '<h1>version two</h1>\n');
    const zipPath = path.join(workDir, 'tiny-httpd-2.zip');
    await zipDirectory(changed, zipPath);
    const { record, log } = await build('tiny-httpd', zipPath);
    assert.equal(record.state, 'ACTIVE', record.stateReason);
    assert.equal(record.version, '2.0');
    assert.ok(log.some((line) => /CACHED \[1\/3\] WORKDIR/.test(line)), log.join('\n'));
    assert.ok(log.some((line) => /\[2\/3\] COPY/.test(line) && !line.includes('CACHED')), log.join('\n'));
    assert.deepEqual(record.layers?.[0], first.layers?.[0]);
    assert.notDeepEqual(record.layers?.[1], first.layers?.[1]);
    const vm = await engine.driver.launch(await templateOf(record), path.join(workDir, 'run-2'));
    try {
      assert.equal((await httpGet(vm.hostPort(8080), '/')).body, '<h1>version two</h1>\n');
    } finally {
      await engine.driver.stop(vm);
    }
  });
});

test('a multi-stage build copies files from an earlier stage', async () => {
  const uri = await zipOf({
    Dockerfile: [
      'FROM cocoon/tiny AS builder',
      'RUN mkdir -p /out/site && echo "made in the builder stage" > /out/site/index.html',
      'FROM cocoon/tiny',
      'COPY --from=builder /out/site /srv/www',
      'EXPOSE 8080',
      'CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]',
    ].join('\n'),
  }, 'multi-stage');
  const { record, log } = await build('multi-stage', uri);
  assert.equal(record.state, 'ACTIVE', `${record.stateReason}\n${log.join('\n')}`);
  const vm = await engine.driver.launch(await templateOf(record), path.join(workDir, 'run-multi'));
  try {
    assert.equal((await httpGet(vm.hostPort(8080), '/')).body, 'made in the builder stage\n');
  } finally {
    await engine.driver.stop(vm);
  }
});

test('an artifact from s3://bucket/key builds like a local one', async () => {
  const zipPath = path.join(workDir, 'from-s3.zip');
  await zipDirectory(EXAMPLE, zipPath);
  await s3.put('artifacts', 'apps/tiny-httpd.zip', await readFile(zipPath));
  const { record } = await build('from-s3', 's3://artifacts/apps/tiny-httpd.zip');
  assert.equal(record.state, 'ACTIVE', record.stateReason);
  assert.equal(record.codeArtifact.uri, 's3://artifacts/apps/tiny-httpd.zip');
  const missing = await build('from-s3', 's3://artifacts/apps/missing.zip');
  assert.equal(missing.record.stateReasonCode, 'artifact.not_found');
});

describe('builds that must fail, with the reason', () => {
  test('a failing RUN step names its line and exit code, and its output is in the log', async () => {
    const uri = await zipOf({ Dockerfile: 'FROM cocoon/tiny\nRUN echo about to fail && exit 7\nCMD ["httpd", "-f", "-p", "8080"]\n' }, 'failing-run');
    const { record, log } = await build('failing-run', uri);
    assert.equal(record.state, 'FAILED');
    assert.equal(record.stateReasonCode, 'image.build_failed');
    assert.match(record.stateReason!, /line 2.*code 7/);
    assert.ok(log.some((line) => line.includes('about to fail')));
  });

  test('an app that never becomes ready fails at the readiness timeout', async () => {
    const uri = await zipOf({ Dockerfile: 'FROM cocoon/tiny\nCMD ["sleep", "3600"]\n' }, 'never-ready');
    const { record } = await build('never-ready', uri, { readinessTimeoutSeconds: 3 });
    assert.equal(record.state, 'FAILED');
    assert.equal(record.stateReasonCode, 'image.readiness_timeout');
  });

  test('an app that exits at once fails without waiting for the timeout', async () => {
    const uri = await zipOf({ Dockerfile: 'FROM cocoon/tiny\nCMD ["sh", "-c", "echo bye; exit 3"]\n' }, 'exits');
    const started = Date.now();
    const { record } = await build('exits', uri, { readinessTimeoutSeconds: 600 });
    assert.equal(record.state, 'FAILED');
    assert.match(record.stateReason!, /exited \(code 3\)/);
    assert.ok(Date.now() - started < 300_000);
  });

  const hostileZips: Array<[string, Buffer, string]> = [
    ['zip-slip', buildZip([{ name: 'Dockerfile', data: 'FROM cocoon/tiny\n' }, { name: '../../evil.sh', data: 'x' }]), 'artifact.unsafe_path'],
    ['symlink', buildZip([{ name: 'Dockerfile', data: 'FROM cocoon/tiny\n' }, { name: 'link', data: '/etc/passwd', unixMode: unixSymlink }]), 'artifact.symlink'],
    ['bomb', buildZip([{ name: 'Dockerfile', data: 'FROM cocoon/tiny\n' }, { name: 'bomb.bin', data: Buffer.alloc(64 * 1024 * 1024), method: 'deflate' }]), 'artifact.compression_ratio'],
    ['no-dockerfile', buildZip([{ name: 'app.py', data: 'print(1)\n' }]), 'artifact.no_dockerfile'],
    ['unsupported', buildZip([{ name: 'Dockerfile', data: 'FROM cocoon/tiny\nHEALTHCHECK CMD true\n' }]), 'dockerfile.unsupported_instruction'],
  ];
  for (const [name, zip, code] of hostileZips) {
    test(`a ${name} artifact is refused with ${code}`, async () => {
      const zipPath = path.join(workDir, `${name}.zip`);
      await writeFile(zipPath, zip);
      const { record } = await build(name, zipPath);
      assert.equal(record.state, 'FAILED');
      assert.equal(record.stateReasonCode, code, record.stateReason);
    });
  }
});

test('a build interrupted by a restart is marked FAILED, not left CREATING', async () => {
  const stale = await images.store.images.createVersion(images.adminAccountId, { name: 'interrupted', codeArtifact: { uri: 'x.zip' }, appPort: 8080, hooksPort: 9000, readinessTimeoutSeconds: 60, memoryMiB: 128 });
  const reconciled = await images.builder.reconcile();
  assert.deepEqual(reconciled.map((r) => r.arn), [stale.arn]);
  const reread = await images.store.images.get(images.adminAccountId, 'interrupted', stale.version);
  assert.equal(reread.state, 'FAILED');
  assert.match(reread.stateReason!, /interrupted/);
});

test('no build or template VM outlives its build', async () => {
  const children: string[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    const match = /^\d+ \((.*)\) \S+ (\d+)/.exec(stat);
    if (match && match[1]!.startsWith('qemu-system') && Number(match[2]) === process.pid) children.push(pid);
  }
  assert.deepEqual(children, []);
});
