/**
 * The images REST API in process (fastify's inject: real HTTP semantics, no socket) over a real
 * engine, image service and SQLite file: auth, create from a URI and from an upload, following a
 * build's log as Server-Sent Events, account isolation, delete, and a generator of malformed and
 * hostile requests that must all be answered 4xx with an error code, with no side effect.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { buildApi } from '../../src/api/index.ts';
import { errorCodes, type ErrorCode } from '../../src/errors/errors.ts';
import { zipDirectory } from '../../src/host/zip-dir.ts';
import type { Engine } from '../../src/main/engine.ts';
import type { ImageService } from '../../src/main/images.ts';
import { microvmRecord } from '../../src/store/test-fixtures.ts';
import { startApiFixture } from './api-fixture.ts';

const EXAMPLE = fileURLToPath(new URL('../../examples/tiny-httpd', import.meta.url));
const BUILD_TIMEOUT_MS = 180_000;

let engine: Engine;
let images: ImageService;
let app: FastifyInstance;
let workDir: string;
let uploadDir: string;
let zipPath: string;
let adminKey: string;
let otherKey: string;
let openapi: { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: JsonSchema }> }> }>> };

type JsonSchema = {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  items?: JsonSchema;
  enum?: unknown[];
  anyOf?: JsonSchema[];
};

before(async () => {
  ({ workDir, engine, images, adminKey, otherKey } = await startApiFixture('cocoon-api-'));
  uploadDir = path.join(workDir, 'uploads');
  app = buildApi({ images, uploadDir, allowLocalArtifacts: true });
  zipPath = path.join(workDir, 'tiny-httpd.zip');
  await zipDirectory(EXAMPLE, zipPath);
});

after(async () => {
  await app?.close();
  await images?.close();
  await engine?.driver.idle();
  await rm(workDir, { recursive: true, force: true });
});

const as = (key: string) => ({ authorization: `Bearer ${key}` });

/** `key` null: no Authorization header. */
async function call(options: InjectOptions, key: string | null = adminKey, target: FastifyInstance = app): Promise<LightMyRequestResponse> {
  return target.inject({ ...options, headers: { ...(key !== null && as(key)), ...options.headers } });
}

function errorCodeOf(response: LightMyRequestResponse): string | undefined {
  try {
    return (JSON.parse(response.body) as { error?: { code?: unknown } }).error?.code as string | undefined;
  } catch {
    return undefined;
  }
}

/** A small JSON-schema check: enough to hold responses to the generated OpenAPI document. */
function schemaErrors(schema: JsonSchema, value: unknown, at = '$'): string[] {
  if (schema.anyOf) return schema.anyOf.some((option) => schemaErrors(option, value, at).length === 0) ? [] : [`${at}: matches no anyOf option`];
  if (schema.enum && !schema.enum.includes(value)) return [`${at}: ${JSON.stringify(value)} not in enum`];
  const types = schema.type === undefined ? [] : [schema.type].flat();
  const actual = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
  if (types.length > 0 && !types.some((type) => type === actual || (type === 'integer' && Number.isInteger(value)) || (type === 'number' && actual === 'number'))) {
    return [`${at}: expected ${types.join('|')}, got ${actual}`];
  }
  const problems: string[] = [];
  if (actual === 'object') {
    const object = value as Record<string, unknown>;
    for (const key of schema.required ?? []) if (!(key in object)) problems.push(`${at}.${key}: missing`);
    for (const [key, item] of Object.entries(object)) {
      const property = schema.properties?.[key];
      if (property) problems.push(...schemaErrors(property, item, `${at}.${key}`));
      else if (schema.additionalProperties === false) problems.push(`${at}.${key}: not in the schema`);
      else if (typeof schema.additionalProperties === 'object') problems.push(...schemaErrors(schema.additionalProperties, item, `${at}.${key}`));
    }
  }
  if (actual === 'array' && schema.items) (value as unknown[]).forEach((item, i) => problems.push(...schemaErrors(schema.items!, item, `${at}[${i}]`)));
  return problems;
}

