/**
 * When is a freshly started app ready to be snapshotted? When its hooks port answers
 * `GET /cocoon/runtime/v1/ready` with 200 (503 = still starting), or — for apps without hooks — when
 * its app port answers HTTP at all. Probes are patient: a starved TCG guest answers slowly.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError } from '../errors/errors.ts';
import { httpGet } from '../host/http-probe.ts';

export const READY_PATH = '/cocoon/runtime/v1/ready';
const PROBE_INTERVAL_MS = 250;
const PROBE_TIMEOUT_MS = 5000;

export interface ReadinessTarget {
  hooksHostPort: number;
  appHostPort: number;
  timeoutMs: number;
  /** Rejects when the app exits: no point waiting for a dead app. */
  appExited: Promise<never>;
  signal?: AbortSignal;
}

export type ReadyVia = 'hooks' | 'app-port';

export async function waitUntilReady(target: ReadinessTarget): Promise<ReadyVia> {
  const deadline = Date.now() + target.timeoutMs;
  let hooksSeen = false;
  let settled = false;
  const poll = async (): Promise<ReadyVia> => {
    while (Date.now() < deadline && !settled) {
      target.signal?.throwIfAborted();
      const hooks = await httpGet(target.hooksHostPort, READY_PATH, PROBE_TIMEOUT_MS).catch(() => undefined);
      if (hooks?.status === 200) return 'hooks';
      if (hooks?.status === 503) hooksSeen = true; // it has hooks: only its own word counts now
      if (!hooksSeen && target.appHostPort !== target.hooksHostPort) {
        const app = await httpGet(target.appHostPort, '/', PROBE_TIMEOUT_MS).catch(() => undefined);
        if (app && app.status > 0) return 'app-port';
      }
      await sleep(PROBE_INTERVAL_MS);
    }
    throw new AppError('image.readiness_timeout',
      hooksSeen
        ? `the app's ready hook kept answering 503 for ${target.timeoutMs / 1000} s`
        : `the app did not answer HTTP on its port within ${target.timeoutMs / 1000} s`);
  };
  try {
    return await Promise.race([poll(), target.appExited]);
  } finally {
    settled = true; // stops the probe loop when the app exited first
  }
}
