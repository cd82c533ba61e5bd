/**
 * Pure encoding and decoding of the host↔agent wire protocol (guest/PROTOCOL.md).
 * Everything decoded here comes from an untrusted guest: every length is checked before use.
 */
export const PROTOCOL_VERSION = 1;
export const MAX_FRAME_LENGTH = 4 * 1024 * 1024;
export const MAX_FILE_CHUNK = 1024 * 1024;
export const MAX_OUTPUT_CHUNK = 32 * 1024;
const HEADER_LENGTH = 8; // id + type + reserved, after the length field

export const RequestType = {
  HELLO: 0x01,
  EXEC: 0x02,
  FILE_WRITE: 0x03,
  FILE_READ: 0x04,
  APP_START: 0x05,
  APP_STOP: 0x06,
  WAIT_PORT: 0x07,
  SET_CLOCK: 0x08,
  ADD_ENTROPY: 0x09,
  SYNC: 0x0a,
  SHUTDOWN: 0x0b,
  ROOT: 0x0c,
  APP_ATTACH: 0x0d,
} as const;

export const ReplyType = {
  OK: 0x80,
  ERROR: 0x81,
  STARTED: 0x82,
  STDOUT: 0x83,
  STDERR: 0x84,
  EXIT: 0x85,
  LOG: 0x86,
  APP_EXIT: 0x87,
} as const;

export type Item = Buffer;

export interface Frame {
  id: number;
  type: number;
  items: Item[];
}

export class ProtocolViolation extends Error {
  override readonly name = 'ProtocolViolation';
}

export function encodeFrame(frame: Frame): Buffer {
  const bodyLength = frame.items.reduce((sum, item) => sum + 4 + item.length, 0);
  const length = HEADER_LENGTH + bodyLength;
  if (length > MAX_FRAME_LENGTH) throw new RangeError(`frame of ${length} bytes exceeds the cap`);
  const out = Buffer.allocUnsafe(4 + length);
  out.writeUInt32BE(length, 0);
  out.writeUInt32BE(frame.id, 4);
  out.writeUInt16BE(frame.type, 8);
  out.writeUInt16BE(0, 10);
  let offset = 12;
  for (const item of frame.items) {
    out.writeUInt32BE(item.length, offset);
    item.copy(out, offset + 4);
    offset += 4 + item.length;
  }
  return out;
}

/** Incremental decoder: feed it socket chunks, get whole frames; throws ProtocolViolation. */
export class FrameDecoder {
  private buffered: Buffer[] = [];
  private bufferedLength = 0;

  push(chunk: Buffer): Frame[] {
    this.buffered.push(chunk);
    this.bufferedLength += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.bufferedLength < 4) break;
      const head = this.peek(4);
      const length = head.readUInt32BE(0);
      if (length < HEADER_LENGTH || length > MAX_FRAME_LENGTH) {
        throw new ProtocolViolation(`frame length ${length} out of range`);
      }
      if (this.bufferedLength < 4 + length) break;
      const raw = this.take(4 + length);
      frames.push(decodeFrameBody(raw.subarray(4)));
    }
    return frames;
  }

  private peek(count: number): Buffer {
    if (this.buffered[0]!.length < count) this.buffered = [Buffer.concat(this.buffered)];
    return this.buffered[0]!.subarray(0, count);
  }

  private take(count: number): Buffer {
    const all = Buffer.concat(this.buffered);
    this.buffered = all.length > count ? [all.subarray(count)] : [];
    this.bufferedLength = all.length - count;
    return all.subarray(0, count);
  }
}

function decodeFrameBody(body: Buffer): Frame {
  const id = body.readUInt32BE(0);
  const type = body.readUInt16BE(4);
  if (body.readUInt16BE(6) !== 0) throw new ProtocolViolation('reserved header field is not zero');
  const items: Item[] = [];
  let offset = HEADER_LENGTH;
  while (offset < body.length) {
    if (body.length - offset < 4) throw new ProtocolViolation('truncated item length');
    const itemLength = body.readUInt32BE(offset);
    offset += 4;
    if (itemLength > body.length - offset) throw new ProtocolViolation('item overruns its frame');
    items.push(body.subarray(offset, offset + itemLength));
    offset += itemLength;
  }
  return { id, type, items };
}

export const item = {
  u32(value: number): Item {
    const b = Buffer.allocUnsafe(4);
    b.writeUInt32BE(value >>> 0);
    return b;
  },
  u64(value: bigint): Item {
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64BE(value);
    return b;
  },
  string(value: string): Item {
    return Buffer.from(value, 'utf8');
  },
  strings(values: readonly string[]): Item {
    for (const value of values) {
      if (value.includes('\0')) throw new RangeError('strings may not contain NUL bytes');
    }
    return Buffer.from(values.map((v) => `${v}\0`).join(''), 'utf8');
  },
};

/** Typed readers for a reply's items; each throws ProtocolViolation on a shape mismatch. */
export const read = {
  count(frame: Frame, expected: number): void {
    if (frame.items.length !== expected) {
      throw new ProtocolViolation(`type 0x${frame.type.toString(16)}: ${frame.items.length} items, expected ${expected}`);
    }
  },
  u32(value: Item): number {
    if (value.length !== 4) throw new ProtocolViolation(`u32 item of ${value.length} bytes`);
    return value.readUInt32BE(0);
  },
  i32(value: Item): number {
    if (value.length !== 4) throw new ProtocolViolation(`i32 item of ${value.length} bytes`);
    return value.readInt32BE(0);
  },
  text(value: Item, maxBytes: number): string {
    if (value.length > maxBytes) throw new ProtocolViolation(`text item of ${value.length} bytes exceeds ${maxBytes}`);
    return value.toString('utf8');
  },
};
