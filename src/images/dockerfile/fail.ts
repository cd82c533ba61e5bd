/** Dockerfile errors carry the 1-based line in their message and in `details.line`. */
import { AppError, type ErrorCode } from '../../errors/errors.ts';

export function fail(code: ErrorCode, line: number | undefined, message: string, details: Record<string, unknown> = {}): never {
  const prefix = line === undefined ? '' : `line ${line}: `;
  throw new AppError(code, `${prefix}${message}`, line === undefined ? details : { line, ...details });
}
