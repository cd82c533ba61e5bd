import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { cidrContains, embeddedIPv4, forbiddenReason, formatIp, parseCidr, parseIp, parseIPv4, parseIPv6 } from './ranges.ts';

const hex = (bytes: Uint8Array | undefined): string | undefined => (bytes === undefined ? undefined : Buffer.from(bytes).toString('hex'));

test('IPv4 parsing is strict dotted decimal', () => {
  assert.equal(hex(parseIPv4('0.0.0.0')), '00000000');
  assert.equal(hex(parseIPv4('255.255.255.255')), 'ffffffff');
  assert.equal(hex(parseIPv4('203.0.113.80')), 'cb007150');
  for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', '1.2.3.04', '0x7f.0.0.1', '1..2.3', ' 1.2.3.4',
    '1.2.3.4 ', '-1.2.3.4', '2130706433', '1.2.3.4/8', '１.2.3.4', '1e2.0.0.1', '1.2.3.']) {
    assert.equal(parseIPv4(bad), undefined, bad);
  }
});

test('IPv6 parsing covers every text form and agrees with node:net', () => {
  const cases: Array<[string, string]> = [
    ['::', '00000000000000000000000000000000'],
    ['::1', '00000000000000000000000000000001'],
    ['1::', '00010000000000000000000000000000'],
    ['fe80::1', 'fe800000000000000000000000000001'],
    ['FE80::ABCD', 'fe80000000000000000000000000abcd'],
    ['2001:db8:0:0:1:0:0:1', '20010db8000000000001000000000001'],
    ['2001:db8::1:0:0:1', '20010db8000000000001000000000001'],
    ['1:2:3:4:5:6:7:8', '00010002000300040005000600070008'],
    ['1:2:3:4:5:6:7::', '00010002000300040005000600070000'],
    ['::2:3:4:5:6:7:8', '00000002000300040005000600070008'],
    ['::ffff:127.0.0.1', '00000000000000000000ffff7f000001'],
    ['::FFFF:7f00:1', '00000000000000000000ffff7f000001'],
    ['64:ff9b::10.0.0.1', '0064ff9b00000000000000000a000001'],
    ['1:2:3:4:5:6:1.2.3.4', '00010002000300040005000601020304'],
  ];
  for (const [text, expected] of cases) {
    assert.equal(hex(parseIPv6(text)?.bytes), expected, text);
    assert.ok(net.isIPv6(text), `node agrees ${text} is IPv6`);
  }
  for (const bad of ['', ':', ':::', '1:::2', '1::2::3', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '1::2:3:4:5:6:7:8',
    ':1:2:3:4:5:6:7', '1:2:3:4:5:6:7:', '12345::', 'g::1', '::1.2.3', '1.2.3.4::', '::1.2.3.4:1', '::256.0.0.1',
    '1:2:3:4:5:6:7:1.2.3.4', '::1%', '::1%a b', '[::1]', '::ffff:01.2.3.4']) {
    assert.equal(parseIPv6(bad), undefined, bad);
    assert.ok(!net.isIPv6(bad) || bad.includes('%'), `node agrees ${bad} is not IPv6`);
  }
});

test('zone ids are kept apart from the address', () => {
  assert.deepEqual(parseIPv6('fe80::1%eth0'), { bytes: parseIPv6('fe80::1')!.bytes, zone: 'eth0' });
  const bracketed = parseIp('[fe80::1%25]');
  assert.equal(bracketed?.version, 6);
  assert.equal(bracketed?.version === 6 ? bracketed.zone : undefined, '25');
});

test('parseIp accepts brackets only around IPv6', () => {
  assert.equal(parseIp('[::1]')?.version, 6);
  assert.equal(parseIp('[1.2.3.4]'), undefined);
  assert.equal(parseIp('[::1'), undefined);
  assert.equal(parseIp('::1]'), undefined);
  assert.equal(parseIp('localhost'), undefined);
  assert.equal(parseIp('1.2.3.4')?.version, 4);
});

