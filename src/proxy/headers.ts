/**
 * What crosses the proxy in headers. Requests lose hop-by-hop headers (and those named in
 * Connection), every `x-cocoon-*` header (the token never reaches the guest) and the client's own
 * X-Forwarded-Proto/Host; they gain X-Forwarded-For (appended), -Proto and -Host. Responses lose
 * hop-by-hop headers: each side of the proxy frames its own connection. On the HTTP/1.1 data
 * plane, where bodies are relayed as bytes, Transfer-Encoding stays with the body it frames.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { commaTokens, valuesOf, type RequestHead, type ResponseHead } from './http1-parse.ts';

export interface ForwardedFor {
  clientAddress: string;
  proto: 'https' | 'http';
  /** The host the client asked for (Host or :authority). */
  host: string;
}

/** Who asked, as the X-Forwarded-* headers tell the guest. */
export function forwardedFor(socket: Duplex | undefined, host: string | undefined): ForwardedFor {
  return {
    clientAddress: (socket as net.Socket | undefined)?.remoteAddress ?? '',
    proto: socket instanceof tls.TLSSocket ? 'https' : 'http',
    host: host ?? '',
  };
}

/** HTTP/1.1's hop-by-hop headers plus those HTTP/2 forbids; `expect` is answered by the proxy itself. */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade',
  'proxy-authenticate', 'proxy-authorization', 'http2-settings', 'expect',
]);

export const AUTH_HEADER = 'x-cocoon-auth';
export const PORT_HEADER = 'x-cocoon-port';
const AUTH_PROTOCOL = 'cocoon.auth.';
const PORT_PROTOCOL = 'cocoon.port.';

/**
 * Headers for the guest. `http1`: an HTTP/1.1 request (pseudo-headers dropped, Host kept or taken
 * from :authority). `h2c`: an HTTP/2 request to a gRPC server (pseudo-headers kept with
 * `:scheme: http`, and `te: trailers`, which gRPC requires).
 */
export function requestHeaders(headers: IncomingHttpHeaders, forwarded: ForwardedFor, target: 'http1' | 'h2c'): OutgoingHttpHeaders {
  const listed = listedHeaders(commaTokens(headers.connection));
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) {
    if (name.charCodeAt(0) === 58 /* ':' */) {
      if (target === 'h2c') out[name] = headers[name];
      continue;
    }
    if (isEndToEnd(name, listed, target === 'h2c')) out[name] = headers[name];
  }
  if (target === 'h2c') out[':scheme'] = 'http';
  else if (out.host === undefined) out.host = forwarded.host;
  const prior = headers['x-forwarded-for'];
  out['x-forwarded-for'] = forwardedForValue(prior === undefined ? undefined : String(prior), forwarded.clientAddress);
  out['x-forwarded-proto'] = forwarded.proto;
  out['x-forwarded-host'] = forwarded.host;
  return out;
}

/** An HTTP/1.1 response's raw headers for an HTTP/2 client: lower-case names, repeated ones as arrays. */
export function responseHeadersH2(status: number, raw: readonly string[]): OutgoingHttpHeaders {
  const names = lowerCaseNames(raw);
  const listed = listedInConnection(raw, names);
  const out: OutgoingHttpHeaders = { ':status': status };
  for (let i = 0; i < raw.length; i += 2) {
    const name = names[i >> 1]!;
    if (HOP_BY_HOP.has(name) || listed?.has(name)) continue;
    const prior = out[name];
    out[name] = prior === undefined ? raw[i + 1]! : [...(Array.isArray(prior) ? prior : [String(prior)]), raw[i + 1]!];
  }
  return out;
}

function lowerCaseNames(raw: readonly string[]): string[] {
  const names: string[] = [];
  for (let i = 0; i < raw.length; i += 2) names.push(raw[i]!.toLowerCase());
  return names;
}

function listedInConnection(raw: readonly string[], names: readonly string[]): Set<string> | undefined {
  let listed: Set<string> | undefined;
  for (let i = 0; i < names.length; i++) if (names[i] === 'connection') listed = listedHeaders(commaTokens(raw[2 * i + 1]), listed);
  return listed;
}

/**
 * The WebSocket subprotocols a client offered: browsers cannot set headers on a WebSocket, so they
 * pass the token and port as `cocoon.auth.<token>` and `cocoon.port.<n>`. `others` go to the guest.
 */
export interface OfferedProtocols {
  token?: string;
  port?: string;
  others: string[];
  /** What the proxy answers when the guest picks none of `others` and the client offered only cocoon.* (browsers insist on an answer). */
  fallback?: string;
}

