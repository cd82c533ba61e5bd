import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { openStore } from './store.ts';
import { exited, freshDbFile, imageFields, microvmRecord, spawnChild, waitForLine } from './test-support.ts';

const notFound = (e: unknown) => isAppError(e, 'image.not_found');

test('each create of a name adds a major version; the record round-trips', async () => {
  const store = openStore(freshDbFile());
  const { id } = await store.accounts.createAccount('a');
  const fields = { ...imageFields('web'), baseImage: 'debian', warnings: ['w'], runtime: { argv: ['app'], env: { A: '1' }, cwd: '/', user: 'root', exposedPorts: [8080], labels: {} } };
  const first = await store.images.createVersion(id, fields);
  assert.deepEqual(first, { ...fields, version: '1.0', arn: 'cocoon:image:web:1.0', accountId: id, state: 'CREATING', createdAt: first.createdAt, updatedAt: first.createdAt });
  assert.deepEqual(await store.images.get(id, 'web', '1.0'), first);
  assert.equal((await store.images.createVersion(id, imageFields('web'))).version, '2.0');
  assert.equal((await store.images.createVersion(id, imageFields('api'))).version, '1.0');
  assert.deepEqual(await store.images.names(id), ['api', 'web']);
  assert.deepEqual((await store.images.list(id, 'web')).map((r) => r.version), ['1.0', '2.0']);
  store.close();
});

test('save writes mutable fields and clears removed ones; get without a version is the latest ACTIVE', async () => {
  const store = openStore(freshDbFile());
  const { id } = await store.accounts.createAccount('a');
  await assert.rejects(store.images.get(id, 'web'), notFound);
  const [v1, v2, v3] = [await store.images.createVersion(id, imageFields('web')), await store.images.createVersion(id, imageFields('web')), await store.images.createVersion(id, imageFields('web'))];
  for (const record of [v1!, v2!]) {
    record.state = 'ACTIVE';
    record.layers = ['sha256:1'];
    await store.images.save(record);
  }
  v3!.state = 'FAILED';
  v3!.stateReason = 'boom';
  v3!.stateReasonCode = 'image.build_failed';
  await store.images.save(v3!);
  assert.equal((await store.images.get(id, 'web')).version, '2.0');
  assert.deepEqual(await store.images.get(id, 'web', '3.0'), v3);
  delete v3!.stateReason;
  delete v3!.stateReasonCode;
  await store.images.save(v3!);
  assert.deepEqual(await store.images.get(id, 'web', '3.0'), v3);
  assert.deepEqual((await store.images.get(id, 'web', '1.0')).layers, ['sha256:1']);
  for (const [name, version] of [['web', '9.0'], ['web', '01.0'], ['web', 'latest'], ['../etc', '1.0']] as const) {
    await assert.rejects(store.images.get(id, name, version), notFound, `${name}:${version}`);
  }
  store.close();
});

test('names are validated', async () => {
  const store = openStore(freshDbFile());
  const { id } = await store.accounts.createAccount('a');
  for (const name of ['', 'UPPER', '../x', 'a'.repeat(64), 'has space']) {
    await assert.rejects(store.images.createVersion(id, imageFields(name)), (e) => isAppError(e, 'config.invalid'), name);
  }
  assert.deepEqual(await store.images.names(id), []);
  store.close();
});

test('another account cannot see, list, save or delete an image', async () => {
  const store = openStore(freshDbFile());
  const a = await store.accounts.createAccount('a');
  const b = await store.accounts.createAccount('b');
  const image = await store.images.createVersion(a.id, imageFields('web'));
  image.state = 'ACTIVE';
  await store.images.save(image);
  await assert.rejects(store.images.get(b.id, 'web'), notFound);
  await assert.rejects(store.images.get(b.id, 'web', '1.0'), notFound);
  assert.deepEqual(await store.images.list(b.id, 'web'), []);
  assert.deepEqual(await store.images.names(b.id), []);
  await assert.rejects(store.images.delete(b.id, 'web', '1.0'), notFound);
  await assert.rejects(store.images.save({ ...image, accountId: b.id }), notFound);
  // B's own "web" is independent of A's.
  assert.equal((await store.images.createVersion(b.id, imageFields('web'))).version, '1.0');
  assert.equal((await store.images.get(a.id, 'web')).state, 'ACTIVE');
  store.close();
});

