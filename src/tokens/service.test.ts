import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EncryptJWT, SignJWT } from 'jose';
import { isAppError, type AppError, type ErrorCode } from '../errors/errors.ts';
import { keyFilePath, type TokenKey } from './keys.ts';
import { TokenService } from './service.ts';

const VM = 'mvm-11111111-1111-1111-1111-111111111111';
const OTHER_VM = 'mvm-22222222-2222-2222-2222-222222222222';
const T0 = Date.parse('2026-01-01T00:00:00Z');

let root: string;
let clock = T0;
const now = () => clock;
/** Every token-related error thrown in these tests, checked at the end for leaked tokens. */
const seen: Array<{ error: AppError; token: string }> = [];

before(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'cocoon-tokens-'));
});

after(async () => {
  await rm(root, { recursive: true, force: true });
});

let dirs = 0;
async function service(): Promise<{ tokens: TokenService; dataDir: string }> {
  const dataDir = path.join(root, `data-${dirs++}`);
  return { tokens: await TokenService.open(dataDir, { now }), dataDir };
}

async function rejects(promise: Promise<unknown>, code: ErrorCode, token = ''): Promise<void> {
  const error = await promise.then(() => assert.fail(`expected ${code}`), (error: unknown) => error);
  assert.ok(isAppError(error, code), `expected ${code}, got ${String(error)}`);
  seen.push({ error, token });
}

async function keysOf(dataDir: string): Promise<TokenKey[]> {
  return (JSON.parse(await readFile(keyFilePath(dataDir), 'utf8')) as { keys: TokenKey[] }).keys;
}

function rawKey(key: TokenKey): Uint8Array {
  return new Uint8Array(Buffer.from(key.key, 'base64url'));
}

/** Replaces one character in the middle of a compact JWE's segment (not the last: its low bits may not count). */
function tamper(token: string, segment: number): string {
  const parts = token.split('.');
  const part = parts[segment]!;
  const at = Math.floor(part.length / 2);
  parts[segment] = part.slice(0, at) + (part[at] === 'A' ? 'B' : 'A') + part.slice(at + 1);
  return parts.join('.');
}

function withHeader(token: string, header: Record<string, unknown>): string {
  return [Buffer.from(JSON.stringify(header)).toString('base64url'), ...token.split('.').slice(1)].join('.');
}

