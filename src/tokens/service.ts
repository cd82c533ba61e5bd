/**
 * Per-MicroVM auth tokens: JWEs (`dir` + `A256GCM`, compact) whose claims are `sub` = microvmId,
 * `iat`, `exp` (at most 60 minutes later) and `ports`. Only this host can read or mint them: the
 * key never leaves the data directory. The proxy calls `authorize` on every request, so verified
 * tokens are remembered (a small LRU, until they expire) and keys are imported once.
 * Error messages never contain a token.
 */
import { webcrypto } from 'node:crypto';
import { EncryptJWT, jwtDecrypt, type JWTPayload } from 'jose';
import { AppError } from '../errors/errors.ts';
import { loadKeys, rotateKeys, type TokenKey } from './keys.ts';
import { allowsPort, normalizePortSet, portSetOfClaim, portsClaimOf, type PortSet } from './ports.ts';

export interface TokenClaims {
  microvmId: string;
  ports: PortSet;
  expiresAt: Date;
}

export const MAX_EXPIRES_IN_MINUTES = 60;
/** Tokens are minted and checked against the same clock: no skew allowance. */
const CLOCK_TOLERANCE_SECONDS = 0;
/** Far above any token this code mints (a header plus 64 ranges is ~1.2 kB); jose never sees more. */
const MAX_TOKEN_CHARS = 4096;
const MAX_HEADER_CHARS = 256;
const CACHE_ENTRIES = 1024;

interface LoadedKey {
  kid: string;
  cryptoKey: webcrypto.CryptoKey;
}

interface CachedToken {
  claims: TokenClaims;
  exp: number;
}

export class TokenService {
  private readonly cache = new Map<string, CachedToken>();
  private rotating: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly dataDir: string,
    private readonly now: () => number,
    private keys: TokenKey[],
    private loaded: LoadedKey[],
  ) {}

  /** Reads (or creates, on first use) `<dataDir>/keys/auth-tokens.json`. */
  static async open(dataDir: string, options: { now?: () => number } = {}): Promise<TokenService> {
    const now = options.now ?? Date.now;
    const keys = await loadKeys(dataDir, now);
    return new TokenService(dataDir, now, keys, await importKeys(keys));
  }

  /** `request.invalid` for an expiry outside 1..60 minutes or ports out of bounds. */
  async mint(input: { microvmId: string; ports: PortSet; expiresInMinutes: number }): Promise<{ token: string; expiresAt: Date }> {
    const { microvmId, expiresInMinutes } = input;
    if (typeof microvmId !== 'string' || microvmId === '') throw new AppError('request.invalid', 'a token needs a microvmId');
    if (!Number.isInteger(expiresInMinutes) || expiresInMinutes < 1 || expiresInMinutes > MAX_EXPIRES_IN_MINUTES) {
      throw new AppError('request.invalid', `expirationInMinutes must be an integer from 1 to ${MAX_EXPIRES_IN_MINUTES}`, { expiresInMinutes });
    }
    const ports = normalizePortSet(input.ports);
    const iat = epochSeconds(this.now());
    const exp = iat + expiresInMinutes * 60;
    const signer = this.loaded[0]!;
    const token = await new EncryptJWT({ ports: portsClaimOf(ports) })
      .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid: signer.kid })
      .setSubject(microvmId)
      .setIssuedAt(iat)
      .setExpirationTime(exp)
      .encrypt(signer.cryptoKey);
    return { token, expiresAt: new Date(exp * 1000) };
  }

  /** The claims of a token this host minted with a key it still has: else `token.invalid`, or `token.expired`. */
  async verify(token: string): Promise<TokenClaims> {
    const cached = this.fromCache(token);
    if (cached) return cached;
    const dot = token.indexOf('.');
    if (dot < 1 || dot > MAX_HEADER_CHARS) throw invalidToken();
    const loaded = this.loaded;
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtDecrypt(token, (header) => {
        const key = loaded.find((candidate) => candidate.kid === header.kid);
        if (!key) throw new Error('unknown kid');
        return key.cryptoKey;
      }, {
        keyManagementAlgorithms: ['dir'],
        contentEncryptionAlgorithms: ['A256GCM'],
        currentDate: new Date(this.now()),
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        maxTokenAge: MAX_EXPIRES_IN_MINUTES * 60,
        requiredClaims: ['sub', 'iat', 'exp'],
      }));
    } catch (error) {
      // jose's messages name claims, never the token; the cause stays out of the error anyway.
      if ((error as { code?: string }).code === 'ERR_JWT_EXPIRED') throw expiredToken();
      throw invalidToken();
    }
    const claims = claimsOf(payload);
    if (!claims) throw invalidToken();
    if (this.loaded === loaded) this.remember(token, { claims, exp: payload.exp! });
    return claims;
  }

  /** What the proxy calls per request: `token.missing`, `.invalid`, `.expired`, `.wrong_microvm`, `.port_not_allowed`. */
  async authorize(token: string | undefined, microvmId: string, port: number): Promise<TokenClaims> {
    return permitted(await this.verify(present(token)), microvmId, port);
  }

  /**
   * `authorize` without waiting, for the proxy's hot path: true when a token already verified
   * allows the request, false when only `authorize` can tell (a token not seen yet); the same
   * errors otherwise.
   */
  authorizeNow(token: string | undefined, microvmId: string, port: number): boolean {
    const claims = this.fromCache(present(token));
    if (claims) permitted(claims, microvmId, port);
    return claims !== undefined;
  }

  /** A new minting key; tokens of the previous key stay valid, those of older keys do not. */
  async rotate(): Promise<{ kid: string }> {
    const next = this.rotating.then(async () => {
      const keys = await rotateKeys(this.dataDir, this.keys, this.now);
      const loaded = await importKeys(keys);
      this.keys = keys;
      this.loaded = loaded;
      // Cached tokens may be of the retired key.
      this.cache.clear();
      return { kid: keys[0]!.kid };
    });
    this.rotating = next.catch(() => {});
    return next;
  }

  /** The claims of a token verified before (`token.expired` once they ran out); undefined when jose has to decide. */
  private fromCache(token: string): TokenClaims | undefined {
    if (typeof token !== 'string' || token.length > MAX_TOKEN_CHARS) throw invalidToken();
    const cached = this.cache.get(token);
    if (!cached) return undefined;
    if (isExpired(cached.exp, this.now())) {
      this.cache.delete(token);
      throw expiredToken();
    }
    // Most recently used goes last: the first entry is the one to evict.
    this.cache.delete(token);
    this.cache.set(token, cached);
    return cached.claims;
  }

  private remember(token: string, entry: CachedToken): void {
    if (this.cache.size >= CACHE_ENTRIES) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(token, entry);
  }
}

