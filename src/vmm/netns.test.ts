import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { allowListScript, checkEgressSpec, resolversOf, tableScript } from './netns.ts';

test('the table lets VM namespaces reach public addresses and their resolvers only', () => {
  const script = tableScript();
  assert.match(script, /^create table inet cocoon$/m);
  for (const range of ['0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.168.0.0/16', '224.0.0.0/4', '240.0.0.0/4']) {
    assert.ok(script.includes(range), range);
  }
  const guest = script.split('\n').filter((line) => line.startsWith('add rule inet cocoon guest '));
  const position = (pattern: RegExp): number => guest.findIndex((line) => pattern.test(line));
  // The resolvers' port 53 comes before the private ranges (the host's resolver is often private),
  // and the per-VM allow-lists after them (an allow-list never opens a forbidden range).
  assert.ok(position(/ipv6 reject/) < position(/@resolvers4/));
  assert.ok(position(/@resolvers4 .*dport 53 accept/) < position(/@forbidden4 .*reject/));
  assert.ok(position(/@forbidden4 .*reject/) < position(/vmap @allowlists/));
  assert.match(guest.at(-1)!, /guest accept$/);
  // The host itself: nothing new from a VM namespace.
  assert.match(script, /input iifname "cv\*" ct state established,related accept\nadd rule inet cocoon input iifname "cv\*" meta l4proto tcp reject with tcp reset\n/);
});

test('an allow-list is a chain of its own that ends in a reject', () => {
  const script = allowListScript('cvabc', [{ cidr: '203.0.113.0/24', ports: [80, 443] }, { cidr: '198.51.100.7/32' }]);
  assert.deepEqual(script.split('\n'), [
    'add chain inet cocoon allow-cvabc',
    'add rule inet cocoon allow-cvabc ip daddr 203.0.113.0/24 meta l4proto { tcp, udp } th dport { 80, 443 } accept',
    'add rule inet cocoon allow-cvabc ip daddr 198.51.100.7/32 accept',
    'add rule inet cocoon allow-cvabc meta l4proto tcp reject with tcp reset',
    'add rule inet cocoon allow-cvabc reject with icmpx type admin-prohibited',
    'add element inet cocoon allowlists { "cvabc" : jump allow-cvabc }',
  ]);
});

test('egress specs are checked and normalised', () => {
  assert.deepEqual(checkEgressSpec({ mode: 'none' }), { mode: 'none' });
  assert.deepEqual(checkEgressSpec({ mode: 'internet' }), { mode: 'internet' });
  assert.deepEqual(checkEgressSpec({ mode: 'internet', allow: [{ cidr: '203.0.113.9/24', ports: [443, 80, 443] }, { cidr: '198.51.100.7' }] }),
    { mode: 'internet', allow: [{ cidr: '203.0.113.0/24', ports: [80, 443] }, { cidr: '198.51.100.7/32' }] });
  for (const bad of [
    { mode: 'none' as const, allow: [{ cidr: '203.0.113.0/24' }] },
    { mode: 'internet' as const, allow: [] },
    { mode: 'internet' as const, allow: [{ cidr: 'fd00::/8' }] },
    { mode: 'internet' as const, allow: [{ cidr: '203.0.113.0/33' }] },
    { mode: 'internet' as const, allow: [{ cidr: '203.0.113.0/24; flush ruleset' }] },
    { mode: 'internet' as const, allow: [{ cidr: '203.0.113.0/24', ports: [0] }] },
  ]) assert.throws(() => checkEgressSpec(bad), (error) => isAppError(error, 'request.invalid'), JSON.stringify(bad));
});

test('resolvers are the IPv4 nameservers of resolv.conf', () => {
  assert.deepEqual(resolversOf('# comment\nnameserver 10.255.255.53\nnameserver fd00::53\n  nameserver 192.0.2.53\nsearch example\n'), ['10.255.255.53', '192.0.2.53']);
});
