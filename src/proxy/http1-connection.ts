/**
 * The proxy's HTTP/1.1 data plane: one of these per client connection (TLS that chose http/1.1 by
 * ALPN, or the plain-text port). Node's HTTP server and client spent ~250 µs of CPU per proxied
 * request here, mostly building per-request objects, and with two cores shared by TCG guests CPU
 * per request is throughput. This reads request heads itself (strictly: http1-parse.ts), admits
 * each request as every other kind of traffic is admitted, and relays bodies both ways as bytes,
 * following their framing only to know where each message ends.
 *
 * One request at a time per client connection (pipelined ones wait their turn, read ahead up to a
 * bound), over at most one connection to a guest port, kept while the client keeps asking for
 * the same MicroVM and port. Nothing reaches the guest before admission; nothing from the guest
 * reaches the client but the response to the request in flight: a guest that sends more than
 * that loses its connection.
 */
import type net from 'node:net';
import { AppError } from '../errors/errors.ts';
import type { TrafficLease } from '../vms/manager.ts';
import type { ConnectGate } from './connect-gate.ts';
import { AUTH_HEADER, forwardedFor, offeredProtocols, PORT_HEADER, requestHeadH1, responseHeadH1, type OfferedProtocols } from './headers.ts';
import {
  BodyCursor, MalformedMessage, parseRequestHead, parseResponseHead, requestFraming, responseFraming, tokensOf, valuesOf, type RequestHead,
} from './http1-parse.ts';
import { problemOf, problemResponseH1, upstreamFailed, type Problem } from './problems.ts';

/** The outcome of routing, the token check and the lease for one request. */
export type Admission = { lease: TrafficLease; microvmId: string } | { problem: Problem };

export interface Http1Deps {
  gate: ConnectGate;
  admit(host: string | undefined, port: string | undefined, token: string | undefined): Admission | Promise<Admission>;
  log(line: string): void;
  /** How long a request head may take from its first byte; default HEAD_TIMEOUT_MS. */
  headTimeoutMs?: number;
}

/** As much as nginx takes by default (4 × 8 KiB). */
const MAX_REQUEST_HEAD = 32 * 1024;
const MAX_RESPONSE_HEAD = 64 * 1024;
/** Client bytes read ahead of the request in flight (pipelined requests) before reading stops. */
const MAX_READ_AHEAD = 64 * 1024;
/** Kept-alive client connections stay a minute without traffic, as most load balancers expect. */
const IDLE_TIMEOUT_MS = 65_000;
/** A head trickled in byte by byte must still be whole within a minute, as Node's HTTP server requires. */
const HEAD_TIMEOUT_MS = 60_000;
/**
 * Past this many bytes a response body is bulk: QEMU hands it over in pieces of ~2 KiB, one read
 * each, and a TLS record and a system call per piece cost the proxy 3× nginx's CPU per MB. Bulk
 * bytes leave in batches of BATCH_BYTES, or after BATCH_MS when fewer came (SSE and other slow
 * streams stay below the threshold for long, and a millisecond is unnoticeable after it).
 */
const BULK_AFTER_BYTES = 256 * 1024;
const BATCH_BYTES = 16 * 1024;
const BATCH_MS = 1;
/** Up to this size, a response's first body bytes are copied behind its head to leave in one write. */
const ONE_WRITE_BYTES = 16 * 1024;
const EMPTY = Buffer.alloc(0);
const CONTINUE = 'HTTP/1.1 100 Continue\r\n\r\n';
const ignore = (): void => {};

/** One request and its response. */
class Exchange {
  readonly requestBody: BodyCursor;
  lease: TrafficLease | undefined;
  microvmId = '';
  upstream: net.Socket | undefined;
  /** `upstream` was kept from an earlier request (it may have been closed by the guest meanwhile). */
  reused = false;
  retried = false;
  /** The head went to the guest and the body is still being relayed. */
  sending = false;
  upstreamFull = false;
  /** Bytes of the guest's response head(s) so far. */
  responseHead: Buffer = EMPTY;
  responseBody: BodyCursor | undefined;
  relayedBytes = 0;
  received = false;
  responded = false;
  tunnel = false;
  keepUpstream = true;

