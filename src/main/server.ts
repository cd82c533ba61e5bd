/**
 * Cocoon's server on its embedded defaults (SQLite and images under the data directory, loopback
 * only): the REST API and the MicroVM lifecycle. At start, MicroVM records a previous daemon left
 * mid-way are reconciled. `cocoon server` and `npm run server` run it in the foreground.
 */
import path from 'node:path';
import { buildApi } from '../api/index.ts';
import type { Config } from '../config/config.ts';
import { startEngine } from './engine.ts';
import { startImageService } from './images.ts';
import { MicroVmManager } from '../vms/manager.ts';

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
  /** Stops serving; running MicroVMs are left as they are. */
  close(): Promise<void>;
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { config } = options;
  const say = options.log ?? (() => {});
  const engine = await startEngine({ config, log: say });
  const images = await startImageService(engine, config, say);
  const microvms = new MicroVmManager({ driver: engine.driver, store: images.store, builder: images.builder, dataDir: config.dataDir, log: say });
  for (const record of await microvms.reconcile()) say(`MicroVM ${record.microvmId} reconciled after a restart: now ${record.state}`);
  microvms.start();
  const api = buildApi({ images, microvms, uploadDir: path.join(config.dataDir, 'uploads'), logger: options.requestLog ?? true });
  await api.listen({ host: '127.0.0.1', port: options.apiPort });
  const address = api.server.address();
  const apiUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : options.apiPort}`;
  const adminKeyPath = path.join(config.dataDir, 'admin-api-key');
  say(`Cocoon API on ${apiUrl} (OpenAPI: /openapi.json), data in ${config.dataDir}`);
  say(`admin API key: ${adminKeyPath} — send it as "Authorization: Bearer <key>"`);
  return {
    apiUrl,
    adminKeyPath,
    close: async () => {
      await api.close();
      await microvms.close();
      await images.close();
      await engine.driver.idle();
    },
  };
}
