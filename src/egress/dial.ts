/**
 * From a guest's target to a connected socket: resolve once, vet every address, dial only vetted
 * addresses (never a name, so a second resolution cannot hand back a different answer).
 */
import dns from 'node:dns/promises';
import net from 'node:net';
import os from 'node:os';
import { checkAddresses, checkBeforeResolve, type CompiledPolicy, type Refusal } from './policy.ts';
import { forbiddenReason, formatIp } from './ranges.ts';
import type { EgressTarget } from './target.ts';

export type ResolveFn = (hostname: string) => Promise<string[]>;
export type ConnectFn = (destination: { address: string; port: number; family: 4 | 6 }) => net.Socket;
export type IsForbiddenFn = (address: string) => string | undefined;

export type DialOutcome =
  | { ok: true; socket: net.Socket; address: string; addresses: string[] }
  | { ok: false; refusal: Refusal; addresses: string[] };

export type DialOptions = {
  policy: CompiledPolicy;
  resolve: ResolveFn;
  connect: ConnectFn;
  isForbidden: IsForbiddenFn;
  connectTimeoutMs: number;
  signal: AbortSignal;
};

/** `localhost` and `*.localhost` are loopback by definition (RFC 6761); no resolver is asked. */
function isLocalhostName(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost');
}

export const defaultResolve: ResolveFn = async (hostname) => {
  if (isLocalhostName(hostname)) return ['127.0.0.1', '::1'];
  const results = await dns.lookup(hostname, { all: true, verbatim: true });
  return results.map((result) => result.address);
};

export const defaultConnect: ConnectFn = ({ address, port, family }) => net.connect({ host: address, port, family });

/** The real predicate: forbidden ranges plus every address of this host's interfaces, read now. */
export const defaultIsForbidden: IsForbiddenFn = (address) => {
  const own = Object.values(os.networkInterfaces()).flatMap((entries) => (entries ?? []).map((entry) => entry.address));
  return forbiddenReason(address, own);
};

function withDeadline<T>(promise: Promise<T>, timeoutMs: number, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    const onAbort = (): void => reject(new Error('client went away'));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    });
  });
}

function connectOnce(connect: ConnectFn, address: string, port: number, timeoutMs: number, signal: AbortSignal): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) { reject(new Error('client went away')); return; }
    const socket = connect({ address, port, family: net.isIPv6(address) ? 6 : 4 });
    const finish = (error?: Error): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect);
      socket.off('error', finish);
      if (error === undefined) { resolve(socket); return; }
      socket.destroy();
      reject(error);
    };
    const onConnect = (): void => finish();
    const onAbort = (): void => finish(new Error('client went away'));
    const timer = setTimeout(() => finish(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
    signal.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', onConnect);
    socket.once('error', finish);
  });
}

/**
 * Resolves, vets and connects, trying the permitted addresses in order until one answers. The
 * refusal checks run before any connection attempt; a refused target is never dialled.
 */
export async function dial(target: EgressTarget, options: DialOptions): Promise<DialOutcome> {
  const isIpLiteral = target.ip !== undefined;
  const early = checkBeforeResolve(options.policy, target.host, target.port, isIpLiteral);
  if (early !== undefined) return { ok: false, refusal: early, addresses: [] };

  let addresses: string[];
  if (target.ip !== undefined) {
    addresses = [formatIp(target.ip)];
  } else {
    try {
      addresses = await withDeadline(options.resolve(target.host), options.connectTimeoutMs, options.signal);
    } catch (error) {
      const message = `cannot resolve ${target.host}: ${(error as Error).message}`;
      return { ok: false, refusal: { code: 'egress.dns_failed', message }, addresses: [] };
    }
  }
  const verdict = checkAddresses(options.policy, { host: target.host, port: target.port, isIpLiteral }, addresses, options.isForbidden);
  if (!verdict.ok) return { ok: false, refusal: verdict.refusal, addresses };

  const deadline = Date.now() + options.connectTimeoutMs;
  let lastError: Error | undefined;
  for (const address of verdict.addresses) {
    const remainingMs = deadline - Date.now();
    if (remainingMs <= 0 || options.signal.aborted) break;
    try {
      const socket = await connectOnce(options.connect, address, target.port, remainingMs, options.signal);
      return { ok: true, socket, address, addresses };
    } catch (error) {
      lastError = error as Error;
    }
  }
  const message = `cannot connect to ${target.host}:${target.port}: ${lastError?.message ?? 'timed out'}`;
  return { ok: false, refusal: { code: 'egress.connect_failed', message }, addresses };
}
