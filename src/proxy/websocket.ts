/**
 * WebSocket (and any HTTP/1.1 upgrade) to the guest: the upgrade request goes to the guest on a
 * connection of its own; on its 101 the two sockets are piped to each other, byte for byte (no
 * frame parsing). A guest that declines the upgrade has its answer passed on, then the connection
 * closes. When the client offered only cocoon.* subprotocols, the guest saw none and answers with
 * none, but browsers insist on one of theirs: the proxy adds its `fallback`.
 */
import http, { STATUS_CODES, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import type { Duplex } from 'node:stream';
import type { ConnectGate } from './connect-gate.ts';
import type { Upstream } from './forward-http.ts';
import type { OfferedProtocols } from './headers.ts';

/** Cut from the guest's answer when the proxy closes the connection after it. */
const FRAMING = new Set(['connection', 'keep-alive', 'transfer-encoding']);

export function forwardUpgrade(
  gate: ConnectGate, target: Upstream, req: IncomingMessage, socket: Duplex, head: Buffer, headers: OutgoingHttpHeaders, offered: OfferedProtocols,
  fail: (error: Error) => void,
): void {
  const upstreamReq = http.request({
    // No agent: with `createConnection` the request takes the gate's socket and keeps it to itself.
    method: req.method, path: req.url, headers, setHost: false,
    createConnection: (_options, created) => {
      gate.connect(target).then((connection) => created(null, connection), (error: Error) => created(error, undefined as never));
      return undefined;
    },
  });
  let settled = false;
  socket.once('close', () => {
    if (!settled) upstreamReq.destroy();
  });
  upstreamReq.once('upgrade', (response, upstream, upstreamHead) => {
    settled = true;
    if (socket.destroyed) {
      upstream.destroy();
      return;
    }
    const raw = [...response.rawHeaders];
    if (offered.fallback !== undefined && response.headers['sec-websocket-protocol'] === undefined) raw.push('Sec-WebSocket-Protocol', offered.fallback);
    socket.write(statusLine(response) + headerLines(raw) + '\r\n');
    if (upstreamHead.length > 0) socket.write(upstreamHead);
    if (head.length > 0) upstream.write(head);
    upstream.setNoDelay(true);
    // Either side ending or failing ends both: a tunnel has no half-open use here.
    const close = (): void => {
      socket.destroy();
      upstream.destroy();
    };
    socket.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
    socket.pipe(upstream);
    upstream.pipe(socket);
  });
  upstreamReq.once('response', (response) => {
    settled = true;
    const raw: string[] = [];
    for (let i = 0; i < response.rawHeaders.length; i += 2) {
      if (!FRAMING.has(response.rawHeaders[i]!.toLowerCase())) raw.push(response.rawHeaders[i]!, response.rawHeaders[i + 1]!);
    }
    socket.write(statusLine(response) + headerLines([...raw, 'Connection', 'close']) + '\r\n');
    response.pipe(socket);
  });
  upstreamReq.once('error', (error) => {
    if (!settled) fail(error);
    settled = true;
  });
  upstreamReq.end();
}

function statusLine(response: IncomingMessage): string {
  return `HTTP/1.1 ${response.statusCode} ${response.statusMessage || STATUS_CODES[response.statusCode!] || ''}\r\n`;
}

function headerLines(raw: readonly string[]): string {
  let text = '';
  for (let i = 0; i < raw.length; i += 2) text += `${raw[i]}: ${raw[i + 1]}\r\n`;
  return text;
}
