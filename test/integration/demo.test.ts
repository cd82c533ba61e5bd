/**
 * The README's first command: `npm run demo` starts the server, builds the example image through
 * the API, runs a MicroVM, reaches it through its HTTPS endpoint with a token and prints how to
 * reach it. Run here with --exit on its own data dir and free ports.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

test('npm run demo builds the example, runs a MicroVM that answers, and cleans up', { timeout: 600_000 }, async () => {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-demo-test-'));
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/main/demo.ts', '--exit', '--data-dir', dataDir, '--port', '0', '--proxy-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString(); });
    child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString(); });
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0, output);
    assert.match(output, /cocoon:image:tiny-httpd:1\.0: ACTIVE/);
    assert.match(output, /mvm-[0-9a-f-]+: RUNNING/);
    assert.match(output, /GET https:\/\/mvm-[0-9a-f-]+\.cocoon\.localhost:\d+\/built\.txt with its X-Cocoon-Auth token → 200: hello from a Cocoon build step/);
    assert.match(output, /mvm-[0-9a-f-]+: TERMINATED/);
    assert.match(output, /server stopped/);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});
