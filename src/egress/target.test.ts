import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatIp } from './ranges.ts';
import { forwardableHeaders, parseConnectTarget, parseHost, parseHttpTarget } from './target.ts';

const connect = (text: string): string => {
  const result = parseConnectTarget(text);
  if (!result.ok) return `error`;
  return `${result.value.ip ? 'ip' : 'name'} ${result.value.host} ${result.value.port}`;
};

test('CONNECT targets: names, IPv4, bracketed IPv6, normalised numeric forms', () => {
  assert.equal(connect('example.com:443'), 'name example.com 443');
  assert.equal(connect('Example.COM.:443'), 'name example.com 443');
  assert.equal(connect('1.2.3.4:80'), 'ip 1.2.3.4 80');
  assert.equal(connect('[::1]:443'), 'ip ::1 443');
  assert.equal(connect('[::FFFF:127.0.0.1]:443'), 'ip ::ffff:7f00:1 443');
  assert.equal(connect('[fe80::1%eth0]:22'), 'ip fe80::1%eth0 22');
  // What a URL parser (and glibc's inet_aton) reads as 127.0.0.1 is treated as that literal.
  assert.equal(connect('0x7f000001:443'), 'ip 127.0.0.1 443');
  assert.equal(connect('2130706433:443'), 'ip 127.0.0.1 443');
  assert.equal(connect('127.1:443'), 'ip 127.0.0.1 443');
  assert.equal(connect('0177.0.0.1:443'), 'ip 127.0.0.1 443');
  assert.equal(connect('my_host.internal:8080'), 'name my_host.internal 8080');
  assert.equal(connect('localhost:1'), 'name localhost 1');
  assert.equal(connect('a.b:65535'), 'name a.b 65535');
});

test('CONNECT targets that are refused as malformed', () => {
  for (const bad of ['example.com', 'example.com:', 'example.com:0', 'example.com:65536', 'example.com:+443',
    'example.com:443x', '::1:443', '[::1]443', '[::1', '[1.2.3.4]:443', '[::1]:', ':443', 'a b:443', 'a/b:443',
    'user@host:443', 'http://example.com:443', 'ex%41mple.com:443', '999.1.1.1:443', 'example..com:443', '.:443',
    'bücher.de:443', `${'a'.repeat(64)}.com:443`, `${'a.'.repeat(200)}com:443`, '*:443', '', '\u0000:443']) {
    assert.equal(connect(bad), 'error', bad);
  }
});

test('absolute-form HTTP targets', () => {
  const parse = (text: string): unknown => {
    const result = parseHttpTarget(text);
    return result.ok ? { host: result.value.host, port: result.value.port, path: result.value.path, hostHeader: result.value.hostHeader } : 'error';
  };
  assert.deepEqual(parse('http://deb.debian.org/debian/dists/bookworm/InRelease'),
    { host: 'deb.debian.org', port: 80, path: '/debian/dists/bookworm/InRelease', hostHeader: 'deb.debian.org' });
  assert.deepEqual(parse('HTTP://Example.com:8080'), { host: 'example.com', port: 8080, path: '/', hostHeader: 'Example.com:8080' });
  assert.deepEqual(parse('http://example.com?q=1#frag'), { host: 'example.com', port: 80, path: '/?q=1', hostHeader: 'example.com' });
  assert.deepEqual(parse('http://user:secret@example.com/a/../b%2F'),
    { host: 'example.com', port: 80, path: '/a/../b%2F', hostHeader: 'example.com' });
  assert.deepEqual(parse('http://[::1]:8080/x'), { host: '::1', port: 8080, path: '/x', hostHeader: '[::1]:8080' });
  assert.deepEqual(parse('http://169.254.169.254/latest/meta-data/'),
    { host: '169.254.169.254', port: 80, path: '/latest/meta-data/', hostHeader: '169.254.169.254' });
  assert.deepEqual(parse('http://0x7f000001:81/'), { host: '127.0.0.1', port: 81, path: '/', hostHeader: '0x7f000001:81' });
  for (const bad of ['/relative', '*', 'https://example.com/', 'ftp://example.com/', 'http:/example.com/', 'http://',
    'http://:80/', 'http://example.com:99999/', 'http://exa mple.com/', 'http://example.com/a b', '//example.com/']) {
    assert.equal(parse(bad), 'error', bad);
  }
});

test('parseHost keeps IPv6 canonical and refuses empty labels', () => {
  const host = parseHost('[2001:DB8:0:0::1]');
  assert.ok(host.ok && host.value.ip !== undefined && formatIp(host.value.ip) === '2001:db8::1');
  assert.equal(parseHost('a..b').ok, false);
  assert.equal(parseHost('').ok, false);
});

test('forwardable headers drop hop-by-hop, Connection-named and Proxy-* headers, keep duplicates', () => {
  const raw = [
    'Host', 'evil.example', 'Connection', 'keep-alive, X-Secret', 'X-Secret', 'drop me', 'Keep-Alive', 'timeout=5',
    'Proxy-Authorization', 'Basic Zm9vOmJhcg==', 'Proxy-Connection', 'keep-alive', 'TE', 'trailers', 'Upgrade', 'h2c',
    'Transfer-Encoding', 'chunked', 'Expect', '100-continue', 'Accept', 'text/html', 'Cookie', 'a=1', 'Cookie', 'b=2',
    'Content-Length', '5', 'Authorization', 'Bearer origin-token',
  ];
  assert.deepEqual(forwardableHeaders(raw), [
    'Accept', 'text/html', 'Cookie', 'a=1', 'Cookie', 'b=2', 'Content-Length', '5', 'Authorization', 'Bearer origin-token',
  ]);
  assert.deepEqual(forwardableHeaders(['Odd']), []);
});
