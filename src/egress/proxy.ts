/**
 * Cocoon's egress proxy: the one way out of a guest that runs user-mode networking with
 * `restrict=on`. QEMU's `guestfwd=…-cmd:socat - UNIX-CONNECT:<socketPath>` turns every guest
 * connection to 10.0.2.100:3128 into a connection to the unix socket served here (a QEMU that
 * dropped privileges runs a relay to a socket in its chroot instead, which the VM driver pipes here).
 *
 * It speaks HTTP/1.1 proxy (CONNECT tunnels and absolute-form plain HTTP), resolves names itself,
 * refuses forbidden ranges and policy misses before dialling, and dials only the vetted address.
 */
import { chmod, lstat, rename, unlink } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { AppError } from '../errors/errors.ts';
import { defaultConnect, defaultIsForbidden, defaultResolve, type ConnectFn, type IsForbiddenFn, type ResolveFn } from './dial.ts';
import { handleConnect, handleHttpRequest, refuseOnSocket, type EgressLogEvent, type ForwardContext } from './forward.ts';
import { compilePolicy, type EgressPolicy, type EgressRefusalCode } from './policy.ts';
import { parseIp } from './ranges.ts';


export type EgressProxyOptions = {
  /** Unix socket to serve (mode 0600); a stale socket file is removed first. */
  socketPath?: string;
  /** TCP listener, loopback only (tests, local tools); `port: 0` picks a free port. */
  host?: string;
  port?: number;
  policy: EgressPolicy;
  /** Name → addresses; default `dns.lookup(all)`. Every address is vetted; none is re-resolved. */
  resolve?: ResolveFn;
  /** Why an address may not be dialled, or undefined; default: the built-in forbidden ranges and this host's addresses. */
  isForbidden?: IsForbiddenFn;
  /** Opens a TCP connection to a vetted address; default `net.connect`. */
  connect?: ConnectFn;
  log?: (event: EgressLogEvent) => void;
  /** Resolution plus connection, per destination. Default 10 s. */
  connectTimeoutMs?: number;
  /** A client or origin connection with no traffic for this long is closed. Default 5 min. */
  idleTimeoutMs?: number;
  /** Guest connections served at once, per listener. Default 256. */
  maxConnections?: number;
};

export type EgressStats = {
  activeClientConnections: number;
  activeUpstreamConnections: number;
  allowed: number;
  refused: number;
  refusedByCode: Partial<Record<EgressRefusalCode, number>>;
  bytesToOrigins: number;
  bytesFromOrigins: number;
};

export type EgressProxy = {
  socketPath?: string;
  port?: number;
  close(): Promise<void>;
  stats(): EgressStats;
};

const MAX_HEADER_BYTES = 16 * 1024;

function listenOn(server: net.Server, target: string | { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = (): void => { server.off('error', reject); resolve(); };
    if (typeof target === 'string') server.listen(target, done);
    else server.listen(target.port, target.host, done);
  });
}

/** Removes a leftover socket file nobody listens on; refuses to touch anything else. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  const stat = await lstat(socketPath).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (stat === undefined) return;
  if (!stat.isSocket()) throw new AppError('config.invalid', `${socketPath} exists and is not a socket`, { socketPath });
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new AppError('config.invalid', `another process is serving ${socketPath}`, { socketPath });
  await unlink(socketPath).catch(() => {});
}

/**
 * Binds under a temporary name, restricts it to the owner, then renames it into place, so the
 * socket is never reachable with looser permissions.
 */
async function listenOnUnixSocket(server: net.Server, socketPath: string): Promise<void> {
  await removeStaleSocket(socketPath);
  const temporaryPath = `${socketPath}.tmp`;
  await unlink(temporaryPath).catch(() => {});
  await listenOn(server, temporaryPath);
  try {
    await chmod(temporaryPath, 0o600);
    await rename(temporaryPath, socketPath);
  } catch (error) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await unlink(temporaryPath).catch(() => {});
    throw error;
  }
}

