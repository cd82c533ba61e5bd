/**
 * A small typed QMP client over QEMU's unix socket (JSON lines). Commands are answered in order;
 * asynchronous events are emitted as 'event'.
 */
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { AppError } from '../../errors/errors.ts';
import { connectWithRetry } from '../../host/sockets.ts';

const MAX_LINE = 1024 * 1024;

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
}

interface PendingCommand {
  command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private buffered = '';
  private readonly queue: PendingCommand[] = [];
  private greeted = false;
  private onGreeting?: () => void;
  private closed = false;

  private constructor(private readonly socket: net.Socket) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => this.onData(text));
    socket.on('error', () => {});
    socket.on('close', () => this.onClose());
  }

  static async connect(path: string, options: { timeoutMs: number; signal?: AbortSignal | undefined }): Promise<QmpClient> {
    const client = new QmpClient(await connectWithRetry(path, options));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new AppError('vmm.timeout', 'QMP greeting did not arrive')), options.timeoutMs);
      client.onGreeting = () => { clearTimeout(timer); resolve(); };
      client.once('close', () => { clearTimeout(timer); reject(new AppError('vmm.exited', 'QEMU closed QMP before its greeting')); });
    });
    await client.execute('qmp_capabilities');
    return client;
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new AppError('vmm.exited', `QEMU is gone (QMP ${command})`));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ command, resolve: resolve as (value: unknown) => void, reject });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  /** Resolves with the first event that matches, or rejects when QMP closes first or time runs out. */
  waitForEvent(match: (event: QmpEvent) => boolean, timeoutMs: number): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const cleanup = (): void => { clearTimeout(timer); this.off('event', onEvent); this.off('close', onClose); };
      const onEvent = (event: QmpEvent): void => { if (match(event)) { cleanup(); resolve(event); } };
      const onClose = (): void => { cleanup(); reject(new AppError('vmm.exited', 'QEMU exited while waiting for a QMP event')); };
      const timer = setTimeout(() => { cleanup(); reject(new AppError('vmm.timeout', `no matching QMP event within ${timeoutMs} ms`)); }, timeoutMs);
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(text: string): void {
    this.buffered += text;
    if (this.buffered.length > MAX_LINE) { this.socket.destroy(); return; }
    let newline: number;
    while ((newline = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, newline).trim();
      this.buffered = this.buffered.slice(newline + 1);
      if (line) this.onMessage(JSON.parse(line) as Record<string, unknown>);
    }
  }

  private onMessage(message: Record<string, unknown>): void {
    if ('QMP' in message && !this.greeted) {
      this.greeted = true;
      this.onGreeting?.();
    } else if ('event' in message) {
      this.emit('event', message as unknown as QmpEvent);
    } else if ('return' in message || 'error' in message) {
      const pending = this.queue.shift();
      if (!pending) return;
      if ('error' in message) {
        const error = message.error as { class?: string; desc?: string };
        pending.reject(new AppError('vmm.qmp_error', `QMP ${pending.command}: ${error.desc ?? 'failed'}`, { qmpClass: error.class }));
      } else {
        pending.resolve(message.return);
      }
    }
  }

  private onClose(): void {
    this.closed = true;
    for (const pending of this.queue.splice(0)) {
      pending.reject(new AppError('vmm.exited', `QEMU closed QMP during ${pending.command}`));
    }
    this.emit('close');
  }
}
