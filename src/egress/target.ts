/**
 * Pure parsing of what a guest asks the proxy for: the `host:port` of a CONNECT, the absolute-form
 * URL of a plain HTTP request, and the headers that may travel on to the origin.
 */
import { formatIp, parseIPv4, parseIp, type IpAddress } from './ranges.ts';

/** A destination as the guest named it: `host` is a lowercase name or a canonical IP literal. */
export type EgressTarget = { host: string; port: number; ip?: IpAddress };

export type HttpTarget = EgressTarget & {
  /** Origin-form request target for the origin server: path and query, never the fragment. */
  path: string;
  /** Value for the Host header, as the guest wrote the authority (minus any userinfo). */
  hostHeader: string;
};

export type ParseResult<T> = { ok: true; value: T } | { ok: false; message: string };

const MAX_NAME_LENGTH = 253;

function parsePort(text: string): number | undefined {
  if (!/^[0-9]{1,5}$/.test(text)) return undefined;
  const port = Number(text);
  return port >= 1 && port <= 65535 ? port : undefined;
}

/**
 * Normalises a host as a URL parser would before anything resolves it, so that `0x7f000001`,
 * `2130706433` and `127.1` are recognised as the IPv4 literal 127.0.0.1 rather than passed to a
 * resolver as names. Bracketed IPv6 may carry a zone id (the WHATWG URL parser rejects those).
 */
export function parseHost(text: string): ParseResult<{ host: string; ip?: IpAddress }> {
  if (text.startsWith('[')) {
    const ip = text.endsWith(']') ? parseIp(text) : undefined;
    if (ip === undefined || ip.version !== 6) return { ok: false, message: 'invalid IPv6 literal' };
    return { ok: true, value: { host: formatIp(ip), ip } };
  }
  if (text.length === 0 || text.length > MAX_NAME_LENGTH || !/^[A-Za-z0-9._-]+$/.test(text)) {
    return { ok: false, message: 'invalid host name' };
  }
  let hostname: string;
  try {
    hostname = new URL(`http://${text}/`).hostname;
  } catch {
    return { ok: false, message: 'invalid host name' };
  }
  const v4 = parseIPv4(hostname);
  if (v4 !== undefined) return { ok: true, value: { host: hostname, ip: { version: 4, bytes: v4 } } };
  const name = hostname.endsWith('.') ? hostname.slice(0, -1) : hostname;
  if (name === '' || name.split('.').some((label) => label === '' || label.length > 63)) {
    return { ok: false, message: 'invalid host name' };
  }
  return { ok: true, value: { host: name } };
}

/** Splits `host:port` / `[v6]:port`; a bare IPv6 without brackets is ambiguous and refused. */
function parseAuthority(authority: string, defaultPort: number | undefined): ParseResult<EgressTarget> {
  let hostText: string;
  let portText: string | undefined;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close === -1) return { ok: false, message: 'unterminated IPv6 literal' };
    hostText = authority.slice(0, close + 1);
    const rest = authority.slice(close + 1);
    if (rest !== '' && !rest.startsWith(':')) return { ok: false, message: 'garbage after IPv6 literal' };
    portText = rest === '' ? undefined : rest.slice(1);
  } else {
    const colon = authority.indexOf(':');
    if (colon !== authority.lastIndexOf(':')) return { ok: false, message: 'IPv6 literals need brackets' };
    hostText = colon === -1 ? authority : authority.slice(0, colon);
    portText = colon === -1 ? undefined : authority.slice(colon + 1);
  }
  let port = defaultPort;
  if (portText !== undefined && !(portText === '' && defaultPort !== undefined)) port = parsePort(portText);
  if (port === undefined) return { ok: false, message: 'missing or invalid port' };
  const host = parseHost(hostText);
  if (!host.ok) return host;
  return { ok: true, value: { ...host.value, port } };
}

/** The request target of a CONNECT: exactly `host:port`, nothing else. */
export function parseConnectTarget(requestTarget: string): ParseResult<EgressTarget> {
  if (requestTarget.length > 300) return { ok: false, message: 'CONNECT target too long' };
  return parseAuthority(requestTarget, undefined);
}

/** An absolute-form `http://` request target; origin-form (`/path`) and other schemes are refused. */
export function parseHttpTarget(requestTarget: string): ParseResult<HttpTarget> {
  const match = /^http:\/\/([^/?#]*)([^#]*)/i.exec(requestTarget);
  if (match === null) {
    return { ok: false, message: 'expected an absolute http:// URL (use CONNECT for https)' };
  }
  const at = match[1]!.lastIndexOf('@');
  const authority = at === -1 ? match[1]! : match[1]!.slice(at + 1);
  const target = parseAuthority(authority, 80);
  if (!target.ok) return target;
  const rest = match[2]!;
  const path = rest === '' ? '/' : rest.startsWith('?') ? `/${rest}` : rest;
  if (/[\s\u0000-\u001f\u007f]/.test(path)) return { ok: false, message: 'invalid characters in path' };
  return { ok: true, value: { ...target.value, path, hostHeader: authority } };
}

/** Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy's own: none of them travel on. */
const hopByHop = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  // The proxy answers `Expect: 100-continue` itself and sets Host from the request target.
  'expect', 'host',
]);

/**
 * Filters a raw header list (`[name, value, name, value, …]` as in `IncomingMessage.rawHeaders`):
 * drops hop-by-hop headers, everything named in `Connection`, and every `Proxy-*` header (they
 * carry credentials meant for the proxy, never for the origin).
 */
export function forwardableHeaders(rawHeaders: readonly string[]): string[] {
  const named = new Set<string>();
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.toLowerCase() === 'connection') {
      for (const token of rawHeaders[i + 1]!.split(',')) named.add(token.trim().toLowerCase());
    }
  }
  const kept: string[] = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!.toLowerCase();
    if (hopByHop.has(name) || named.has(name) || name.startsWith('proxy-')) continue;
    kept.push(rawHeaders[i]!, rawHeaders[i + 1]!);
  }
  return kept;
}