test('delete removes one version, never reuses its number, and deleteIfUnused refuses an image in use', async () => {
  const store = openStore(freshDbFile());
  const { id } = await store.accounts.createAccount('a');
  await store.images.createVersion(id, imageFields('web'));
  const v2 = await store.images.createVersion(id, imageFields('web'));
  assert.deepEqual(await store.images.delete(id, 'web', '2.0'), v2);
  await assert.rejects(store.images.get(id, 'web', '2.0'), notFound);
  await assert.rejects(store.images.save(v2), notFound);
  assert.equal((await store.images.createVersion(id, imageFields('web'))).version, '3.0');

  const used = await store.images.get(id, 'web', '1.0');
  await store.microvms.insert(microvmRecord(id, used, 'mvm-1'));
  assert.deepEqual(await store.images.deleteIfUnused(id, 'web', '1.0'), { deleted: false, activeMicroVms: 1 });
  await store.microvms.transition('mvm-1', ['PENDING'], 'TERMINATED');
  assert.deepEqual(await store.images.deleteIfUnused(id, 'web', '1.0'), { deleted: true, record: used });
  await assert.rejects(store.images.deleteIfUnused(id, 'web', '1.0'), notFound);
  store.close();
});

test('listCreating spans accounts', async () => {
  const store = openStore(freshDbFile());
  const a = await store.accounts.createAccount('a');
  const b = await store.accounts.createAccount('b');
  const done = await store.images.createVersion(a.id, imageFields('web'));
  done.state = 'ACTIVE';
  await store.images.save(done);
  await store.images.createVersion(a.id, imageFields('web'));
  await store.images.createVersion(b.id, imageFields('api'));
  const creating = await store.images.listCreating();
  assert.deepEqual(creating.map((r) => `${r.accountId === a.id ? 'a' : 'b'}/${r.name}:${r.version}`).sort(), ['a/web:2.0', 'b/api:1.0']);
  store.close();
});

test('concurrent creates through several connections and processes never share a version', async () => {
  const file = freshDbFile();
  const stores = [openStore(file), openStore(file), openStore(file)];
  const { id } = await stores[0]!.accounts.createAccount('a');
  const children = [0, 1].map(() => spawnChild(['versions', file, id]));
  const exits = children.map(exited);
  const outputs = children.map((child) => waitForLine(child, 'done'));
  await Promise.all(children.map((child) => waitForLine(child, 'ready')));
  const until = Date.now() + 300;
  for (const child of children) child.stdin!.end(`${until}\n`);
  // Every writer creates versions until the same deadline; the local ones yield to the event loop
  // between creates so that the three connections interleave too.
  const local = await Promise.all(
    stores.map(async (store) => {
      const versions: string[] = [];
      while (Date.now() < until) {
        await new Promise(setImmediate);
        versions.push((await store.images.createVersion(id, imageFields('race'))).version);
      }
      return versions;
    }),
  );
  const remote = (await Promise.all(outputs)).map((out) => JSON.parse(out.split('\n').find((line) => line.startsWith('['))!) as string[]);
  for (const exit of exits) assert.deepEqual(await exit, { code: 0, signal: null });
  const all = [...local, ...remote].flat();
  assert.ok(remote.every((versions) => versions.length > 0));
  assert.equal(new Set(all).size, all.length);
  assert.deepEqual((await stores[1]!.images.list(id, 'race')).map((r) => r.version), Array.from({ length: all.length }, (_, i) => `${i + 1}.0`));
  for (const store of stores) store.close();
});