test('formatIp prints canonical RFC 5952 text', () => {
  const cases: Array<[string, string]> = [
    ['0:0:0:0:0:0:0:0', '::'], ['0:0:0:0:0:0:0:1', '::1'], ['2001:DB8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], ['1:0:0:2:0:0:0:3', '1:0:0:2::3'], ['fe80::1%eth0', 'fe80::1%eth0'],
    ['::ffff:127.0.0.1', '::ffff:7f00:1'], ['010.1.2.3', '010.1.2.3'],
  ];
  for (const [input, expected] of cases) {
    const ip = parseIp(input);
    if (input === '010.1.2.3') { assert.equal(ip, undefined); continue; }
    assert.equal(formatIp(ip!), expected, input);
  }
});

test('CIDR parsing and matching at byte and bit boundaries', () => {
  const inRange = (range: string, address: string): boolean => cidrContains(parseCidr(range)!, parseIp(address)!);
  assert.ok(inRange('10.0.0.0/8', '10.255.255.255'));
  assert.ok(!inRange('10.0.0.0/8', '11.0.0.0'));
  assert.ok(inRange('172.16.0.0/12', '172.31.255.255'));
  assert.ok(!inRange('172.16.0.0/12', '172.32.0.0'));
  assert.ok(!inRange('172.16.0.0/12', '172.15.255.255'));
  assert.ok(inRange('100.64.0.0/10', '100.127.0.1'));
  assert.ok(!inRange('100.64.0.0/10', '100.128.0.1'));
  assert.ok(inRange('0.0.0.0/0', '8.8.8.8'));
  assert.ok(inRange('1.2.3.4', '1.2.3.4'));
  assert.ok(!inRange('1.2.3.4', '1.2.3.5'));
  assert.ok(inRange('fe80::/10', 'febf::1'));
  assert.ok(!inRange('fe80::/10', 'fec0::1'));
  assert.ok(inRange('::/0', '2001:db8::1'));
  assert.ok(!inRange('0.0.0.0/0', '::ffff:1.2.3.4'), 'versions never match');
  for (const bad of ['10.0.0.0/33', '10.0.0.0/', '10.0.0.0/08', '::/129', 'fe80::1%eth0/64', 'x/8', '10.0.0.0/-1']) {
    assert.equal(parseCidr(bad), undefined, bad);
  }
});

test('forbidden: every range from DESIGN §7, with its reason', () => {
  const cases: Array<[string, string]> = [
    ['127.0.0.1', 'loopback'], ['127.255.255.254', 'loopback'], ['0.0.0.0', 'this-network'], ['0.1.2.3', 'this-network'],
    ['10.0.0.5', 'private'], ['172.16.0.1', 'private'], ['172.31.255.255', 'private'], ['192.168.1.1', 'private'],
    ['100.64.0.1', 'shared-address-space'], ['169.254.169.254', 'link-local'], ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'], ['255.255.255.255', 'broadcast'], ['240.0.0.1', 'reserved'],
    ['::', 'unspecified'], ['::1', 'loopback'], ['fe80::1', 'link-local'], ['febf:ffff::1', 'link-local'],
    ['fc00::1', 'unique-local'], ['fd12:3456::1', 'unique-local'], ['fec0::1', 'site-local'], ['ff02::1', 'multicast'],
    ['::ffff:127.0.0.1', 'ipv4-mapped:loopback'], ['::ffff:7f00:1', 'ipv4-mapped:loopback'],
    ['::ffff:169.254.169.254', 'ipv4-mapped:link-local'], ['::ffff:10.1.2.3', 'ipv4-mapped:private'],
    ['::ffff:0:127.0.0.1', 'ipv4-translated:loopback'], ['64:ff9b::127.0.0.1', 'nat64:loopback'],
    ['64:ff9b::a9fe:a9fe', 'nat64:link-local'], ['64:ff9b:1::1.2.3.4', 'local-nat64'],
    ['2002:7f00:1::', '6to4:loopback'], ['2002:a00:1::1', '6to4:private'], ['::127.0.0.1', 'ipv4-compatible'],
    ['::8.8.8.8', 'ipv4-compatible'], ['fe80::1%eth0', 'scoped-address'], ['[::1]', 'loopback'],
    // Teredo: the client address is stored inverted in the last 32 bits (7f000001 → 80fffffe).
    ['2001:0:4136:e378:8000:63bf:80ff:fffe', 'teredo-client:loopback'], ['2001:0:a00:1::', 'teredo-server:private'],
    ['localhost', 'not-an-ip-address'], ['', 'not-an-ip-address'], ['0x7f000001', 'not-an-ip-address'],
  ];
  for (const [address, reason] of cases) assert.equal(forbiddenReason(address), reason, address);
});

test('allowed: public addresses, including documentation and benchmark ranges', () => {
  for (const address of ['8.8.8.8', '1.1.1.1', '203.0.113.80', '198.18.0.1', '198.19.255.255', '192.0.2.1', '198.51.100.7',
    '100.63.255.255', '100.128.0.0', '172.15.255.255', '172.32.0.0', '11.0.0.0', '126.255.255.255', '128.0.0.1',
    '169.253.0.1', '223.255.255.255', '2001:db8::1', '2606:4700::1111', '2a00:1450::1', '::ffff:8.8.8.8',
    '64:ff9b::8.8.8.8', '2002:808:808::1', '2001:0:4136:e378:8000:63bf:f7f7:f7f7', '::ffff:203.0.113.80']) {
    assert.equal(forbiddenReason(address), undefined, address);
  }
});

test('this host: the host\'s own addresses are forbidden in every spelling', () => {
  const own = ['192.0.2.2', 'fd00::2', 'fe80::fc:ff:fe00:1%eth0', '203.0.113.9'];
  assert.equal(forbiddenReason('203.0.113.9', own), 'this-host');
  assert.equal(forbiddenReason('::ffff:203.0.113.9', own), 'this-host');
  assert.equal(forbiddenReason('192.0.2.2', own), 'this-host');
  assert.equal(forbiddenReason('64:ff9b::cb00:7109', own), 'nat64:this-host');
  assert.equal(forbiddenReason('203.0.113.10', own), undefined);
  assert.equal(forbiddenReason('192.0.2.3', own), undefined);
});

test('embeddedIPv4 finds the IPv4 behind each transition mechanism', () => {
  const embedded = (text: string): string[] => embeddedIPv4(parseIp(text)!).map(({ via, ipv4 }) => `${via}=${formatIp(ipv4)}`);
  assert.deepEqual(embedded('::ffff:1.2.3.4'), ['ipv4-mapped=1.2.3.4']);
  assert.deepEqual(embedded('64:ff9b::1.2.3.4'), ['nat64=1.2.3.4']);
  assert.deepEqual(embedded('2002:102:304::'), ['6to4=1.2.3.4']);
  assert.deepEqual(embedded('2001:0:102:304::fefd:fcfb'), ['teredo-server=1.2.3.4', 'teredo-client=1.2.3.4']);
  assert.deepEqual(embedded('2001:db8::1'), []);
  assert.deepEqual(embedded('1.2.3.4'), []);
});

test('parser agrees with node:net on random inputs (fuzz)', () => {
  const alphabet = '0123456789abcdefABCDEF:.%x[]';
  let seed = 42;
  const random = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff; };
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const groups = ['0', '1', 'ffff', 'FfFf', '0000', '00000', 'abcd', '64', '1.2.3.4', '255.255.255.255', '256.1.1.1', '01.2.3.4', ''];
  let valid = 0;
  for (let i = 0; i < 40000; i++) {
    let text = '';
    if (i % 2 === 0) {
      const length = 1 + Math.floor(random() * 20);
      for (let j = 0; j < length; j++) text += pick([...alphabet]);
    } else {
      const count = 1 + Math.floor(random() * 9);
      text = Array.from({ length: count }, () => pick(groups)).join(':');
      if (random() < 0.5) text = text.replace(':', '::');
    }
    if (text.includes('%') || text.includes('[')) { parseIp(text); continue; }
    const ours = parseIp(text);
    const theirs = net.isIP(text);
    assert.equal(ours === undefined ? 0 : ours.version, theirs, text);
    if (theirs !== 0) valid++;
  }
  assert.ok(valid > 1000, `the generator produces enough valid addresses (${valid})`);
});
