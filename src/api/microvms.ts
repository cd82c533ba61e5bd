/**
 * The MicroVM routes: validate (zod), call one lifecycle method, answer with a view. A MicroVM of
 * another account does not exist (404 `vm.not_found`). These routes do not count as activity:
 * only traffic through the endpoint proxy keeps a MicroVM from going idle.
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { FINAL_STATES } from '../store/index.ts';
import type { MicroVmManager } from '../vms/manager.ts';
import { followLog, linesAsText, wantsFollow } from './log-stream.ts';
import { ErrorBody, ListMicroVmsQuery, MicroVmList, MicroVmLogsQuery, MicroVmParams, MicroVmView, RunMicroVmBody, toMicroVmView } from './schemas.ts';

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

  api.get('/v1/microvms/:microvmId/logs', {
    schema: {
      summary: "The app's runtime log (text/plain), one line per output line: `<time> <stdout|stderr|cocoon> <text>`; ?follow=true or Accept: text/event-stream follows it live as Server-Sent Events until the MicroVM is TERMINATED or FAILED",
      tags: ['microvms'],
      params: MicroVmParams,
      querystring: MicroVmLogsQuery,
      produces: ['text/plain', 'text/event-stream'],
      response: {
        200: { description: 'the log', content: { 'text/plain': { schema: z.string() }, 'text/event-stream': { schema: z.string() } } },
        ...errors,
      },
    },
  }, async (request, reply) => {
    const { microvmId } = request.params;
    const { tail } = request.query;
    const current = async () => (await microvms.get(request.accountId, microvmId)).record;
    await current(); // another account's MicroVM does not exist
    if (wantsFollow(request)) {
      followLog(reply, {
        subscribe: (follower) => {
          const subscription = microvms.appLogs.subscribe(microvmId, follower, { tail });
          // A MicroVM that ended before this subscription sends no end of its own.
          void current().then((record) => FINAL_STATES.includes(record.state) && follower.end(), () => follower.end());
          return subscription;
        },
        endData: async () => {
          const record = await current();
          return { state: record.state, ...(record.stateReason !== undefined && { stateReason: record.stateReason }) };
        },
      });
      return reply;
    }
    // A stream is sent as is: the response schema documents the text, it does not serialize it.
    const text: FastifyReply = reply;
    return text.type('text/plain; charset=utf-8').send(linesAsText(microvms.appLogs.lines(microvmId, { tail })));
  });

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
