import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LineSplitter } from './lines.ts';

test('lines: \\n and \\r\\n end them, a UTF-8 character split between chunks stays whole, the rest waits for end()', () => {
  const lines = new LineSplitter();
  const euro = Buffer.from('€');
  assert.deepEqual(lines.push(Buffer.concat([Buffer.from('one\r\ntwo '), euro.subarray(0, 1)])), ['one']);
  assert.deepEqual(lines.push(Buffer.concat([euro.subarray(1), Buffer.from('\nthree')])), ['two €']);
  assert.deepEqual(lines.end(), ['three']);
  assert.deepEqual(lines.end(), []);
});

test('a line without a newline is cut at 16 KiB as it comes, so nothing piles up', () => {
  const lines = new LineSplitter();
  const cut = lines.push(Buffer.alloc(40 * 1024, 'a'));
  assert.deepEqual(cut.map((line) => line.length), [16 * 1024, 16 * 1024]);
  assert.deepEqual(lines.end().map((line) => line.length), [8 * 1024]);
});