export async function startEgressProxy(options: EgressProxyOptions): Promise<EgressProxy> {
  const policy = compilePolicy(options.policy);
  if (options.socketPath === undefined && options.port === undefined) {
    throw new AppError('config.invalid', 'egress proxy needs a socketPath or a port', {});
  }
  const host = options.host ?? '127.0.0.1';
  const hostIp = parseIp(host);
  if (options.port !== undefined && (hostIp === undefined || !isLoopback(hostIp))) {
    throw new AppError('config.invalid', 'the egress proxy listens on TCP only on loopback', { host });
  }
  const idleTimeoutMs = options.idleTimeoutMs ?? 5 * 60_000;

  const stats: EgressStats = {
    activeClientConnections: 0, activeUpstreamConnections: 0, allowed: 0, refused: 0,
    refusedByCode: {}, bytesToOrigins: 0, bytesFromOrigins: 0,
  };
  const openSockets = new Set<net.Socket>();
  const track = (socket: net.Socket, kind: 'client' | 'upstream'): void => {
    openSockets.add(socket);
    if (kind === 'client') stats.activeClientConnections++; else stats.activeUpstreamConnections++;
    socket.once('close', () => {
      openSockets.delete(socket);
      if (kind === 'client') { stats.activeClientConnections--; return; }
      stats.activeUpstreamConnections--;
      stats.bytesToOrigins += socket.bytesWritten;
      stats.bytesFromOrigins += socket.bytesRead;
    });
  };

  const context: ForwardContext = {
    dialOptions: {
      policy,
      resolve: options.resolve ?? defaultResolve,
      connect: options.connect ?? defaultConnect,
      isForbidden: options.isForbidden ?? defaultIsForbidden,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
    },
    idleTimeoutMs,
    record: (event) => {
      if (event.kind === 'allowed') {
        stats.allowed++;
      } else {
        stats.refused++;
        const code = event.reason ?? 'egress.bad_request';
        stats.refusedByCode[code] = (stats.refusedByCode[code] ?? 0) + 1;
      }
      try { options.log?.(event); } catch { /* a failing logger must not take the proxy down */ }
    },
    trackUpstream: (socket) => track(socket, 'upstream'),
  };

  const createServer = (): http.Server => {
    const server = http.createServer({
      maxHeaderSize: MAX_HEADER_BYTES, requestTimeout: 0, headersTimeout: 30_000,
      // The target comes from the absolute-form URL; a missing Host header changes nothing.
      requireHostHeader: false,
    });
    server.timeout = idleTimeoutMs;
    server.maxConnections = options.maxConnections ?? 256;
    server.on('connection', (socket: net.Socket) => track(socket, 'client'));
    server.on('request', (request, response) => handleHttpRequest(context, request, response));
    server.on('connect', (request, socket, head) => handleConnect(context, request, socket as net.Socket, head));
    server.on('upgrade', (_request, socket: net.Socket) => {
      const refusal = { code: 'egress.bad_request', message: 'protocol upgrades are not proxied; use CONNECT' } as const;
      context.record({ kind: 'refused', host: '', port: 0, addresses: [], reason: refusal.code });
      refuseOnSocket(socket, refusal);
    });
    server.on('clientError', (error: NodeJS.ErrnoException, socket: net.Socket) => {
      if (error.code === 'ECONNRESET' || !socket.writable) { socket.destroy(); return; }
      const refusal = { code: 'egress.bad_request', message: `malformed proxy request (${error.code ?? 'parse error'})` } as const;
      context.record({ kind: 'refused', host: '', port: 0, addresses: [], reason: refusal.code });
      refuseOnSocket(socket, refusal);
    });
    return server;
  };

  const servers: http.Server[] = [];
  const proxy: EgressProxy = {
    close: async () => {
      await Promise.all(servers.map((server) => new Promise<void>((resolve) => {
        server.close(() => resolve());
      })).concat([Promise.resolve().then(() => { for (const socket of openSockets) socket.destroy(); })]));
      if (proxy.socketPath !== undefined) await unlink(proxy.socketPath).catch(() => {});
    },
    stats: () => ({ ...stats, refusedByCode: { ...stats.refusedByCode } }),
  };
  try {
    if (options.socketPath !== undefined) {
      const server = createServer();
      servers.push(server);
      await listenOnUnixSocket(server, options.socketPath);
      proxy.socketPath = options.socketPath;
    }
    if (options.port !== undefined) {
      const server = createServer();
      servers.push(server);
      await listenOn(server, { host, port: options.port });
      proxy.port = (server.address() as net.AddressInfo).port;
    }
  } catch (error) {
    await proxy.close();
    throw error;
  }
  return proxy;
}

function isLoopback(ip: NonNullable<ReturnType<typeof parseIp>>): boolean {
  return ip.version === 4 ? ip.bytes[0] === 127 : ip.bytes.every((byte, i) => byte === (i === 15 ? 1 : 0));
}
