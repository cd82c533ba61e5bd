/**
 * `npm run server`: Cocoon's API on its embedded defaults (SQLite and images under the data
 * directory, loopback only). Images can be created, listed, followed and deleted over REST, and
 * MicroVMs run, suspended, resumed and terminated. At start, MicroVM records a previous daemon
 * left mid-way are reconciled (live QEMUs are not re-adopted yet: they are stopped and FAILED).
 */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildApi } from '../api/index.ts';
import { loadConfig } from '../config/config.ts';
import { startEngine } from './engine.ts';
import { startImageService } from './images.ts';
import { MicroVmManager } from '../vms/manager.ts';

const { values } = parseArgs({ options: { 'data-dir': { type: 'string' }, port: { type: 'string' } } });
const config = loadConfig(values['data-dir'] ? { dataDir: values['data-dir'] } : {});
const port = Number(values.port ?? process.env.COCOON_API_PORT ?? 8787);
const say = (line: string): void => console.log(line);

const engine = await startEngine({ config, log: say });
const images = await startImageService(engine, config, say);
const microvms = new MicroVmManager({ driver: engine.driver, store: images.store, builder: images.builder, dataDir: config.dataDir, log: say });
for (const record of await microvms.reconcile()) say(`MicroVM ${record.microvmId} reconciled after a restart: now ${record.state}`);
microvms.start();
const api = buildApi({ images, microvms, uploadDir: path.join(config.dataDir, 'uploads'), logger: true });
await api.listen({ host: '127.0.0.1', port });
say(`Cocoon API on http://127.0.0.1:${port} (OpenAPI: /openapi.json), data in ${config.dataDir}`);
say(`admin API key: ${path.join(config.dataDir, 'admin-api-key')} — send it as "Authorization: Bearer <key>"`);

const shutdown = async (): Promise<void> => {
  await api.close();
  await microvms.close();
  await images.close();
  await engine.driver.idle();
  process.exit(0);
};
process.once('SIGINT', () => void shutdown());
process.once('SIGTERM', () => void shutdown());
