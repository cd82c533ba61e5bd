/**
 * `npm run bench:proxy`: Cocoon's endpoint proxy against the MicroVM's forwarded port (direct)
 * and against nginx proxying to that same port, in one run, with wrk: small responses under load
 * (req/s, p50/p90/p99), small responses one at a time (the latency a hop adds, without queueing), and
 * a large file (MB/s). The targets take turns, round after round in alternating order, and
 * medians are reported, so drift on a noisy machine hits all of them alike. Headline figures are
 * over TLS (the proxy and nginx both terminate it, with the proxy's certificate); the same over
 * plain HTTP (the proxy's h2c port, an nginx plain listener) follow. Besides time, the CPU each
 * proxy spends per request or per MB: when the TCG guest is the bottleneck, that is what tells
 * the proxies apart. Human-readable lines, then one JSON object as the last line.
 */
import { randomBytes } from 'node:crypto';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CocoonClient } from '../src/client/index.ts';
import { loadConfig } from '../src/config/config.ts';
import { freeLoopbackPort } from '../src/host/sockets.ts';
import { zipDirectory } from '../src/host/zip-dir.ts';
import { startServer } from '../src/main/server.ts';
import { tlsPaths } from '../src/proxy/index.ts';
import { ensureDebianTools } from './debian-tools.ts';
import { startNginx, type RunningNginx } from './nginx.ts';
import { runWrk, type WrkResult } from './wrk.ts';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '4' },
    warmup: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '3' },
    threads: { type: 'string', default: '2' },
    // 8 keep the guest busy. At 32, wrk's own connects to the forwarded port overflow QEMU's
    // accept queue (backlog 1): handshakes the kernel completes a second later make direct's p99
    // read ~1 s (measured: 1.0-1.3 s; the proxy, whose connects go one at a time, 42-95 ms).
    connections: { type: 'string', default: '8' },
    'large-connections': { type: 'string', default: '2' },
    'large-mib': { type: 'string', default: '4' },
  },
});
const durationSeconds = Number(values.duration);
const warmupSeconds = Number(values.warmup);
const rounds = Number(values.rounds);
const threads = Number(values.threads);
const connections = Number(values.connections);
const largeConnections = Number(values['large-connections']);
const largeMiB = Number(values['large-mib']);
/** The proxy is one Node event loop: one nginx worker is the like-for-like comparison. */
const NGINX_WORKERS = 1;
const APP_PORT = 8080;
const say = (line: string): void => console.log(line);

type TargetName = 'direct' | 'nginx' | 'proxy' | 'nginx-plain' | 'proxy-plain';
interface Target { name: TargetName; url: string; cpuMs: () => Promise<number> }
type WorkloadName = 'load' | 'oneByOne' | 'large';
interface Workload { name: WorkloadName; label: string; urlPath: string; connections: number; warmupSeconds: number; timeoutSeconds: number }
interface Figures extends WrkResult {
  /** CPU of the process serving the target (Cocoon's for direct: its background), in % of one core. */
  cpuPct: number;
  cpuUsPerRequest: number;
  cpuMsPerMB: number;
  /** Highest minus lowest p99 of the rounds: the noise any p99 difference has to beat. */
  p99SpreadMs: number;
}
type Results = Map<WorkloadName, Map<TargetName, Figures>>;

// --- cleanup: one stack, run in reverse, once, past failures; also on Ctrl-C ---
const cleanups: Array<() => Promise<unknown>> = [];
let cleaning: Promise<void> | undefined;
function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const step of cleanups.reverse()) await step().catch((error: Error) => say(`cleanup: ${error.message}`));
  })();
  return cleaning;
}
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  process.once(signal, () => {
    say(`\n${signal}: cleaning up`);
    void cleanUp().finally(() => process.exit(code));
  });
}
// A failure nobody awaited (in the server, say) must not leave the VM, nginx and temp files behind.
process.once('uncaughtException', (error) => {
  console.error(error);
  void cleanUp().finally(() => process.exit(1));
});

const tools = await ensureDebianTools([{ command: 'nginx', debianPackage: 'nginx' }, { command: 'wrk', debianPackage: 'wrk' }], say);
const workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-bench-proxy-'));
cleanups.push(() => rm(workDir, { recursive: true, force: true }));
const config = loadConfig({ dataDir: path.join(workDir, 'data'), proxyPort: await freeLoopbackPort(), proxyH2cPort: await freeLoopbackPort() });
// Set once the server runs (inside the try below, so that a failed start still cleans up).
let client: CocoonClient;

