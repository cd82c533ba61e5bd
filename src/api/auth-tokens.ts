/**
 * Auth tokens for MicroVM endpoints: minted for the caller's own MicroVM (another account's does
 * not exist, 404 `vm.not_found`), and the admin-only rotation of the minting key. The token is in
 * the response body only: it is never logged, and the response is marked `no-store`.
 */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { AppError } from '../errors/errors.ts';
import { ADMIN_ACCOUNT, type AccountRepository, type MicroVmState, type Store } from '../store/index.ts';
import { MAX_EXPIRES_IN_MINUTES, portEntriesOf, portSetOf, type PortSet, type TokenService } from '../tokens/index.ts';
import type { MicroVmManager } from '../vms/manager.ts';
import { AuthTokenKeyRotationView, AuthTokenView, CreateAuthTokenBody, ErrorBody, MicroVmParams } from './schemas.ts';

const JSON_BODY_LIMIT = 16 * 1024;
/** A token for these could never reach a guest. */
const ENDED: readonly MicroVmState[] = ['TERMINATING', 'TERMINATED', 'FAILED'];

export interface AuthTokenDeps {
  tokens: TokenService;
  /** Without it only the key rotation is served. */
  microvms?: MicroVmManager;
  store: { images: Pick<Store['images'], 'get'>; accounts: Pick<AccountRepository, 'getAccount'> };
}

export async function authTokenRoutes(app: FastifyInstance, deps: AuthTokenDeps): Promise<void> {
  const api = app.withTypeProvider<ZodTypeProvider>();
  const { microvms } = deps;

  if (microvms) {
    api.post('/v1/microvms/:microvmId/auth-token', {
      bodyLimit: JSON_BODY_LIMIT,
      schema: {
        summary: `Mint an auth token (JWE, at most ${MAX_EXPIRES_IN_MINUTES} minutes) for the MicroVM's endpoint`,
        tags: ['microvms'],
        params: MicroVmParams,
        body: CreateAuthTokenBody.nullish(),
        response: { 201: AuthTokenView, 400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 409: ErrorBody },
      },
    }, async (request, reply) => {
      const minted = await mintForMicroVm({ ...deps, microvms }, request.accountId, request.params.microvmId, request.body ?? {});
      return reply.code(201).header('cache-control', 'no-store').send(minted);
    });
  }

  api.post('/v1/admin/auth-token-keys/rotate', {
    bodyLimit: JSON_BODY_LIMIT,
    schema: {
      summary: 'Admin: a new auth token key mints from now on; tokens of the previous key stay valid until they expire, older keys are retired',
      tags: ['admin'],
      body: z.strictObject({}).nullish(),
      response: { 200: AuthTokenKeyRotationView, 401: ErrorBody, 403: ErrorBody },
    },
  }, async (request) => {
    const account = await deps.store.accounts.getAccount(request.accountId);
    if (account?.name !== ADMIN_ACCOUNT) throw new AppError('auth.forbidden', 'only the admin account can rotate the auth token keys');
    return deps.tokens.rotate();
  });
}

/** By default a token opens the image's app port only. */
async function mintForMicroVm(deps: AuthTokenDeps & { microvms: MicroVmManager }, accountId: string, microvmId: string, body: CreateAuthTokenBody): Promise<AuthTokenView> {
  const { record } = await deps.microvms.get(accountId, microvmId);
  if (ENDED.includes(record.state)) {
    throw new AppError('vm.invalid_state', `MicroVM ${microvmId} is ${record.state}: no auth tokens for it`, { microvmId, state: record.state });
  }
  let ports: PortSet;
  if (body.allowedPorts) {
    ports = portSetOf(body.allowedPorts);
  } else {
    const { appPort } = await deps.store.images.get(accountId, record.imageName, record.imageVersion);
    ports = { ranges: [{ from: appPort, to: appPort }] };
  }
  const { token, expiresAt } = await deps.tokens.mint({ microvmId, ports, expiresInMinutes: body.expirationInMinutes ?? MAX_EXPIRES_IN_MINUTES });
  return { authToken: { 'X-Cocoon-Auth': token }, expiresAt: expiresAt.toISOString(), allowedPorts: portEntriesOf(ports) };
}
