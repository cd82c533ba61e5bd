import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { checkAddresses, checkBeforeResolve, compilePolicy, type EgressPolicy } from './policy.ts';
import { forbiddenReason } from './ranges.ts';

const verdict = (policy: EgressPolicy, host: string, port: number, addresses: string[], isIpLiteral = false): string => {
  const result = checkAddresses(compilePolicy(policy), { host, port, isIpLiteral }, addresses, (a) => forbiddenReason(a));
  return result.ok ? `ok ${result.addresses.join(',')}` : result.refusal.code;
};

test('mode none refuses everything before any resolution', () => {
  assert.equal(checkBeforeResolve(compilePolicy({ mode: 'none' }), 'example.com', 443, false)?.code, 'egress.mode_none');
  assert.equal(verdict({ mode: 'none', allow: [{ domain: 'example.com' }] }, 'example.com', 443, ['203.0.113.1']), 'egress.mode_none');
});

test('internet mode allows any public destination on any port', () => {
  assert.equal(verdict({ mode: 'internet' }, 'deb.debian.org', 80, ['203.0.113.80']), 'ok 203.0.113.80');
  assert.equal(verdict({ mode: 'internet' }, 'x.example', 25, ['198.18.0.1', '2001:db8::1']), 'ok 198.18.0.1,2001:db8::1');
});

test('one forbidden address refuses the whole destination (DNS rebinding, split answers)', () => {
  assert.equal(verdict({ mode: 'internet' }, 'rebind.example', 443, ['203.0.113.1', '127.0.0.1']), 'egress.forbidden_destination');
  assert.equal(verdict({ mode: 'internet' }, 'meta.example', 80, ['169.254.169.254']), 'egress.forbidden_destination');
  assert.equal(verdict({ mode: 'internet' }, 'weird.example', 80, ['not an address']), 'egress.forbidden_destination');
  assert.equal(verdict({ mode: 'internet' }, 'empty.example', 80, []), 'egress.dns_failed');
});

test('an allow-list can never re-open a forbidden range', () => {
  const policy: EgressPolicy = { mode: 'internet', allow: [{ cidr: '0.0.0.0/0' }, { cidr: '10.0.0.0/8' }, { domain: 'intranet.example' }] };
  assert.equal(verdict(policy, 'intranet.example', 80, ['10.0.0.5']), 'egress.forbidden_destination');
  assert.equal(verdict(policy, '127.0.0.1', 80, ['127.0.0.1'], true), 'egress.forbidden_destination');
});

test('allow-list: domains exact and *.suffix, cidrs, ports', () => {
  const policy: EgressPolicy = {
    mode: 'internet',
    allow: [
      { domain: 'deb.debian.org', ports: [80, 443] },
      { domain: '*.npmjs.org', ports: { from: 443, to: 443 } },
      { cidr: '198.51.100.0/24' },
      { cidr: '2001:db8::/32', ports: [22] },
    ],
  };
  assert.equal(verdict(policy, 'deb.debian.org', 443, ['203.0.113.80']), 'ok 203.0.113.80');
  assert.equal(verdict(policy, 'deb.debian.org', 8080, ['203.0.113.80']), 'egress.not_allowed');
  assert.equal(verdict(policy, 'registry.npmjs.org', 443, ['203.0.113.5']), 'ok 203.0.113.5');
  assert.equal(verdict(policy, 'npmjs.org', 443, ['203.0.113.5']), 'egress.not_allowed');
  assert.equal(verdict(policy, 'evilnpmjs.org', 443, ['203.0.113.5']), 'egress.not_allowed');
  assert.equal(verdict(policy, 'any.example', 1234, ['198.51.100.7', '203.0.113.9']), 'ok 198.51.100.7');
  assert.equal(verdict(policy, 'any.example', 1234, ['::ffff:198.51.100.7']), 'ok ::ffff:198.51.100.7');
  assert.equal(verdict(policy, '198.51.100.7', 1, ['198.51.100.7'], true), 'ok 198.51.100.7');
  assert.equal(verdict(policy, 'v6.example', 22, ['2001:db8::5']), 'ok 2001:db8::5');
  assert.equal(verdict(policy, 'v6.example', 23, ['2001:db8::5']), 'egress.not_allowed');
  // A domain rule matches names only: an IP literal never matches it.
  assert.equal(verdict(policy, '203.0.113.80', 443, ['203.0.113.80'], true), 'egress.not_allowed');
});

test('allow-list misses that need no DNS are refused before resolving', () => {
  const policy = compilePolicy({ mode: 'internet', allow: [{ domain: 'deb.debian.org' }, { domain: '*.example', ports: [443] }] });
  assert.equal(checkBeforeResolve(policy, 'exfiltrate-secret.attacker.test', 443, false)?.code, 'egress.not_allowed');
  assert.equal(checkBeforeResolve(policy, 'a.example', 80, false)?.code, 'egress.not_allowed');
  assert.equal(checkBeforeResolve(policy, 'a.example', 443, false), undefined);
  assert.equal(checkBeforeResolve(policy, 'deb.debian.org', 80, false), undefined);
  const withCidr = compilePolicy({ mode: 'internet', allow: [{ cidr: '198.51.100.0/24' }] });
  assert.equal(checkBeforeResolve(withCidr, 'anything.test', 80, false), undefined, 'a cidr rule needs the addresses');
});

test('malformed policies are rejected at start with config.invalid', () => {
  const bad: EgressPolicy[] = [
    { mode: 'everything' as 'internet' },
    { mode: 'internet', allow: [{ cidr: '10.0.0.0/40' }] },
    { mode: 'internet', allow: [{ cidr: 'example.com' }] },
    { mode: 'internet', allow: [{ domain: '*' }] },
    { mode: 'internet', allow: [{ domain: 'a..b' }] },
    { mode: 'internet', allow: [{ domain: '*.*.b' }] },
    { mode: 'internet', allow: [{ domain: 'exa mple.com' }] },
    { mode: 'internet', allow: [{ ports: [] }] },
    { mode: 'internet', allow: [{ ports: [0] }] },
    { mode: 'internet', allow: [{ ports: [1.5] }] },
    { mode: 'internet', allow: [{ ports: { from: 10, to: 5 } }] },
    { mode: 'internet', allow: [{ ports: { from: 1, to: 70000 } }] },
  ];
  for (const policy of bad) assert.throws(() => compilePolicy(policy), (error) => isAppError(error, 'config.invalid'), JSON.stringify(policy));
  assert.doesNotThrow(() => compilePolicy({ mode: 'internet', allow: [{ domain: 'Deb.Debian.org.' }, { domain: '*.co.uk' }] }));
});
