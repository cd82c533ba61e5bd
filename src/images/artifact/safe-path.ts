/**
 * The one place that decides whether a user-supplied name (a zip entry, a Dockerfile path) may
 * become a path under the extraction root. Names are attacker-controlled, so anything that could
 * leave the root or mean different things on different systems is refused, not repaired.
 */
import { AppError } from '../../errors/errors.ts';

export const DEFAULT_MAX_PATH_LENGTH = 4096;
/** Linux NAME_MAX: a longer component fails later with a less helpful ENAMETOOLONG. */
const MAX_COMPONENT_BYTES = 255;

export interface SafeRelativePath {
  /** POSIX, relative, no `.`/empty segments; '' is the root itself. */
  path: string;
  /** The name ended with '/' (zip convention for directories). */
  endsWithSlash: boolean;
}

/**
 * Validates and normalises `name`. `subject` names the thing in messages, e.g. `zip entry`.
 * Throws `artifact.unsafe_path` with `details.reason` in: empty, too_long, nul, backslash,
 * absolute, traversal, component_too_long.
 */
export function toSafeRelativePath(
  name: string,
  subject: string,
  maxPathLength = DEFAULT_MAX_PATH_LENGTH,
): SafeRelativePath {
  const refuse = (reason: string, why: string): never => {
    throw new AppError('artifact.unsafe_path', `${subject} "${printable(name)}" ${why}`, {
      entry: printable(name),
      reason,
    });
  };
  if (name.length === 0) refuse('empty', 'has an empty name');
  if (name.length > maxPathLength) refuse('too_long', `is longer than ${maxPathLength} characters`);
  if (name.includes('\0')) refuse('nul', 'contains a NUL character');
  // Windows tools read '\' as a separator, so `a\..\..\x` is traversal there: refuse, never convert.
  if (name.includes('\\')) refuse('backslash', 'contains a backslash (only "/" separators are allowed)');
  if (name.startsWith('/') || /^[a-zA-Z]:/.test(name)) refuse('absolute', 'is an absolute path');

  const segments: string[] = [];
  for (const segment of name.split('/')) {
    if (segment === '..') refuse('traversal', 'contains ".." (path traversal)');
    if (segment === '' || segment === '.') continue;
    if (Buffer.byteLength(segment) > MAX_COMPONENT_BYTES) {
      refuse('component_too_long', `has a name component longer than ${MAX_COMPONENT_BYTES} bytes`);
    }
    segments.push(segment);
  }
  return { path: segments.join('/'), endsWithSlash: name.endsWith('/') };
}

/** Keeps messages and logs one line and readable whatever bytes the name holds. */
function printable(name: string): string {
  // eslint-disable-next-line no-control-regex
  const escaped = name.replace(/[\u0000-\u001f\u007f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return escaped.length > 300 ? `${escaped.slice(0, 300)}…` : escaped;
}