  constructor(readonly head: RequestHead, readonly host: string | undefined, readonly upgrade: OfferedProtocols | undefined, public closeAfter: boolean) {
    this.requestBody = new BodyCursor(requestFraming(head));
  }
}

export class Http1Connection {
  /** Client bytes not yet consumed. */
  private pending: Buffer;
  private exchange: Exchange | undefined;
  /** The connection to a guest port kept from the last request, by `host:port`. */
  private kept: { socket: net.Socket; key: string } | undefined;
  private clientEnded = false;
  private paused = false;
  private over = false;
  /** Set while bulk response bytes are held (the client socket corked). */
  private batchTimer: NodeJS.Timeout | undefined;
  /** Set while a request head has begun to arrive but is not whole. */
  private headTimer: NodeJS.Timeout | undefined;

  constructor(private readonly client: net.Socket, private readonly deps: Http1Deps, initial: Buffer = EMPTY) {
    this.pending = initial;
    client.on('data', (chunk: Buffer) => this.onClientData(chunk));
    client.on('end', () => this.onClientEnd());
    client.on('close', () => this.onClientClose());
    client.on('error', ignore);
    // Always armed (each read and write rearms it): only an idle connection is closed for it.
    client.setTimeout(IDLE_TIMEOUT_MS, () => {
      if (!this.exchange) client.destroy();
    });
    if (initial.length > 0) this.next();
  }

  // --- from the client ---

  private onClientData(chunk: Buffer): void {
    if (this.over) return;
    const exchange = this.exchange;
    if (exchange?.tunnel) {
      this.relay(chunk, exchange.upstream!, this.client);
    } else if (exchange?.sending && this.pending.length === 0) {
      this.sendBody(exchange, chunk);
    } else {
      this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
      this.next();
    }
  }

  /** Moves on with what the client sent: the body of the request in flight, or the next request. */
  private next(): void {
    if (this.over) return;
    const exchange = this.exchange;
    if (exchange) {
      if (exchange.sending && this.pending.length > 0) {
        const bytes = this.pending;
        this.pending = EMPTY;
        this.sendBody(exchange, bytes);
      } else {
        this.updateReading();
      }
      return;
    }
    let head: RequestHead | undefined;
    try {
      head = this.pending.length === 0 ? undefined : parseRequestHead(this.pending, MAX_REQUEST_HEAD);
    } catch (error) {
      this.refuseMalformed(error);
      return;
    }
    if (!head) {
      if (this.clientEnded) this.client.end();
      else this.updateReading();
      if (this.pending.length > 0) this.headTimer ??= setTimeout(() => this.client.destroy(), this.deps.headTimeoutMs ?? HEAD_TIMEOUT_MS);
      return;
    }
    clearTimeout(this.headTimer);
    this.headTimer = undefined;
    this.pending = this.pending.subarray(head.length);
    this.begin(head);
  }

  private begin(head: RequestHead): void {
    const hosts = valuesOf(head.fields, 'host');
    const { connection } = head;
    const websocket = connection.includes('upgrade') && tokensOf(head.fields, 'upgrade').includes('websocket');
    const upgrade = websocket ? offeredProtocols(valuesOf(head.fields, 'sec-websocket-protocol')) : undefined;
    let exchange: Exchange;
    try {
      if (hosts.length > 1) throw new MalformedMessage('more than one Host header');
      if (head.method === 'CONNECT') throw new MalformedMessage('CONNECT is not served by MicroVM endpoints');
      // HTTP/1.0 clients, and refused or declined upgrades, get one answer per connection.
      exchange = new Exchange(head, hosts[0], upgrade, head.minor === 0 || connection.includes('close') || websocket || this.clientEnded);
    } catch (error) {
      this.refuseMalformed(error);
      return;
    }
    this.exchange = exchange;
    const port = valuesOf(head.fields, PORT_HEADER)[0] ?? upgrade?.port;
    const token = valuesOf(head.fields, AUTH_HEADER)[0] ?? upgrade?.token;
    const admission = this.deps.admit(exchange.host, port, token);
    if (admission instanceof Promise) admission.then((later) => this.admitted(exchange, later)).catch(this.failed);
    else this.admitted(exchange, admission);
    this.updateReading();
  }

