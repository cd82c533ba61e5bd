/**
 * What every API integration test starts with: a temp data directory, a real engine and image
 * service over a real SQLite file, the admin key, and a second account with its own key.
 */
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config/config.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import { startImageService, type ImageService } from '../../src/main/images.ts';

export interface ApiFixture {
  workDir: string;
  dataDir: string;
  engine: Engine;
  images: ImageService;
  adminKey: string;
  otherKey: string;
}

export async function startApiFixture(prefix: string): Promise<ApiFixture> {
  const workDir = await mkdtemp(path.join(os.tmpdir(), prefix));
  const dataDir = path.join(workDir, 'data');
  const engine = await startEngine({ config: loadConfig({ dataDir }), log: (line) => console.log(`# ${line}`) });
  const images = await startImageService(engine, { dataDir, s3: {} });
  const adminKey = (await readFile(path.join(dataDir, 'admin-api-key'), 'utf8')).trim();
  const other = await images.store.accounts.createAccount('other');
  const otherKey = (await images.store.accounts.createApiKey(other.id)).secret;
  return { workDir, dataDir, engine, images, adminKey, otherKey };
}