/** Builds an image from `dir` at the 256 MiB test size; returns the accelerator it was built with. */
async function buildImage(name: string, dir: string): Promise<string> {
  const zipPath = path.join(workDir, `${name}.zip`);
  await zipDirectory(dir, zipPath);
  const started = Date.now();
  const creating = await client.uploadImage(name, zipPath, { memoryMiB: 256, appPort: APP_PORT });
  const lines: string[] = [];
  const end = await client.followBuildLogs(name, creating.version, (line) => lines.push(line));
  if (end.state !== 'ACTIVE') throw new Error(`image ${name}: ${end.state} ${end.stateReason ?? ''}\n${lines.slice(-10).join('\n')}`);
  say(`image ${name}: ACTIVE after ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return (await client.getImage(name)).builtWith?.accelerator ?? 'unknown';
}

/** Small responses come from the agent's C test server: it keeps connections alive (busybox httpd closes each one). */
async function smallAppDir(): Promise<string> {
  const dir = path.join(workDir, 'small-app');
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'Dockerfile'), `FROM cocoon/tiny\nEXPOSE ${APP_PORT}\nCMD ["/usr/local/bin/cocoon-testapp", "${APP_PORT}"]\n`);
  return dir;
}

/** examples/tiny-httpd (busybox httpd) with a large file beside its pages: random bytes, as a compressible one trips the zip-bomb guard. */
async function largeAppDir(): Promise<string> {
  const dir = path.join(workDir, 'large-app');
  await cp(fileURLToPath(new URL('../examples/tiny-httpd', import.meta.url)), dir, { recursive: true });
  await writeFile(path.join(dir, 'www', 'large.bin'), randomBytes(largeMiB * 2 ** 20));
  return dir;
}

/** One MicroVM of `image`, nginx in front of its port, wrk against every target per workload; the VM and nginx are gone afterwards. */
async function measure(image: string, workloads: Workload[], into: Results): Promise<void> {
  const microvm = await client.runMicroVm({ imageIdentifier: image });
  const terminate = async (): Promise<unknown> => client.terminateMicroVm(microvm.microvmId);
  cleanups.push(terminate);
  let nginx: RunningNginx | undefined;
  try {
    if (microvm.state !== 'RUNNING' || microvm.localPort === undefined || microvm.endpoint === undefined) {
      throw new Error(`MicroVM ${microvm.microvmId} is ${microvm.state} (localPort ${microvm.localPort}, endpoint ${microvm.endpoint})`);
    }
    const endpoint = new URL(microvm.endpoint);
    const { authToken } = await client.createMicroVmAuthToken(microvm.microvmId);
    const proxyTls = tlsPaths(config.dataDir);
    const tls = config.tlsCertPath && config.tlsKeyPath ? { certPath: config.tlsCertPath, keyPath: config.tlsKeyPath } : { certPath: proxyTls.cert, keyPath: proxyTls.key };
    nginx = await startNginx({ nginxPath: tools.nginx!, prefix: path.join(workDir, `nginx-${image}`), upstreamPort: microvm.localPort, tls, workerProcesses: NGINX_WORKERS });
    // Also on a crash (the uncaughtException handler runs the cleanups): no nginx outlives the run.
    cleanups.push(nginx.stop);
    // Cocoon's proxy runs in this process: its CPU is ours (for direct, the idle server's background).
    const cocoonCpuMs = async (): Promise<number> => {
      const usage = process.cpuUsage();
      return (usage.user + usage.system) / 1000;
    };
    const targets: Target[] = [
      { name: 'direct', url: `http://127.0.0.1:${microvm.localPort}`, cpuMs: cocoonCpuMs },
      { name: 'nginx', url: `https://127.0.0.1:${nginx.tlsPort}`, cpuMs: nginx.cpuMs },
      { name: 'proxy', url: `https://127.0.0.1:${endpoint.port}`, cpuMs: cocoonCpuMs },
      { name: 'nginx-plain', url: `http://127.0.0.1:${nginx.plainPort}`, cpuMs: nginx.cpuMs },
      { name: 'proxy-plain', url: `http://127.0.0.1:${config.proxyH2cPort}`, cpuMs: cocoonCpuMs },
    ];
    say(`\nMicroVM ${microvm.microvmId} of ${image}: forwarded port ${microvm.localPort}, endpoint ${microvm.endpoint}`);
    for (const target of targets) say(`  ${target.name.padEnd(12)} ${target.url}`);
    // The same request bytes everywhere: the endpoint's Host and the token (nginx drops it, as the proxy does).
    const headers = { Host: endpoint.host, ...authToken };
    for (const workload of workloads) {
      say(`${workload.label}: ${workload.connections} connection(s)`);
      const wrk = async (target: Target, seconds: number): Promise<Figures> => {
        const cpuBefore = await target.cpuMs();
        const result = await runWrk({
          wrkPath: tools.wrk!, url: `${target.url}${workload.urlPath}`, headers, threads: Math.min(threads, workload.connections),
          connections: workload.connections, durationSeconds: seconds, timeoutSeconds: workload.timeoutSeconds, scriptPath: path.join(workDir, 'wrk.lua'),
        });
        const cpuMs = (await target.cpuMs()) - cpuBefore;
        return { ...result, cpuPct: cpuMs / 10 / result.seconds, cpuUsPerRequest: (cpuMs * 1000) / result.requests, cpuMsPerMB: cpuMs / (result.bytes / 1e6), p99SpreadMs: 0 };
      };
      for (const target of targets) await wrk(target, workload.warmupSeconds);
      const runs = new Map<TargetName, Figures[]>(targets.map((target) => [target.name, []]));
      for (let round = 0; round < rounds; round++) {
        for (const target of round % 2 === 0 ? targets : [...targets].reverse()) {
          const figures = await wrk(target, durationSeconds);
          runs.get(target.name)!.push(figures);
          say(`  round ${round + 1} ${target.name.padEnd(12)} ${line(figures, workload.name)}`);
        }
      }
      into.set(workload.name, new Map([...runs].map(([name, figures]) => [name, medians(figures)])));
    }
  } finally {
    if (nginx) {
      cleanups.splice(cleanups.indexOf(nginx.stop), 1);
      await nginx.stop();
    }
    cleanups.splice(cleanups.indexOf(terminate), 1);
    await terminate();
  }
}