  private admitted(exchange: Exchange, admission: Admission): void {
    if (this.exchange !== exchange) {
      if ('lease' in admission) admission.lease.release();
      return;
    }
    if ('problem' in admission) {
      this.answer(exchange, admission.problem);
      return;
    }
    exchange.lease = admission.lease;
    exchange.microvmId = admission.microvmId;
    this.connect(exchange);
  }

  private sendBody(exchange: Exchange, chunk: Buffer): void {
    let end: number;
    try {
      end = exchange.requestBody.take(chunk);
    } catch (error) {
      this.deps.log(`${exchange.microvmId}: ended a client connection: ${(error as Error).message}`);
      this.client.destroy();
      return;
    }
    const upstream = exchange.upstream!;
    if (end > 0 && !upstream.write(end === chunk.length ? chunk : chunk.subarray(0, end)) && !exchange.upstreamFull) {
      exchange.upstreamFull = true;
      upstream.once('drain', () => {
        exchange.upstreamFull = false;
        this.updateReading();
      });
    }
    if (end < chunk.length) this.pending = chunk.subarray(end);
    if (exchange.requestBody.done) exchange.sending = false;
    this.updateReading();
  }

  private onClientEnd(): void {
    this.clientEnded = true;
    const exchange = this.exchange;
    if (exchange?.tunnel) exchange.upstream!.end();
    // A request whose body was cut short cannot be answered.
    else if (exchange && !exchange.requestBody.done) this.client.destroy();
    else if (exchange) exchange.closeAfter = true;
    else this.next();
  }

  private onClientClose(): void {
    this.over = true;
    clearTimeout(this.batchTimer);
    clearTimeout(this.headTimer);
    const exchange = this.exchange;
    this.exchange = undefined;
    exchange?.lease?.release();
    exchange?.upstream?.destroy();
    this.kept?.socket.destroy();
    this.kept = undefined;
  }

  /** Reads from the client while there is room: the guest takes the body, or the read-ahead is not full. */
  private updateReading(): void {
    const exchange = this.exchange;
    const wanted = exchange?.sending ? !exchange.upstreamFull : this.pending.length < MAX_READ_AHEAD;
    if (wanted && this.paused) this.client.resume();
    else if (!wanted && !this.paused) this.client.pause();
    this.paused = !wanted;
  }

  // --- to the guest ---

  private connect(exchange: Exchange): void {
    const lease = exchange.lease!;
    const key = `${lease.hostAddress}:${lease.hostPort}`;
    if (this.kept?.key === key && !this.kept.socket.destroyed) {
      exchange.reused = true;
      this.send(exchange, this.kept.socket);
      return;
    }
    this.kept?.socket.destroy();
    this.kept = undefined;
    this.deps.gate.connect({ host: lease.hostAddress, port: lease.hostPort }).then((socket) => {
      if (this.exchange !== exchange) {
        socket.destroy();
        return;
      }
      this.keep(socket, key, lease.closed);
      this.send(exchange, socket);
    }, (error: Error) => {
      if (this.exchange === exchange) this.upstreamFailed(exchange, error);
    }).catch(this.failed);
  }

  private keep(socket: net.Socket, key: string, vmLeft: AbortSignal): void {
    // A kept connection closes when its VM leaves RUNNING; one in use ends with the VM anyway.
    const onVmLeft = (): void => {
      if (this.exchange?.upstream !== socket) socket.destroy();
    };
    vmLeft.addEventListener('abort', onVmLeft, { once: true });
    socket.on('data', (chunk: Buffer) => this.onUpstreamData(socket, chunk));
    socket.on('error', ignore);
    socket.on('close', () => {
      vmLeft.removeEventListener('abort', onVmLeft);
      this.onUpstreamClose(socket);
    });
    this.kept = { socket, key };
  }

  private send(exchange: Exchange, upstream: net.Socket): void {
    exchange.upstream = upstream;
    upstream.write(requestHeadH1(exchange.head, forwardedFor(this.client, exchange.host), { close: exchange.closeAfter, ...(exchange.upgrade && { upgrade: exchange.upgrade }) }), 'latin1');
    if (!exchange.requestBody.done) {
      // The proxy answers the expectation itself: the request was admitted, the guest is there.
      if (exchange.head.minor === 1 && !exchange.retried && tokensOf(exchange.head.fields, 'expect').includes('100-continue')) this.client.write(CONTINUE);
      exchange.sending = true;
    }
    this.next();
  }

