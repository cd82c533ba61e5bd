import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { allowsPort, MAX_PORT_ENTRIES, normalizePortSet, portEntriesOf, portSetOf, portSetOfClaim, portsClaimOf, type PortEntry } from './ports.ts';

const requestInvalid = (error: unknown) => isAppError(error, 'request.invalid');

test('allowsPort: single ports, ranges (inclusive), all', () => {
  const set = portSetOf([{ port: 8080 }, { fromPort: 9000, toPort: 9010 }]);
  for (const port of [8080, 9000, 9005, 9010]) assert.equal(allowsPort(set, port), true, String(port));
  for (const port of [8079, 8081, 8999, 9011, 1, 65535]) assert.equal(allowsPort(set, port), false, String(port));
  assert.equal(allowsPort({ all: true }, 1), true);
  assert.equal(allowsPort({ all: true }, 65535), true);
});

test('entries become sorted ranges with overlaps and neighbours merged, and back', () => {
  const set = portSetOf([{ fromPort: 9000, toPort: 9010 }, { port: 8080 }, { port: 9011 }, { fromPort: 9005, toPort: 9006 }, { port: 8080 }]);
  assert.deepEqual(set, { ranges: [{ from: 8080, to: 8080 }, { from: 9000, to: 9011 }] });
  assert.deepEqual(portEntriesOf(set), [{ port: 8080 }, { fromPort: 9000, toPort: 9011 }]);
  assert.deepEqual(portEntriesOf(portSetOf([{ all: true }])), [{ all: true }]);
});

test('out-of-bounds entries are request.invalid', () => {
  const cases: PortEntry[][] = [
    [],
    [{ port: 0 }],
    [{ port: 65536 }],
    [{ port: 80.5 }],
    [{ fromPort: 9000, toPort: 8000 }],
    [{ all: true }, { port: 80 }],
    [{ all: false as true }],
    Array.from({ length: MAX_PORT_ENTRIES + 1 }, (_, i) => ({ port: 1000 + 2 * i })),
  ];
  for (const entries of cases) assert.throws(() => portSetOf(entries), requestInvalid, JSON.stringify(entries).slice(0, 60));
  assert.throws(() => normalizePortSet({ ranges: [{ from: Number.NaN, to: 80 }] }), requestInvalid);
});

test('the compact claim round-trips; anything this code does not mint is refused', () => {
  const set = portSetOf([{ port: 8080 }, { fromPort: 3000, toPort: 3100 }]);
  assert.deepEqual(portsClaimOf(set), [[3000, 3100], [8080, 8080]]);
  assert.deepEqual(portSetOfClaim(portsClaimOf(set)), set);
  assert.equal(portsClaimOf({ all: true }), '*');
  assert.deepEqual(portSetOfClaim('*'), { all: true });
  for (const bad of [undefined, null, 'all', [], [[1]], [[0, 1]], [[2, 1]], [['80', '80']], { from: 1, to: 2 }, Array(MAX_PORT_ENTRIES + 1).fill([1, 1])]) {
    assert.equal(portSetOfClaim(bad), undefined, JSON.stringify(bad)?.slice(0, 40));
  }
});
