/** HTTP probes of guest apps from the host: one GET, and waiting for a condition. */
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

export interface HttpAnswer {
  status: number;
  body: string;
}

/** One GET to 127.0.0.1:port on a fresh connection (no keep-alive pool hides a slow guest). */
export function httpGet(port: number, urlPath: string, timeoutMs = 30_000): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const request = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: timeoutMs }, (response) => {
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
