/**
 * MicroVM image records, one directory per version: `<dir>/<name>/<version>/image.json` beside the
 * version's build.log and template snapshot. (The control plane moves records into its SQLite
 * store; the layout of snapshot files stays.) Each create of an existing name adds a major version.
 */
import { mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { AppError } from '../errors/errors.ts';
import { writeFileAtomic } from '../host/files.ts';

export type ImageState = 'CREATING' | 'ACTIVE' | 'FAILED';

export const IMAGE_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

export interface ImageRecord {
  name: string;
  version: string;
  arn: string;
  state: ImageState;
  stateReason?: string;
  /** The error code behind a FAILED state (e.g. `artifact.unsafe_path`, `image.build_failed`). */
  stateReasonCode?: string;
  createdAt: string;
  updatedAt: string;
  codeArtifact: { uri: string; sha256?: string };
  baseImage?: string;
  appPort: number;
  hooksPort: number;
  readinessTimeoutSeconds: number;
  memoryMiB: number;
  runtime?: { argv: string[]; env: Record<string, string>; cwd: string; user: string; exposedPorts: number[]; labels: Record<string, string> };
  builtWith?: { kernel: string; kernelPackageVersion: string; agentVersion: string; qemuVersion: string; accelerator: string };
  layers?: string[];
  warnings?: string[];
  timingsMs?: Record<string, number>;
}

export class ImageRecords {
  constructor(readonly dir: string) {}

  versionDir(name: string, version: string): string {
    return path.join(this.dir, name, version);
  }

  /** Reserves the next version of `name` (mkdir is the atomic claim) and records it as CREATING. */
  async createVersion(fields: Omit<ImageRecord, 'name' | 'version' | 'arn' | 'state' | 'createdAt' | 'updatedAt'> & { name: string }): Promise<ImageRecord> {
    if (!IMAGE_NAME.test(fields.name)) {
      throw new AppError('config.invalid', `image name "${fields.name}" must be 1–63 lowercase letters, digits or dashes`);
    }
    await mkdir(path.join(this.dir, fields.name), { recursive: true });
    for (;;) {
      const major = (await this.majors(fields.name)).reduce((max, n) => Math.max(max, n), 0) + 1;
      const version = `${major}.0`;
      try {
        await mkdir(this.versionDir(fields.name, version));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EEXIST') continue; // another create took it
        throw error;
      }
      const now = new Date().toISOString();
      const record: ImageRecord = { ...fields, version, arn: `cocoon:image:${fields.name}:${version}`, state: 'CREATING', createdAt: now, updatedAt: now };
      await this.save(record);
      return record;
    }
  }

  async save(record: ImageRecord): Promise<void> {
    record.updatedAt = new Date().toISOString();
    await writeFileAtomic(path.join(this.versionDir(record.name, record.version), 'image.json'), JSON.stringify(record, null, 2));
  }

  /** A given version, or the latest ACTIVE one. */
  async get(name: string, version?: string): Promise<ImageRecord> {
    if (version) {
      const record = await this.read(name, version);
      if (!record) throw new AppError('image.not_found', `image ${name}:${version} does not exist`);
      return record;
    }
    const versions = await this.list(name);
    const active = versions.filter((r) => r.state === 'ACTIVE').at(-1);
    if (!active) throw new AppError('image.not_found', `image ${name} has no ACTIVE version`);
    return active;
  }

  async list(name: string): Promise<ImageRecord[]> {
    const majors = (await this.majors(name)).sort((a, b) => a - b);
    const records = await Promise.all(majors.map((major) => this.read(name, `${major}.0`)));
    return records.filter((r): r is ImageRecord => r !== undefined);
  }

  async names(): Promise<string[]> {
    const entries = await readdir(this.dir).catch(() => [] as string[]);
    return entries.filter((e) => IMAGE_NAME.test(e)).sort();
  }

  private async majors(name: string): Promise<number[]> {
    const entries = await readdir(path.join(this.dir, name)).catch(() => [] as string[]);
    return entries.filter((e) => /^\d+\.0$/.test(e)).map((e) => Number(e.split('.')[0]));
  }

  private async read(name: string, version: string): Promise<ImageRecord | undefined> {
    if (!IMAGE_NAME.test(name) || !/^\d+\.\d+$/.test(version)) return undefined;
    const text = await readFile(path.join(this.versionDir(name, version), 'image.json'), 'utf8').catch(() => undefined);
    return text ? (JSON.parse(text) as ImageRecord) : undefined;
  }
}
