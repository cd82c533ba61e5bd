/**
 * The MicroVM routes: validate (zod), call one lifecycle method, answer with a view. A MicroVM of
 * another account does not exist (404 `vm.not_found`). These routes do not count as activity:
 * only traffic through the endpoint proxy keeps a MicroVM from going idle.
 */
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { MicroVmManager } from '../vms/manager.ts';
import { ErrorBody, ListMicroVmsQuery, MicroVmList, MicroVmParams, MicroVmView, RunMicroVmBody, toMicroVmView } from './schemas.ts';

const JSON_BODY_LIMIT = 64 * 1024;
const errors = { 400: ErrorBody, 401: ErrorBody, 404: ErrorBody };
const transitionErrors = { ...errors, 409: ErrorBody, 500: ErrorBody, 503: ErrorBody };

export async function microvmRoutes(app: FastifyInstance, options: { microvms: MicroVmManager }): Promise<void> {
  const { microvms } = options;
  const api = app.withTypeProvider<ZodTypeProvider>();

  api.post('/v1/microvms', {
    bodyLimit: JSON_BODY_LIMIT,
    schema: {
      summary: 'Run a MicroVM from an image (answers once it is RUNNING)',
      tags: ['microvms'],
      body: RunMicroVmBody,
      response: { 201: MicroVmView, ...transitionErrors },
    },
  }, async (request, reply) => {
    const microvm = await microvms.run(request.accountId, request.body);
    return reply.code(201).header('location', `/v1/microvms/${microvm.record.microvmId}`).send(toMicroVmView(microvm));
  });

  api.get('/v1/microvms', {
    schema: { summary: 'The account\'s MicroVMs, oldest first', tags: ['microvms'], querystring: ListMicroVmsQuery, response: { 200: MicroVmList, ...errors } },
  }, async (request) => ({ microvms: (await microvms.list(request.accountId, request.query)).map(toMicroVmView) }));

  api.get('/v1/microvms/:microvmId', {
    schema: { summary: 'One MicroVM', tags: ['microvms'], params: MicroVmParams, response: { 200: MicroVmView, ...errors } },
  }, async (request) => toMicroVmView(await microvms.get(request.accountId, request.params.microvmId)));

  const actions = [
    ['suspend', 'Suspend a RUNNING MicroVM (suspend hook, then its full state is saved and QEMU stops)'],
    ['resume', 'Resume a SUSPENDED MicroVM (resume hook after the restore)'],
    ['terminate', 'Terminate a MicroVM (terminate hook if RUNNING); its files are removed'],
  ] as const;
  for (const [action, summary] of actions) {
    api.post(`/v1/microvms/:microvmId/${action}`, {
      bodyLimit: JSON_BODY_LIMIT,
      // No fields yet: an empty object (or no body) only, so that future fields are never silently ignored.
      schema: { summary, tags: ['microvms'], params: MicroVmParams, body: z.strictObject({}).nullish(), response: { 200: MicroVmView, ...transitionErrors } },
    }, async (request) => toMicroVmView(await microvms[action](request.accountId, request.params.microvmId)));
  }
}
