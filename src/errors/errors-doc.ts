/**
 * docs/errors.md is generated from the registry (`npm run docs:errors`) and a test keeps it in sync,
 * so the documented codes are always the ones clients see.
 */
import { errorCodes } from './errors.ts';

export function renderErrorsDoc(): string {
  const rows = Object.entries(errorCodes)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([code, { httpStatus, exitCode }]) => `| \`${code}\` | ${httpStatus} | ${exitCode} |`);
  return [
    '# Error codes',
    '',
    'Every error Cocoon returns carries one of these codes (`{"error":{"code","message","details"?}}`',
    'over HTTP; `cocoon: <code>: <message>` and the exit code in the CLI). Clients branch on the code,',
    'never on the message. Generated from `src/errors/errors.ts` by `npm run docs:errors`.',
    '',
    '| code | HTTP status | CLI exit code |',
    '|---|---|---|',
    ...rows,
    '',
  ].join('\n');
}

