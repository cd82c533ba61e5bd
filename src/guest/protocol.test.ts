import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FrameDecoder, ProtocolViolation, encodeFrame, item, MAX_FRAME_LENGTH } from './protocol.ts';

test('a frame survives encode → decode, split at every byte', () => {
  const frame = { id: 7, type: 0x80, items: [item.u32(1), item.string('1.0'), item.strings(['a', 'b']), Buffer.alloc(0)] };
  const wire = encodeFrame(frame);
  for (let split = 0; split <= wire.length; split++) {
    const decoder = new FrameDecoder();
    const frames = [...decoder.push(wire.subarray(0, split)), ...decoder.push(wire.subarray(split))];
    assert.equal(frames.length, 1);
    assert.equal(frames[0]!.id, 7);
    assert.equal(frames[0]!.type, 0x80);
    assert.deepEqual(frames[0]!.items.map((b) => b.toString('hex')), frame.items.map((b) => b.toString('hex')));
  }
});

test('the example HELLO frame of PROTOCOL.md encodes as documented', () => {
  assert.equal(encodeFrame({ id: 1, type: 0x01, items: [] }).toString('hex'), '000000080000000100010000');
});

test('two frames in one chunk decode as two', () => {
  const wire = Buffer.concat([encodeFrame({ id: 1, type: 0x80, items: [] }), encodeFrame({ id: 2, type: 0x81, items: [item.string('x')] })]);
  assert.deepEqual(new FrameDecoder().push(wire).map((f) => f.id), [1, 2]);
});

test('oversized, undersized and malformed frames are violations', () => {
  const header = (length: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(length); return b; };
  assert.throws(() => new FrameDecoder().push(header(MAX_FRAME_LENGTH + 1)), ProtocolViolation);
  assert.throws(() => new FrameDecoder().push(header(0xffffffff)), ProtocolViolation);
  assert.throws(() => new FrameDecoder().push(header(3)), ProtocolViolation);

  const overrun = encodeFrame({ id: 1, type: 0x80, items: [item.string('abc')] });
  overrun.writeUInt32BE(1000, 12); // the item claims more bytes than its frame holds
  assert.throws(() => new FrameDecoder().push(overrun), /overruns/);

  const truncated = Buffer.concat([header(10), Buffer.alloc(10)]); // 2 stray bytes after the header
  assert.throws(() => new FrameDecoder().push(truncated), /truncated/);

  const reserved = encodeFrame({ id: 1, type: 0x80, items: [] });
  reserved.writeUInt16BE(1, 10);
  assert.throws(() => new FrameDecoder().push(reserved), /reserved/);
});

test('strings refuse embedded NUL bytes', () => {
  assert.throws(() => item.strings(['a\0b']), RangeError);
  assert.equal(item.strings(['ls', '-l']).toString(), 'ls\0-l\0');
});
