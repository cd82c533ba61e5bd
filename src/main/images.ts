/**
 * Wires image building: the build egress proxy (internet, filtered), base root filesystems (the
 * Debian one is built on first use), and the builder.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureGuestArtifacts } from '../../guest/build/artifacts.ts';
import { startEgressProxy, type EgressProxy } from '../egress/index.ts';
import { ImageBuilder, type BaseImage, type BaseImageName } from '../images/builder.ts';
import { openStore, type Store } from '../store/index.ts';
import type { Config } from '../config/config.ts';
import type { Engine } from './engine.ts';

export interface ImageService {
  builder: ImageBuilder;
  store: Store;
  /** The account that owns everything made before accounts are exposed (the control plane's admin). */
  adminAccountId: string;
  egress: EgressProxy;
  close(): Promise<void>;
}

export async function startImageService(engine: Engine, config: Pick<Config, 'dataDir' | 's3'>, log: (line: string) => void = () => {}): Promise<ImageService> {
  const { dataDir } = config;
  const egressDir = path.join(dataDir, 'egress');
  await mkdir(egressDir, { recursive: true, mode: 0o700 });
  const store = openStore(path.join(dataDir, 'cocoon.db'));
  const admin = await store.accounts.ensureAdmin();
  if (admin.secret) {
    // Shown nowhere else: the key is stored hashed.
    await writeFile(path.join(dataDir, 'admin-api-key'), `${admin.secret}\n`, { mode: 0o600 });
    log(`created the admin account; its API key is in ${path.join(dataDir, 'admin-api-key')}`);
  }
  const egress = await startEgressProxy({ socketPath: path.join(egressDir, 'build.sock'), policy: { mode: 'internet' } });
  const { manifest } = engine.artifacts;
  const builder = new ImageBuilder({
    driver: engine.driver,
    dataDir,
    images: store.images,
    s3: config.s3,
    egressSocket: egress.socketPath!,
    baseImage: (name) => baseImage(engine, name, log),
    builtWith: { kernel: manifest.kernel.release, kernelPackageVersion: manifest.kernel.packageVersion, agentVersion: manifest.agent.version ?? 'unknown' },
  });
  for (const record of await builder.reconcile()) log(`image ${record.arn} was interrupted by a restart: now FAILED`);
  return {
    builder, store, adminAccountId: admin.account.id, egress,
    close: async () => { await egress.close(); store.close(); },
  };
}

async function baseImage(engine: Engine, name: BaseImageName, log: (line: string) => void): Promise<BaseImage> {
  if (name === 'tiny') {
    return { rootfsPath: engine.artifacts.rootfs.tiny, sha256: engine.artifacts.manifest.artifacts['rootfs-tiny']!.sha256 };
  }
  const artifacts = await ensureGuestArtifacts({ debian: true, log });
  return { rootfsPath: artifacts.rootfs.debian!, sha256: artifacts.manifest.artifacts['rootfs-debian']!.sha256 };
}