export function offeredProtocols(header: string | string[] | undefined): OfferedProtocols {
  const offered: OfferedProtocols = { others: [] };
  if (header === undefined) return offered;
  let portProtocol: string | undefined;
  let authProtocol: string | undefined;
  for (const entry of (Array.isArray(header) ? header.join(',') : header).split(',')) {
    const protocol = entry.trim();
    if (protocol === '') continue;
    if (protocol.startsWith(AUTH_PROTOCOL)) {
      offered.token = protocol.slice(AUTH_PROTOCOL.length);
      authProtocol = protocol;
    } else if (protocol.startsWith(PORT_PROTOCOL)) {
      offered.port = protocol.slice(PORT_PROTOCOL.length);
      portProtocol = protocol;
    } else {
      offered.others.push(protocol);
    }
  }
  // The port's protocol when offered: the token then never travels back.
  const fallback = portProtocol ?? authProtocol;
  if (offered.others.length === 0 && fallback !== undefined) offered.fallback = fallback;
  return offered;
}

/**
 * The head of a request for the guest on the HTTP/1.1 data plane, from the client's fields:
 * filtered as `requestHeaders` filters, except that Transfer-Encoding stays (the body is relayed
 * as the client framed it). `close`: the proxy closes both connections after the response.
 * `upgrade`: a WebSocket upgrade, whose cocoon.* subprotocols stay behind.
 */
export function requestHeadH1(head: RequestHead, forwarded: ForwardedFor, options: { close: boolean; upgrade?: OfferedProtocols }): string {
  const listed = listedHeaders(head.connection);
  let text = `${head.method} ${head.target} HTTP/1.${head.minor}\r\n`;
  let prior: string | undefined;
  for (const { name, lower, value } of head.fields) {
    if (lower === 'x-forwarded-for') prior = prior === undefined ? value : `${prior}, ${value}`;
    else if (lower === 'transfer-encoding' || (isEndToEnd(lower, listed, false) && !(options.upgrade && lower === 'sec-websocket-protocol'))) text += `${name}: ${value}\r\n`;
  }
  if (options.upgrade) {
    if (options.upgrade.others.length > 0) text += `Sec-WebSocket-Protocol: ${options.upgrade.others.join(', ')}\r\n`;
    text += `Connection: Upgrade\r\nUpgrade: ${valuesOf(head.fields, 'upgrade').join(', ')}\r\n`;
  } else if (options.close) {
    text += 'Connection: close\r\n';
  }
  return `${text}X-Forwarded-For: ${forwardedForValue(prior, forwarded.clientAddress)}\r\nX-Forwarded-Proto: ${forwarded.proto}\r\nX-Forwarded-Host: ${forwarded.host}\r\n\r\n`;
}

/**
 * The head of a guest's response for an HTTP/1.1 client: hop-by-hop headers go (the proxy frames
 * the client's connection: `close` says it ends after this response) but Transfer-Encoding, as
 * the body is relayed as the guest framed it. A 101 keeps its Upgrade; `fallbackProtocol` is
 * added when the guest chose no subprotocol (see OfferedProtocols).
 */
export function responseHeadH1(head: ResponseHead, options: { close: boolean; fallbackProtocol?: string }): string {
  const listed = listedHeaders(head.connection);
  const switching = head.status === 101;
  let text = `HTTP/1.1 ${head.status} ${head.reason}\r\n`;
  for (const { name, lower, value } of head.fields) {
    if (lower === 'transfer-encoding' || (switching && lower === 'upgrade') || !(HOP_BY_HOP.has(lower) || listed?.has(lower))) text += `${name}: ${value}\r\n`;
  }
  if (switching) {
    text += 'Connection: Upgrade\r\n';
    if (options.fallbackProtocol !== undefined && valuesOf(head.fields, 'sec-websocket-protocol').length === 0) text += `Sec-WebSocket-Protocol: ${options.fallbackProtocol}\r\n`;
  } else if (options.close) {
    text += 'Connection: close\r\n';
  }
  return `${text}\r\n`;
}

/** The headers Connection's tokens name, hop-by-hop ones left out (they go anyway; `te` may stay for gRPC): the usual `keep-alive` builds no set. */
function listedHeaders(connection: readonly string[], into?: Set<string>): Set<string> | undefined {
  let listed = into;
  for (const name of connection) if (name === 'te' || !HOP_BY_HOP.has(name)) (listed ??= new Set()).add(name);
  return listed;
}

/** Whether a request header goes on to the guest: not hop-by-hop (`te` may stay, for gRPC), not ours, not named in Connection. */
function isEndToEnd(lower: string, listed: Set<string> | undefined, keepTe: boolean): boolean {
  return !(HOP_BY_HOP.has(lower) && !(keepTe && lower === 'te')) && !isOwnHeader(lower) && !listed?.has(lower);
}

function forwardedForValue(prior: string | undefined, clientAddress: string): string {
  return prior ? `${prior}, ${clientAddress}` : clientAddress;
}

/** `x-cocoon-*` and `x-forwarded-*`; the first letter spares most headers the comparisons. */
function isOwnHeader(name: string): boolean {
  return name.charCodeAt(0) === 120 /* 'x' */ && (name.startsWith('x-cocoon-') || name.startsWith('x-forwarded-'));
}
