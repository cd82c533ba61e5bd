/**
 * HTTP/1.1 message framing for the proxy's own HTTP/1.1 data plane. Pure. Strict on purpose: the
 * proxy relays bodies as bytes, so the client, the proxy and the guest must agree on where every
 * message ends (no request smuggling past the token check, no response split into the next
 * request's answer). Anything ambiguous is refused: obs-fold, bare LF, control characters,
 * Content-Length beside Transfer-Encoding, codings other than `chunked`, differing lengths.
 */

export interface HeaderField {
  /** As sent. */
  name: string;
  /** Lower case. */
  lower: string;
  /** Without surrounding whitespace. */
  value: string;
}

export interface RequestHead {
  method: string;
  target: string;
  /** The minor version: 1 for HTTP/1.1, 0 for HTTP/1.0. */
  minor: 0 | 1;
  fields: HeaderField[];
  /** The Connection header's tokens, lower case (`close`, `upgrade`, names of hop-by-hop headers). */
  connection: string[];
  /** Bytes of the head, the empty line included. */
  length: number;
}

export interface ResponseHead {
  status: number;
  reason: string;
  minor: 0 | 1;
  fields: HeaderField[];
  connection: string[];
  length: number;
}

/** `none`: no body; `length`: exactly `length` bytes; `chunked`: chunks up to the last one and trailers; `close`: until the connection ends (responses only). */
export type Framing = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'close' };

/** Input that breaks the protocol; `tooLarge`: a head over its limit. */
export class MalformedMessage extends Error {
  constructor(message: string, readonly tooLarge = false) {
    super(message);
  }
}

const HEAD_END = Buffer.from('\r\n\r\n');
const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([^\0-\x20\x7f]+) HTTP\/1\.([01])$/;
const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: ([^\0-\x08\x0a-\x1f\x7f]*))?$/;
const FIELD_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[\t ]*([^\0-\x08\x0a-\x1f\x7f]*?)[\t ]*$/;
const DIGITS = /^\d{1,15}$/;

/** The request head at the start of `buffer`; undefined while incomplete. Throws MalformedMessage. */
export function parseRequestHead(buffer: Buffer, maxBytes: number): RequestHead | undefined {
  const lines = headLines(buffer, maxBytes);
  if (!lines) return undefined;
  const match = REQUEST_LINE.exec(lines.text[0]!);
  if (!match) throw new MalformedMessage('malformed request line');
  const target = match[2]!;
  if (target[0] !== '/' && !(target === '*' && match[1] === 'OPTIONS')) {
    throw new MalformedMessage('the request target must be a path (origin form)');
  }
  const fields = fieldsOf(lines.text);
  return { method: match[1]!, target, minor: match[3] === '1' ? 1 : 0, fields, connection: tokensOf(fields, 'connection'), length: lines.length };
}

/** The response head at the start of `buffer`; undefined while incomplete. Throws MalformedMessage. */
export function parseResponseHead(buffer: Buffer, maxBytes: number): ResponseHead | undefined {
  const lines = headLines(buffer, maxBytes);
  if (!lines) return undefined;
  const match = STATUS_LINE.exec(lines.text[0]!);
  if (!match) throw new MalformedMessage('malformed status line');
  const fields = fieldsOf(lines.text);
  return { status: Number(match[2]), reason: match[3] ?? '', minor: match[1] === '1' ? 1 : 0, fields, connection: tokensOf(fields, 'connection'), length: lines.length };
}

function headLines(buffer: Buffer, maxBytes: number): { text: string[]; length: number } | undefined {
  const end = buffer.indexOf(HEAD_END);
  if (end === -1 || end + 4 > maxBytes) {
    if (end !== -1 || buffer.length >= maxBytes) throw new MalformedMessage(`the message head exceeds ${maxBytes} bytes`, true);
    return undefined;
  }
  return { text: buffer.toString('latin1', 0, end).split('\r\n'), length: end + 4 };
}

