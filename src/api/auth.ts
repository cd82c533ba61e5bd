/**
 * Bearer API keys. Every route needs one unless its config says `public: true`; the account behind
 * the key scopes everything the request sees. Keys are never logged (see the logger's redaction).
 */
import type { FastifyRequest } from 'fastify';
import { AppError } from '../errors/errors.ts';
import type { AccountRepository } from '../store/index.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** Set by the auth hook on every non-public route. */
    accountId: string;
  }
  interface FastifyContextConfig {
    /** No API key needed (health check, the OpenAPI document). */
    public?: boolean;
  }
}

const BEARER = /^Bearer +(\S+) *$/i;

export function authHook(accounts: Pick<AccountRepository, 'authenticate'>) {
  return async (request: FastifyRequest): Promise<void> => {
    if (request.routeOptions.config?.public === true) return;
    const header = request.headers.authorization;
    if (header === undefined || header === '') {
      throw new AppError('auth.missing_key', 'missing API key: send "Authorization: Bearer <api key>"');
    }
    const secret = BEARER.exec(header)?.[1];
    const identity = secret === undefined ? undefined : await accounts.authenticate(secret);
    if (!identity) throw new AppError('auth.invalid_key', 'the API key is not valid (unknown, malformed or revoked)');
    request.accountId = identity.accountId;
  };
}
