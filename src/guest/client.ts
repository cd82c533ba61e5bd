/**
 * Host-side client of the guest agent (guest/PROTOCOL.md) over the VM's virtio-serial unix socket.
 * The guest is untrusted: a frame that breaks the protocol closes the connection and fails every
 * pending request with `guest.protocol_violation`; it never throws out of an event handler.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { randomBytes, randomInt } from 'node:crypto';
import { AppError } from '../errors/errors.ts';
import { connectWithRetry } from '../host/sockets.ts';
import {
  FrameDecoder, ProtocolViolation, RequestType, ReplyType, encodeFrame, item, read,
  MAX_FILE_CHUNK, MAX_OUTPUT_CHUNK, PROTOCOL_VERSION, type Frame, type Item,
} from './protocol.ts';

const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
const MAX_COLLECTED_OUTPUT = 16 * 1024 * 1024;
const MAX_TEXT = 4096;

export interface ExecOptions {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  stdin?: Buffer | string;
  /** Enforced inside the guest (SIGKILL of the process group); 0 = none. */
  timeoutMs?: number;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
}

export interface ExecResult {
  pid: number;
  exitCode: number;
  signal: number;
  stdout: Buffer;
  stderr: Buffer;
}

export interface ExitStatus {
  exitCode: number;
  signal: number;
}

export interface AppOptions {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
}

interface Pending {
  /** Returns true when this frame ends the request. Throws ProtocolViolation on a bad frame. */
  onFrame(frame: Frame): boolean;
  fail(error: Error): void;
  timer?: NodeJS.Timeout;
  /** The timeout covers the first reply only: a stream of unbounded length follows it. */
  firstReplyOnly?: boolean;
}

export interface AgentClientEvents {
  log: [line: string];
  'app-output': [stream: 'stdout' | 'stderr', chunk: Buffer];
  'app-exit': [status: ExitStatus];
  close: [error: AppError];
}

export class AgentClient extends EventEmitter<AgentClientEvents> {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  /** Random per connection, so that ids of a restored guest's previous session never look like ours. */
  private nextId = randomInt(1, 2 ** 30);
  /** False until HELLO is answered: frames of the guest's previous session are dropped until then. */
  private sessionOpen = false;
  private closedWith: AppError | undefined;
  private appStreamId = 0;

  private constructor(private readonly socket: net.Socket, private readonly requestTimeoutMs: number) {
    super();
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', () => {}); // 'close' follows and carries the outcome
    socket.on('close', () => this.shutDown(new AppError('guest.disconnected', 'the guest agent connection closed')));
  }

  /** Connects to the agent socket (QEMU may still be creating it) and checks the protocol version. */
  static async connect(
    socketPath: string,
    options: { timeoutMs: number; signal?: AbortSignal | undefined; requestTimeoutMs?: number },
  ): Promise<AgentClient> {
    const socket = await connectWithRetry(socketPath, options);
    const client = new AgentClient(socket, options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS);
    const hello = await client.hello(options.timeoutMs);
    if (hello.protocolVersion !== PROTOCOL_VERSION) {
      client.close();
      throw new AppError('guest.protocol_violation', `agent speaks protocol ${hello.protocolVersion}, host speaks ${PROTOCOL_VERSION}`);
    }
    client.agentVersion = hello.agentVersion;
    return client;
  }

  agentVersion = '';

  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  async hello(timeoutMs = this.requestTimeoutMs): Promise<{ protocolVersion: number; agentVersion: string }> {
    const reply = await this.simple(RequestType.HELLO, [], 2, timeoutMs);
    return { protocolVersion: read.u32(reply[0]!), agentVersion: read.text(reply[1]!, 64) };
  }

