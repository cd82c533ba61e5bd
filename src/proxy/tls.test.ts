import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { coversDomain, ensureProxyTls, tlsPaths } from './tls.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-tls-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const leafOf = (pem: string) => new X509Certificate(pem.split(/(?<=-----END CERTIFICATE-----\n?)/)[0]!);

test('first start: a local CA and a wildcard leaf for the domain, keys 0600 in a 0700 directory; then reused', async () => {
  const dataDir = path.join(dir, 'a');
  const first = await ensureProxyTls({ dataDir, domain: 'cocoon.localhost' });
  assert.equal(first.created, 'ca');
  const paths = tlsPaths(dataDir);
  assert.equal(first.caPath, paths.caCert);
  assert.equal((await stat(paths.dir)).mode & 0o777, 0o700);
  for (const key of [paths.caKey, paths.key]) assert.equal((await stat(key)).mode & 0o777, 0o600, key);

  const ca = new X509Certificate(await readFile(paths.caCert, 'utf8'));
  const leaf = leafOf(first.cert);
  assert.ok(ca.ca);
  assert.ok(!leaf.ca);
  assert.ok(leaf.verify(ca.publicKey), 'the leaf is signed by the CA');
  assert.ok(leaf.checkIssued(ca));
  assert.match(leaf.subjectAltName ?? '', /DNS:\*\.cocoon\.localhost, DNS:cocoon\.localhost/);
  assert.equal(leaf.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  const days = (Date.parse(leaf.validTo) - Date.parse(leaf.validFrom)) / 86_400_000;
  assert.ok(days <= 825, `leaf valid for ${days} days`);
  assert.ok(coversDomain(first.cert, 'cocoon.localhost'));
  assert.ok(first.cert.includes((await readFile(paths.caCert, 'utf8')).trim()), 'the chain includes the CA');

  const again = await ensureProxyTls({ dataDir, domain: 'cocoon.localhost' });
  assert.equal(again.created, undefined);
  assert.equal(again.cert, first.cert);
  assert.equal(again.key, first.key);
});

test('another domain re-issues the leaf under the same CA; a leaf near its end too', async () => {
  const dataDir = path.join(dir, 'b');
  const first = await ensureProxyTls({ dataDir, domain: 'cocoon.localhost' });
  const caBefore = await readFile(tlsPaths(dataDir).caCert, 'utf8');
  const moved = await ensureProxyTls({ dataDir, domain: 'vms.example.test' });
  assert.equal(moved.created, 'leaf');
  assert.equal(await readFile(tlsPaths(dataDir).caCert, 'utf8'), caBefore);
  assert.ok(coversDomain(moved.cert, 'vms.example.test'));
  assert.ok(!coversDomain(moved.cert, 'cocoon.localhost'));
  assert.notEqual(moved.key, first.key);

  const later = await ensureProxyTls({ dataDir, domain: 'vms.example.test', now: () => Date.now() + 810 * 86_400_000 });
  assert.equal(later.created, 'leaf');
});

test('a user-supplied certificate and key replace the local CA; they come together and must match', async () => {
  const own = await ensureProxyTls({ dataDir: path.join(dir, 'c'), domain: 'own.test' });
  const other = await ensureProxyTls({ dataDir: path.join(dir, 'd'), domain: 'own.test' });
  const certPath = path.join(dir, 'own.pem');
  const keyPath = path.join(dir, 'own.key');
  const otherKeyPath = path.join(dir, 'other.key');
  await writeFile(certPath, own.cert);
  await writeFile(keyPath, own.key);
  await writeFile(otherKeyPath, other.key);

  const supplied = await ensureProxyTls({ dataDir: path.join(dir, 'e'), domain: 'own.test', certPath, keyPath });
  assert.equal(supplied.cert, own.cert);
  assert.equal(supplied.caPath, undefined);
  await assert.rejects(stat(tlsPaths(path.join(dir, 'e')).dir), 'no local CA is made');

  await assert.rejects(ensureProxyTls({ dataDir: dir, domain: 'own.test', certPath }), (error) => isAppError(error, 'config.invalid'));
  await assert.rejects(ensureProxyTls({ dataDir: dir, domain: 'own.test', certPath, keyPath: otherKeyPath }),
    (error) => isAppError(error, 'config.invalid') && /does not belong/.test(error.message));
  await assert.rejects(ensureProxyTls({ dataDir: dir, domain: 'own.test', certPath, keyPath: path.join(dir, 'missing.key') }),
    (error) => isAppError(error, 'config.invalid'));
});
