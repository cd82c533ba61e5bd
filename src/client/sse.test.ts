import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SseParser, type SseEvent } from './sse.ts';

function parse(chunks: string[]): SseEvent[] {
  const events: SseEvent[] = [];
  const parser = new SseParser((event) => events.push(event));
  for (const chunk of chunks) parser.push(chunk);
  return events;
}

test('data lines become message events; the end event carries its name; comments are skipped', () => {
  const stream = 'data: [1/3] WORKDIR /srv\n\n: keepalive\n\ndata: two\n\nevent: end\ndata: {"state":"ACTIVE"}\n\n';
  const expected = [
    { event: 'message', data: '[1/3] WORKDIR /srv' },
    { event: 'message', data: 'two' },
    { event: 'end', data: '{"state":"ACTIVE"}' },
  ];
  assert.deepEqual(parse([stream]), expected);
  assert.deepEqual(parse(stream.split('')), expected, 'chunks split anywhere, one character at a time');
});

test('CRLF and CR line ends, multi-line data, a field without a space, an unfinished event', () => {
  assert.deepEqual(parse(['data:a\r\ndata: b\r', '\n\r\ndata: c\r\rdata: pending']), [
    { event: 'message', data: 'a\nb' },
    { event: 'message', data: 'c' },
  ]);
});
