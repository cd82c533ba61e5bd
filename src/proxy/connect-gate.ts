/**
 * Connections to a guest port, opened one at a time. QEMU's user-mode network listens on a
 * forwarded port with a backlog of 1 (`ss -ltn` shows Send-Q 1): of 8 simultaneous connects, the
 * ones that find its accept queue full lose their SYN and wait a second for the kernel's retry
 * (measured: 6 of 8 took 1027 ms; through the proxy, ~1% of requests stalled ~1 s whenever its
 * connections to the guest were being reopened). One at a time, each takes about a millisecond,
 * unless QEMU is slow to accept (a busy host): then a SYN is still dropped now and then, and a
 * new attempt beside the waiting one gets in soon after QEMU has caught up, long before the
 * kernel's retry.
 */
import net from 'node:net';
import type { Upstream } from './forward-http.ts';

/** When further attempts start beside a connect not yet answered (a loopback handshake takes well under 1 ms). */
const ANOTHER_ATTEMPT_AFTER_MS = [20, 40, 80, 160, 320];

export class ConnectGate {
  /** By `host:port`: the last connect queued for that port, settled or not. */
  private readonly tails = new Map<string, Promise<unknown>>();

  connect(upstream: Upstream): Promise<net.Socket> {
    const key = `${upstream.host}:${upstream.port}`;
    const socket = (this.tails.get(key) ?? Promise.resolve()).then(() => connectTo(upstream));
    const tail = socket.catch(() => {});
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return socket;
  }
}

/** The first attempt to connect wins; the others are dropped. Any error (refused: nothing listens) ends them all. */
function connectTo(upstream: Upstream): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const attempts: net.Socket[] = [];
    let timer: NodeJS.Timeout | undefined;
    let settled = false;
    const settle = (winner: net.Socket | undefined, error?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      for (const socket of attempts) if (socket !== winner) socket.destroy();
      if (winner) resolve(winner);
      else reject(error);
    };
    const attempt = (): void => {
      const socket = net.connect({ host: upstream.host, port: upstream.port, noDelay: true });
      attempts.push(socket);
      const onError = (error: Error): void => settle(undefined, error);
      socket.once('error', onError);
      socket.once('connect', () => {
        socket.off('error', onError);
        settle(socket);
      });
      const next = ANOTHER_ATTEMPT_AFTER_MS[attempts.length - 1];
      if (next !== undefined) timer = setTimeout(attempt, next);
    };
    attempt();
  });
}