function fieldsOf(lines: string[]): HeaderField[] {
  const fields: HeaderField[] = [];
  for (let i = 1; i < lines.length; i++) {
    const match = FIELD_LINE.exec(lines[i]!);
    if (!match) throw new MalformedMessage('malformed header line');
    fields.push({ name: match[1]!, lower: match[1]!.toLowerCase(), value: match[2]! });
  }
  return fields;
}

/** The values of a header, in order. */
export function valuesOf(fields: readonly HeaderField[], lower: string): string[] {
  const values: string[] = [];
  for (const field of fields) if (field.lower === lower) values.push(field.value);
  return values;
}

/** The comma-separated tokens of a header (Connection, Upgrade), lower case. */
export function tokensOf(fields: readonly HeaderField[], lower: string): string[] {
  return commaTokens(valuesOf(fields, lower));
}

/** The tokens of comma-separated header values, lower case, empty ones left out. */
export function commaTokens(values: string | readonly string[] | undefined): string[] {
  const tokens: string[] = [];
  for (const value of typeof values === 'string' ? [values] : values ?? []) {
    for (const token of value.split(',')) {
      const trimmed = token.trim().toLowerCase();
      if (trimmed !== '') tokens.push(trimmed);
    }
  }
  return tokens;
}

/** A request's body: by Transfer-Encoding (only `chunked`) or Content-Length, never both. */
export function requestFraming(head: RequestHead): Framing {
  const framing = declaredFraming(head.fields, head.minor);
  if (framing.kind === 'close') return { kind: 'none' };
  return framing;
}

/** A response's body (RFC 9112 section 6.3), `method` being the request's. */
export function responseFraming(head: ResponseHead, method: string): Framing {
  if (method === 'HEAD' || head.status < 200 || head.status === 204 || head.status === 304) return { kind: 'none' };
  return declaredFraming(head.fields, head.minor);
}

function declaredFraming(fields: readonly HeaderField[], minor: 0 | 1): Framing {
  const codings = tokensOf(fields, 'transfer-encoding');
  const lengths = valuesOf(fields, 'content-length');
  if (codings.length > 0 || valuesOf(fields, 'transfer-encoding').length > 0) {
    if (lengths.length > 0) throw new MalformedMessage('both Transfer-Encoding and Content-Length');
    if (minor === 0) throw new MalformedMessage('Transfer-Encoding in an HTTP/1.0 message');
    if (codings.length !== 1 || codings[0] !== 'chunked') throw new MalformedMessage('only the chunked transfer coding is accepted');
    return { kind: 'chunked' };
  }
  if (lengths.length === 0) return { kind: 'close' };
  if (!lengths.every((value) => value === lengths[0]) || !DIGITS.test(lengths[0]!)) throw new MalformedMessage('invalid Content-Length');
  const length = Number(lengths[0]);
  return length === 0 ? { kind: 'none' } : { kind: 'length', length };
}

/** Where a body ends in the bytes that carry it, by its framing. */
export class BodyCursor {
  private remaining: number;
  private readonly chunked: ChunkedBody | undefined;
  readonly untilClose: boolean;
  done: boolean;

  constructor(framing: Framing) {
    this.remaining = framing.kind === 'length' ? framing.length : 0;
    this.chunked = framing.kind === 'chunked' ? new ChunkedBody() : undefined;
    this.untilClose = framing.kind === 'close';
    this.done = framing.kind === 'none';
  }

  /** The index in `chunk` where the body's bytes taken from `start` end; `done` once the body ended. Throws MalformedMessage. */
  take(chunk: Buffer, start = 0): number {
    if (this.done) return start;
    if (this.chunked) {
      const end = this.chunked.scan(chunk, start);
      if (end === -1) return chunk.length;
      this.done = true;
      return end;
    }
    if (this.untilClose) return chunk.length;
    const end = Math.min(chunk.length, start + this.remaining);
    this.remaining -= end - start;
    this.done = this.remaining === 0;
    return end;
  }
}

