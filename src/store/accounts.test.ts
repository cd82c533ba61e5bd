import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { openStore } from './store.ts';
import { freshDbFile } from './test-support.ts';

function assertNotOnDisk(file: string, secret: string): void {
  const body = secret.slice(3);
  for (const name of readdirSync(path.dirname(file))) {
    const bytes = readFileSync(path.join(path.dirname(file), name));
    assert.equal(bytes.includes(body), false, `secret found in ${name}`);
    assert.equal(bytes.includes(Buffer.from(body, 'base64url')), false, `secret bytes found in ${name}`);
  }
}

test('an API key authenticates its account; its secret is never stored', async () => {
  const file = freshDbFile();
  const store = openStore(file);
  const account = await store.accounts.createAccount('alice');
  assert.match(account.id, /^acct-[0-9a-f-]{36}$/);
  const { id, secret } = await store.accounts.createApiKey(account.id);
  assert.match(id, /^key-/);
  assert.match(secret, /^ck_[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(await store.accounts.authenticate(secret), { accountId: account.id, keyId: id });
  const [info] = await store.accounts.listApiKeys(account.id);
  assert.equal(info?.prefix, secret.slice(0, 8));
  assert.ok(info?.lastUsedAt);
  assert.equal(JSON.stringify(info).includes(secret), false);
  assertNotOnDisk(file, secret); // the database and its WAL
  store.close();
  assertNotOnDisk(file, secret); // after the checkpoint into the database file
});

test('wrong, malformed and revoked keys are refused', async () => {
  const store = openStore(freshDbFile());
  const account = await store.accounts.createAccount('bob');
  const first = await store.accounts.createApiKey(account.id);
  const second = await store.accounts.createApiKey(account.id);
  const wrong = `ck_${'A'.repeat(43)}`;
  for (const secret of [wrong, '', 'ck_', first.secret.slice(0, -1), `${first.secret}x`, first.secret.replace('ck_', 'cx_')]) {
    assert.equal(await store.accounts.authenticate(secret), undefined, secret);
  }
  assert.equal(await store.accounts.revokeApiKey(first.id), true);
  assert.equal(await store.accounts.authenticate(first.secret), undefined);
  assert.deepEqual(await store.accounts.authenticate(second.secret), { accountId: account.id, keyId: second.id });
  const revokedAt = (await store.accounts.listApiKeys(account.id)).find((k) => k.id === first.id)?.revokedAt;
  assert.ok(revokedAt);
  assert.equal(await store.accounts.revokeApiKey(first.id), true);
  assert.equal((await store.accounts.listApiKeys(account.id)).find((k) => k.id === first.id)?.revokedAt, revokedAt);
  assert.equal(await store.accounts.revokeApiKey('key-nope'), false);
  store.close();
});

test('account names are unique and validated; keys need an existing account', async () => {
  const store = openStore(freshDbFile());
  await store.accounts.createAccount('carol');
  await assert.rejects(store.accounts.createAccount('carol'), (e) => isAppError(e, 'config.invalid'));
  for (const name of ['', 'Upper', '../x', 'a'.repeat(64)]) {
    await assert.rejects(store.accounts.createAccount(name), (e) => isAppError(e, 'config.invalid'), name);
  }
  await assert.rejects(store.accounts.createApiKey('acct-missing'), (e) => isAppError(e, 'config.invalid'));
  store.close();
});

test('ensureAdmin creates the admin account and shows its key once', async () => {
  const file = freshDbFile();
  const store = openStore(file);
  const first = await store.accounts.ensureAdmin();
  assert.equal(first.created, true);
  assert.equal(first.account.name, 'admin');
  assert.deepEqual(await store.accounts.authenticate(first.secret!), { accountId: first.account.id, keyId: (await store.accounts.listApiKeys(first.account.id))[0]!.id });
  store.close();
  const reopened = openStore(file);
  const second = await reopened.accounts.ensureAdmin();
  assert.deepEqual(second, { account: first.account, created: false });
  assert.equal((await reopened.accounts.listApiKeys(first.account.id)).length, 1);
  reopened.close();
});
