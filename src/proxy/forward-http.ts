/**
 * HTTP requests from HTTP/2 clients to the guest's HTTP/1.1 server over kept-alive loopback
 * connections (QEMU's forwarded ports); HTTP/1.1 clients have their own data plane
 * (http1-connection.ts). Bodies stream both ways with backpressure (`pipe`; `pipeline` would cost
 * an AbortController per request) and nothing is buffered. Either side going away destroys the
 * other (the close handlers below).
 */
import http, { type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import http2, { type ServerHttp2Stream } from 'node:http2';
import type { Readable } from 'node:stream';
import type { ConnectGate } from './connect-gate.ts';
import { responseHeadersH2 } from './headers.ts';

/**
 * Kept-alive connections to guest ports, opened through `gate` (one connect at a time per port).
 * Free connections close before the 5 s keep-alive of most servers does, so a reused one is rarely
 * found closed.
 */
export function upstreamAgent(gate: ConnectGate): http.Agent {
  const agent = new http.Agent({ keepAlive: true, timeout: 4000, scheduling: 'lifo' });
  // Node's agent takes a socket handed to this callback later (it connects asynchronously here).
  agent.createConnection = (options, created) => {
    gate.connect({ host: options.host ?? '127.0.0.1', port: Number(options.port) })
      .then((socket) => created?.(null, socket), (error: Error) => created?.(error, undefined as never));
    return undefined;
  };
  return agent;
}

/** Where a guest port is reached on the host (a lease's `hostAddress` and `hostPort`). */
export interface Upstream {
  host: string;
  port: number;
}

interface UpstreamRequest {
  upstream: Upstream;
  method: string;
  path: string;
  headers: OutgoingHttpHeaders;
  /** None: the request may be sent once more when its kept-alive connection turns out closed. */
  body?: Readable;
}

export function forwardFromHttp2(
  agent: http.Agent, upstream: Upstream, stream: ServerHttp2Stream, requestHeaders: IncomingHttpHeaders, withBody: boolean,
  headers: OutgoingHttpHeaders, fail: (error: Error) => void,
): void {
  const request = { upstream, method: String(requestHeaders[':method']), path: String(requestHeaders[':path']), headers, ...(withBody && { body: stream }) };
  const call = callUpstream(agent, request, (upstream) => {
    if (stream.destroyed) {
      upstream.destroy();
      return;
    }
    stream.respond(responseHeadersH2(upstream.statusCode!, upstream.rawHeaders));
    // HEAD, 204 and 304 end the stream with the headers.
    if (stream.writableEnded) {
      upstream.resume();
      return;
    }
    upstream.on('error', () => stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR));
    upstream.pipe(stream);
  }, fail);
  stream.once('close', () => {
    if (!stream.writableFinished) call.cancel();
  });
}

/** One request to the guest; `fail` hears of a failure before or during the response. */
function callUpstream(agent: http.Agent, request: UpstreamRequest, respond: (upstream: IncomingMessage) => void, fail: (error: Error) => void): { cancel(): void } {
  let current: http.ClientRequest;
  let cancelled = false;
  const send = (again: boolean): void => {
    const req = http.request({
      agent, host: request.upstream.host, port: request.upstream.port, method: request.method, path: request.path, headers: request.headers, setHost: false,
    });
    current = req;
    req.once('response', respond);
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (cancelled) return;
      // The guest closed an idle kept-alive connection just as it was reused: nothing was processed.
      if (!again && request.body === undefined && req.reusedSocket && error.code === 'ECONNRESET') send(true);
      else fail(error);
    });
    if (request.body) request.body.pipe(req);
    else req.end();
  };
  send(false);
  return {
    cancel: () => {
      cancelled = true;
      current.destroy();
    },
  };
}
