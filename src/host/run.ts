/** Runs a helper program to completion (never through a shell) and returns its stdout. */
import { execFile } from 'node:child_process';
import { AppError } from '../errors/errors.ts';

export function run(file: string, argv: string[], options: { timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, argv, { timeout: options.timeoutMs ?? 120_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) {
        const missing = (error as NodeJS.ErrnoException).code === 'ENOENT';
        reject(new AppError(missing ? 'host.missing_dependency' : 'internal',
          missing ? `${file} is not installed` : `${file} ${argv.join(' ')} failed: ${String(stderr).trim() || error.message}`,
          {}, { cause: error }));
        return;
      }
      resolve(String(stdout));
    });
  });
}
