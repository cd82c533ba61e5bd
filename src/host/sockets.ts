/** Unix and TCP socket helpers for talking to processes that create their sockets after they start. */
import net, { type LookupFunction } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError } from '../errors/errors.ts';

/** QEMU creates its sockets ~30–40 ms after it starts; a short interval keeps launches fast. */
const RETRY_INTERVAL_MS = 2;

/** Connects to a unix socket that may not exist yet (QEMU creates it while starting). */
export async function connectWithRetry(path: string, options: { timeoutMs: number; signal?: AbortSignal | undefined }): Promise<net.Socket> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    options.signal?.throwIfAborted();
    try {
      return await connectOnce(path);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() >= deadline) {
        throw new AppError('vmm.timeout', `could not connect to ${path} within ${options.timeoutMs} ms`, {}, { cause: error });
      }
      await sleep(RETRY_INTERVAL_MS, undefined, { signal: options.signal });
    }
  }
}

function connectOnce(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(path);
    socket.once('connect', () => { socket.off('error', reject); resolve(socket); });
    socket.once('error', reject);
  });
}

/** A loopback TCP port that is free now (the caller binds it soon after; a clash fails loudly). */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/**
 * A DNS lookup that answers 127.0.0.1 for every name: for clients of Cocoon's own endpoints
 * (`<id>.cocoon.localhost`), whose name must still travel in SNI and Host, whatever the system's
 * resolver makes of it. Answers both forms Node asks for (one address, or `all`).
 */
export const lookupLoopback: LookupFunction = (_hostname, options, callback) => {
  if (options.all) (callback as unknown as (error: null, addresses: Array<{ address: string; family: number }>) => void)(null, [{ address: '127.0.0.1', family: 4 }]);
  else callback(null, '127.0.0.1', 4);
};