const enum Chunk { Size, Extension, SizeLf, Data, DataCr, DataLf, TrailerStart, Trailer, TrailerLf, EndLf }
const CR = 13;
const LF = 10;
/** A chunk-size line (extensions included) and the trailer section are bounded. */
const MAX_SIZE_LINE = 4096;
const MAX_TRAILERS = 16 * 1024;
/** 2^48 - 1: twelve hex digits, well within a double's integers. */
const MAX_SIZE_DIGITS = 12;

/**
 * Follows a chunked body through the bytes it is fed, without copying them: where it ends, or
 * that it goes on. Chunk extensions and trailers are checked (no CR or LF but as line ends, no
 * control characters) and passed on with the body, as bytes.
 */
export class ChunkedBody {
  private state = Chunk.Size;
  private digits = 0;
  private size = 0;
  private lineBytes = 0;
  private trailerBytes = 0;

  /** The index just past the body's end within `chunk` (from `start`), or -1 when it goes on. Throws MalformedMessage. */
  scan(chunk: Buffer, start = 0): number {
    let i = start;
    while (i < chunk.length) {
      switch (this.state) {
        case Chunk.Data: {
          const taken = Math.min(this.size, chunk.length - i);
          this.size -= taken;
          i += taken;
          if (this.size === 0) this.state = Chunk.DataCr;
          continue;
        }
        case Chunk.Size: {
          const byte = chunk[i]!;
          const digit = hexValue(byte);
          if (digit >= 0) {
            if (++this.digits > MAX_SIZE_DIGITS) throw new MalformedMessage('chunk size too large');
            this.size = this.size * 16 + digit;
          } else if (this.digits === 0) {
            throw new MalformedMessage('malformed chunk size');
          } else if (byte === CR) {
            this.state = Chunk.SizeLf;
          } else if (byte === 0x3b /* ; */) {
            this.state = Chunk.Extension;
          } else {
            throw new MalformedMessage('malformed chunk size');
          }
          break;
        }
        case Chunk.Extension:
          if (chunk[i] === CR) this.state = Chunk.SizeLf;
          else this.lineByte(chunk[i]!);
          break;
        case Chunk.SizeLf:
          this.expect(chunk[i]!, LF);
          this.digits = 0;
          this.lineBytes = 0;
          this.state = this.size === 0 ? Chunk.TrailerStart : Chunk.Data;
          break;
        case Chunk.DataCr:
          this.expect(chunk[i]!, CR);
          this.state = Chunk.DataLf;
          break;
        case Chunk.DataLf:
          this.expect(chunk[i]!, LF);
          this.state = Chunk.Size;
          break;
        case Chunk.TrailerStart:
          if (chunk[i] === CR) {
            this.state = Chunk.EndLf;
          } else {
            this.state = Chunk.Trailer;
            this.trailerByte(chunk[i]!);
          }
          break;
        case Chunk.Trailer:
          if (chunk[i] === CR) this.state = Chunk.TrailerLf;
          else this.trailerByte(chunk[i]!);
          break;
        case Chunk.TrailerLf:
          this.expect(chunk[i]!, LF);
          this.state = Chunk.TrailerStart;
          break;
        case Chunk.EndLf:
          this.expect(chunk[i]!, LF);
          this.state = Chunk.Size;
          this.size = 0;
          this.trailerBytes = 0;
          return i + 1;
      }
      i++;
    }
    return -1;
  }

  private expect(byte: number, wanted: number): void {
    if (byte !== wanted) throw new MalformedMessage('malformed chunked body');
  }

  private lineByte(byte: number): void {
    if (++this.lineBytes > MAX_SIZE_LINE || isControl(byte)) throw new MalformedMessage('malformed chunk extension');
  }

  private trailerByte(byte: number): void {
    if (++this.trailerBytes > MAX_TRAILERS || isControl(byte)) throw new MalformedMessage('malformed trailer section');
  }
}

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  const lower = byte | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}

/** Control characters but horizontal tab (CR and LF included: they only end lines). */
function isControl(byte: number): boolean {
  return (byte < 0x20 && byte !== 0x09) || byte === 0x7f;
}
