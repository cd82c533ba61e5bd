/**
 * A private nginx as the reference reverse proxy: its own config and prefix in a temp directory,
 * loopback only, a child process (`daemon off`) stopped by its pid. The config is what a careful
 * operator would write for this job: kept-alive upstream connections, no access log, the same
 * forwarding headers Cocoon's proxy sets, the auth header dropped as Cocoon drops it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { once } from 'node:events';
import { httpGet, waitUntil } from '../src/host/http-probe.ts';
import { freeLoopbackPort } from '../src/host/sockets.ts';

export interface NginxOptions {
  nginxPath: string;
  /** Holds the config, logs and temp directories. */
  prefix: string;
  upstreamPort: number;
  tls: { certPath: string; keyPath: string };
  workerProcesses: number;
}

export interface RunningNginx {
  tlsPort: number;
  plainPort: number;
  /** CPU time used so far by the master and its workers. */
  cpuMs(): Promise<number>;
  stop(): Promise<void>;
}

/** Linux's USER_HZ: /proc reports CPU times in these ticks. */
const TICKS_PER_SECOND = 100;

export async function startNginx(options: NginxOptions): Promise<RunningNginx> {
  await mkdir(options.prefix, { recursive: true });
  const [tlsPort, plainPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
  const configPath = path.join(options.prefix, 'nginx.conf');
  await writeFile(configPath, nginxConfig({ ...options, tlsPort, plainPort }));
  const errorLog = path.join(options.prefix, 'error.log');
  // A group of its own: a stop reaches the workers even if the master is already gone.
  const child = spawn(options.nginxPath, ['-c', configPath, '-p', options.prefix, '-e', errorLog], { stdio: 'ignore', detached: true });
  const exited = once(child, 'exit');
  const stop = (): Promise<void> => stopGroup(child, exited);
  try {
    await Promise.race([
      waitUntil(async () => (await httpGet(plainPort, '/', 5000)).status > 0, 20_000, 50),
      exited.then(async () => {
        throw new Error(`nginx exited at start: ${(await readFile(errorLog, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ')}`);
      }),
    ]);
  } catch (error) {
    await stop();
    throw error;
  }
  const master = child.pid!;
  const cpuMs = async (): Promise<number> => {
    const children = (await readFile(`/proc/${master}/task/${master}/children`, 'utf8')).trim().split(/\s+/).filter(Boolean).map(Number);
    const ticks = await Promise.all([master, ...children].map(cpuTicks));
    return (ticks.reduce((sum, t) => sum + t, 0) * 1000) / TICKS_PER_SECOND;
  };
  return { tlsPort, plainPort, cpuMs, stop };
}

async function stopGroup(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.pid === undefined) return;
  const group = -child.pid;
  const masterGone = child.exitCode !== null || child.signalCode !== null;
  try {
    // SIGTERM is nginx's fast shutdown; workers left by a master that died get no second chance.
    process.kill(group, masterGone ? 'SIGKILL' : 'SIGTERM');
  } catch {
    return; // nothing of the group is left
  }
  if (masterGone) return;
  const timer = setTimeout(() => {
    try {
      process.kill(group, 'SIGKILL');
    } catch { /* gone meanwhile */ }
  }, 5000);
  await exited;
  clearTimeout(timer);
}

/** utime + stime from /proc/<pid>/stat (fields 14 and 15; the name in parentheses may hold spaces). */
async function cpuTicks(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11] ?? 0) + Number(fields[12] ?? 0);
}

function nginxConfig(o: NginxOptions & { tlsPort: number; plainPort: number }): string {
  const prefix = o.prefix;
  return `# Written by bench/proxy.ts; runs as: nginx -c ${path.join(prefix, 'nginx.conf')} -p ${prefix}
daemon off;
master_process on;
worker_processes ${o.workerProcesses};
pid ${path.join(prefix, 'nginx.pid')};
error_log ${path.join(prefix, 'error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  # Like Cocoon's proxy: no cap on requests per kept-alive connection.
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  tcp_nodelay on;
  client_body_temp_path ${path.join(prefix, 'client_body')};
  proxy_temp_path ${path.join(prefix, 'proxy_temp')};
  fastcgi_temp_path ${path.join(prefix, 'fastcgi_temp')};
  uwsgi_temp_path ${path.join(prefix, 'uwsgi_temp')};
  scgi_temp_path ${path.join(prefix, 'scgi_temp')};
  upstream guest {
    server 127.0.0.1:${o.upstreamPort};
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${o.tlsPort} ssl;
    listen 127.0.0.1:${o.plainPort};
    ssl_certificate ${o.tls.certPath};
    ssl_certificate_key ${o.tls.keyPath};
    location / {
      proxy_pass http://guest;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Cocoon-Auth "";
      # Large responses stream through the memory buffers, never through temp files on disk.
      proxy_max_temp_file_size 0;
    }
  }
}
`;
}