describe('TokenService', () => {
  test('round trip: mint, verify and authorize give the claims back', async () => {
    clock = T0;
    const { tokens } = await service();
    const minted = await tokens.mint({ microvmId: VM, ports: { ranges: [{ from: 8080, to: 8080 }] }, expiresInMinutes: 15 });
    assert.equal(minted.expiresAt.toISOString(), '2026-01-01T00:15:00.000Z');
    assert.equal(minted.token.split('.').length, 5);
    assert.equal(minted.token.split('.')[1], '', '`dir`: no encrypted key');
    const header = JSON.parse(Buffer.from(minted.token.split('.')[0]!, 'base64url').toString()) as Record<string, unknown>;
    assert.deepEqual(Object.keys(header).sort(), ['alg', 'enc', 'kid']);
    assert.equal(header.alg, 'dir');
    assert.equal(header.enc, 'A256GCM');
    const claims = { microvmId: VM, ports: { ranges: [{ from: 8080, to: 8080 }] }, expiresAt: minted.expiresAt };
    assert.deepEqual(await tokens.verify(minted.token), claims);
    assert.deepEqual(await tokens.verify(minted.token), claims, 'again, from the cache');
    assert.deepEqual(await tokens.authorize(minted.token, VM, 8080), claims);
    assert.ok(!minted.token.includes(VM) && !minted.token.includes('8080'), 'the claims are encrypted');
  });

  test('mint refuses expiries outside 1..60 minutes and bad ports (request.invalid)', async () => {
    const { tokens } = await service();
    for (const expiresInMinutes of [0, 61, 1.5, -1, Number.NaN]) {
      await rejects(tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes }), 'request.invalid');
    }
    await rejects(tokens.mint({ microvmId: '', ports: { all: true }, expiresInMinutes: 1 }), 'request.invalid');
    await rejects(tokens.mint({ microvmId: VM, ports: { ranges: [] }, expiresInMinutes: 1 }), 'request.invalid');
    await rejects(tokens.mint({ microvmId: VM, ports: { ranges: [{ from: 1, to: 70000 }] }, expiresInMinutes: 1 }), 'request.invalid');
  });

  test('a token expires at expiresAt, also when it was cached', async () => {
    clock = T0;
    const { tokens } = await service();
    const { token } = await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 60 });
    const cached = await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 60 });
    await tokens.verify(cached.token);
    clock = T0 + 60 * 60_000 - 1000;
    await tokens.verify(token);
    await tokens.verify(cached.token);
    clock = T0 + 60 * 60_000;
    await rejects(tokens.verify(token), 'token.expired', token);
    await rejects(tokens.verify(cached.token), 'token.expired', cached.token);
    await rejects(tokens.authorize(token, VM, 1), 'token.expired', token);
    // A new service has no cache: jose decides alone.
    const fresh = await TokenService.open(path.join(root, `data-${dirs - 1}`), { now });
    await rejects(fresh.verify(cached.token), 'token.expired', cached.token);
    clock = T0;
  });

  test('forged tokens are token.invalid: garbage, another key, tampering, other algorithms, unknown kid, huge headers', async () => {
    clock = T0;
    const { tokens, dataDir } = await service();
    const { tokens: stranger } = await service();
    const { token } = await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 5 });
    const foreign = (await stranger.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 5 })).token;
    const [key] = await keysOf(dataDir);
    const header = JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()) as Record<string, unknown>;
    const forged = [
      '', 'x', 'a.b.c.d.e', '....', Buffer.from('{}').toString('base64url') + '....',
      foreign,
      tamper(token, 2), tamper(token, 3), tamper(token, 4), token.slice(0, -2),
      withHeader(token, { ...header, alg: 'none' }),
      withHeader(token, { ...header, enc: 'A128GCM' }),
      withHeader(token, { ...header, alg: 'A256KW' }),
      withHeader(token, { ...header, kid: 'nope' }),
      withHeader(token, { ...header, zip: 'DEF' }),
      withHeader(token, { ...header, crit: ['x'], x: 1 }),
      withHeader(token, { ...header, pad: 'x'.repeat(300) }),
      'x'.repeat(5000),
      // Right key, wrong kind: a signed JWT (HS256) and an A128GCM JWE.
      await new SignJWT({ ports: '*' }).setProtectedHeader({ alg: 'HS256', kid: key!.kid }).setSubject(VM).setIssuedAt(T0 / 1000).setExpirationTime(T0 / 1000 + 60).sign(rawKey(key!)),
      await new EncryptJWT({ ports: '*' }).setProtectedHeader({ alg: 'dir', enc: 'A128GCM', kid: key!.kid }).setSubject(VM).setIssuedAt(T0 / 1000).setExpirationTime(T0 / 1000 + 60).encrypt(rawKey(key!).slice(0, 16)),
    ];
    for (const bad of forged) await rejects(tokens.verify(bad), 'token.invalid', bad);
    await rejects(tokens.verify(undefined as unknown as string), 'token.invalid');
    await tokens.verify(token);
  });

  test('right key, claims this code never mints: no ports, lifetime over 60 minutes, no sub, iat in the future → token.invalid', async () => {
    clock = T0;
    const { tokens, dataDir } = await service();
    const [key] = await keysOf(dataDir);
    const iat = T0 / 1000;
    const mint = (payload: Record<string, unknown>, claims: { sub?: string; iat?: number; exp?: number }) => {
      const jwt = new EncryptJWT(payload).setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid: key!.kid });
      if (claims.sub !== undefined) jwt.setSubject(claims.sub);
      if (claims.iat !== undefined) jwt.setIssuedAt(claims.iat);
      if (claims.exp !== undefined) jwt.setExpirationTime(claims.exp);
      return jwt.encrypt(rawKey(key!));
    };
    assert.deepEqual((await tokens.verify(await mint({ ports: [[80, 90]] }, { sub: VM, iat, exp: iat + 3600 }))).ports, { ranges: [{ from: 80, to: 90 }] }, 'the control case passes');
    const bad = [
      await mint({}, { sub: VM, iat, exp: iat + 60 }),
      await mint({ ports: [[90, 80]] }, { sub: VM, iat, exp: iat + 60 }),
      await mint({ ports: '*' }, { sub: VM, iat, exp: iat + 3601 }),
      await mint({ ports: '*' }, { iat, exp: iat + 60 }),
      await mint({ ports: '*' }, { sub: VM, exp: iat + 60 }),
      await mint({ ports: '*' }, { sub: VM, iat }),
      await mint({ ports: '*' }, { sub: VM, iat: iat + 30, exp: iat + 90 }),
    ];
    for (const token of bad) await rejects(tokens.verify(token), 'token.invalid', token);
  });

  test('authorize: missing, wrong MicroVM, ports not allowed (single, range), all ports', async () => {
    clock = T0;
    const { tokens } = await service();
    await rejects(tokens.authorize(undefined, VM, 80), 'token.missing');
    await rejects(tokens.authorize('', VM, 80), 'token.missing');
    const single = (await tokens.mint({ microvmId: VM, ports: { ranges: [{ from: 8080, to: 8080 }] }, expiresInMinutes: 5 })).token;
    const range = (await tokens.mint({ microvmId: VM, ports: { ranges: [{ from: 8000, to: 8100 }] }, expiresInMinutes: 5 })).token;
    const all = (await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 5 })).token;
    await rejects(tokens.authorize(single, OTHER_VM, 8080), 'token.wrong_microvm', single);
    await rejects(tokens.authorize(all, OTHER_VM, 8080), 'token.wrong_microvm', all);
    await rejects(tokens.authorize(single, VM, 8081), 'token.port_not_allowed', single);
    await rejects(tokens.authorize(single, VM, 9000), 'token.port_not_allowed', single);
    await tokens.authorize(single, VM, 8080);
    for (const port of [8000, 8050, 8100]) await tokens.authorize(range, VM, port);
    for (const port of [7999, 8101]) await rejects(tokens.authorize(range, VM, port), 'token.port_not_allowed', range);
    for (const port of [1, 22, 8080, 65535]) await tokens.authorize(all, VM, port);
  });

  test('authorizeNow answers from the cache only: false for a token not verified yet, the same refusals as authorize otherwise', async () => {
    clock = T0;
    const { tokens } = await service();
    const code = (run: () => unknown): string | undefined => {
      try {
        run();
        return undefined;
      } catch (error) {
        return (error as AppError).code;
      }
    };
    assert.equal(code(() => tokens.authorizeNow(undefined, VM, 80)), 'token.missing');
    assert.equal(code(() => tokens.authorizeNow('x'.repeat(5000), VM, 80)), 'token.invalid');
    const single = (await tokens.mint({ microvmId: VM, ports: { ranges: [{ from: 8080, to: 8080 }] }, expiresInMinutes: 5 })).token;
    assert.equal(tokens.authorizeNow(single, VM, 8080), false, 'not verified yet: authorize must decide');
    assert.equal(tokens.authorizeNow('garbage', VM, 8080), false, 'jose tells garbage apart, not the cache');
    await tokens.authorize(single, VM, 8080);
    assert.equal(tokens.authorizeNow(single, VM, 8080), true);
    assert.equal(code(() => tokens.authorizeNow(single, OTHER_VM, 8080)), 'token.wrong_microvm');
    assert.equal(code(() => tokens.authorizeNow(single, VM, 8081)), 'token.port_not_allowed');
    clock = T0 + 5 * 60_000;
    assert.equal(code(() => tokens.authorizeNow(single, VM, 8080)), 'token.expired');
    clock = T0;
  });

  test('rotation: the previous key still verifies, a second rotation retires the oldest; the file is the truth', async () => {
    clock = T0;
    const { tokens, dataDir } = await service();
    const first = (await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 60 })).token;
    const [original] = await keysOf(dataDir);
    await tokens.verify(first); // cached before the rotations
    const { kid: second } = await tokens.rotate();
    assert.notEqual(second, original!.kid);
    assert.deepEqual((await keysOf(dataDir)).map((key) => key.kid), [second, original!.kid]);
    await tokens.verify(first);
    const afterOne = (await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 60 })).token;
    assert.equal(JSON.parse(Buffer.from(afterOne.split('.')[0]!, 'base64url').toString()).kid, second, 'the newest key mints');
    const [{ kid: third }] = await Promise.all([tokens.rotate(), tokens.verify(afterOne)]);
    assert.deepEqual((await keysOf(dataDir)).map((key) => key.kid), [third, second]);
    await rejects(tokens.verify(first), 'token.invalid', first);
    await tokens.verify(afterOne);
    const reopened = await TokenService.open(dataDir, { now });
    await rejects(reopened.verify(first), 'token.invalid', first);
    await reopened.verify(afterOne);
    await reopened.verify((await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 1 })).token);
  });

  test('the key file is 0600 in a 0700 directory, created on first use, tightened if wider, refused if corrupt', async () => {
    const { dataDir } = await service();
    const file = keyFilePath(dataDir);
    assert.equal((await stat(file)).mode & 0o777, 0o600);
    assert.equal((await stat(path.dirname(file))).mode & 0o777, 0o700);
    const [key] = await keysOf(dataDir);
    assert.equal(Buffer.from(key!.key, 'base64url').length, 32);

    const loose = path.join(root, 'loose');
    await mkdir(path.join(loose, 'keys'), { recursive: true, mode: 0o755 });
    await writeFile(keyFilePath(loose), await readFile(file), { mode: 0o644 });
    await TokenService.open(loose);
    assert.equal((await stat(keyFilePath(loose))).mode & 0o777, 0o600);
    assert.equal((await stat(path.join(loose, 'keys'))).mode & 0o777, 0o700);

    for (const [index, content] of ['{', '{"keys":[]}', JSON.stringify({ keys: [{ ...key, key: 'short' }] }), JSON.stringify({ keys: [key, key] })].entries()) {
      const broken = path.join(root, `broken-${index}`);
      await mkdir(path.join(broken, 'keys'), { recursive: true });
      await writeFile(keyFilePath(broken), content);
      const error = await TokenService.open(broken).catch((error: unknown) => error);
      assert.ok(isAppError(error, 'config.invalid'), String(error));
      assert.ok(!error.message.includes(key!.key), 'no key material in the message');
      assert.equal(await readFile(keyFilePath(broken), 'utf8'), content, 'left as it was');
    }
  });

  test('a cached verify is well under 100 µs', async () => {
    clock = Date.now();
    const { tokens } = await service();
    const { token } = await tokens.mint({ microvmId: VM, ports: { all: true }, expiresInMinutes: 5 });
    await tokens.authorize(token, VM, 80);
    const rounds = 20_000;
    const started = process.hrtime.bigint();
    for (let i = 0; i < rounds; i++) await tokens.authorize(token, VM, 80);
    const microseconds = Number(process.hrtime.bigint() - started) / rounds / 1000;
    console.log(`cached authorize: ${microseconds.toFixed(2)} µs`);
    assert.ok(microseconds < 100, `${microseconds} µs`);
    clock = T0;
  });

  test('no error message or detail contains the token', () => {
    assert.ok(seen.length > 30, `${seen.length} errors seen`);
    for (const { error, token } of seen) {
      if (token.length < 8) continue;
      const text = `${error.message} ${JSON.stringify(error.details)} ${String(error.cause ?? '')}`;
      assert.ok(!text.includes(token), `${error.code}: ${error.message}`);
      for (const part of token.split('.').filter((p) => p.length >= 16)) assert.ok(!text.includes(part), error.code);
    }
  });
});
