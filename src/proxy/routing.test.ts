import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { destinationOf, endpointUrl, requestedPort } from './routing.ts';

const ID = 'mvm-0f8fad5b-d9cb-469f-a165-70867728950e';

test('a MicroVM host, with or without a port prefix, a :port suffix, any case or a trailing dot', () => {
  assert.deepEqual(destinationOf(`${ID}.cocoon.localhost:8443`, 'cocoon.localhost'), { microvmId: ID });
  assert.deepEqual(destinationOf(`${ID.toUpperCase()}.Cocoon.Localhost.`, 'cocoon.localhost'), { microvmId: ID });
  assert.deepEqual(destinationOf(`50051-${ID}.cocoon.localhost`, 'cocoon.localhost'), { microvmId: ID, guestPort: 50051 });
  assert.deepEqual(destinationOf(`${ID}.example.com`, 'example.com'), { microvmId: ID });
});

test('anything else is no MicroVM endpoint', () => {
  for (const host of [undefined, '', 'cocoon.localhost', `${ID}.other.localhost`, `x.${ID}.cocoon.localhost`, `${ID}x.cocoon.localhost`,
    'mvm-1.cocoon.localhost', `0-${ID}.cocoon.localhost`, `65536-${ID}.cocoon.localhost`, `${ID}.cocoon.localhost.evil.com`]) {
    assert.equal(destinationOf(host, 'cocoon.localhost'), undefined, String(host));
  }
});

test('a requested port is 1–65535 or request.invalid', () => {
  assert.equal(requestedPort(undefined, 'X-Cocoon-Port'), undefined);
  assert.equal(requestedPort(' 9000 ', 'X-Cocoon-Port'), 9000);
  for (const bad of ['', '0', '65536', 'http', '80a', '-1']) {
    assert.throws(() => requestedPort(bad, 'X-Cocoon-Port'), (error) => isAppError(error, 'request.invalid'), bad);
  }
});

test('endpoint URLs leave out port 443', () => {
  assert.equal(endpointUrl('cocoon.localhost', 8443, ID), `https://${ID}.cocoon.localhost:8443`);
  assert.equal(endpointUrl('vms.example.com', 443, ID), `https://${ID}.vms.example.com`);
});
