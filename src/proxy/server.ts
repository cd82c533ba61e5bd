/**
 * The endpoint proxy: `https://<microvmId>.<domain>` to the MicroVM's app. One TLS port offers h2
 * and http/1.1 by ALPN; an optional plain-text port takes HTTP/1.1 and prior-knowledge h2c,
 * told apart by the first bytes (the HTTP/2 preface). HTTP/1.1 connections go to the proxy's own
 * data plane (http1-connection.ts: requests, WebSocket upgrades), HTTP/2 ones to one HTTP/2 server
 * (streams, gRPC), and every request meets the same admission: route by host, token check
 * (`X-Cocoon-Auth`, or the WebSocket subprotocol), then the manager's `openForTraffic`
 * (auto-resume, activity). Nothing reaches a guest before all of that passed. The hot path does
 * no I/O besides the forwarding itself.
 */
import http2, { type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import net, { type AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { AppError } from '../errors/errors.ts';
import type { TokenService } from '../tokens/index.ts';
import type { MicroVmManager, TrafficLease } from '../vms/manager.ts';
import { ConnectGate } from './connect-gate.ts';
import { forwardFromHttp2, upstreamAgent, type Upstream } from './forward-http.ts';
import { forwardGrpc, GrpcSessions, isGrpc } from './forward-grpc.ts';
import { AUTH_HEADER, forwardedFor, PORT_HEADER, requestHeaders } from './headers.ts';
import { Http1Connection, type Admission, type Http1Deps } from './http1-connection.ts';
import { problemOf, sendProblemH2, upstreamFailed, type Problem } from './problems.ts';
import { destinationOf, requestedPort, type Destination } from './routing.ts';

export interface EndpointProxyOptions {
  domain: string;
  microvms: Pick<MicroVmManager, 'openForTraffic' | 'openForTrafficNow'>;
  tokens: Pick<TokenService, 'authorize' | 'authorizeNow'>;
  tls: { cert: string; key: string };
  /** How long a request waits for an auto-resume. Default: the manager's. */
  resumeTimeoutMs?: number;
  log?: (line: string) => void;
}

const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
/** A plain-text client must say something within this time. */
const FIRST_BYTES_TIMEOUT_MS = 30_000;
const { NGHTTP2_FLAG_END_STREAM } = http2.constants;
const ignore = (): void => {};

export class EndpointProxy {
  private readonly http2: http2.Http2Server;
  private readonly tlsServer: tls.Server;
  private plainServer: net.Server | undefined;
  private readonly gate = new ConnectGate();
  private readonly agent = upstreamAgent(this.gate);
  private readonly grpc = new GrpcSessions();
  private readonly sockets = new Set<Duplex>();
  private readonly http1: Http1Deps = {
    gate: this.gate,
    admit: (host, port, token) => this.admit(host, port, token),
    log: (line) => this.log(line),
  };

  constructor(private readonly options: EndpointProxyOptions) {
    // nghttp2's default 10 MB per session is too little for many concurrent streams.
    this.http2 = http2.createServer({ maxSessionMemory: 64 });
    this.http2.on('stream', (stream, headers, flags) => void this.onStream(stream, headers, flags));
    this.http2.on('sessionError', ignore);
    this.tlsServer = tls.createServer({
      cert: options.tls.cert, key: options.tls.key, ALPNProtocols: ['h2', 'http/1.1'],
      // A client may finish sending before its answer came (HTTP/1.1 allows it): the answer still goes.
      allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000,
    }, (socket) => {
      this.track(socket);
      if (socket.alpnProtocol === 'h2') this.http2.emit('connection', socket);
      else new Http1Connection(socket, this.http1);
    });
    this.tlsServer.on('tlsClientError', ignore);
  }

  /** Listens on `host` (default loopback); port 0 picks a free one. Returns the ports in use. */
  async listen(ports: { port: number; h2cPort?: number; host?: string }): Promise<{ port: number; h2cPort?: number }> {
    const host = ports.host ?? '127.0.0.1';
    const port = await listenOn(this.tlsServer, ports.port, host);
    if (ports.h2cPort === undefined) return { port };
    this.plainServer = net.createServer({ allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 }, (socket) => this.onPlainConnection(socket));
    return { port, h2cPort: await listenOn(this.plainServer, ports.h2cPort, host) };
  }

  /** Stops listening and cuts every open connection (WebSockets and streams included). */
  async close(): Promise<void> {
    const closed = [this.tlsServer, this.plainServer].filter((server) => server?.listening)
      .map((server) => new Promise<void>((resolve) => server!.close(() => resolve())));
    for (const socket of this.sockets) socket.destroy();
    this.grpc.closeAll();
    this.agent.destroy();
    await Promise.all(closed);
  }

  // --- HTTP/2 streams (HTTP/1.1 has its own data plane: http1-connection.ts) ---

  private async onStream(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number): Promise<void> {
    stream.on('error', ignore);
    const grpc = isGrpc(headers);
    const authority = headers[':authority'] ?? headers.host;
    const admission = await this.admit(authority, single(headers[PORT_HEADER]), single(headers[AUTH_HEADER]));
    if ('problem' in admission) {
      sendProblemH2(stream, admission.problem, grpc);
      return;
    }
    const { lease, microvmId } = admission;
    if (stream.destroyed) return lease.release();
    stream.once('close', lease.release);
    const forwarded = forwardedFor(stream.session?.socket, authority);
    const withBody = (flags & NGHTTP2_FLAG_END_STREAM) === 0;
    const fail = (error: Error): void => {
      this.log(`${microvmId}: guest port ${lease.guestPort} failed: ${error.message}`);
      sendProblemH2(stream, upstreamFailed(), grpc);
    };
    if (grpc) forwardGrpc(this.grpc.sessionFor(upstreamOf(lease), lease.closed), stream, requestHeaders(headers, forwarded, 'h2c'), withBody, fail);
    else forwardFromHttp2(this.agent, upstreamOf(lease), stream, headers, withBody, requestHeaders(headers, forwarded, 'http1'), fail);
  }

  // --- admission ---

  /**
   * Routing, the token check and a lease: at once when the VM is RUNNING and its token was seen
   * before (the usual case: no promise, no await), else after the manager's lookups, a resume or
   * jose's decryption. The port from the host name wins over the header (or subprotocol); the
   * token is checked with the port finally chosen.
   */
  private admit(host: string | undefined, portRequested: string | undefined, token: string | undefined): Admission | Promise<Admission> {
    let microvmId: string | undefined;
    try {
      const destination = this.destinationOf(host);
      const vm = destination.microvmId;
      microvmId = vm;
      const guestPort = destination.guestPort ?? requestedPort(portRequested, 'X-Cocoon-Port (or the subprotocol cocoon.port.<n>)');
      const lease = this.options.microvms.openForTrafficNow(vm, guestPort, (port) => this.options.tokens.authorizeNow(token, vm, port));
      return lease ? { lease, microvmId: vm } : this.admitLater(vm, guestPort, token);
    } catch (error) {
      return { problem: this.refusal(error, microvmId) };
    }
  }

  private async admitLater(microvmId: string, guestPort: number | undefined, token: string | undefined): Promise<Admission> {
    try {
      const lease = await this.options.microvms.openForTraffic(microvmId, guestPort, {
        authorize: async (port) => {
          await this.options.tokens.authorize(token, microvmId, port);
        },
        ...(this.options.resumeTimeoutMs !== undefined && { resumeTimeoutMs: this.options.resumeTimeoutMs }),
      });
      return { lease, microvmId };
    } catch (error) {
      return { problem: this.refusal(error, microvmId) };
    }
  }

  private destinationOf(host: string | undefined): Destination {
    const destination = destinationOf(host, this.options.domain);
    if (!destination) {
      const shown = host === undefined ? 'a request without a host' : JSON.stringify(host.slice(0, 200));
      throw new AppError('proxy.unknown_host', `${shown} is not a MicroVM endpoint (https://<microvmId>.${this.options.domain})`);
    }
    return destination;
  }

  private refusal(error: unknown, microvmId: string | undefined): Problem {
    const problem = problemOf(error);
    if (problem.logged) this.log(`${microvmId ?? 'proxy'}: answered ${problem.code}: ${error instanceof Error ? error.message : String(error)}`);
    return problem;
  }

  // --- connections ---

  /** Plain text: the HTTP/2 preface means h2c (prior knowledge); anything else is HTTP/1.1. */
  private onPlainConnection(socket: net.Socket): void {
    this.track(socket);
    socket.on('error', ignore);
    // Silence, or an end, before the first bytes told which protocol this is.
    const giveUp = (): void => {
      socket.destroy();
    };
    socket.setTimeout(FIRST_BYTES_TIMEOUT_MS);
    socket.on('timeout', giveUp).on('end', giveUp);
    let seen: Buffer = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
      const compared = Math.min(seen.length, H2_PREFACE.length);
      const isH2 = seen.subarray(0, compared).equals(H2_PREFACE.subarray(0, compared));
      if (isH2 && seen.length < H2_PREFACE.length) return;
      socket.off('data', onData).off('timeout', giveUp).off('end', giveUp);
      socket.setTimeout(0);
      if (!isH2) {
        new Http1Connection(socket, this.http1, seen);
        return;
      }
      socket.pause();
      socket.unshift(seen);
      this.http2.emit('connection', socket);
      // After the server took the socket: it first reads what was unshifted (on the next tick),
      // and does not resume an explicit pause.
      process.nextTick(() => socket.resume());
    };
    socket.on('data', onData);
  }

  private track(socket: Duplex): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  private log(line: string): void {
    this.options.log?.(`proxy: ${line}`);
  }
}

function upstreamOf(lease: TrafficLease): Upstream {
  return { host: lease.hostAddress, port: lease.hostPort };
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function listenOn(server: net.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}
