/**
 * The two things the proxy does for an allowed destination — tunnel a CONNECT, forward a plain
 * HTTP request — and how it says no. Every destination goes through `dial`, which refuses before
 * any connection attempt.
 */
import http from 'node:http';
import type net from 'node:net';
import { dial, type DialOptions } from './dial.ts';
import { egressRefusalStatus, type Refusal } from './policy.ts';
import { forwardableHeaders, parseConnectTarget, parseHttpTarget, type EgressTarget } from './target.ts';

export type EgressLogEvent = {
  kind: 'allowed' | 'refused';
  host: string;
  port: number;
  addresses: string[];
  reason?: Refusal['code'];
};

/** Bytes a guest may send after CONNECT before the tunnel is up; beyond this, reading pauses. */
const MAX_EARLY_BYTES = 64 * 1024;

/** What the handlers share with the server that owns them. */
export type ForwardContext = {
  dialOptions: Omit<DialOptions, 'signal'>;
  idleTimeoutMs: number;
  /** Records the outcome (stats and the caller's log). */
  record: (event: EgressLogEvent) => void;
  /** Tracks an origin socket until it closes (stats, and `close()` destroys what is left). */
  trackUpstream: (socket: net.Socket) => void;
};

function refusalBody(refusal: Refusal): string {
  return `cocoon egress proxy refused: ${refusal.message}\n`;
}

/** Writes a refusal on a raw socket (CONNECT, upgrade and parse errors have no response object). */
export function refuseOnSocket(socket: net.Socket, refusal: Refusal): void {
  if (socket.destroyed || !socket.writable) { socket.destroy(); return; }
  const status = egressRefusalStatus[refusal.code];
  const body = Buffer.from(refusalBody(refusal));
  const head = [
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Error'}`,
    'Content-Type: text/plain; charset=utf-8',
    `Content-Length: ${body.length}`,
    `X-Cocoon-Egress-Refused: ${refusal.code}`,
    'Connection: close',
    '', '',
  ].join('\r\n');
  socket.end(Buffer.concat([Buffer.from(head), body]));
  // The guest may keep sending; do not wait for it to finish before freeing the socket.
  setTimeout(() => socket.destroy(), 1000).unref();
}

function refuseResponse(request: http.IncomingMessage, response: http.ServerResponse, refusal: Refusal): void {
  if (response.writableEnded) return;
  if (response.headersSent) { response.destroy(); return; }
  const body = Buffer.from(refusalBody(refusal));
  // An unread request body would have to be drained before the next request; closing is cheaper.
  const hasBody = request.headers['transfer-encoding'] !== undefined ||
    (request.headers['content-length'] !== undefined && request.headers['content-length'] !== '0');
  response.writeHead(egressRefusalStatus[refusal.code], {
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': body.length,
    'X-Cocoon-Egress-Refused': refusal.code,
    ...(hasBody ? { Connection: 'close' } : {}),
  });
  response.end(body);
}

function refusedEvent(target: Partial<EgressTarget>, refusal: Refusal, addresses: string[] = []): EgressLogEvent {
  return { kind: 'refused', host: target.host ?? '', port: target.port ?? 0, addresses, reason: refusal.code };
}

/** Pipes two sockets into each other until either side ends, fails or idles out. */
function splice(client: net.Socket, upstream: net.Socket, idleTimeoutMs: number): void {
  const destroyBoth = (): void => { client.destroy(); upstream.destroy(); };
  client.on('error', destroyBoth);
  upstream.on('error', destroyBoth);
  client.setTimeout(idleTimeoutMs, destroyBoth);
  upstream.setTimeout(idleTimeoutMs, destroyBoth);
  client.once('close', () => upstream.end());
  upstream.once('close', () => client.end());
  client.pipe(upstream);
  upstream.pipe(client);
}

