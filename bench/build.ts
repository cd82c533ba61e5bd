/**
 * `npm run bench:build`: first build vs cached rebuild after a code-only change, for the tiny and
 * Flask examples, in one run with a fresh data directory. Last line: one JSON object.
 */
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { zipDirectory } from '../src/host/zip-dir.ts';
import { loadConfig } from '../src/config/config.ts';
import { startEngine } from '../src/main/engine.ts';
import { startImageService } from '../src/main/images.ts';

const say = (line: string): void => console.log(line);
const workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-bench-build-'));
const engine = await startEngine({ config: loadConfig({ dataDir: path.join(workDir, 'data') }), log: say });
const images = await startImageService(engine, { dataDir: path.join(workDir, 'data'), s3: {} }, say);

/** Builds the example, then again after changing one code file; returns both create→ACTIVE times. */
async function firstAndRebuild(example: string, codeFile: string, changeLine: (stamp: number) => string): Promise<{ firstMs: number; rebuildMs: number }> {
  const source = path.join(workDir, example);
  await cp(fileURLToPath(new URL(`../examples/${example}`, import.meta.url)), source, { recursive: true });
  const timeBuild = async (label: string): Promise<number> => {
    const zipPath = path.join(workDir, `${example}-${label}.zip`);
    await zipDirectory(source, zipPath);
    const started = Date.now();
    const { done } = await images.builder.create(images.adminAccountId, { name: example, codeArtifactUri: zipPath });
    const record = await done;
    if (record.state !== 'ACTIVE') throw new Error(`${example} ${label} build ${record.state}: ${record.stateReason}`);
    const ms = Date.now() - started;
    say(`${example} ${label}: ${(ms / 1000).toFixed(1)} s to ACTIVE (steps ${((record.timingsMs?.stepsMs ?? 0) / 1000).toFixed(1)} s, snapshot ${((record.timingsMs?.snapshotMs ?? 0) / 1000).toFixed(1)} s, validation ${((record.timingsMs?.validationMs ?? 0) / 1000).toFixed(1)} s)`);
    return ms;
  };
  const firstMs = await timeBuild('first build');
  const file = path.join(source, codeFile);
  await writeFile(file, `${await readFile(file, 'utf8')}${changeLine(Date.now())}\n`);
  const rebuildMs = await timeBuild('rebuild after a code change');
  say(`${example}: rebuild is ${(firstMs / rebuildMs).toFixed(1)}× faster than the first build`);
  return { firstMs, rebuildMs };
}

try {
  const tiny = await firstAndRebuild('tiny-httpd', 'www/index.html', (n) => `<!-- changed ${n} -->`);
  const flask = await firstAndRebuild('flask', 'app.py', (n) => `# changed ${n}`);
  console.log(JSON.stringify({
    accelerator: engine.accelerator.accelerator,
    tinyFirstBuildMs: tiny.firstMs, tinyRebuildMs: tiny.rebuildMs, tinySpeedup: Number((tiny.firstMs / tiny.rebuildMs).toFixed(2)),
    flaskFirstBuildMs: flask.firstMs, flaskRebuildMs: flask.rebuildMs, flaskSpeedup: Number((flask.firstMs / flask.rebuildMs).toFixed(2)),
  }));
} finally {
  await images.close();
  await engine.driver.idle();
  await rm(workDir, { recursive: true, force: true });
}
