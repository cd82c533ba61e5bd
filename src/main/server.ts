/**
 * Cocoon's server on its embedded defaults (SQLite and images under the data directory, loopback
 * only): the REST API, the MicroVM lifecycle and the endpoint proxy. At start, MicroVM records a previous daemon left
 * mid-way are reconciled: live QEMUs are re-adopted, half-done operations finished or rolled back,
 * and any other QEMU of the data directory (a build cut short) is killed. `cocoon server` and
 * `npm run server` run it in the foreground.
 */
import path from 'node:path';
import { buildApi } from '../api/index.ts';
import type { Config } from '../config/config.ts';
import { startEngine } from './engine.ts';
import { startImageService } from './images.ts';
import { startEndpointProxy } from './proxy.ts';
import { endpointUrl } from '../proxy/index.ts';
import { TokenService } from '../tokens/index.ts';
import { MicroVmManager } from '../vms/manager.ts';
import { killAndWait, qemuPidsUsing } from '../vmm/qemu/process.ts';

export const DEFAULT_API_PORT = 8787;

export interface ServerOptions {
  config: Config;
  /** API port on 127.0.0.1; 0 picks a free one. */
  apiPort: number;
  log?: (line: string) => void;
  /** pino's JSON line per API request on stdout. Default true. */
  requestLog?: boolean;
}

export interface RunningServer {
  apiUrl: string;
  adminKeyPath: string;
  /** The endpoint proxy's TLS port, and the local CA its clients trust (undefined with a user-supplied certificate). */
  proxyPort: number;
  caPath?: string;
  /**
   * Stops serving. With `keepMicroVms` (a graceful stop of `cocoon server`) running MicroVMs keep
   * running and the next start on this data directory re-adopts them; without it they are killed
   * when this process exits, like every QEMU it owns.
   */
  close(options?: { keepMicroVms?: boolean }): Promise<void>;
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { config } = options;
  const say = options.log ?? (() => {});
  const engine = await startEngine({ config, log: say });
  const images = await startImageService(engine, config, say);
  // The port is known once the proxy listens (config.proxyPort 0 picks one); endpoints are made after that.
  let proxyPort = config.proxyPort;
  const microvms = new MicroVmManager({ driver: engine.driver, store: images.store, builder: images.builder, dataDir: config.dataDir, log: say },
    { endpointOf: (microvmId) => endpointUrl(config.domain, proxyPort, microvmId) });
  for (const record of await microvms.reconcile()) say(`MicroVM ${record.microvmId} reconciled after a restart: now ${record.state}`);
  // After reconcile: re-adopted VMs keep theirs; the namespaces of QEMUs that died with a previous daemon go.
  for (const netns of (await engine.networks?.sweep()) ?? []) say(`egress: removed the leftover network namespace ${netns}`);
  // Nothing will ever drive another QEMU of this data directory: a build or a launch that the
  // previous daemon died in the middle of (before it recorded the pid).
  const adopted = new Set((await images.store.microvms.listByState(['RUNNING'])).map((record) => record.pid));
  for (const pid of qemuPidsUsing(config.dataDir).filter((pid) => !adopted.has(pid))) {
    await killAndWait(pid);
    say(`killed QEMU ${pid}, an orphan of the previous daemon`);
  }
  microvms.start();
  const tokens = await TokenService.open(config.dataDir);
  const api = buildApi({ images, microvms, tokens, uploadDir: path.join(config.dataDir, 'uploads'), logger: options.requestLog ?? true });
  await api.listen({ host: '127.0.0.1', port: options.apiPort });
  const address = api.server.address();
  const apiUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : options.apiPort}`;
  const adminKeyPath = path.join(config.dataDir, 'admin-api-key');
  say(`Cocoon API on ${apiUrl} (OpenAPI: /openapi.json), data in ${config.dataDir}`);
  say(`admin API key: ${adminKeyPath} — send it as "Authorization: Bearer <key>"`);
  const endpoints = await startEndpointProxy({ config, microvms, tokens, log: say });
  proxyPort = endpoints.port;
  return {
    apiUrl,
    adminKeyPath,
    proxyPort,
    ...(endpoints.caPath !== undefined && { caPath: endpoints.caPath }),
    close: async ({ keepMicroVms = false } = {}) => {
      await endpoints.proxy.close();
      await api.close();
      await microvms.close();
      if (keepMicroVms) {
        const kept = microvms.releaseAll();
        say(`${kept} MicroVM${kept === 1 ? '' : 's'} keep${kept === 1 ? 's' : ''} running; the next start on ${config.dataDir} re-adopts ${kept === 1 ? 'it' : 'them'}`);
      }
      await images.close();
      await engine.driver.idle();
    },
  };
}