/** `CONNECT host:port`: vet, dial, answer 200, then splice bytes both ways. */
export function handleConnect(context: ForwardContext, request: http.IncomingMessage, client: net.Socket, head: Buffer): void {
  client.on('error', () => client.destroy());
  const parsed = parseConnectTarget(request.url ?? '');
  if (!parsed.ok) {
    const refusal: Refusal = { code: 'egress.bad_request', message: parsed.message };
    context.record(refusedEvent({}, refusal));
    refuseOnSocket(client, refusal);
    return;
  }
  const target = parsed.value;
  // Keep reading while the destination is vetted: bytes sent early (a TLS ClientHello) are kept,
  // and a guest that gives up is noticed (a paused socket would never report its EOF).
  const early: Buffer[] = head.length > 0 ? [head] : [];
  let earlyBytes = head.length;
  const onEarlyData = (chunk: Buffer): void => {
    early.push(chunk);
    earlyBytes += chunk.length;
    if (earlyBytes > MAX_EARLY_BYTES) client.pause();
  };
  const abort = new AbortController();
  const onGone = (): void => abort.abort();
  client.on('data', onEarlyData);
  client.once('end', onGone);
  client.once('close', onGone);
  client.resume();
  void dial(target, { ...context.dialOptions, signal: abort.signal }).then((outcome) => {
    client.off('data', onEarlyData);
    client.off('end', onGone);
    client.off('close', onGone);
    if (!outcome.ok) {
      if (abort.signal.aborted) { client.destroy(); return; }
      context.record(refusedEvent(target, outcome.refusal, outcome.addresses));
      refuseOnSocket(client, outcome.refusal);
      return;
    }
    const upstream = outcome.socket;
    context.trackUpstream(upstream);
    if (abort.signal.aborted || client.destroyed) { upstream.destroy(); client.destroy(); return; }
    context.record({ kind: 'allowed', host: target.host, port: target.port, addresses: outcome.addresses });
    client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    for (const chunk of early) upstream.write(chunk);
    splice(client, upstream, context.idleTimeoutMs);
  }).catch(() => client.destroy());
}

/** Absolute-form `GET http://host/path`: vet, dial, send the request on, stream the answer back. */
export function handleHttpRequest(context: ForwardContext, request: http.IncomingMessage, response: http.ServerResponse): void {
  const parsed: ReturnType<typeof parseHttpTarget> = request.httpVersionMajor === 1
    ? parseHttpTarget(request.url ?? '')
    : { ok: false, message: `HTTP/${request.httpVersion} is not supported` };
  if (!parsed.ok) {
    const refusal: Refusal = { code: 'egress.bad_request', message: parsed.message };
    context.record(refusedEvent({}, refusal));
    refuseResponse(request, response, refusal);
    return;
  }
  const target = parsed.value;
  const abort = new AbortController();
  const onEarlyClose = (): void => { if (!response.writableEnded) abort.abort(); };
  response.once('close', onEarlyClose);
  void dial(target, { ...context.dialOptions, signal: abort.signal }).then((outcome) => {
    if (!outcome.ok) {
      if (abort.signal.aborted) return;
      context.record(refusedEvent(target, outcome.refusal, outcome.addresses));
      refuseResponse(request, response, outcome.refusal);
      return;
    }
    const upstream = outcome.socket;
    context.trackUpstream(upstream);
    if (abort.signal.aborted) { upstream.destroy(); return; }
    context.record({ kind: 'allowed', host: target.host, port: target.port, addresses: outcome.addresses });
    upstream.setTimeout(context.idleTimeoutMs, () => upstream.destroy());

    const headers = ['Host', target.hostHeader, ...forwardableHeaders(request.rawHeaders)];
    // The body arrives de-chunked; ask Node to chunk it again for the origin.
    if (request.headers['transfer-encoding'] !== undefined) headers.push('Transfer-Encoding', 'chunked');
    const upstreamRequest = http.request({
      createConnection: () => upstream,
      method: request.method ?? 'GET',
      path: target.path,
      headers,
      setHost: false,
    });
    upstreamRequest.on('response', (upstreamResponse) => {
      upstreamResponse.on('error', () => response.destroy());
      upstreamResponse.on('aborted', () => response.destroy());
      try {
        response.writeHead(upstreamResponse.statusCode ?? 502, upstreamResponse.statusMessage, forwardableHeaders(upstreamResponse.rawHeaders));
      } catch (error) {
        upstreamRequest.destroy();
        refuseResponse(request, response, { code: 'egress.connect_failed', message: `unusable origin response: ${(error as Error).message}` });
        return;
      }
      upstreamResponse.pipe(response);
    });
    upstreamRequest.on('error', (error) => {
      refuseResponse(request, response, { code: 'egress.connect_failed', message: `origin failed: ${error.message}` });
    });
    response.once('close', () => { if (!response.writableFinished) upstreamRequest.destroy(); });
    request.pipe(upstreamRequest);
  }).catch(() => response.destroy());
}