  exec(options: ExecOptions): Promise<ExecResult> {
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let collected = 0;
    let pid = -1;
    const collect = (target: Buffer[], chunk: Buffer, forward?: (c: Buffer) => void): void => {
      forward?.(chunk);
      if (collected + chunk.length <= MAX_COLLECTED_OUTPUT) {
        target.push(chunk);
        collected += chunk.length;
      }
    };
    const timeoutMs = options.timeoutMs ?? 0;
    return new Promise<ExecResult>((resolve, reject) => {
      this.send(RequestType.EXEC, [
        item.strings(options.argv),
        item.strings(Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`)),
        item.string(options.cwd ?? ''),
        item.string(options.user ?? ''),
        Buffer.from(options.stdin ?? ''),
        item.u32(timeoutMs),
      ], {
        // The guest enforces the timeout; the host only guards against an agent that never answers.
        timeoutMs: timeoutMs > 0 ? timeoutMs + this.requestTimeoutMs : 0,
        onFrame: (frame) => {
          switch (frame.type) {
            case ReplyType.STARTED:
              read.count(frame, 1);
              pid = read.u32(frame.items[0]!);
              return false;
            case ReplyType.STDOUT:
              collect(stdout, outputChunk(frame), options.onStdout);
              return false;
            case ReplyType.STDERR:
              collect(stderr, outputChunk(frame), options.onStderr);
              return false;
            case ReplyType.EXIT: {
              const status = exitStatus(frame);
              resolve({ pid, ...status, stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr) });
              return true;
            }
            case ReplyType.ERROR:
              reject(requestError(frame, 'exec'));
              return true;
            default:
              throw new ProtocolViolation(`unexpected reply type 0x${frame.type.toString(16)} to EXEC`);
          }
        },
        fail: reject,
      });
    });
  }

  async writeFile(path: string, data: Buffer | string, options: { mode?: number; mkdirs?: boolean } = {}): Promise<void> {
    const bytes = Buffer.from(data);
    const mkdirs = options.mkdirs ? 2 : 0;
    // The first chunk replaces the file atomically; later chunks append to it.
    for (let offset = 0; offset === 0 || offset < bytes.length; offset += MAX_FILE_CHUNK) {
      const append = offset === 0 ? 0 : 1;
      await this.simple(RequestType.FILE_WRITE, [
        item.string(path), item.u32(options.mode ?? 0o644), item.u32(append | mkdirs),
        bytes.subarray(offset, offset + MAX_FILE_CHUNK),
      ], 0);
      if (bytes.length === 0) break;
    }
  }

  async readFile(path: string, options: { maxBytes?: number } = {}): Promise<Buffer> {
    const maxBytes = options.maxBytes ?? 64 * 1024 * 1024;
    const chunks: Buffer[] = [];
    let offset = 0;
    for (;;) {
      const want = Math.min(MAX_FILE_CHUNK, maxBytes - offset + 1);
      const [data] = await this.simple(RequestType.FILE_READ, [item.string(path), item.u64(BigInt(offset)), item.u32(want)], 1);
      if (data!.length > want) throw this.violation(`FILE_READ returned ${data!.length} bytes, asked for ${want}`);
      chunks.push(Buffer.from(data!));
      offset += data!.length;
      if (offset > maxBytes) throw new AppError('guest.request_failed', `${path} is larger than ${maxBytes} bytes`);
      if (data!.length < want) return Buffer.concat(chunks);
    }
  }

  /** Starts the one app process; its output and exit arrive as 'app-output' and 'app-exit' events. */
  startApp(options: AppOptions): Promise<{ pid: number }> {
    return this.appStream(RequestType.APP_START, [
      item.strings(options.argv),
      item.strings(Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`)),
      item.string(options.cwd ?? ''),
      item.string(options.user ?? ''),
    ]);
  }

  /**
   * Attaches the running app's output to this connection (agent 1.2 and later): what it printed
   * while no host was attached comes first (the agent keeps the last 64 KiB), then its live output,
   * as 'app-output' events, and its exit as 'app-exit', as after `startApp`. Listen before calling:
   * that backlog may arrive together with the reply. Fails with `guest.request_failed` whose
   * `guestCode` is `not_found` (no app runs), `busy` (its output already comes here) or
   * `unsupported` (an older agent).
   */
  attachApp(): Promise<{ pid: number }> {
    return this.appStream(RequestType.APP_ATTACH, []);
  }

  /** APP_START and APP_ATTACH: OK with the pid, then the app's output and one APP_EXIT under this id. */
  private async appStream(type: number, items: Item[]): Promise<{ pid: number }> {
    const id = this.nextId;
    const name = requestName(type);
    let started = false;
    const pid = await new Promise<number>((resolve, reject) => {
      this.send(type, items, {
        timeoutMs: this.requestTimeoutMs,
        firstReplyOnly: true,
        onFrame: (frame) => {
          if (!started) {
            if (frame.type === ReplyType.ERROR) { reject(requestError(frame, name)); return true; }
            if (frame.type !== ReplyType.OK) throw new ProtocolViolation(`${name} must be answered by OK or ERROR`);
            read.count(frame, 1);
            started = true;
            this.appStreamId = id;
            resolve(read.u32(frame.items[0]!));
            return false;
          }
          switch (frame.type) {
            case ReplyType.STDOUT: this.emit('app-output', 'stdout', outputChunk(frame)); return false;
            case ReplyType.STDERR: this.emit('app-output', 'stderr', outputChunk(frame)); return false;
            case ReplyType.APP_EXIT:
              this.appStreamId = 0;
              this.emit('app-exit', exitStatus(frame));
              return true;
            default: throw new ProtocolViolation(`unexpected frame type 0x${frame.type.toString(16)} on the app stream`);
          }
        },
        fail: reject,
      });
    });
    return { pid };
  }

  get appRunning(): boolean {
    return this.appStreamId !== 0;
  }

  async stopApp(graceMs = 5000): Promise<ExitStatus> {
    const reply = await this.simple(RequestType.APP_STOP, [item.u32(graceMs)], 2, graceMs + this.requestTimeoutMs);
    return { exitCode: read.i32(reply[0]!), signal: read.u32(reply[1]!) };
  }

  async waitPort(port: number, timeoutMs: number): Promise<void> {
    await this.simple(RequestType.WAIT_PORT, [item.u32(port), item.u32(timeoutMs)], 0, timeoutMs + this.requestTimeoutMs);
  }

  /** Run after every restore: the guest clock is stale by the time spent saved and clones share RNG state. */
  async afterRestore(): Promise<void> {
    await Promise.all([
      this.simple(RequestType.SET_CLOCK, [item.u64(BigInt(Date.now()) * 1_000_000n)], 0),
      this.simple(RequestType.ADD_ENTROPY, [randomBytes(64)], 0),
    ]);
  }

  /**
   * Mounts the root disk of a VM started with `cocoon.wait_root=1` (a restored boot snapshot) and
   * configures its network; returns the disk's size as the guest sees it.
   */
  async root(options: { hostname: string; device?: string }): Promise<number> {
    const [size] = await this.simple(RequestType.ROOT, [
      item.string(options.device ?? ''), item.string(options.hostname), item.string(''), item.string(''),
    ], 1);
    const bytes = Number(read.text(size!, 32));
    if (!Number.isSafeInteger(bytes)) throw this.violation('ROOT answered a size that is not a number');
    return bytes;
  }

  async sync(): Promise<void> {
    await this.simple(RequestType.SYNC, [], 0);
  }

  async shutdown(): Promise<void> {
    await this.simple(RequestType.SHUTDOWN, [], 0);
  }

  close(): void {
    this.socket.destroy();
  }

  /** Sends a request whose answer is one OK with `expectedItems` items (or ERROR). */
  private simple(type: number, items: Item[], expectedItems: number, timeoutMs = this.requestTimeoutMs): Promise<Item[]> {
    return new Promise((resolve, reject) => {
      this.send(type, items, {
        timeoutMs,
        onFrame: (frame) => {
          if (frame.type === ReplyType.ERROR) { reject(requestError(frame, requestName(type))); return true; }
          if (frame.type !== ReplyType.OK) throw new ProtocolViolation(`unexpected reply type 0x${frame.type.toString(16)} to ${requestName(type)}`);
          read.count(frame, expectedItems);
          resolve(frame.items);
          return true;
        },
        fail: reject,
      });
    });
  }

  private send(type: number, items: Item[], handler: Pending & { timeoutMs: number }): void {
    if (this.closedWith) { handler.fail(this.closedWith); return; }
    const id = this.nextId++;
    const entry: Pending = { onFrame: handler.onFrame, fail: handler.fail, firstReplyOnly: handler.firstReplyOnly === true };
    if (handler.timeoutMs > 0) {
      entry.timer = setTimeout(() => {
        this.pending.delete(id);
        handler.fail(new AppError('guest.timeout', `the guest agent did not answer ${requestName(type)} within ${handler.timeoutMs} ms`));
      }, handler.timeoutMs);
    }
    this.pending.set(id, entry);
    this.socket.write(encodeFrame({ id, type, items }));
  }

  private onData(chunk: Buffer): void {
    if (this.closedWith) return;
    try {
      for (const frame of this.decoder.push(chunk)) this.dispatch(frame);
    } catch (error) {
      const message = error instanceof ProtocolViolation ? error.message : String(error);
      this.shutDown(this.violation(message));
    }
  }

  private dispatch(frame: Frame): void {
    if (frame.id === 0) {
      if (frame.type !== ReplyType.LOG) throw new ProtocolViolation(`frame type 0x${frame.type.toString(16)} with id 0`);
      read.count(frame, 1);
      this.emit('log', read.text(frame.items[0]!, MAX_TEXT));
      return;
    }
    const entry = this.pending.get(frame.id);
    if (!entry) {
      // A guest restored from a snapshot never saw its old connection end: until it has answered
      // HELLO (which ends that session, PROTOCOL.md), frames of that session may still arrive.
      if (!this.sessionOpen) return;
      throw new ProtocolViolation(`reply for unknown request id ${frame.id}`);
    }
    // Before HELLO is answered, HELLO is the only request pending.
    this.sessionOpen = true;
    if (entry.onFrame(frame)) {
      clearTimeout(entry.timer);
      this.pending.delete(frame.id);
    } else if (entry.firstReplyOnly) {
      clearTimeout(entry.timer);
    }
  }

  private violation(message: string): AppError {
    return new AppError('guest.protocol_violation', `guest agent broke the protocol: ${message}`);
  }

  private shutDown(error: AppError): void {
    if (this.closedWith) return;
    this.closedWith = error;
    this.socket.destroy();
    for (const entry of this.pending.values()) {
      clearTimeout(entry.timer);
      entry.fail(error);
    }
    this.pending.clear();
    this.emit('close', error);
  }
}

function outputChunk(frame: Frame): Buffer {
  read.count(frame, 1);
  if (frame.items[0]!.length > MAX_OUTPUT_CHUNK) throw new ProtocolViolation('output chunk exceeds 32 KiB');
  return Buffer.from(frame.items[0]!);
}

function exitStatus(frame: Frame): ExitStatus {
  read.count(frame, 2);
  return { exitCode: read.i32(frame.items[0]!), signal: read.u32(frame.items[1]!) };
}

function requestError(frame: Frame, what: string): AppError {
  read.count(frame, 2);
  const code = read.text(frame.items[0]!, 64);
  const message = read.text(frame.items[1]!, MAX_TEXT);
  return new AppError('guest.request_failed', `${what} failed in the guest: ${code}: ${message}`, { guestCode: code });
}

function requestName(type: number): string {
  return Object.entries(RequestType).find(([, value]) => value === type)?.[0] ?? `0x${type.toString(16)}`;
}
