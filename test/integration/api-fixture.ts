/**
 * What every API integration test starts with: a temp data directory, a real engine and image
 * service over a real SQLite file, the admin key, and a second account with its own key.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config/config.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import { startImageService, type ImageService } from '../../src/main/images.ts';
import type { MicroVmManager } from '../../src/vms/manager.ts';

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

/** True while `pid` is a live (not zombie) QEMU. */
export function isLiveQemu(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('qemu-system') && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return false;
  }
}

/**
 * Teardown: every MicroVM not yet TERMINATED/FAILED is terminated through the lifecycle; a QEMU
 * that survives that is killed by its recorded pid.
 */
export async function terminateLeftovers(store: ImageService['store'], microvms: Pick<MicroVmManager, 'terminate'>): Promise<void> {
  const live = await store.microvms.listByState(['PENDING', 'RUNNING', 'SUSPENDING', 'SUSPENDED', 'RESUMING', 'TERMINATING']);
  const pids = live.flatMap((record) => (record.pid === undefined ? [] : [record.pid]));
  for (const record of live) await microvms.terminate(record.accountId, record.microvmId).catch((error) => console.log(`# teardown ${record.microvmId}: ${String(error)}`));
  for (const pid of pids) if (isLiveQemu(pid)) process.kill(pid, 'SIGKILL');
}
