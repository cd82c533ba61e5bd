/**
 * One wrk run, its figures read from a Lua `done` hook (exact microseconds and bytes, not wrk's
 * rounded text). Headers go in the script rather than argv: the auth token stays out of `ps`.
 */
import { writeFile } from 'node:fs/promises';
import { run } from '../src/host/run.ts';

export interface WrkRun {
  wrkPath: string;
  url: string;
  headers: Record<string, string>;
  threads: number;
  connections: number;
  durationSeconds: number;
  /** A request slower than this counts as a timeout (wrk's default, 2 s, is short for MiBs through a TCG guest). */
  timeoutSeconds: number;
  /** Where the Lua script is written (mode 0600: it holds the token); rewritten by each run. */
  scriptPath: string;
}

export interface WrkResult {
  seconds: number;
  requests: number;
  /** Response bytes, headers included. */
  bytes: number;
  rps: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  /** 10^6 response bytes per second. */
  MBps: number;
  /** Connect, read and write errors and timeouts. */
  socketErrors: number;
}

const MARK = 'WRK_RESULT ';

export async function runWrk(options: WrkRun): Promise<WrkResult> {
  await writeFile(options.scriptPath, luaScript(options.headers), { mode: 0o600 });
  const stdout = await run(options.wrkPath, [
    '-t', String(options.threads), '-c', String(options.connections), '-d', `${options.durationSeconds}s`,
    '--timeout', `${options.timeoutSeconds}s`, '-s', options.scriptPath, options.url,
  ], { timeoutMs: (options.durationSeconds + options.timeoutSeconds + 30) * 1000 });
  const line = stdout.split('\n').find((l) => l.startsWith(MARK));
  if (!line) throw new Error(`wrk ${options.url}: no result in its output: ${stdout.trim().slice(-500)}`);
  const r = JSON.parse(line.slice(MARK.length)) as Record<string, number>;
  if (r.requests === 0) throw new Error(`wrk ${options.url}: no request completed in ${options.durationSeconds} s`);
  if (r.statusErrors! > 0) throw new Error(`wrk ${options.url}: ${r.statusErrors} of ${r.requests} answers were not 2xx/3xx`);
  const seconds = r.durationUs! / 1e6;
  return {
    seconds,
    requests: r.requests!,
    bytes: r.bytes!,
    rps: r.requests! / seconds,
    p50Ms: r.p50Us! / 1000,
    p90Ms: r.p90Us! / 1000,
    p99Ms: r.p99Us! / 1000,
    MBps: r.bytes! / seconds / 1e6,
    socketErrors: r.connectErrors! + r.readErrors! + r.writeErrors! + r.timeouts!,
  };
}

function luaScript(headers: Record<string, string>): string {
  const lines = Object.entries(headers).map(([name, value]) => {
    // JSON strings of printable ASCII are valid Lua strings too.
    if (!/^[\x20-\x7e]*$/.test(name + value)) throw new Error(`header ${name}: printable ASCII only`);
    return `wrk.headers[${JSON.stringify(name)}] = ${JSON.stringify(value)}`;
  });
  return `${lines.join('\n')}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('${MARK}{"durationUs":%.0f,"requests":%.0f,"bytes":%.0f,"p50Us":%.0f,"p90Us":%.0f,"p99Us":%.0f,' ..
    '"connectErrors":%.0f,"readErrors":%.0f,"writeErrors":%.0f,"statusErrors":%.0f,"timeouts":%.0f}\\n',
    summary.duration, summary.requests, summary.bytes, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
`;
}

