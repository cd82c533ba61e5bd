// Side effects shared by the guest build steps: running programs (argv arrays, never a shell),
// hashing files, and atomic writes.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, writeFile } from 'node:fs/promises';

/** A guest build failure; `step` names the artifact or check that failed, for the user. */
export class GuestBuildError extends Error {
  constructor(
    readonly step: string,
    /** The message without the "guest build: <step>:" prefix. */
    readonly detail: string,
    options?: { cause?: unknown },
  ) {
    super(`guest build: ${step}: ${detail}`, options);
    this.name = 'GuestBuildError';
  }
}

export type Log = (line: string) => void;

export interface RunOptions {
  step: string;
  signal?: AbortSignal;
  timeoutMs?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Fed to the child's stdin: literal bytes, or a byte range of a file. */
  stdin?: string | Buffer | { path: string; startByte: number };
  /** Child stdout goes straight into this file instead of being captured (large outputs). */
  stdoutPath?: string;
  /** Called for each stderr line, for progress reporting of long steps. */
  onStderrLine?: (line: string) => void;
  /** Exit codes treated as success (default [0]). */
  okExitCodes?: readonly number[];
}

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

// Enough of a failing tool's stderr to explain the failure without flooding the log.
const MAX_CAPTURED_STDERR_BYTES = 64 * 1024;
const MAX_CAPTURED_STDOUT_BYTES = 16 * 1024 * 1024;

export async function run(file: string, argv: readonly string[], options: RunOptions): Promise<RunResult> {
  const { step } = options;
  const stdoutFd = options.stdoutPath === undefined ? undefined : await open(options.stdoutPath, 'w', 0o644);
  try {
    return await new Promise<RunResult>((resolve, reject) => {
      const child = spawn(file, [...argv], {
        cwd: options.cwd,
        env: options.env ?? process.env,
        stdio: ['pipe', stdoutFd === undefined ? 'pipe' : stdoutFd.fd, 'pipe'],
        signal: options.signal,
        timeout: options.timeoutMs,
        killSignal: 'SIGTERM', // lets mmdebstrap unmount what it mounted in the chroot
      });
      const { stdin, stderr: stderrStream } = child;
      if (stdin === null || stderrStream === null) throw new Error('spawn gave no stdin/stderr pipe');
      let stdout = '';
      let stderr = '';
      let stderrPartialLine = '';
      child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
        if (stdout.length < MAX_CAPTURED_STDOUT_BYTES) stdout += chunk;
      });
      stderrStream.setEncoding('utf8').on('data', (chunk: string) => {
        stderr = (stderr + chunk).slice(-MAX_CAPTURED_STDERR_BYTES);
        if (options.onStderrLine === undefined) return;
        const lines = (stderrPartialLine + chunk).split('\n');
        stderrPartialLine = lines.pop() ?? '';
        for (const line of lines) options.onStderrLine(line);
      });
      // A child may stop reading early (xz --single-stream does): EPIPE on stdin is expected.
      stdin.on('error', () => {});
      const input = options.stdin;
      if (input === undefined) {
        stdin.end();
      } else if (typeof input === 'string' || Buffer.isBuffer(input)) {
        stdin.end(input);
      } else {
        const source = createReadStream(input.path, { start: input.startByte });
        source.on('error', (error) => stdin.destroy(error));
        source.pipe(stdin);
      }
      let aborted = false;
      child.on('error', (error: NodeJS.ErrnoException) => {
        if (error.name === 'AbortError') {
          aborted = true; // settled on 'close': the child may still be cleaning up (mmdebstrap unmounts)
        } else if (error.code === 'ENOENT') {
          reject(new GuestBuildError(step, `${file} is not installed (not found on PATH)`, { cause: error }));
        } else {
          reject(new GuestBuildError(step, `${file} failed to start: ${error.message}`, { cause: error }));
        }
      });
      child.on('close', (code, signal) => {
        if (aborted) {
          reject(new GuestBuildError(step, `${file} stopped: the build was aborted`));
          return;
        }
        const exitCode = code ?? -1;
        const ok = (options.okExitCodes ?? [0]).includes(exitCode);
        if (ok) {
          resolve({ exitCode, stdout, stderr });
          return;
        }
        const why = signal === null ? `exit code ${exitCode}` : `signal ${signal}`;
        const timedOut = signal === 'SIGTERM' && options.timeoutMs !== undefined ? ' (timed out?)' : '';
        const tail = lastLines(stderr, 20);
        reject(new GuestBuildError(step, `${file} ${argv.join(' ')} failed: ${why}${timedOut}${tail ? `\n${tail}` : ''}`));
      });
    });
  } finally {
    await stdoutFd?.close();
  }
}

export function lastLines(text: string, count: number): string {
  return text.trimEnd().split('\n').slice(-count).join('\n');
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export function sha256Text(text: string | Buffer): string {
  return createHash('sha256').update(text).digest('hex');
}

/** Writes to a temporary sibling and renames, so readers never see a half-written file. */
export async function writeFileAtomic(path: string, data: string | Buffer, mode = 0o644): Promise<void> {
  const tmpPath = `${path}.tmp-${process.pid}`;
  try {
    await writeFile(tmpPath, data, { mode });
    await rename(tmpPath, path);
  } finally {
    await rm(tmpPath, { force: true });
  }
}
