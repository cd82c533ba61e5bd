/**
 * Calls the app's runtime hooks (`POST /cocoon/runtime/v1/<hook>` on its hooks port, reached
 * through the VM's forwarded port on the host). Hooks are optional and never block the lifecycle: the
 * outcome is returned for the log, never thrown. Hook bodies may carry secrets: never logged.
 */
import http from 'node:http';
import type { HostEndpoint } from '../host/http-probe.ts';

export type HookName = 'run' | 'resume' | 'suspend' | 'terminate';

export type HookOutcome =
  | { kind: 'answered'; status: number; ms: number }
  /** Nothing listens on the hooks port: the app has no hooks. */
  | { kind: 'absent' }
  | { kind: 'failed'; error: string; ms: number };

/** Hook timeouts are bounded to 1–60 s. */
export function clampHookTimeoutMs(timeoutMs: number): number {
  return Math.min(60_000, Math.max(1_000, timeoutMs));
}

export function callHook(endpoint: HostEndpoint, hook: HookName, body: unknown, timeoutMs: number): Promise<HookOutcome> {
  const { host, port } = typeof endpoint === 'number' ? { host: '127.0.0.1', port: endpoint } : endpoint;
  // A string is sent as given (the user's own format); anything else as JSON.
  const payload = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body ?? {}));
  const contentType = typeof body === 'string' && !looksLikeJson(body) ? 'text/plain; charset=utf-8' : 'application/json';
  const started = Date.now();
  return new Promise((resolve) => {
    const request = http.request({
      host, port, method: 'POST', path: `/cocoon/runtime/v1/${hook}`, agent: false,
      headers: { 'content-type': contentType, 'content-length': payload.length },
      timeout: clampHookTimeoutMs(timeoutMs),
    }, (response) => {
      response.resume();
      response.on('end', () => resolve({ kind: 'answered', status: response.statusCode ?? 0, ms: Date.now() - started }));
      response.on('error', (error) => resolve({ kind: 'failed', error: error.message, ms: Date.now() - started }));
    });
    request.on('timeout', () => request.destroy(new Error(`no answer within ${clampHookTimeoutMs(timeoutMs)} ms`)));
    request.on('error', (error: NodeJS.ErrnoException) => {
      // QEMU's user-mode forward accepts on the host, then drops the connection when nothing
      // listens in the guest: a reset before any answer means "no hooks" just like a refusal.
      const absent = error.code === 'ECONNREFUSED' || error.code === 'ECONNRESET' || error.message === 'socket hang up';
      resolve(absent ? { kind: 'absent' } : { kind: 'failed', error: error.message, ms: Date.now() - started });
    });
    request.end(payload);
  });
}

function looksLikeJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}
