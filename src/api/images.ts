/**
 * The images routes: validate (zod), call one action, answer with a view. Errors are thrown and
 * mapped in one place (errors.ts).
 */
import type { Readable } from 'node:stream';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { AppError } from '../errors/errors.ts';
import { parseArtifactUri } from '../images/artifact/fetch.ts';
import { createFromUpload, deleteVersion, latestVersions, MAX_UPLOAD_BYTES, versionsOf, type ImagesDeps } from './image-actions.ts';
import { followLog, openLogFile, subscribeBuildLog, wantsFollow } from './log-stream.ts';
import {
  CreateImageBody,
  DeleteImageQuery,
  ErrorBody,
  GetImageQuery,
  ImageList,
  ImageView,
  LogsQuery,
  NameParams,
  UploadQuery,
  VersionList,
  VersionParams,
  toImageView,
} from './schemas.ts';

export interface ImageRoutesOptions {
  images: ImagesDeps;
  uploadDir: string;
  /** Accept local paths and file:// URIs in codeArtifact.uri (they read the server's files). */
  allowLocalArtifacts: boolean;
}

const JSON_BODY_LIMIT = 64 * 1024;
const errors = { 400: ErrorBody, 401: ErrorBody, 404: ErrorBody };

export async function imageRoutes(app: FastifyInstance, options: ImageRoutesOptions): Promise<void> {
  const { images, uploadDir } = options;
  const api = app.withTypeProvider<ZodTypeProvider>();
  const view = (record: Parameters<typeof toImageView>[0]) => toImageView(record, uploadDir);
  const onBuildError = (error: unknown) => app.log.error({ err: error }, 'image build bookkeeping failed');

  api.post('/v1/images', {
    bodyLimit: JSON_BODY_LIMIT,
    schema: {
      summary: 'Create an image version from a code artifact URI (the build runs in the background)',
      tags: ['images'],
      body: CreateImageBody,
      response: { 202: ImageView, ...errors, 413: ErrorBody, 415: ErrorBody },
    },
  }, async (request, reply) => {
    const { codeArtifact, ...rest } = request.body;
    if (parseArtifactUri(codeArtifact.uri).kind !== 's3' && !options.allowLocalArtifacts) {
      throw new AppError('artifact.unsupported_uri', 'this server builds only from s3://bucket/key URIs; upload a local zip with POST /v1/images/{name}/upload', { uri: codeArtifact.uri });
    }
    const { record, done } = await images.builder.create(request.accountId, { ...rest, codeArtifactUri: codeArtifact.uri });
    done.catch(onBuildError);
    return reply.code(202).header('location', `/v1/images/${record.name}?version=${record.version}`).send(view(record));
  });

  // The zip is the body, streamed to disk (never buffered): its own scope has only the zip parser.
  await app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser(['application/zip', 'application/octet-stream'], (_request, payload, done) => done(null, payload));
    scope.withTypeProvider<ZodTypeProvider>().post('/v1/images/:name/upload', {
      schema: {
        summary: 'Create an image version from a zip sent as the body (Content-Type: application/zip)',
        tags: ['images'],
        consumes: ['application/zip', 'application/octet-stream'],
        params: NameParams,
        querystring: UploadQuery,
        body: z.unknown().meta({ type: 'string', format: 'binary', description: `the zip, at most ${MAX_UPLOAD_BYTES} bytes` }),
        response: { 202: ImageView, ...errors, 413: ErrorBody, 415: ErrorBody },
      },
    }, async (request, reply) => {
      const declared = Number(request.headers['content-length'] ?? 0);
      if (declared > MAX_UPLOAD_BYTES) throw new AppError('request.too_large', `the zip is larger than ${MAX_UPLOAD_BYTES} bytes`, { maxBytes: MAX_UPLOAD_BYTES });
      const body = request.body as Readable | null | undefined;
      if (body === null || body === undefined || typeof (body as Partial<Readable>).pipe !== 'function') {
        throw new AppError('request.unsupported_media_type', 'send the zip as the request body with Content-Type: application/zip');
      }
      const { buildArg, ...rest } = request.query;
      const record = await createFromUpload(images, request.accountId, body, { ...rest, ...(buildArg && { buildArgs: buildArg }), name: request.params.name }, uploadDir, onBuildError);
      return reply.code(202).header('location', `/v1/images/${record.name}?version=${record.version}`).send(view(record));
    });
  });

  api.get('/v1/images', {
    schema: { summary: 'The latest version of each image (any state)', tags: ['images'], querystring: z.strictObject({}), response: { 200: ImageList, ...errors } },
  }, async (request) => ({ images: (await latestVersions(images, request.accountId)).map(view) }));

  api.get('/v1/images/:name', {
    schema: { summary: 'One image version: the latest ACTIVE one, or ?version=', tags: ['images'], params: NameParams, querystring: GetImageQuery, response: { 200: ImageView, ...errors } },
  }, async (request) => view(await images.store.images.get(request.accountId, request.params.name, request.query.version)));

  api.get('/v1/images/:name/versions', {
    schema: { summary: 'Every version of an image, oldest first', tags: ['images'], params: NameParams, response: { 200: VersionList, ...errors } },
  }, async (request) => ({ versions: (await versionsOf(images, request.accountId, request.params.name)).map(view) }));

  api.delete('/v1/images/:name', {
    schema: {
      summary: 'Delete one version (refused while it builds or a MicroVM uses it)', tags: ['images'],
      params: NameParams, querystring: DeleteImageQuery, response: { 200: ImageView, ...errors, 409: ErrorBody },
    },
  }, async (request) => view(await deleteVersion(images, request.accountId, request.params.name, request.query.version)));

  api.get('/v1/images/:name/versions/:version/logs', {
    schema: {
      summary: 'The build log (text/plain); ?follow=true or Accept: text/event-stream follows a running build as Server-Sent Events',
      tags: ['images'],
      params: VersionParams,
      querystring: LogsQuery,
      produces: ['text/plain', 'text/event-stream'],
      response: {
        200: { description: 'the log', content: { 'text/plain': { schema: z.string() }, 'text/event-stream': { schema: z.string() } } },
        ...errors,
      },
    },
  }, async (request, reply) => {
    const { name, version } = request.params;
    const record = await images.store.images.get(request.accountId, name, version);
    const file = `${images.builder.versionDir(record)}/build.log`;
    if (wantsFollow(request)) {
      followLog(reply, {
        subscribe: (follower) => subscribeBuildLog(images.builder.liveLog(record), file, follower),
        endData: async () => {
          const final = await images.store.images.get(request.accountId, name, version);
          return { state: final.state, ...(final.stateReason !== undefined && { stateReason: final.stateReason }), ...(final.stateReasonCode !== undefined && { stateReasonCode: final.stateReasonCode }) };
        },
      });
      return reply;
    }
    // A stream is sent as is: the response schema documents the text, it does not serialize it.
    const text: FastifyReply = reply;
    return text.type('text/plain; charset=utf-8').send((await openLogFile(file)) ?? '');
  });
}
