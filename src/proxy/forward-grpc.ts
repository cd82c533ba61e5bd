/**
 * gRPC (and any `application/grpc*` request over HTTP/2) to the guest over plain-text HTTP/2:
 * one client session per guest port, reused by every call, closed on error and when the VM
 * leaves RUNNING. Messages stream both ways with HTTP/2 flow control as the backpressure;
 * response trailers (grpc-status, grpc-message, custom metadata) are forwarded as trailers, and
 * trailers-only responses stay trailers-only. A cancelled call is cancelled upstream.
 */
import http2, { type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import type { Upstream } from './forward-http.ts';

/** An unused connection to a guest closes after this; the next call opens another. */
const SESSION_IDLE_MS = 60_000;
const { NGHTTP2_CANCEL, NGHTTP2_FLAG_END_STREAM, NGHTTP2_INTERNAL_ERROR, NGHTTP2_NO_ERROR } = http2.constants;

export function isGrpc(headers: IncomingHttpHeaders): boolean {
  const type = headers['content-type'];
  // grpc-web is plain HTTP: it goes to the guest's HTTP/1.1 server like any request.
  return type !== undefined && type.startsWith('application/grpc') && !type.startsWith('application/grpc-web');
}

export class GrpcSessions {
  /** By `host:port`: VMs in network namespaces share port numbers on different addresses. */
  private readonly sessions = new Map<string, ClientHttp2Session>();

  /** The session to the guest port behind `upstream`; `closed` aborts when the VM stops. */
  sessionFor(upstream: Upstream, closed: AbortSignal): ClientHttp2Session {
    const key = `${upstream.host}:${upstream.port}`;
    const existing = this.sessions.get(key);
    if (existing && !existing.closed && !existing.destroyed) return existing;
    const session = http2.connect(`http://${key}`, { maxSessionMemory: 64 });
    this.sessions.set(key, session);
    const forget = (): void => {
      if (this.sessions.get(key) === session) this.sessions.delete(key);
    };
    const onClosed = (): void => session.close();
    session.on('close', () => {
      forget();
      closed.removeEventListener('abort', onClosed);
    });
    session.on('goaway', forget);
    // Each call's stream reports its own failure; the session just goes.
    session.on('error', forget);
    session.setTimeout(SESSION_IDLE_MS, () => session.close());
    closed.addEventListener('abort', onClosed, { once: true });
    return session;
  }

  closeAll(): void {
    for (const session of this.sessions.values()) session.destroy();
    this.sessions.clear();
  }
}

export function forwardGrpc(session: ClientHttp2Session, stream: ServerHttp2Stream, headers: OutgoingHttpHeaders, withBody: boolean, fail: (error: Error) => void): void {
  let upstream: http2.ClientHttp2Stream;
  try {
    upstream = session.request(headers, { endStream: !withBody });
  } catch (error) {
    fail(error as Error);
    return;
  }
  if (withBody) stream.pipe(upstream);
  let state: 'waiting' | 'responded' | 'failed' = 'waiting';
  let trailers: IncomingHttpHeaders | undefined;
  upstream.once('response', (responseHeaders, flags) => {
    if (state !== 'waiting' || stream.destroyed) return;
    state = 'responded';
    if (flags & NGHTTP2_FLAG_END_STREAM) {
      stream.respond(responseHeaders, { endStream: true });
      return;
    }
    stream.respond(responseHeaders, { waitForTrailers: true });
    upstream.pipe(stream);
  });
  upstream.once('trailers', (received) => {
    trailers = received;
  });
  stream.once('wantTrailers', () => {
    if (trailers) stream.sendTrailers(trailers);
    else stream.close();
  });
  // Before the response: the client gets an UNAVAILABLE answer; after it: the reset, passed on.
  const failure = (error: Error): void => {
    if (state === 'waiting') {
      state = 'failed';
      fail(error);
    } else if (state === 'responded' && !stream.destroyed) {
      stream.close(upstream.rstCode || NGHTTP2_INTERNAL_ERROR);
    }
  };
  upstream.on('error', failure);
  upstream.once('close', () => {
    if (upstream.rstCode !== NGHTTP2_NO_ERROR) failure(new Error(`the guest reset the stream (HTTP/2 error ${upstream.rstCode})`));
  });
  stream.once('close', () => {
    if (!upstream.closed) upstream.close(NGHTTP2_CANCEL);
  });
}