function medians(runs: Figures[]): Figures {
  const of = (key: keyof Figures): number => median(runs.map((run) => run[key]));
  return {
    seconds: of('seconds'), requests: of('requests'), bytes: of('bytes'), rps: of('rps'), p50Ms: of('p50Ms'), p90Ms: of('p90Ms'), p99Ms: of('p99Ms'), MBps: of('MBps'),
    socketErrors: runs.reduce((sum, run) => sum + run.socketErrors, 0), cpuPct: of('cpuPct'), cpuUsPerRequest: of('cpuUsPerRequest'), cpuMsPerMB: of('cpuMsPerMB'),
    p99SpreadMs: Math.max(...runs.map((run) => run.p99Ms)) - Math.min(...runs.map((run) => run.p99Ms)),
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function line(f: Figures, workload: WorkloadName): string {
  const rate = workload === 'large' ? `${f.MBps.toFixed(1).padStart(6)} MB/s` : `${f.rps.toFixed(0).padStart(6)} req/s`;
  const cost = workload === 'large' ? `${f.cpuMsPerMB.toFixed(2)} ms/MB` : `${f.cpuUsPerRequest.toFixed(0)} µs/req`;
  const errors = f.socketErrors ? `  (${f.socketErrors} socket errors)` : '';
  return `${rate}  p50 ${ms(f.p50Ms)}  p90 ${ms(f.p90Ms)}  p99 ${ms(f.p99Ms)}  cpu ${f.cpuPct.toFixed(0).padStart(3)}% ${cost}${errors}`;
}

function ms(value: number): string {
  return `${value.toFixed(2).padStart(7)} ms`;
}

const r2 = (value: number): number => Number(value.toFixed(2));

try {
  const server = await startServer({ config, apiPort: 0, requestLog: false, log: (l) => say(`  server | ${l}`) });
  cleanups.push(() => server.close());
  client = new CocoonClient({ endpoint: server.apiUrl, apiKey: (await readFile(server.adminKeyPath, 'utf8')).trim() });
  const accelerator = await buildImage('bench-small', await smallAppDir());
  await buildImage('bench-large', await largeAppDir());
  const results: Results = new Map();
  await measure('bench-small', [
    { name: 'load', label: 'small responses under load (GET / of cocoon-testapp, 18 bytes)', urlPath: '/', connections, warmupSeconds, timeoutSeconds: 10 },
    { name: 'oneByOne', label: 'small responses one at a time (the latency a hop adds)', urlPath: '/', connections: 1, warmupSeconds, timeoutSeconds: 10 },
  ], results);
  await measure('bench-large', [
    { name: 'large', label: `large responses (GET /large.bin of busybox httpd, ${largeMiB} MiB)`, urlPath: '/large.bin', connections: largeConnections,
      // Long enough for a few whole answers: a TCG guest sends ~15 MB/s.
      warmupSeconds: Math.max(warmupSeconds, 3), timeoutSeconds: 60 },
  ], results);

  const get = (workload: WorkloadName, target: TargetName): Figures => results.get(workload)!.get(target)!;
  const [load, one, large] = [(t: TargetName) => get('load', t), (t: TargetName) => get('oneByOne', t), (t: TargetName) => get('large', t)];
  say(`\nmedians of ${rounds} rounds × ${durationSeconds} s; wrk -t${threads}; nginx ${NGINX_WORKERS} worker; accelerator ${accelerator}; cpu = the proxy's process (direct: Cocoon's, idle)`);
  for (const workload of results.keys()) {
    for (const [name, f] of results.get(workload)!) say(`  ${workload.padEnd(8)} ${name.padEnd(12)} ${line(f, workload)}`);
  }
  const ratio = (a: number, b: number): number => Number((a / b).toFixed(3));
  const added = (figures: (t: TargetName) => Figures, t: TargetName, key: 'p50Ms' | 'p90Ms' | 'p99Ms' = 'p99Ms'): number => r2(figures(t)[key] - figures('direct')[key]);
  const verdict = (met: boolean): string => (met ? 'met' : 'MISSED');
  const rpsRatio = ratio(load('proxy').rps, load('nginx').rps);
  say(`proxy/nginx req/s under load: TLS ${rpsRatio} (target ≥ 1: ${verdict(rpsRatio >= 1)}), plain ${ratio(load('proxy-plain').rps, load('nginx-plain').rps)}`);
  const spread = (figures: (t: TargetName) => Figures): string => `direct's own p99 varies by ${figures('direct').p99SpreadMs.toFixed(2)} ms between rounds`;
  say(`added p99 under load (vs direct): proxy ${added(load, 'proxy')} ms (target ≤ 1 ms: ${verdict(added(load, 'proxy') <= 1)}), nginx ${added(load, 'nginx')} ms; plain: proxy ${added(load, 'proxy-plain')} ms, nginx ${added(load, 'nginx-plain')} ms (${spread(load)})`);
  if ([...results.get('load')!.values()].some((f) => f.p99Ms >= 500)) {
    say('  (p99s near 1 s under load are connection handshakes the kernel retried after QEMU\'s accept queue (backlog 1) overflowed, or a host too busy to measure: compare p90 under load, and latency one at a time)');
  }
  say(`added p90 under load: proxy ${added(load, 'proxy', 'p90Ms')} ms, nginx ${added(load, 'nginx', 'p90Ms')} ms; plain: proxy ${added(load, 'proxy-plain', 'p90Ms')} ms, nginx ${added(load, 'nginx-plain', 'p90Ms')} ms`);
  say(`added p50 one at a time: proxy ${added(one, 'proxy', 'p50Ms')} ms, nginx ${added(one, 'nginx', 'p50Ms')} ms; plain: proxy ${added(one, 'proxy-plain', 'p50Ms')} ms, nginx ${added(one, 'nginx-plain', 'p50Ms')} ms`);
  say(`added p99 one at a time: proxy ${added(one, 'proxy')} ms (target ≤ 1 ms: ${verdict(added(one, 'proxy') <= 1)}), nginx ${added(one, 'nginx')} ms; plain: proxy ${added(one, 'proxy-plain')} ms, nginx ${added(one, 'nginx-plain')} ms (${spread(one)})`);
  say(`proxy/nginx MB/s: TLS ${ratio(large('proxy').MBps, large('nginx').MBps)}, plain ${ratio(large('proxy-plain').MBps, large('nginx-plain').MBps)}; proxy/direct ${ratio(large('proxy').MBps, large('direct').MBps)}`);
  say(`proxy/nginx CPU per request: TLS ${ratio(load('proxy').cpuUsPerRequest, load('nginx').cpuUsPerRequest)}, plain ${ratio(load('proxy-plain').cpuUsPerRequest, load('nginx-plain').cpuUsPerRequest)}; per MB: TLS ${ratio(large('proxy').cpuMsPerMB, large('nginx').cpuMsPerMB)}`);
  console.log(JSON.stringify({
    proxyRps: r2(load('proxy').rps), directRps: r2(load('direct').rps), nginxRps: r2(load('nginx').rps),
    proxyP50Ms: r2(load('proxy').p50Ms), directP50Ms: r2(load('direct').p50Ms), nginxP50Ms: r2(load('nginx').p50Ms),
    proxyP99Ms: r2(load('proxy').p99Ms), directP99Ms: r2(load('direct').p99Ms), nginxP99Ms: r2(load('nginx').p99Ms),
    proxyMBps: r2(large('proxy').MBps), directMBps: r2(large('direct').MBps), nginxMBps: r2(large('nginx').MBps),
    proxyP90Ms: r2(load('proxy').p90Ms), directP90Ms: r2(load('direct').p90Ms), nginxP90Ms: r2(load('nginx').p90Ms),
    proxyOverNginxRps: rpsRatio, proxyAddedP99Ms: added(load, 'proxy'), nginxAddedP99Ms: added(load, 'nginx'), directP99SpreadMs: r2(load('direct').p99SpreadMs),
    oneByOneProxyP50Ms: r2(one('proxy').p50Ms), oneByOneDirectP50Ms: r2(one('direct').p50Ms), oneByOneNginxP50Ms: r2(one('nginx').p50Ms),
    oneByOneProxyP99Ms: r2(one('proxy').p99Ms), oneByOneDirectP99Ms: r2(one('direct').p99Ms), oneByOneNginxP99Ms: r2(one('nginx').p99Ms),
    oneByOneProxyAddedP50Ms: added(one, 'proxy', 'p50Ms'), oneByOneNginxAddedP50Ms: added(one, 'nginx', 'p50Ms'),
    oneByOneProxyAddedP99Ms: added(one, 'proxy'), oneByOneNginxAddedP99Ms: added(one, 'nginx'), oneByOneDirectP99SpreadMs: r2(one('direct').p99SpreadMs),
    proxyPlainRps: r2(load('proxy-plain').rps), nginxPlainRps: r2(load('nginx-plain').rps),
    proxyPlainP50Ms: r2(load('proxy-plain').p50Ms), nginxPlainP50Ms: r2(load('nginx-plain').p50Ms),
    proxyPlainP99Ms: r2(load('proxy-plain').p99Ms), nginxPlainP99Ms: r2(load('nginx-plain').p99Ms),
    proxyPlainMBps: r2(large('proxy-plain').MBps), nginxPlainMBps: r2(large('nginx-plain').MBps),
    oneByOneProxyPlainP99Ms: r2(one('proxy-plain').p99Ms), oneByOneNginxPlainP99Ms: r2(one('nginx-plain').p99Ms),
    proxyCpuUsPerRequest: r2(load('proxy').cpuUsPerRequest), nginxCpuUsPerRequest: r2(load('nginx').cpuUsPerRequest),
    proxyPlainCpuUsPerRequest: r2(load('proxy-plain').cpuUsPerRequest), nginxPlainCpuUsPerRequest: r2(load('nginx-plain').cpuUsPerRequest),
    proxyCpuMsPerMB: r2(large('proxy').cpuMsPerMB), nginxCpuMsPerMB: r2(large('nginx').cpuMsPerMB),
    proxyTransport: 'HTTP/1.1 over TLS', accelerator, nginxWorkers: NGINX_WORKERS, wrkThreads: threads,
    connections, largeConnections, largeFileMiB: largeMiB, durationSeconds, rounds,
  }));
} finally {
  await cleanUp();
}
