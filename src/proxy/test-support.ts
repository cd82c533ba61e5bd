/**
 * Clients for the endpoint proxy's tests, all aimed at 127.0.0.1 whatever the host name says (the
 * name still travels in SNI, Host and :authority): HTTPS over HTTP/1.1 and HTTP/2, gRPC with
 * bytes in and out (no generated code), and WebSockets.
 */
import * as grpc from '@grpc/grpc-js';
import https from 'node:https';
import http2 from 'node:http2';
import { Readable } from 'node:stream';
import { WebSocket } from 'ws';
import { lookupLoopback } from '../host/sockets.ts';

export interface Endpoint {
  host: string;
  port: number;
  ca: string;
}

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  httpVersion: string;
}

export interface RequestOptions {
  path?: string;
  method?: string;
  headers?: Record<string, string>;
  body?: Buffer | string;
  /** Called with each chunk as it arrives (SSE). */
  onChunk?: (chunk: Buffer) => void;
}

export function requestH1(endpoint: Endpoint, options: RequestOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: endpoint.host, port: endpoint.port, ca: endpoint.ca, lookup: lookupLoopback, agent: false,
      method: options.method ?? 'GET', path: options.path ?? '/', headers: options.headers ?? {},
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        options.onChunk?.(chunk);
      });
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks), httpVersion: res.httpVersion }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

export function requestH2(endpoint: Endpoint, options: RequestOptions = {}): Promise<Answer> {
  const session = http2.connect(`https://${endpoint.host}:${endpoint.port}`, { ca: endpoint.ca, lookup: lookupLoopback });
  return new Promise<Answer>((resolve, reject) => {
    session.on('error', reject);
    const stream = session.request({ ':method': options.method ?? 'GET', ':path': options.path ?? '/', ...options.headers });
    let status = 0;
    let headers: Answer['headers'] = {};
    const chunks: Buffer[] = [];
    stream.on('response', (received) => {
      status = Number(received[':status']);
      headers = received;
    });
    stream.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      options.onChunk?.(chunk);
    });
    stream.on('end', () => resolve({ status, headers, body: Buffer.concat(chunks), httpVersion: '2.0' }));
    stream.on('error', reject);
    // In pieces, as real clients send: one huge write exceeds the session's memory limit (ENHANCE_YOUR_CALM).
    const body = typeof options.body === 'string' ? Buffer.from(options.body) : options.body;
    if (body === undefined) stream.end();
    else Readable.from(Array.from({ length: Math.ceil(body.length / 65_536) }, (_, i) => body.subarray(i * 65_536, (i + 1) * 65_536))).pipe(stream);
  }).finally(() => session.close());
}

// --- gRPC: the protocols example's cocoon.Echo service, bytes in and out ---

const bytes = { requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b };
export const ECHO_SERVICE: grpc.ServiceDefinition = {
  Unary: { path: '/cocoon.Echo/Unary', requestStream: false, responseStream: false, ...bytes },
  Chat: { path: '/cocoon.Echo/Chat', requestStream: true, responseStream: true, ...bytes },
};
const EchoClient = grpc.makeGenericClientConstructor(ECHO_SERVICE, 'Echo');

/** A gRPC client for the endpoint over TLS; connects to 127.0.0.1 with the endpoint's name for TLS and :authority. */
export function echoClient(endpoint: Endpoint): grpc.Client {
  return new EchoClient(`127.0.0.1:${endpoint.port}`, grpc.credentials.createSsl(Buffer.from(endpoint.ca)), {
    'grpc.ssl_target_name_override': endpoint.host, 'grpc.default_authority': endpoint.host,
  });
}

export function metadataOf(values: Record<string, string>): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries(values)) metadata.set(key, value);
  return metadata;
}

export interface GrpcOutcome {
  messages: string[];
  status: grpc.StatusObject;
}

export function grpcUnary(client: grpc.Client, message: string, metadata: grpc.Metadata): Promise<GrpcOutcome> {
  return new Promise((resolve) => {
    const messages: string[] = [];
    const call = client.makeUnaryRequest<Buffer, Buffer>('/cocoon.Echo/Unary', (b) => b, (b) => b, Buffer.from(message), metadata, {}, (_error, response) => {
      if (response) messages.push(response.toString());
    });
    call.on('status', (status) => setImmediate(() => resolve({ messages, status })));
  });
}

/** A bidirectional call that sends the next message only after the answer to the previous one arrived (both directions stream). */
export function grpcChat(client: grpc.Client, messages: string[], metadata: grpc.Metadata): Promise<GrpcOutcome> {
  return new Promise((resolve) => {
    const received: string[] = [];
    const call = client.makeBidiStreamRequest<Buffer, Buffer>('/cocoon.Echo/Chat', (b) => b, (b) => b, metadata);
    let next = 0;
    const sendNext = (): void => {
      if (next < messages.length) call.write(Buffer.from(messages[next++]!));
      else call.end();
    };
    call.on('data', (data: Buffer) => {
      received.push(data.toString());
      if (received.length <= messages.length) sendNext();
    });
    call.on('error', () => {});
    call.on('status', (status) => resolve({ messages: received, status }));
    sendNext();
  });
}

// --- WebSockets ---

export interface OpenedWebSocket {
  ws: WebSocket;
  /** The 101's headers. */
  headers: Record<string, string | string[] | undefined>;
}

/** Resolves once open; rejects with the refusal's status and body otherwise. */
export function openWebSocket(endpoint: Endpoint, options: { protocols?: string[]; headers?: Record<string, string>; path?: string } = {}): Promise<OpenedWebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://${endpoint.host}:${endpoint.port}${options.path ?? '/'}`, options.protocols ?? [], {
      ca: endpoint.ca, lookup: lookupLoopback, headers: options.headers ?? {},
    });
    let headers: OpenedWebSocket['headers'] = {};
    ws.once('upgrade', (response) => {
      headers = response.headers;
    });
    ws.once('open', () => resolve({ ws, headers }));
    ws.once('unexpected-response', (_req, res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => reject(Object.assign(new Error(`refused: ${res.statusCode}`), { status: res.statusCode, body: Buffer.concat(chunks).toString() })));
    });
    ws.once('error', reject);
  });
}

export function nextMessage(ws: WebSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    ws.once('message', (data) => resolve(String(data)));
    ws.once('close', () => reject(new Error('closed before a message')));
  });
}
