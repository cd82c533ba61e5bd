import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { BodyCursor, MalformedMessage, parseRequestHead, parseResponseHead, requestFraming, responseFraming, type Framing } from './http1-parse.ts';

const LIMIT = 1024;
const request = (text: string) => parseRequestHead(Buffer.from(text, 'latin1'), LIMIT);
const response = (text: string) => parseResponseHead(Buffer.from(text, 'latin1'), LIMIT);
const malformed = (run: () => unknown, tooLarge = false): void => {
  assert.throws(run, (error: unknown) => error instanceof MalformedMessage && error.tooLarge === tooLarge);
};

describe('request heads', () => {
  test('a whole head: method, target, version, fields as sent and in lower case, values trimmed; what follows is left', () => {
    const text = 'GET /a?b=c HTTP/1.1\r\nHost: mvm-x.d\r\nX-Mine:  v 1 \t\r\nx-mine: v2\r\nEmpty:\r\n\r\nGET /next';
    const head = request(text)!;
    assert.equal(head.method, 'GET');
    assert.equal(head.target, '/a?b=c');
    assert.equal(head.minor, 1);
    assert.deepEqual(head.fields, [
      { name: 'Host', lower: 'host', value: 'mvm-x.d' },
      { name: 'X-Mine', lower: 'x-mine', value: 'v 1' },
      { name: 'x-mine', lower: 'x-mine', value: 'v2' },
      { name: 'Empty', lower: 'empty', value: '' },
    ]);
    assert.equal(text.slice(head.length), 'GET /next');
    assert.equal(request('OPTIONS * HTTP/1.0\r\n\r\n')!.minor, 0);
    assert.deepEqual(request('GET / HTTP/1.1\r\nConnection: Keep-Alive, X-A\r\nconnection: ,close\r\n\r\n')!.connection, ['keep-alive', 'x-a', 'close']);
    assert.equal(request('GET /caf\xe9 HTTP/1.1\r\nX: \xe9\x80\r\n\r\n')!.fields[0]!.value, '\xe9\x80', 'bytes over 0x7f pass as they are');
  });

  test('incomplete until the empty line', () => {
    for (const text of ['', 'GET / HTTP/1.1', 'GET / HTTP/1.1\r\nHost: x\r\n', 'GET / HTTP/1.1\r\nHost: x\r\n\r']) assert.equal(request(text), undefined, JSON.stringify(text));
  });

  test('refused: anything a lenient parser could read differently', () => {
    for (const text of [
      'GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n', // bare LF
      'GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n', // obs-fold
      'GET / HTTP/1.1\r\nX : a\r\n\r\n', // space before the colon
      'GET / HTTP/1.1\r\nX: a\rb\r\n\r\n', // bare CR
      'GET / HTTP/1.1\r\nX: a\0b\r\n\r\n', // NUL
      'GET / HTTP/1.1\r\nX: a\x01\r\n\r\n',
      'GET / HTTP/1.1\r\n: a\r\n\r\n', // no name
      'GET / HTTP/1.1\r\nX(y): a\r\n\r\n', // not a token
      'GET  / HTTP/1.1\r\n\r\n', 'GET / HTTP/1.1 \r\n\r\n', 'GET /a b HTTP/1.1\r\n\r\n', 'GET / HTTP/2.0\r\n\r\n', 'GET / http/1.1\r\n\r\n',
      'GET http://evil/ HTTP/1.1\r\n\r\n', 'GET * HTTP/1.1\r\n\r\n', 'G\x01T / HTTP/1.1\r\n\r\n', 'GET /\x7f HTTP/1.1\r\n\r\n',
    ]) malformed(() => request(text));
  });

  test('over the limit: tooLarge, complete or not', () => {
    malformed(() => request(`GET / HTTP/1.1\r\nX: ${'a'.repeat(LIMIT)}\r\n\r\n`), true);
    malformed(() => request(`GET / HTTP/1.1\r\nX: ${'a'.repeat(LIMIT)}`), true);
    assert.ok(request(`GET / HTTP/1.1\r\nX: ${'a'.repeat(LIMIT - 25)}\r\n\r\n`));
  });
});

