/**
 * Loopback-only fixtures for the proxy tests: origins that count their connections, a dialler
 * that records every attempt and refuses to dial anything but 127.0.0.1, and raw HTTP helpers.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import type { ConnectFn, ResolveFn } from './dial.ts';

export type Origin = { port: number; connections: () => number; close: () => Promise<void> };

function closeServer(server: net.Server, sockets: Set<net.Socket>): Promise<void> {
  for (const socket of sockets) socket.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

function countConnections(server: net.Server): { count: () => number; sockets: Set<net.Socket> } {
  let count = 0;
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    count++;
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return { count: () => count, sockets };
}

/**
 * An HTTP origin on 127.0.0.1. `/echo` answers with what it received (method, url, headers, body
 * hash and length); `/big?bytes=N` streams N bytes.
 */
export async function startHttpOrigin(): Promise<Origin> {
  const server = http.createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://origin');
    if (url.pathname === '/big') {
      const total = Number(url.searchParams.get('bytes'));
      response.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': total });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      let sent = 0;
      const pump = (): void => {
        while (sent < total) {
          const piece = chunk.subarray(0, Math.min(chunk.length, total - sent));
          sent += piece.length;
          if (!response.write(piece)) { response.once('drain', pump); return; }
        }
        response.end();
      };
      pump();
      return;
    }
    const hash = createHash('sha256');
    let length = 0;
    request.on('data', (chunk: Buffer) => { hash.update(chunk); length += chunk.length; });
    request.on('end', () => {
      const body = JSON.stringify({
        method: request.method, url: request.url, rawHeaders: request.rawHeaders, length, sha256: hash.digest('hex'),
      });
      response.writeHead(201, 'Made It', { 'Content-Type': 'application/json', 'Set-Cookie': ['a=1', 'b=2'], 'X-Origin': 'yes' });
      response.end(body);
    });
  });
  const { count, sockets } = countConnections(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, connections: count, close: () => closeServer(server, sockets) };
}

/** A TCP origin on 127.0.0.1 that greets first ("hello\n") and then echoes. */
export async function startEchoOrigin(): Promise<Origin> {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.write('hello\n');
    socket.pipe(socket);
  });
  const { count, sockets } = countConnections(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { port: (server.address() as net.AddressInfo).port, connections: count, close: () => closeServer(server, sockets) };
}

/**
 * Records every connection the proxy tries to open. Only 127.0.0.1 is ever dialled; any other
 * address fails without touching the network (and the test asserts it was never asked for).
 */
export function recordingConnect(): { connect: ConnectFn; attempts: Array<{ address: string; port: number }> } {
  const attempts: Array<{ address: string; port: number }> = [];
  const connect: ConnectFn = ({ address, port }) => {
    attempts.push({ address, port });
    if (address === '127.0.0.1') return net.connect({ host: address, port });
    const socket = new net.Socket();
    process.nextTick(() => socket.destroy(new Error(`test dialler refuses ${address}`)));
    return socket;
  };
  return { connect, attempts };
}

/** A resolver over a fixed table; unknown names fail like NXDOMAIN. Never asks real DNS. */
export function tableResolve(table: Record<string, string[]>): { resolve: ResolveFn; asked: string[] } {
  const asked: string[] = [];
  const resolve: ResolveFn = async (hostname) => {
    asked.push(hostname);
    const addresses = table[hostname];
    if (addresses === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
    return addresses;
  };
  return { resolve, asked };
}

export type ProxyAddress = { port: number } | { socketPath: string };

export function connectToProxy(proxy: ProxyAddress): net.Socket {
  return 'port' in proxy ? net.connect(proxy.port, '127.0.0.1') : net.connect(proxy.socketPath);
}

export type RawResponse = { status: number; headers: Record<string, string>; body: string };

function parseResponse(raw: string): RawResponse {
  const end = raw.indexOf('\r\n\r\n');
  assert.notEqual(end, -1, `no complete response head in ${JSON.stringify(raw.slice(0, 200))}`);
  const [statusLine, ...lines] = raw.slice(0, end).split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { status: Number(statusLine!.split(' ')[1]), headers, body: raw.slice(end + 4) };
}

/** Sends raw bytes to the proxy and reads until it closes the connection. */
export function exchange(proxy: ProxyAddress, request: string | Buffer): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const socket = connectToProxy(proxy);
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('end', () => {
      try { resolve(parseResponse(Buffer.concat(chunks).toString('latin1'))); } catch (error) { reject(error); }
      socket.destroy();
    });
    socket.setTimeout(10_000, () => socket.destroy(new Error('proxy did not answer within 10 s')));
    socket.write(request);
  });
}

/** Opens a CONNECT tunnel and returns the socket once the proxy answered 200. */
export function openTunnel(proxy: ProxyAddress, target: string, early = ''): Promise<{ socket: net.Socket; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    const socket = connectToProxy(proxy);
    let buffered = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      const end = buffered.indexOf('\r\n\r\n');
      if (end === -1) return;
      socket.off('data', onData);
      const head = buffered.subarray(0, end).toString('latin1');
      if (!head.startsWith('HTTP/1.1 200')) { socket.destroy(); reject(new Error(`tunnel refused: ${head}`)); return; }
      resolve({ socket, rest: buffered.subarray(end + 4) });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n${early}`);
  });
}

/** Reads from a socket until `predicate` holds for everything received so far. */
export function readUntil(socket: net.Socket, initial: Buffer, predicate: (text: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = initial.toString('latin1');
    if (predicate(text)) { resolve(text); return; }
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('latin1');
      if (predicate(text)) { socket.off('data', onData); clearTimeout(timer); resolve(text); }
    };
    const timer = setTimeout(() => { socket.off('data', onData); reject(new Error(`timed out; got ${JSON.stringify(text)}`)); }, 10_000);
    socket.on('data', onData);
  });
}
