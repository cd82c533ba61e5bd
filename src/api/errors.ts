/**
 * One mapping from anything a request can fail with to `{ error: { code, message, details? } }`
 * and the status the error registry assigns to the code. Unknown errors become `internal`: their
 * details go to the log, never to the client.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import { errorCodes, isAppError, type ErrorCode } from '../errors/errors.ts';

export interface ErrorResponse {
  status: number;
  body: { error: { code: ErrorCode; message: string; details?: Record<string, unknown> } };
}

const MAX_ISSUES = 20;

export function errorResponse(code: ErrorCode, message: string, details: Record<string, unknown> = {}): ErrorResponse {
  return {
    status: errorCodes[code].httpStatus,
    body: { error: { code, message, ...(Object.keys(details).length > 0 && { details }) } },
  };
}

/** Fastify's own request errors (body parsing, content types): client mistakes with safe messages. */
const FRAMEWORK_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'request.too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'request.unsupported_media_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'request.invalid',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'request.invalid',
  FST_ERR_CTP_INVALID_JSON_BODY: 'request.invalid',
  FST_ERR_BAD_URL: 'request.invalid',
  FST_ERR_ASYNC_CONSTRAINT: 'request.invalid',
};

export function toErrorResponse(error: unknown): ErrorResponse {
  if (isAppError(error)) return errorResponse(error.code, error.message, error.details);
  if (hasZodFastifySchemaValidationErrors(error)) {
    const where = (error as { validationContext?: string }).validationContext ?? 'request';
    const unknown = error.validation.filter((issue) => issue.keyword === 'unrecognized_keys');
    if (unknown.length > 0) {
      const fields = unknown.flatMap((issue) => {
        const keys = (issue.params as { keys?: unknown }).keys;
        const prefix = issue.instancePath === '/' ? '' : `${issue.instancePath.slice(1).replaceAll('/', '.')}.`;
        return Array.isArray(keys) ? keys.map((key) => `${prefix}${String(key)}`) : [];
      });
      return errorResponse('request.unknown_field', `unknown ${where} field${fields.length === 1 ? '' : 's'}: ${fields.join(', ')}`, { in: where, fields });
    }
    const issues = error.validation.slice(0, MAX_ISSUES).map((issue) => ({ path: issue.instancePath, message: issue.message ?? 'invalid' }));
    const first = issues[0]!;
    return errorResponse('request.invalid', `invalid ${where}: ${first.path === '/' ? '' : `${first.path}: `}${first.message}`, { in: where, issues });
  }
  const code = (error as FastifyError | undefined)?.code;
  const mapped = code === undefined ? undefined : FRAMEWORK_CODES[code];
  if (mapped) return errorResponse(mapped, (error as Error).message);
  const status = (error as FastifyError | undefined)?.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500 && typeof code === 'string' && code.startsWith('FST_')) {
    return errorResponse('request.invalid', (error as Error).message);
  }
  return errorResponse('internal', 'internal error');
}

export function handleError(error: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const response = toErrorResponse(error);
  if (response.status >= 500) request.log.error({ err: error }, 'request failed');
  return reply.code(response.status).type('application/json; charset=utf-8').send(response.body);
}

export function notFound(request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const url = request.url.length > 200 ? `${request.url.slice(0, 200)}…` : request.url;
  const { status, body } = errorResponse('route.not_found', `no route for ${request.method} ${url}`);
  return reply.code(status).send(body);
}