async function importKeys(keys: readonly TokenKey[]): Promise<LoadedKey[]> {
  return Promise.all(keys.map(async ({ kid, key }) => ({
    kid,
    cryptoKey: await webcrypto.subtle.importKey('raw', Buffer.from(key, 'base64url'), 'AES-GCM', false, ['encrypt', 'decrypt']),
  })));
}

function present(token: string | undefined): string {
  if (token === undefined || token === '') {
    throw new AppError('token.missing', 'this endpoint needs an auth token (X-Cocoon-Auth; see create-microvm-auth-token)');
  }
  return token;
}

function permitted(claims: TokenClaims, microvmId: string, port: number): TokenClaims {
  if (claims.microvmId !== microvmId) throw new AppError('token.wrong_microvm', `the auth token is not for MicroVM ${microvmId}`, { microvmId });
  if (!allowsPort(claims.ports, port)) throw new AppError('token.port_not_allowed', `the auth token does not allow port ${port}`, { port });
  return claims;
}

function claimsOf(payload: JWTPayload): TokenClaims | undefined {
  const ports = portSetOfClaim(payload.ports);
  const { sub, iat, exp } = payload;
  // maxTokenAge bounds now - iat; this bounds the lifetime itself.
  if (!ports || typeof sub !== 'string' || sub === '' || iat === undefined || exp === undefined || exp - iat > MAX_EXPIRES_IN_MINUTES * 60) return undefined;
  return { microvmId: sub, ports, expiresAt: new Date(exp * 1000) };
}

function epochSeconds(ms: number): number {
  return Math.floor(ms / 1000);
}

/** jose's rule, for tokens answered from the cache. */
function isExpired(exp: number, nowMs: number): boolean {
  return exp <= epochSeconds(nowMs) - CLOCK_TOLERANCE_SECONDS;
}

function invalidToken(): AppError {
  return new AppError('token.invalid', 'the auth token is not valid (malformed, tampered with, or minted with a key that was rotated out)');
}

function expiredToken(): AppError {
  return new AppError('token.expired', 'the auth token has expired; mint a new one');
}