  // --- from the guest ---

  private onUpstreamData(upstream: net.Socket, chunk: Buffer): void {
    const exchange = this.exchange;
    if (!exchange || exchange.upstream !== upstream) {
      upstream.destroy();
      return;
    }
    if (exchange.tunnel) {
      this.relay(chunk, this.client, upstream);
      return;
    }
    exchange.received = true;
    if (exchange.responseBody) {
      this.relayResponse(exchange, upstream, chunk);
      return;
    }
    const final = this.responseHead(exchange, chunk);
    if (final) this.relayResponse(exchange, upstream, final.rest, final.head);
  }

  /**
   * Reads the guest's response head(s): interim 1xx ones are passed on (to HTTP/1.1 clients), a 101
   * opens the tunnel. Returns the final head for the client and the bytes after it, or undefined
   * when there is nothing more to do with this chunk.
   */
  private responseHead(exchange: Exchange, chunk: Buffer): { head: string; rest: Buffer } | undefined {
    let bytes = exchange.responseHead.length === 0 ? chunk : Buffer.concat([exchange.responseHead, chunk]);
    for (;;) {
      try {
        const head = parseResponseHead(bytes, MAX_RESPONSE_HEAD);
        if (!head) {
          exchange.responseHead = bytes;
          return undefined;
        }
        bytes = bytes.subarray(head.length);
        if (head.status === 101) {
          if (!exchange.upgrade) throw new MalformedMessage('101 Switching Protocols to a request that asked for no upgrade');
          this.openTunnel(exchange, responseHeadH1(head, { close: false, ...(exchange.upgrade.fallback !== undefined && { fallbackProtocol: exchange.upgrade.fallback }) }), bytes);
          return undefined;
        }
        if (head.status < 200) {
          if (exchange.head.minor === 1) this.client.write(responseHeadH1(head, { close: false }), 'latin1');
          continue;
        }
        const framing = responseFraming(head, exchange.head.method);
        // A body that ends with the connection: the client learns its end the same way.
        if (framing.kind === 'close') exchange.closeAfter = true;
        if (head.minor === 0 ? !head.connection.includes('keep-alive') : head.connection.includes('close')) exchange.keepUpstream = false;
        exchange.responseHead = EMPTY;
        exchange.responseBody = new BodyCursor(framing);
        exchange.responded = true;
        return { head: responseHeadH1(head, { close: exchange.closeAfter }), rest: bytes };
      } catch (error) {
        this.upstreamFailed(exchange, error as Error);
        return undefined;
      }
    }
  }

  /** Relays the response's bytes in `chunk`, after its `head` when that has yet to go. */
  private relayResponse(exchange: Exchange, upstream: net.Socket, chunk: Buffer, head?: string): void {
    const body = exchange.responseBody!;
    let end: number;
    try {
      end = body.take(chunk);
    } catch (error) {
      // Mid-response: only cutting it short tells the client.
      this.deps.log(`${exchange.microvmId}: guest port ${exchange.lease!.guestPort} sent a malformed body: ${(error as Error).message}`);
      this.client.destroy();
      return;
    }
    const bytes = end === chunk.length ? chunk : chunk.subarray(0, end);
    if (head === undefined) {
      exchange.relayedBytes += bytes.length;
      if (exchange.relayedBytes > BULK_AFTER_BYTES) this.holdForBatch();
      if (bytes.length > 0) this.relay(bytes, this.client, upstream);
      if (this.client.writableLength >= BATCH_BYTES) this.sendBatch();
    } else if (bytes.length <= ONE_WRITE_BYTES) {
      // Head and body in one write: one TLS record, one system call.
      const out = Buffer.allocUnsafe(head.length + bytes.length);
      out.write(head, 'latin1');
      bytes.copy(out, head.length);
      this.relay(out, this.client, upstream);
    } else {
      this.client.write(head, 'latin1');
      this.relay(bytes, this.client, upstream);
    }
    // Bytes past the response's end: the guest is out of step with its own framing.
    if (end < chunk.length) exchange.keepUpstream = false;
    if (body.done) this.finish(exchange);
  }

