/**
 * `npm run demo`: Cocoon end to end on its embedded defaults (SQLite and files in ./.cocoon, API on
 * loopback, endpoints under cocoon.localhost). Starts the server, builds examples/tiny-httpd into a
 * MicroVM image through the REST API (the Dockerfile runs inside a VM; the running app is
 * snapshotted), runs a MicroVM from the snapshot, reaches it through its HTTPS endpoint with an
 * auth token, and prints how to reach it. On a terminal it keeps serving until Ctrl-C; otherwise
 * (or with --exit) it terminates its MicroVM and stops.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { CocoonClient } from '../client/index.ts';
import { loadConfig } from '../config/config.ts';
import { lookupLoopback } from '../host/sockets.ts';
import { zipDirectory } from '../host/zip-dir.ts';
import { DEFAULT_API_PORT, startServer } from './server.ts';

const { values } = parseArgs({
  options: {
    example: { type: 'string', default: 'tiny-httpd' },
    'data-dir': { type: 'string' },
    port: { type: 'string', default: String(DEFAULT_API_PORT) },
    'proxy-port': { type: 'string' },
    exit: { type: 'boolean', default: false },
  },
});
const say = (line: string): void => console.log(line);
const example = values.example;
const exampleDir = fileURLToPath(new URL(`../../examples/${example}`, import.meta.url));
const config = loadConfig({
  ...(values['data-dir'] !== undefined && { dataDir: values['data-dir'] }),
  ...(values['proxy-port'] !== undefined && { proxyPort: Number(values['proxy-port']) }),
});
const cli = values['data-dir'] ? `COCOON_DATA_DIR=${config.dataDir} npm run -s cocoon --` : 'npm run -s cocoon --';
const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

say(`== cocoon server (data in ${config.dataDir})`);
const server = await startServer({ config, apiPort: Number(values.port), requestLog: false, log: (line) => say(`  ${line}`) });
const client = new CocoonClient({ endpoint: server.apiUrl, apiKey: (await readFile(server.adminKeyPath, 'utf8')).trim() });
const cliFlags = values.port === String(DEFAULT_API_PORT) ? '' : ` --endpoint ${server.apiUrl}`;
let microvmId: string | undefined;
const workDir = path.join(config.dataDir, 'demo');

try {
  await mkdir(workDir, { recursive: true });
  const zipPath = path.join(workDir, `${example}.zip`);
  await zipDirectory(exampleDir, zipPath);
  say(`\n== create-microvm-image --name ${example} --code-artifact uri=${path.relative(process.cwd(), exampleDir)} (zipped and uploaded)`);
  let started = Date.now();
  const creating = await client.uploadImage(example, zipPath);
  say(`  ${creating.arn}: ${creating.state}`);
  const end = await client.followBuildLogs(example, creating.version, (line) => say(`  build | ${line.replace(/^\S+Z /, '')}`));
  say(`  ${creating.arn}: ${end.state}${end.stateReason ? ` — ${end.stateReason}` : ''} after ${seconds(Date.now() - started)}`);
  if (end.state !== 'ACTIVE') throw new Error(`the image build ended ${end.state}`);

  say(`\n== run-microvm --image-identifier ${example}`);
  started = Date.now();
  const microvm = await client.runMicroVm({ imageIdentifier: example });
  microvmId = microvm.microvmId;
  say(`  ${microvm.microvmId}: ${microvm.state} ${seconds(Date.now() - started)} after the call (restored from the image's snapshot, app already serving)`);
  const token = (await client.createMicroVmAuthToken(microvm.microvmId, { expirationInMinutes: 15 })).authToken['X-Cocoon-Auth'];
  if (microvm.endpoint) {
    // built.txt was written by the Dockerfile's RUN step inside the build VM.
    const answer = await getThroughEndpoint(new URL('/built.txt', microvm.endpoint), token, server.caPath);
    say(`  GET ${microvm.endpoint}/built.txt with its X-Cocoon-Auth token → ${answer.status}: ${answer.body.trim()}`);
  }

  say('\nReach it:');
  say(`  TOKEN=$(${cli}${cliFlags} create-microvm-auth-token --microvm-id ${microvm.microvmId} --query 'authToken."X-Cocoon-Auth"' --output text)`);
  say(`  curl ${server.caPath ? `--cacert ${server.caPath} ` : ''}-H "X-Cocoon-Auth: $TOKEN" ${microvm.endpoint}/`);
  say(`  ${cli}${cliFlags} get-microvm --microvm-id ${microvm.microvmId}`);
  say(`  ${cli}${cliFlags} logs --microvm-id ${microvm.microvmId} --follow`);
  say(`  ${cli}${cliFlags} suspend-microvm --microvm-id ${microvm.microvmId}    # the next request through the endpoint resumes it`);
  say(`  API: ${server.apiUrl}/openapi.json with "Authorization: Bearer $(cat ${server.adminKeyPath})"`);
  if (!values.exit && process.stdin.isTTY) {
    say('\nThe server keeps running; press Ctrl-C to stop it (the demo\'s MicroVM is terminated, the image stays).');
    await new Promise<void>((resolve) => {
      process.once('SIGINT', resolve);
      process.once('SIGTERM', resolve);
    });
  }
} finally {
  if (microvmId) {
    const gone = await client.terminateMicroVm(microvmId).catch((error: Error) => ({ state: `not terminated (${error.message})` }));
    say(`\n${microvmId}: ${gone.state}`);
  }
  await rm(workDir, { recursive: true, force: true });
  await server.close();
  say('server stopped');
}

/** An HTTPS GET of a MicroVM endpoint; the name resolves to loopback (under .localhost) whatever the resolver says. */
function getThroughEndpoint(url: URL, token: string, caPath: string | undefined): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = https.get(url, {
      headers: { 'x-cocoon-auth': token },
      ...(caPath !== undefined && { ca: readFileSync(caPath) }),
      lookup: lookupLoopback,
      timeout: 30_000,
    }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => { body += chunk; });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.on('timeout', () => request.destroy(new Error(`no answer from ${url.host} within 30 s`)));
    request.on('error', reject);
  });
}
