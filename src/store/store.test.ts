import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { isAppError } from '../errors/errors.ts';
import { migrations } from './migrations.ts';
import { openStore } from './store.ts';
import { exited, freshDbFile, spawnChild } from './test-support.ts';

function appliedVersions(file: string): number[] {
  const raw = new Database(file, { readonly: true });
  try {
    return (raw.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[]).map((r) => r.version);
  } finally {
    raw.close();
  }
}

test('creates the file 0600 in a new directory, with WAL and full fsync', () => {
  const file = freshDbFile();
  const store = openStore(file);
  store.close();
  assert.equal(statSync(file).mode & 0o777, 0o600);
  const raw = new Database(file);
  assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
  raw.close();
});

test('migrations apply once and reopening is a no-op', async () => {
  const file = freshDbFile();
  const first = openStore(file);
  const account = await first.accounts.createAccount('keep');
  first.close();
  const expected = migrations.map((_, i) => i + 1);
  assert.deepEqual(appliedVersions(file), expected);
  for (let i = 0; i < 2; i++) {
    const again = openStore(file);
    assert.deepEqual(await again.accounts.getAccount(account.id), account);
    again.close();
  }
  assert.deepEqual(appliedVersions(file), expected);
});

test('processes opening a new database at once apply each migration once', async () => {
  const file = freshDbFile();
  const results = await Promise.all([0, 1].map(() => exited(spawnChild(['open', file]))));
  assert.deepEqual(results, [0, 1].map(() => ({ code: 0, signal: null })));
  assert.deepEqual(appliedVersions(file), migrations.map((_, i) => i + 1));
});

test('a database with a newer schema is refused', () => {
  const file = freshDbFile();
  openStore(file).close();
  const raw = new Database(file);
  raw.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(migrations.length + 1, new Date().toISOString());
  raw.close();
  assert.throws(
    () => openStore(file),
    (e) => isAppError(e, 'config.invalid') && e.details.schemaVersion === migrations.length + 1 && /newer/.test(e.message),
  );
});

test('committed changes survive close without ceremony', async () => {
  const file = freshDbFile();
  const store = openStore(file);
  const account = await store.accounts.createAccount('abrupt');
  // no close(): the connection is simply dropped
  const other = openStore(file);
  assert.deepEqual(await other.accounts.getAccountByName('abrupt'), account);
  other.close();
  store.close();
});

test('committed changes survive SIGKILL; the transaction in flight leaves no trace', async () => {
  const file = freshDbFile();
  openStore(file).close();
  const { signal } = await exited(spawnChild(['crash', file]));
  assert.equal(signal, 'SIGKILL');
  const store = openStore(file);
  try {
    const account = await store.accounts.getAccountByName('crash');
    assert.ok(account);
    assert.equal((await store.images.get(account.id, 'web')).version, '1.0');
    const vm = await store.microvms.get(account.id, 'mvm-crash');
    assert.equal(vm?.state, 'RUNNING');
    assert.equal(vm?.pid, 4242);
    assert.equal(await store.accounts.getAccountByName('torn'), undefined);
  } finally {
    store.close();
  }
});