  private onUpstreamClose(upstream: net.Socket): void {
    if (this.kept?.socket === upstream) this.kept = undefined;
    const exchange = this.exchange;
    if (!exchange || exchange.upstream !== upstream) return;
    if (exchange.tunnel) {
      this.client.end();
    } else if (exchange.responseBody?.untilClose) {
      this.finish(exchange);
    } else if (exchange.responseBody) {
      this.client.destroy();
    } else if (exchange.reused && !exchange.received && !exchange.retried && exchange.requestBody.done && !exchange.upgrade) {
      // The guest closed an idle kept connection just as it was reused: the request was not processed.
      exchange.retried = true;
      exchange.reused = false;
      exchange.upstream = undefined;
      this.connect(exchange);
    } else {
      this.upstreamFailed(exchange, new Error('the connection closed before a response'));
    }
  }

  private openTunnel(exchange: Exchange, head: string, rest: Buffer): void {
    const upstream = exchange.upstream!;
    exchange.tunnel = true;
    exchange.responded = true;
    // The connection now belongs to the tunnel: the client's connection ends with it.
    if (this.kept?.socket === upstream) this.kept = undefined;
    upstream.setTimeout(0);
    this.client.write(head, 'latin1');
    if (rest.length > 0) this.relay(rest, this.client, upstream);
    if (this.pending.length > 0) this.relay(this.pending, upstream, this.client);
    this.pending = EMPTY;
    if (this.paused) this.client.resume();
    this.paused = false;
  }

  // --- the end of an exchange ---

  /** The proxy's own answer to the request in flight. */
  private answer(exchange: Exchange, problem: Problem): void {
    // A body not read leaves the connection out of step: it ends after the answer.
    if (!exchange.requestBody.done) exchange.closeAfter = true;
    exchange.responded = true;
    this.client.write(problemResponseH1(problem, { close: exchange.closeAfter, withBody: exchange.head.method !== 'HEAD' }));
    this.finish(exchange);
  }

  private upstreamFailed(exchange: Exchange, error: Error): void {
    this.deps.log(`${exchange.microvmId}: guest port ${exchange.lease?.guestPort} failed: ${error.message}`);
    exchange.keepUpstream = false;
    if (exchange.responded) this.client.destroy();
    else this.answer(exchange, upstreamFailed());
  }

  private finish(exchange: Exchange): void {
    if (this.exchange !== exchange) return;
    this.sendBatch();
    this.exchange = undefined;
    exchange.lease?.release();
    // A guest that answered before the whole body arrived would read the rest as a new request.
    if (!exchange.requestBody.done) exchange.closeAfter = true;
    if ((!exchange.keepUpstream || exchange.closeAfter) && exchange.upstream) {
      if (this.kept?.socket === exchange.upstream) this.kept = undefined;
      exchange.upstream.destroy();
    }
    if (exchange.closeAfter) {
      this.over = true;
      this.client.end();
      return;
    }
    // Pipelined requests answered at once (refusals) must not nest a call per request.
    if (this.pending.length > 0) process.nextTick(() => this.next());
    else this.next();
  }

  /** A request the parser refused gets its answer and the connection ends; anything else thrown is a bug. */
  private refuseMalformed(error: unknown): void {
    if (!(error instanceof MalformedMessage)) {
      this.failed(error as Error);
      return;
    }
    this.over = true;
    this.pending = EMPTY;
    const problem = problemOf(new AppError(error.tooLarge ? 'request.headers_too_large' : 'request.invalid', error.message));
    this.client.end(problemResponseH1(problem, { close: true, withBody: true }));
  }

  private holdForBatch(): void {
    if (this.batchTimer) return;
    this.client.cork();
    this.batchTimer = setTimeout(this.sendBatch, BATCH_MS);
  }

  private readonly sendBatch = (): void => {
    if (!this.batchTimer) return;
    clearTimeout(this.batchTimer);
    this.batchTimer = undefined;
    this.client.uncork();
  };

  /** A bug must not take the whole proxy down: the connection goes, the log says why. */
  private readonly failed = (error: Error): void => {
    this.deps.log(`HTTP/1.1 connection failed: ${error.stack ?? error.message}`);
    this.client.destroy();
  };

  /** Bytes from one side to the other, with backpressure. */
  private relay(chunk: Buffer, to: net.Socket, from: net.Socket): void {
    if (to.write(chunk) || from.isPaused()) return;
    from.pause();
    to.once('drain', () => from.resume());
  }
}