describe('framing', () => {
  const framing = (lines: string, minor = 1): Framing => requestFraming(request(`POST / HTTP/1.${minor}\r\n${lines}\r\n`)!);

  test('requests: none, Content-Length, chunked', () => {
    assert.deepEqual(framing(''), { kind: 'none' });
    assert.deepEqual(framing('Content-Length: 0\r\n'), { kind: 'none' });
    assert.deepEqual(framing('Content-Length: 12\r\n'), { kind: 'length', length: 12 });
    assert.deepEqual(framing('Content-Length: 12\r\ncontent-length: 12\r\n'), { kind: 'length', length: 12 });
    assert.deepEqual(framing('Transfer-Encoding:  Chunked \r\n'), { kind: 'chunked' });
  });

  test('requests: smuggling shapes refused', () => {
    for (const lines of [
      'Content-Length: 12\r\nTransfer-Encoding: chunked\r\n', 'Transfer-Encoding: chunked\r\nContent-Length: 0\r\n',
      'Content-Length: 12\r\nContent-Length: 13\r\n', 'Content-Length: 12, 12\r\n', 'Content-Length: +12\r\n', 'Content-Length: -1\r\n',
      'Content-Length: 0x10\r\n', 'Content-Length:\r\n', `Content-Length: ${'9'.repeat(16)}\r\n`,
      'Transfer-Encoding: gzip, chunked\r\n', 'Transfer-Encoding: chunked, chunked\r\n', 'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n',
      'Transfer-Encoding: xchunked\r\n', 'Transfer-Encoding:\r\n',
    ]) malformed(() => framing(lines), false);
    malformed(() => framing('Transfer-Encoding: chunked\r\n', 0));
  });

  test('responses: no body for HEAD, 1xx, 204 and 304; otherwise declared, or until the connection closes', () => {
    const of = (text: string, method = 'GET'): Framing => responseFraming(response(`${text}\r\n`)!, method);
    assert.deepEqual(of('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n', 'HEAD'), { kind: 'none' });
    assert.deepEqual(of('HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n'), { kind: 'none' });
    assert.deepEqual(of('HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n'), { kind: 'none' });
    assert.deepEqual(of('HTTP/1.1 100 Continue\r\n'), { kind: 'none' });
    assert.deepEqual(of('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n'), { kind: 'length', length: 5 });
    assert.deepEqual(of('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n'), { kind: 'chunked' });
    assert.deepEqual(of('HTTP/1.0 200 OK\r\n'), { kind: 'close' });
    assert.deepEqual(of('HTTP/1.1 404\r\n'), { kind: 'close' });
    malformed(() => of('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n'));
    for (const line of ['HTTP/1.1 20 OK', 'HTTP/1.1 099 x', 'HTTP/2 200 OK', 'HTTP/1.1 200 O\x01K', 'HTTP/1.1  200 OK']) malformed(() => response(`${line}\r\n\r\n`));
  });
});

describe('bodies', () => {
  const CHUNKED = '5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer-One: 1\r\nTrailer-Two: 2\r\n\r\n';

  test('chunked: the end is found however the bytes are cut, extensions and trailers included; what follows is not taken', () => {
    const bytes = Buffer.from(`${CHUNKED}NEXT`);
    for (let cut = 0; cut < CHUNKED.length; cut++) {
      const cursor = new BodyCursor({ kind: 'chunked' });
      const first = cursor.take(bytes.subarray(0, cut));
      assert.equal(first, cut, `cut ${cut}`);
      assert.equal(cursor.done, false);
      assert.equal(cut + cursor.take(bytes.subarray(cut)), CHUNKED.length, `cut ${cut}`);
      assert.equal(cursor.done, true);
    }
    const oneByOne = new BodyCursor({ kind: 'chunked' });
    let at = 0;
    while (!oneByOne.done) at += oneByOne.take(bytes.subarray(at, at + 1));
    assert.equal(at, CHUNKED.length);
    const noTrailers = new BodyCursor({ kind: 'chunked' });
    assert.equal(noTrailers.take(Buffer.from('1\r\nx\r\n0\r\n\r\nGET')), 11);
  });

  test('chunked: malformed bodies refused', () => {
    for (const text of [
      'x\r\n', '\r\n', '5\r\nhello0\r\n\r\n', '5\r\nhelloX\n', '5\nhello\r\n0\r\n\r\n', '5 \r\nhello\r\n', '-5\r\n', '0x5\r\n',
      `${'f'.repeat(13)}\r\n`, '5;a\x01b\r\n', '0\r\nBad\x00: x\r\n\r\n', '0\r\n\n', `5;${'e'.repeat(5000)}\r\n`,
    ]) {
      assert.throws(() => new BodyCursor({ kind: 'chunked' }).take(Buffer.from(text, 'latin1')), MalformedMessage, JSON.stringify(text));
    }
  });

  test('by length: counted across chunks; none: nothing taken; until close: everything', () => {
    const cursor = new BodyCursor({ kind: 'length', length: 10 });
    assert.equal(cursor.take(Buffer.from('0123')), 4);
    assert.equal(cursor.done, false);
    assert.equal(cursor.take(Buffer.from('456789GET /')), 6);
    assert.equal(cursor.done, true);
    const none = new BodyCursor({ kind: 'none' });
    assert.equal(none.done, true);
    assert.equal(none.take(Buffer.from('GET')), 0);
    const close = new BodyCursor({ kind: 'close' });
    assert.equal(close.take(Buffer.from('anything')), 8);
    assert.equal(close.done, false);
  });
});