/** Checks a JSON response against the OpenAPI document's schema for its route and status. */
function assertDocumented(route: string, method: string, response: LightMyRequestResponse): void {
  const schema = openapi.paths[route]?.[method]?.responses[String(response.statusCode)]?.content?.['application/json']?.schema;
  assert.ok(schema, `no schema for ${method} ${route} ${response.statusCode}`);
  assert.deepEqual(schemaErrors(schema, JSON.parse(response.body)), [], response.body);
}

async function waitForFinalState(name: string, version: string, key = adminKey): Promise<Record<string, unknown>> {
  const deadline = Date.now() + BUILD_TIMEOUT_MS;
  for (;;) {
    const response = await call({ url: `/v1/images/${name}?version=${version}` }, key);
    assert.equal(response.statusCode, 200, response.body);
    const body = JSON.parse(response.body) as Record<string, unknown>;
    if (body.state !== 'CREATING') return body;
    assert.ok(Date.now() < deadline, `${name}:${version} still CREATING`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** GETs an SSE stream over a real socket; `stopAfterFirstChunk` disconnects after the first bytes. */
function followOverHttp(port: number, urlPath: string, options: { stopAfterFirstChunk?: boolean } = {}): Promise<{ status: number; contentType: string; chunks: string[] }> {
  return new Promise((resolve, reject) => {
    const chunks: string[] = [];
    const request = http.get({ host: '127.0.0.1', port, path: urlPath, headers: { ...as(adminKey), accept: 'text/event-stream' } }, (response) => {
      response.setEncoding('utf8');
      const done = () => resolve({ status: response.statusCode ?? 0, contentType: String(response.headers['content-type']), chunks });
      response.on('data', (chunk: string) => {
        chunks.push(chunk);
        if (options.stopAfterFirstChunk) {
          request.destroy();
          done();
        }
      });
      response.on('end', done);
      response.on('error', () => done());
    });
    request.on('error', (error) => (options.stopAfterFirstChunk && chunks.length > 0 ? undefined : reject(error)));
  });
}

describe('the images API', () => {
  let port: number;
  let createdVersion = '';

  before(async () => {
    await app.listen({ host: '127.0.0.1', port: 0 });
    port = (app.server.address() as AddressInfo).port;
  });

  test('GET /openapi.json and /healthz need no key; the document lists the image routes', async () => {
    const doc = await call({ url: '/openapi.json' }, null);
    assert.equal(doc.statusCode, 200);
    openapi = JSON.parse(doc.body) as typeof openapi;
    for (const route of ['/v1/images', '/v1/images/{name}', '/v1/images/{name}/upload', '/v1/images/{name}/versions', '/v1/images/{name}/versions/{version}/logs']) {
      assert.ok(openapi.paths[route], `${route} is documented`);
    }
    assert.ok(openapi.paths['/v1/images']!.post && openapi.paths['/v1/images/{name}']!.delete);
    assert.equal((await call({ url: '/healthz' }, null)).statusCode, 200);
  });

  test('a missing key is 401 auth.missing_key, a wrong one 401 auth.invalid_key', async () => {
    for (const options of [{ url: '/v1/images' }, { method: 'POST' as const, url: '/v1/images', payload: { name: 'x', codeArtifact: { uri: zipPath } } }, { url: '/v1/images/x/versions/1.0/logs' }]) {
      const missing = await call(options, null);
      assert.equal(missing.statusCode, 401);
      assert.equal(errorCodeOf(missing), 'auth.missing_key');
      for (const authorization of [`Bearer ck_${'A'.repeat(43)}`, 'Bearer nope', `Basic ${adminKey}`, adminKey]) {
        const wrong = await call({ ...options, headers: { authorization } }, null);
        assert.equal(wrong.statusCode, 401, authorization);
        assert.equal(errorCodeOf(wrong), 'auth.invalid_key');
        assert.ok(!wrong.body.includes(adminKey), 'the key is never echoed');
      }
    }
    assert.deepEqual(await images.store.images.names(images.adminAccountId), [], 'nothing was created');
  });

  test('POST /v1/images → 202 CREATING; following its log over SSE shows the steps live, then the end', async () => {
    const created = await call({ method: 'POST', url: '/v1/images', payload: { name: 'tiny-httpd', codeArtifact: { uri: zipPath }, memoryMiB: 128 } });
    assert.equal(created.statusCode, 202, created.body);
    assertDocumented('/v1/images', 'post', created);
    const record = JSON.parse(created.body) as Record<string, unknown>;
    assert.equal(record.state, 'CREATING');
    assert.equal(record.version, '1.0');
    assert.equal(record.accountId, undefined, 'internal fields are not shown');
    assert.equal(created.headers.location, '/v1/images/tiny-httpd?version=1.0');
    createdVersion = record.version as string;

    const followed = await followOverHttp(port, '/v1/images/tiny-httpd/versions/1.0/logs');
    assert.equal(followed.status, 200);
    assert.match(followed.contentType, /^text\/event-stream/);
    const text = followed.chunks.join('');
    assert.ok(followed.chunks.length > 1, 'lines arrive as the build writes them');
    assert.match(text, /^data: .*\[1\/3\] WORKDIR/m);
    assert.match(text, /^data: .*\[3\/3\] RUN/m);
    assert.match(text, /event: end\ndata: \{"state":"ACTIVE"\}\n\n$/);
    assert.equal(images.builder.liveLog({ accountId: images.adminAccountId, name: 'tiny-httpd', version: '1.0' }), undefined);

    const final = await waitForFinalState('tiny-httpd', '1.0');
    assert.equal(final.state, 'ACTIVE', String(final.stateReason));
    assert.equal((final.codeArtifact as { uri: string }).uri, zipPath);
  });

  test('the log of a finished build: text, or SSE replayed from the file with the end event', async () => {
    const plain = await call({ url: `/v1/images/tiny-httpd/versions/${createdVersion}/logs` });
    assert.equal(plain.statusCode, 200);
    assert.match(String(plain.headers['content-type']), /^text\/plain/);
    assert.match(plain.body, /\[1\/3\] WORKDIR/);
    assert.match(plain.body, /is ACTIVE/);
    const replay = await call({ url: `/v1/images/tiny-httpd/versions/${createdVersion}/logs?follow=true` });
    assert.equal(replay.statusCode, 200);
    const lines = plain.body.trimEnd().split('\n');
    assert.equal(replay.body.match(/^data: \d{4}-/gm)?.length, lines.length, 'every line once');
    assert.match(replay.body, /event: end\ndata: \{"state":"ACTIVE"\}\n\n$/);
  });

  test('POST /v1/images/{name}/upload with the zip as the body → 202; a follower that disconnects leaves no listener', async () => {
    const uploaded = await call({ method: 'POST', url: '/v1/images/tiny-httpd/upload?memoryMiB=128&buildArg=GREETING=hi', headers: { 'content-type': 'application/zip' }, payload: await readFile(zipPath) });
    assert.equal(uploaded.statusCode, 202, uploaded.body);
    assertDocumented('/v1/images/{name}/upload', 'post', uploaded);
    const record = JSON.parse(uploaded.body) as { version: string; state: string; codeArtifact: { uri: string } };
    assert.equal(record.version, '2.0');
    assert.equal(record.state, 'CREATING');
    assert.match(record.codeArtifact.uri, /^upload:artifact-[0-9a-f]{64}\.zip$/, 'no server path is shown');

    const key = { accountId: images.adminAccountId, name: 'tiny-httpd', version: '2.0' };
    const live = images.builder.liveLog(key);
    assert.ok(live, 'the build is queued or running');
    const listenersBefore = live.log.listenerCount('line');
    const partial = await followOverHttp(port, '/v1/images/tiny-httpd/versions/2.0/logs?follow=true', { stopAfterFirstChunk: true });
    assert.equal(partial.status, 200);
    const deadline = Date.now() + 10_000;
    while (images.builder.liveLog(key) && live.log.listenerCount('line') !== listenersBefore) {
      assert.ok(Date.now() < deadline, 'the disconnected follower still listens');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }

    const final = await waitForFinalState('tiny-httpd', '2.0');
    assert.equal(final.state, 'ACTIVE', String(final.stateReason));
    // The build arg changes every step's cache key after the ARG: all three steps run again.
    assert.match((await call({ url: '/v1/images/tiny-httpd/versions/2.0/logs' })).body, /^\S+ \[3\/3\] RUN/m);
    const deadlineEmpty = Date.now() + 5_000;
    while ((await readdir(uploadDir)).length > 0) {
      assert.ok(Date.now() < deadlineEmpty, 'the uploaded zip is removed after its build');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });

  test('list, versions and get (latest ACTIVE or a given version) match the OpenAPI document', async () => {
    const list = await call({ url: '/v1/images' });
    assert.equal(list.statusCode, 200);
    assertDocumented('/v1/images', 'get', list);
    assert.deepEqual((JSON.parse(list.body) as { images: Array<{ name: string; version: string }> }).images.map((i) => `${i.name}:${i.version}`), ['tiny-httpd:2.0']);

    const versions = await call({ url: '/v1/images/tiny-httpd/versions' });
    assertDocumented('/v1/images/{name}/versions', 'get', versions);
    assert.deepEqual((JSON.parse(versions.body) as { versions: Array<{ version: string }> }).versions.map((v) => v.version), ['1.0', '2.0']);

    const latest = await call({ url: '/v1/images/tiny-httpd' });
    assertDocumented('/v1/images/{name}', 'get', latest);
    assert.equal((JSON.parse(latest.body) as { version: string }).version, '2.0');
    const first = await call({ url: '/v1/images/tiny-httpd?version=1.0' });
    assert.equal((JSON.parse(first.body) as { version: string }).version, '1.0');

    const missing = await call({ url: '/v1/images/tiny-httpd?version=7.0' });
    assert.equal(missing.statusCode, 404);
    assert.equal(errorCodeOf(missing), 'image.not_found');
    assertDocumented('/v1/images/{name}', 'get', missing);
  });

  test('another account sees none of it: 404 image.not_found (never 403) and an empty list', async () => {
    const requests: InjectOptions[] = [
      { url: '/v1/images/tiny-httpd' },
      { url: '/v1/images/tiny-httpd?version=1.0' },
      { url: '/v1/images/tiny-httpd/versions' },
      { url: '/v1/images/tiny-httpd/versions/1.0/logs' },
      { url: '/v1/images/tiny-httpd/versions/1.0/logs?follow=true' },
      { method: 'DELETE', url: '/v1/images/tiny-httpd?version=1.0' },
    ];
    for (const request of requests) {
      const response = await call(request, otherKey);
      assert.equal(response.statusCode, 404, `${request.method ?? 'GET'} ${request.url}: ${response.body}`);
      assert.equal(errorCodeOf(response), 'image.not_found');
    }
    const list = await call({ url: '/v1/images' }, otherKey);
    assert.deepEqual(JSON.parse(list.body), { images: [] });
    assert.equal((await call({ url: '/v1/images/tiny-httpd?version=1.0' })).statusCode, 200, 'still there for its owner');
  });

  test('a server that does not allow local artifacts refuses paths and file:// URIs before creating anything', async () => {
    const strict = buildApi({ images, uploadDir });
    try {
      for (const uri of [zipPath, `file://${zipPath}`, 'http://example.com/app.zip']) {
        const response = await strict.inject({ method: 'POST', url: '/v1/images', headers: as(adminKey), payload: { name: 'local', codeArtifact: { uri } } });
        assert.equal(response.statusCode, 400, uri);
        assert.equal(errorCodeOf(response), 'artifact.unsupported_uri');
      }
      assert.equal((await images.store.images.list(images.adminAccountId, 'local')).length, 0);
    } finally {
      await strict.close();
    }
  });

  test('DELETE: refused while building (409) or in use (409), then removes the record and the files', async () => {
    const building = await images.store.images.createVersion(images.adminAccountId, { name: 'half-built', codeArtifact: { uri: 's3://b/k' }, appPort: 8080, hooksPort: 9000, readinessTimeoutSeconds: 60, memoryMiB: 128 });
    const refused = await call({ method: 'DELETE', url: `/v1/images/half-built?version=${building.version}` });
    assert.equal(refused.statusCode, 409);
    assert.equal(errorCodeOf(refused), 'image.invalid_state');
    await images.store.images.delete(images.adminAccountId, 'half-built', building.version);

    const inUse = await images.store.images.get(images.adminAccountId, 'tiny-httpd', '1.0');
    await images.store.microvms.insert(microvmRecord(images.adminAccountId, inUse, 'mvm-api-test'));
    const busy = await call({ method: 'DELETE', url: '/v1/images/tiny-httpd?version=1.0' });
    assert.equal(busy.statusCode, 409);
    assert.equal(errorCodeOf(busy), 'image.in_use');
    assertDocumented('/v1/images/{name}', 'delete', busy);
    await images.store.microvms.transition('mvm-api-test', ['PENDING'], 'TERMINATED');

    const dir = images.builder.versionDir(inUse);
    assert.ok(await stat(dir));
    const deleted = await call({ method: 'DELETE', url: '/v1/images/tiny-httpd?version=1.0' });
    assert.equal(deleted.statusCode, 200, deleted.body);
    assertDocumented('/v1/images/{name}', 'delete', deleted);
    assert.equal((await call({ url: '/v1/images/tiny-httpd?version=1.0' })).statusCode, 404);
    assert.equal((await call({ method: 'DELETE', url: '/v1/images/tiny-httpd?version=1.0' })).statusCode, 404);
    await assert.rejects(stat(dir), { code: 'ENOENT' });
    assert.equal((await call({ url: '/v1/images/tiny-httpd' })).statusCode, 200, '2.0 is untouched');
  });
});

describe('malformed and hostile requests', () => {
  const valid = { name: 'fuzz', codeArtifact: { uri: 's3://bucket/key.zip' } };
  const huge = 'x'.repeat(20_000);
  const json = (payload: unknown): InjectOptions => ({ method: 'POST', url: '/v1/images', headers: { 'content-type': 'application/json' }, payload: JSON.stringify(payload) });

  /** Each case is invalid by construction: nothing here may create an image. */
  function generate(): Array<{ label: string; options: InjectOptions; key?: string | null }> {
    const cases: Array<{ label: string; options: InjectOptions; key?: string | null }> = [];
    const add = (label: string, options: InjectOptions, key?: string | null) => cases.push({ label, options, ...(key !== undefined && { key }) });
    const badValues: Record<string, unknown[]> = {
      name: [null, 1, true, [], {}, '', '../x', '..', '.', 'UPPER', '-lead', 'a'.repeat(64), 'a/b', 'a b', 'é', '%2e%2e', 'x\u0000', huge],
      codeArtifact: [null, 's3://bucket/key.zip', [], 1, {}, { uri: '' }, { uri: 1 }, { uri: null }, { uri: huge }, { uri: 's3://a/b\u0000' }, { uri: 'http://evil.example/x.zip' },
        { uri: 'ftp://x' }, { uri: 's3://bucket' }, { uri: 'file:///etc/passwd' }, { uri: '/etc/passwd' }, { uri: '../../x.zip' }, { uri: 's3://a/b', sha256: 'x' }],
      dockerfilePath: ['', 1, null, 'x'.repeat(2000), 'a\u0000b', 'a\nb', [], {}],
      buildArgs: [[], 'x', 1, null, { '1bad': 'x' }, { 'a-b': 'x' }, { ok: 1 }, { ok: null }, { ok: huge }, { '': 'x' },
        Object.fromEntries(Array.from({ length: 70 }, (_, i) => [`A${i}`, 'v']))],
      appPort: [0, -1, 65536, 1.5, '8080', null, true, 1e10, -0.5, [], {}],
      hooksPort: [0, -80, 70000, 2.25, '9000', null, false],
      readinessTimeoutSeconds: [0, 3601, -5, 1.5, '60', null, 1e300],
      memoryMiB: [0, 127, 8193, 1e9, -512, '512', 512.5, null],
    };
    for (const [field, values] of Object.entries(badValues)) {
      for (const value of values) add(`${field}=${JSON.stringify(value)?.slice(0, 40)}`, json({ ...valid, [field]: value }));
    }
    for (const extra of [{ extra: 1 }, { accountId: 'acct-x' }, { state: 'ACTIVE' }, { version: '9.0' }, { NAME: 'x' }]) add(`unknown ${Object.keys(extra)[0]}`, json({ ...valid, ...extra }));
    for (const missing of [{}, { name: 'fuzz' }, { codeArtifact: valid.codeArtifact }, { name: 'fuzz', codeArtifact: {} }]) add(`missing fields ${JSON.stringify(missing)}`, json(missing));
    for (const top of [[], 'str', 1, null, true, [valid]]) add(`top-level ${JSON.stringify(top)}`, json(top));
    const rawBodies = ['{', '{"name":', '[', 'nul', '{"name":"a",}', '\u0000', huge, '{"__proto__":{"x":1}}', '{"constructor":{"prototype":{"x":1}}}',
      `${'['.repeat(5000)}${']'.repeat(5000)}`, '{"name":"fuzz","name":"FUZZ","codeArtifact":{"uri":"s3://b/k"}}', ''];
    for (const raw of rawBodies) add(`raw body ${raw.slice(0, 20)}`, { method: 'POST', url: '/v1/images', headers: { 'content-type': 'application/json' }, payload: raw });
    for (const type of ['text/plain', 'application/xml', 'multipart/form-data; boundary=x', 'application/x-www-form-urlencoded', 'application/zip', 'image/png', 'application/octet-stream']) {
      add(`content-type ${type}`, { method: 'POST', url: '/v1/images', headers: { 'content-type': type }, payload: JSON.stringify(valid) });
    }
    add('JSON body over 64 KiB', json({ ...valid, dockerfilePath: 'x'.repeat(70_000) }));
    add('JSON body of 2 MiB', json({ ...valid, pad: 'x'.repeat(2 * 2 ** 20) }));
    add('upload declaring 600 MB', { method: 'POST', url: '/v1/images/fuzz/upload', headers: { 'content-type': 'application/zip', 'content-length': String(600 * 2 ** 20) }, payload: 'PK' });

    const badNames = ['..%2Fx', '%2e%2e', 'UPPER', 'a'.repeat(64), '%00', 'a%20b', '-x', 'x%2Fy', '%F0%9F%98%80', '_', 'a.b', '%25'];
    for (const name of badNames) {
      add(`GET bad name ${name}`, { url: `/v1/images/${name}` });
      add(`GET versions of bad name ${name}`, { url: `/v1/images/${name}/versions` });
      add(`DELETE bad name ${name}`, { method: 'DELETE', url: `/v1/images/${name}?version=1.0` });
      add(`logs of bad name ${name}`, { url: `/v1/images/${name}/versions/1.0/logs` });
      add(`upload to bad name ${name}`, { method: 'POST', url: `/v1/images/${name}/upload`, headers: { 'content-type': 'application/zip' }, payload: 'PK\u0003\u0004' });
    }
    const badVersions = ['', '1', '1.', '.1', '01.0', '1.00', '1.0.0', 'a.b', '-1.0', '1.0%20', '9999999999.0', '1e3.0', '%00', '1.0%0A'];
    for (const version of badVersions) {
      add(`GET ?version=${version}`, { url: `/v1/images/fuzz?version=${version}` });
      add(`DELETE ?version=${version}`, { method: 'DELETE', url: `/v1/images/fuzz?version=${version}` });
      if (version !== '') add(`logs of version ${version}`, { url: `/v1/images/fuzz/versions/${version}/logs` });
    }
    add('GET two versions', { url: '/v1/images/fuzz?version=1.0&version=2.0' });
    add('DELETE without version', { method: 'DELETE', url: '/v1/images/fuzz' });
    for (const query of ['x=1', 'version=1.0', 'limit=10']) add(`list with ?${query}`, { url: `/v1/images?${query}` });
    add('GET unknown query', { url: '/v1/images/fuzz?foo=1' });
    for (const follow of ['maybe', '1', 'TRUE', 'true&follow=false']) add(`logs follow=${follow}`, { url: `/v1/images/fuzz/versions/1.0/logs?follow=${follow}` });

    const zip = { 'content-type': 'application/zip' };
    for (const query of ['appPort=abc', 'appPort=0', 'appPort=65536', 'appPort=-1', 'hooksPort=1.5', 'memoryMiB=99999', 'memoryMiB=', 'readinessTimeoutSeconds=0',
      'readinessTimeoutSeconds=3601', 'buildArg==x', 'buildArg=1=2', 'buildArg=noequals', 'dockerfilePath=', 'unknown=1', `appPort=${'9'.repeat(30)}`]) {
      add(`upload ?${query}`, { method: 'POST', url: `/v1/images/fuzz/upload?${query}`, headers: zip, payload: 'PK\u0003\u0004' });
    }
    for (const [label, headers, payload] of [
      ['upload as JSON', { 'content-type': 'application/json' }, '{}'],
      ['upload as text', { 'content-type': 'text/plain' }, 'hello'],
      ['upload without a body', {}, undefined],
      ['upload of not-a-zip', zip, 'definitely not a zip'],
      ['upload of an empty body', zip, ''],
      ['upload of a gzip', zip, Buffer.from([0x1f, 0x8b, 0x08, 0x00])],
      ['upload of a multipart form', { 'content-type': 'multipart/form-data; boundary=x' }, '--x--'],
    ] as Array<[string, Record<string, string>, string | Buffer | undefined]>) {
      add(label, { method: 'POST', url: '/v1/images/fuzz/upload', headers, ...(payload !== undefined && { payload }) });
    }

    for (const [method, url] of [['PUT', '/v1/images'], ['PATCH', '/v1/images'], ['DELETE', '/v1/images'], ['POST', '/v1/images/fuzz'], ['PUT', '/v1/images/fuzz'],
      ['PATCH', '/v1/images/fuzz'], ['GET', '/v1/images/fuzz/upload'], ['PUT', '/v1/images/fuzz/versions'], ['POST', '/v1/images/fuzz/versions/1.0/logs'],
      ['DELETE', '/v1/images/fuzz/versions/1.0'], ['GET', '/v2/images'], ['GET', '/v1/image'], ['GET', '/v1/images/fuzz/versions/1.0/logs/extra'],
      ['POST', '/healthz'], ['OPTIONS', '/v1/images'], ['GET', '/v1/images/%2e%2e/%2e%2e/etc/passwd'], ['GET', `/v1/images/${'a'.repeat(500)}`]] as Array<[InjectOptions['method'], string]>) {
      add(`${method} ${url.slice(0, 40)}`, { method, url });
    }
    for (const authorization of ['Bearer', 'Bearer ', `Bearer ${'x'.repeat(10_000)}`, 'Basic abc', `bearer  ck_${'B'.repeat(43)}`, 'ck_nope', 'Bearer ck_\u00e9', 'Token x']) {
      add(`authorization ${authorization.slice(0, 20)}`, { method: 'POST', url: '/v1/images', headers: { authorization }, payload: valid }, null);
    }
    add('no authorization on create', { method: 'POST', url: '/v1/images', payload: valid }, null);
    add('no authorization on upload', { method: 'POST', url: '/v1/images/fuzz/upload', headers: zip, payload: 'PK\u0003\u0004' }, null);
    return cases;
  }

  test('at least 200 generated requests: every one 4xx with a registered error code, no side effect, server still fine', async (t) => {
    const fuzz = await images.store.accounts.createAccount('fuzz');
    const fuzzKey = (await images.store.accounts.createApiKey(fuzz.id)).secret;
    const adminNames = await images.store.images.names(images.adminAccountId);
    const cases = generate();
    assert.ok(cases.length >= 200, `${cases.length} cases`);
    t.diagnostic(`${cases.length} generated requests`);
    // The production default: no local artifact paths.
    const strict = buildApi({ images, uploadDir });
    const failures: string[] = [];
    for (const { label, options, key } of cases) {
      const response = await call(options, key === undefined ? fuzzKey : key, strict);
      const code = errorCodeOf(response);
      const registered = code !== undefined && code in errorCodes ? errorCodes[code as ErrorCode].httpStatus : undefined;
      if (response.statusCode < 400 || response.statusCode >= 500 || registered !== response.statusCode) {
        failures.push(`${label}: ${response.statusCode} ${response.body.slice(0, 200)}`);
      }
    }
    assert.deepEqual(failures, []);
    assert.equal((await call({ url: '/v1/images' }, fuzzKey, strict)).statusCode, 200);
    await strict.close();
    assert.deepEqual(await images.store.images.names(fuzz.id), [], 'no request created an image');
    assert.deepEqual(await images.store.images.names(images.adminAccountId), adminNames);
    const list = await call({ url: '/v1/images' }, fuzzKey);
    assert.equal(list.statusCode, 200);
    assert.deepEqual(JSON.parse(list.body), { images: [] });
    assert.equal((await call({ url: '/v1/images' })).statusCode, 200);
  });
});
