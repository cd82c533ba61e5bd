/**
 * Every failure of the SDK is a CocoonApiError. Branch on `code`: the server's dotted codes
 * (src/errors/errors.ts), or, for failures that never reached an API answer, `client.unreachable`
 * (no connection), `client.bad_response` (not the API's error format) and `client.stream_ended`
 * (a log stream closed before its end event).
 */
import type { ErrorCode } from '../errors/errors.ts';

export type ClientErrorCode = 'client.unreachable' | 'client.bad_response' | 'client.stream_ended';

export class CocoonApiError extends Error {
  override readonly name = 'CocoonApiError';
  constructor(
    /** A registry code; typed open-ended because a newer server may send codes this SDK predates. */
    readonly code: ErrorCode | ClientErrorCode | (string & {}),
    message: string,
    /** The HTTP status, 0 when no response arrived. */
    readonly status: number,
    readonly details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isCocoonApiError(error: unknown, code?: string): error is CocoonApiError {
  return error instanceof CocoonApiError && (code === undefined || error.code === code);
}

/** The error of a non-2xx response: `{ error: { code, message, details? } }`, or a bad_response. */
export async function errorFromResponse(response: Response): Promise<CocoonApiError> {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; details?: unknown } };
    const error = body.error;
    if (error && typeof error.code === 'string') {
      const details = typeof error.details === 'object' && error.details !== null ? (error.details as Record<string, unknown>) : {};
      return new CocoonApiError(error.code, typeof error.message === 'string' ? error.message : error.code, response.status, details);
    }
  } catch {
    // not JSON: reported below with the start of the body
  }
  return new CocoonApiError('client.bad_response', `HTTP ${response.status} without an API error body: ${text.slice(0, 200)}`, response.status);
}
