/**
 * The REST API: fastify with zod schemas for every request and response, an OpenAPI document
 * generated from them (GET /openapi.json), bearer API keys, and one error format:
 * `{ "error": { "code", "message", "details"? } }` with the status the error registry assigns.
 * Route handlers only validate, call the domain and map errors; they never see VMs or SQL.
 */
import os from 'node:os';
import path from 'node:path';
import fastifySwagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { jsonSchemaTransform, serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { authHook } from './auth.ts';
import { errorResponse, handleError, notFound } from './errors.ts';
import type { ImagesDeps } from './image-actions.ts';
import { imageRoutes } from './images.ts';
import { endFollowsOnClose } from './log-stream.ts';
import { microvmRoutes } from './microvms.ts';
import { authTokenRoutes } from './auth-tokens.ts';
import type { AccountRepository } from '../store/index.ts';
import type { TokenService } from '../tokens/index.ts';
import type { MicroVmManager } from '../vms/manager.ts';

export interface ApiDeps {
  /** From startImageService: the builder and the store. */
  images: ImagesDeps & { store: ImagesDeps['store'] & { accounts: Pick<AccountRepository, 'authenticate' | 'getAccount'> } };
  /** The MicroVM lifecycle; without it the /v1/microvms routes are not served. */
  microvms?: MicroVmManager;
  /** Auth tokens for MicroVM endpoints; without it neither minting nor key rotation is served. */
  tokens?: TokenService;
  /** Request logging (pino, with the Authorization header redacted). Default false. */
  logger?: boolean;
  /** Where uploaded zips wait for their build. Default: `<tmp>/cocoon-uploads`. */
  uploadDir?: string;
  /**
   * Accept local paths and file:// URIs as codeArtifact.uri. They make the server read its own
   * files on a client's behalf: off by default; for single-user setups and tests.
   */
  allowLocalArtifacts?: boolean;
}

export const API_VERSION = '0.1.0';

export function buildApi(deps: ApiDeps): FastifyInstance {
  const app = Fastify({
    logger: deps.logger
      ? { level: 'info', redact: { paths: ['req.headers.authorization', 'req.headers.cookie', 'req.headers["x-cocoon-auth"]', 'headers.authorization'], censor: '[redacted]' } }
      : false,
    bodyLimit: 64 * 1024,
    // No implicit HEAD twins of GET routes: the contract is exactly the routes below.
    exposeHeadRoutes: false,
    // Malformed URLs (bad percent-encoding) are the client's mistake, in the usual error format.
    frameworkErrors: (error, _request, reply) => {
      const { status, body } = errorResponse('request.invalid', error.message);
      void (reply as FastifyReply).code(status).send(body);
    },
  });
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(handleError);
  app.setNotFoundHandler(notFound);
  app.addHook('onRequest', authHook(deps.images.store.accounts));

  void app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'Cocoon API', version: API_VERSION, description: 'MicroVM images and MicroVMs. Errors: `{ "error": { "code", "message", "details"? } }`.' },
      components: { securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'an API key (`ck_…`)' } } },
      security: [{ apiKey: [] }],
    },
    transform: jsonSchemaTransform,
  });

  void app.register(async (scope) => {
    const api = scope.withTypeProvider<ZodTypeProvider>();
    api.get('/healthz', {
      config: { public: true },
      schema: { summary: 'Liveness', tags: ['meta'], security: [], response: { 200: z.object({ status: z.literal('ok') }) } },
    }, async () => ({ status: 'ok' as const }));
    api.get('/openapi.json', { config: { public: true }, schema: { hide: true } }, async () => scope.swagger());
    await imageRoutes(scope, {
      images: deps.images,
      uploadDir: deps.uploadDir ?? path.join(os.tmpdir(), 'cocoon-uploads'),
      allowLocalArtifacts: deps.allowLocalArtifacts ?? false,
    });
    if (deps.microvms) await microvmRoutes(scope, { microvms: deps.microvms });
    if (deps.tokens) await authTokenRoutes(scope, { tokens: deps.tokens, ...(deps.microvms && { microvms: deps.microvms }), store: deps.images.store });
  });
  endFollowsOnClose(app);
  return app;
}
