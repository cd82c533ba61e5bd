/**
 * MicroVM runtime logs: the app's stdout and stderr, taken from the guest agent (APP_ATTACH) after
 * every launch and resume, go to `<dir>/<microvmId>.log` (outside the VM's directory, so that the
 * log outlives terminate) and to live followers.
 *
 * One line per record: `<ISO time> <stdout|stderr|cocoon> <text>`; `cocoon` lines are Cocoon's own
 * notes (the app exited, an agent without APP_ATTACH). Guest output is hostile: lines are cut at
 * 16 KiB and the file moves to `<microvmId>.log.1` when it would pass half of `maxFileBytes`, so a
 * VM's log never takes much more than `maxFileBytes` (default 16 MiB).
 *
 * Writes are synchronous on purpose: the file always holds exactly the lines emitted so far, so a
 * follower that reads the files up to their sizes when it subscribes, then takes the emitted
 * lines, neither misses nor repeats one.
 */
import { EventEmitter } from 'node:events';
import { closeSync, fstatSync, mkdirSync, openSync, read, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { promisify } from 'node:util';
import type { AgentClient, ExitStatus } from '../guest/client.ts';
import { isAppError } from '../errors/errors.ts';
import { LineSplitter } from '../host/lines.ts';

const DEFAULT_MAX_FILE_BYTES = 16 * 2 ** 20;
const READ_CHUNK_BYTES = 64 * 1024;
const NEWLINE = 0x0a;
const readAt = promisify(read);

export type AppLogStream = 'stdout' | 'stderr' | 'cocoon';

export interface AppLogFollower {
  line(text: string): void;
  /** No line will follow: the MicroVM is TERMINATED or FAILED. */
  end(): void;
}

export interface AppLogOptions {
  maxFileBytes?: number;
  /** Problems with the log itself (a failing disk), once per episode. */
  log?: (line: string) => void;
}

/** An open log file, read up to `size`: the bytes it held when it was opened. */
interface Part {
  fd: number;
  size: number;
}

export class AppLogs {
  private readonly logs = new Map<string, VmLog>();
  private readonly maxFileBytes: number;

  constructor(readonly dir: string, private readonly options: AppLogOptions = {}) {
    this.maxFileBytes = options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES;
  }

  file(microvmId: string): string {
    return path.join(this.dir, `${microvmId}.log`);
  }

  /**
   * Streams the app's output from `agent` (a new connection after a launch, resume or re-adoption)
   * into the log until the app exits or the connection closes. Resolves with the app's pid; when
   * the agent cannot attach (no app runs, an agent before 1.2) it notes why in the log and throws.
   */
  async attach(microvmId: string, agent: AgentClient): Promise<number> {
    this.logs.get(microvmId)?.detach?.();
    const log = this.open(microvmId);
    const onOutput = (stream: 'stdout' | 'stderr', chunk: Buffer): void => log.output(stream, chunk);
    const onExit = (status: ExitStatus): void => {
      log.flush();
      log.note(`the app exited (${status.signal ? `signal ${status.signal}` : `code ${status.exitCode}`})`);
      detach();
    };
    const detach = (): void => {
      agent.off('app-output', onOutput);
      agent.off('app-exit', onExit);
      agent.off('close', detach);
      if (log.detach !== detach) return;
      log.flush();
      log.detach = undefined;
      log.closeFile();
      this.release(microvmId, log);
    };
    // Before the request: the backlog the agent kept may arrive together with its reply.
    agent.on('app-output', onOutput);
    agent.on('app-exit', onExit);
    agent.on('close', detach);
    log.detach = detach;
    try {
      return (await agent.attachApp()).pid;
    } catch (error) {
      // Unless the connection closed meanwhile (it detached itself), the agent said no: say why.
      if (log.detach === detach) {
        const guestCode = isAppError(error, 'guest.request_failed') ? error.details.guestCode : undefined;
        log.note(guestCode === 'unsupported' ? `no runtime logs: the VM's guest agent ${agent.agentVersion} cannot stream the app's output (rebuild the image)`
          : guestCode === 'not_found' ? 'no runtime logs: no app is running in the VM'
            : `no runtime logs: ${error instanceof Error ? error.message : String(error)}`);
        detach();
      }
      throw error;
    }
  }

  /** The MicroVM is TERMINATED or FAILED: followers get their end. */
  end(microvmId: string): void {
    const log = this.logs.get(microvmId);
    if (!log) return;
    log.detach?.();
    this.logs.delete(microvmId);
    log.closeFile();
    log.emit('end');
  }

  /**
   * The lines logged so far (the newest `tail` of them, if given) and, in the same step, `follower`
   * subscribed to the lines that follow. Iterate `history` (to its end, or break out of it): it
   * holds the log's files open until then.
   */
  subscribe(microvmId: string, follower: AppLogFollower, options: { tail?: number | undefined } = {}): { history: AsyncIterable<string>; unsubscribe: () => void } {
    const log = this.open(microvmId);
    const parts = openParts(log.file);
    const onLine = (line: string): void => follower.line(line);
    const onEnd = (): void => follower.end();
    log.on('line', onLine);
    log.once('end', onEnd);
    return {
      history: readParts(() => parts, options.tail),
      unsubscribe: () => {
        log.off('line', onLine);
        log.off('end', onEnd);
        this.release(microvmId, log);
      },
    };
  }

  /** The lines logged so far (the newest `tail` of them, if given); files are opened when reading starts. */
  lines(microvmId: string, options: { tail?: number | undefined } = {}): AsyncGenerator<string> {
    return readParts(() => openParts(this.file(microvmId)), options.tail);
  }

  private open(microvmId: string): VmLog {
    let log = this.logs.get(microvmId);
    if (!log) {
      log = new VmLog(this.file(microvmId), this.maxFileBytes, (line) => this.options.log?.(`${microvmId}: ${line}`));
      this.logs.set(microvmId, log);
    }
    return log;
  }

  /** Forgets a log that nothing writes or follows any more (its files stay). */
  private release(microvmId: string, log: VmLog): void {
    if (log.detach || log.listenerCount('line') > 0 || this.logs.get(microvmId) !== log) return;
    log.closeFile();
    this.logs.delete(microvmId);
  }
}

class VmLog extends EventEmitter<{ line: [string]; end: [] }> {
  /** Set while an agent connection feeds this log; calling it detaches that connection. */
  detach: (() => void) | undefined;
  private fd: number | undefined;
  private bytes = 0;
  private failing = false;
  private readonly splitters = { stdout: new LineSplitter(), stderr: new LineSplitter() };

  constructor(readonly file: string, private readonly maxFileBytes: number, private readonly report: (line: string) => void) {
    super();
    this.setMaxListeners(0); // one listener per follower, as many as there are
  }

  output(stream: 'stdout' | 'stderr', chunk: Buffer): void {
    this.write(stream, this.splitters[stream].push(chunk));
  }

  /** Ends partial lines: the output stream they belong to has ended. */
  flush(): void {
    for (const stream of ['stdout', 'stderr'] as const) this.write(stream, this.splitters[stream].end());
  }

  note(text: string): void {
    this.write('cocoon', [text]);
  }

  closeFile(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private write(stream: AppLogStream, lines: string[]): void {
    if (lines.length === 0) return;
    const time = new Date().toISOString();
    const records = lines.map((line) => `${time} ${stream} ${line}`);
    const data = Buffer.from(`${records.join('\n')}\n`);
    try {
      if (this.fd === undefined) {
        mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
        this.fd = openSync(this.file, 'a', 0o600);
        this.bytes = fstatSync(this.fd).size;
      }
      if (this.bytes > 0 && this.bytes + data.length > this.maxFileBytes / 2) {
        closeSync(this.fd);
        this.fd = undefined;
        renameSync(this.file, `${this.file}.1`);
        this.fd = openSync(this.file, 'a', 0o600);
        this.bytes = 0;
      }
      writeFileSync(this.fd, data);
      this.bytes += data.length;
      this.failing = false;
    } catch (error) {
      if (!this.failing) this.report(`writing the runtime log ${this.file} failed: ${(error as Error).message}`);
      this.failing = true;
    }
    for (const record of records) this.emit('line', record);
  }
}

/** The rotated file, then the current one, as they are now (missing ones are skipped). */
function openParts(file: string): Part[] {
  const parts: Part[] = [];
  for (const name of [`${file}.1`, file]) {
    let fd: number;
    try {
      fd = openSync(name, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
      for (const part of parts) closeSync(part.fd);
      throw error;
    }
    parts.push({ fd, size: fstatSync(fd).size });
  }
  return parts;
}

/** The parts' lines, oldest first (the newest `tail` only, if given); closes them when done. */
async function* readParts(open: () => Part[], tail: number | undefined): AsyncGenerator<string> {
  const parts = open();
  try {
    const starts = tail === undefined ? parts.map(() => 0) : await tailStarts(parts, tail);
    for (const [i, part] of parts.entries()) yield* readLines(part, starts[i]!);
  } finally {
    for (const part of parts) closeSync(part.fd);
  }
}

/** Reads are awaited one at a time, so no read is in flight when the caller closes the fd. */
async function* readLines(part: Part, start: number): AsyncGenerator<string> {
  const buffer = Buffer.allocUnsafe(READ_CHUNK_BYTES);
  const decoder = new StringDecoder('utf8');
  let partial = '';
  for (let position = start; position < part.size;) {
    const { bytesRead } = await readAt(part.fd, buffer, 0, Math.min(buffer.length, part.size - position), position);
    if (bytesRead === 0) break;
    position += bytesRead;
    const lines = (partial + decoder.write(buffer.subarray(0, bytesRead))).split('\n');
    partial = lines.pop() ?? '';
    yield* lines;
  }
  partial += decoder.end();
  if (partial !== '') yield partial;
}

/** Where each part's share of the newest `tail` lines begins (a part's size = none of it). */
async function tailStarts(parts: Part[], tail: number): Promise<number[]> {
  const starts = parts.map((part) => part.size);
  let wanted = tail;
  for (let i = parts.length - 1; i >= 0 && wanted > 0; i--) {
    const { offset, lines } = await lastLines(parts[i]!, wanted);
    starts[i] = offset;
    wanted -= lines;
  }
  return starts;
}

/** Where the last `wanted` lines of a part begin, and how many lines that is (fewer in a short part). */
async function lastLines(part: Part, wanted: number): Promise<{ offset: number; lines: number }> {
  const buffer = Buffer.allocUnsafe(READ_CHUNK_BYTES);
  let lines = 0;
  // The last byte ends the last line; scanning backwards, each newline before it begins one more.
  let end = part.size - 1;
  while (end > 0) {
    const start = Math.max(0, end - buffer.length);
    const { bytesRead } = await readAt(part.fd, buffer, 0, end - start, start);
    for (let i = bytesRead - 1; i >= 0; i--) {
      if (buffer[i] === NEWLINE && ++lines === wanted) return { offset: start + i + 1, lines };
    }
    end = start;
  }
  return { offset: 0, lines: part.size > 0 ? lines + 1 : 0 };
}
