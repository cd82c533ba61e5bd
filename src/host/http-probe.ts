/** HTTP probes of guest apps from the host: one GET, and waiting for a condition. */
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

export interface HttpAnswer {
  status: number;
  body: string;
}

/** Where a VM's forwarded port listens: a port on 127.0.0.1, or on another host address (a VM's network namespace). */
export type HostEndpoint = number | { host: string; port: number };

/** One GET to the endpoint on a fresh connection (no keep-alive pool hides a slow guest). */
export function httpGet(endpoint: HostEndpoint, urlPath: string, timeoutMs = 30_000): Promise<HttpAnswer> {
  const { host, port } = typeof endpoint === 'number' ? { host: '127.0.0.1', port: endpoint } : endpoint;
  return new Promise((resolve, reject) => {
    const request = http.get({ host, port, path: urlPath, agent: false, timeout: timeoutMs }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`GET :${port}${urlPath} timed out after ${timeoutMs} ms`)));
    request.on('error', reject);
  });
}

/** Polls `condition` (errors count as "not yet") every `intervalMs` until it holds or time runs out. */
export async function waitUntil(condition: () => Promise<boolean>, timeoutMs: number, intervalMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}
