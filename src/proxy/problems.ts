/**
 * The proxy's own answers: the API's error shape `{ "error": { "code", "message" } }` with the
 * status the error registry gives the code; for gRPC clients a trailers-only response whose
 * grpc-status matches and whose grpc-message starts with the code. Errors that are not the
 * client's business (a failed restore, a bug) become `proxy.upstream_failed`, their details logged.
 */
import type { ServerHttp2Stream } from 'node:http2';
import { STATUS_CODES } from 'node:http';
import { AppError, errorCodes, type ErrorCode } from '../errors/errors.ts';

export interface Problem {
  status: number;
  code: ErrorCode;
  message: string;
}

const CLIENT_FACING = /^(proxy|token|request)\./;
const GRPC_STATUS: Record<number, number> = { 400: 3, 401: 16, 403: 7, 404: 5, 409: 9, 502: 14, 503: 14 };
const GRPC_INTERNAL = 13;

/** The problem to answer with; `logged` says the cause went to the log instead of the client. */
export function problemOf(error: unknown): Problem & { logged: boolean } {
  if (error instanceof AppError && (CLIENT_FACING.test(error.code) || error.code === 'vm.capacity')) {
    return { status: errorCodes[error.code].httpStatus, code: error.code, message: error.message, logged: false };
  }
  return { ...upstreamFailed(), logged: true };
}

export function upstreamFailed(): Problem {
  return { status: errorCodes['proxy.upstream_failed'].httpStatus, code: 'proxy.upstream_failed', message: 'the MicroVM could not be reached' };
}

function body(problem: Problem): string {
  return JSON.stringify({ error: { code: problem.code, message: problem.message } });
}

const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' };

export function sendProblemH2(stream: ServerHttp2Stream, problem: Problem, grpc: boolean): void {
  if (stream.destroyed) return;
  if (stream.headersSent) {
    stream.close(0x2 /* INTERNAL_ERROR */);
    return;
  }
  if (grpc) {
    stream.respond({
      ':status': 200, 'content-type': 'application/grpc',
      'grpc-status': String(GRPC_STATUS[problem.status] ?? GRPC_INTERNAL),
      'grpc-message': grpcPercentEncoded(`${problem.code}: ${problem.message}`),
    }, { endStream: true });
    return;
  }
  const text = body(problem);
  stream.respond({ ':status': problem.status, ...JSON_HEADERS, 'content-length': Buffer.byteLength(text) });
  stream.end(text);
}

/** A whole HTTP/1.1 response; `close`: the connection ends after it; `withBody` false for HEAD requests. */
export function problemResponseH1(problem: Problem, options: { close: boolean; withBody: boolean }): string {
  const text = body(problem);
  return `HTTP/1.1 ${problem.status} ${STATUS_CODES[problem.status] ?? ''}\r\ncontent-type: ${JSON_HEADERS['content-type']}\r\n`
    + `cache-control: no-store\r\ncontent-length: ${Buffer.byteLength(text)}\r\n${options.close ? 'connection: close\r\n' : ''}\r\n${options.withBody ? text : ''}`;
}

/** gRPC's percent-encoding: only bytes outside printable ASCII, and '%' itself. */
function grpcPercentEncoded(text: string): string {
  let out = '';
  for (const byte of Buffer.from(text)) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
