/**
 * MicroVM image records, scoped to an account: another account's image does not exist
 * (`image.not_found`, never a 403). Each create of an existing name adds a major version; numbers
 * are never reused, even after a delete. Image files (build log, template snapshot) stay on disk
 * and are the caller's concern.
 */
import { AppError } from '../errors/errors.ts';
import { IMAGE_NAME, type ImageRecord, type ImageState } from '../images/records.ts';
import { nowIso, writeTransaction, type Db } from './db.ts';
import { FINAL_STATES } from './microvms.ts';

/** An image record as the store keeps it: with the account that owns it. */
export type StoredImage = ImageRecord & { accountId: string };

export type NewImageFields = Omit<ImageRecord, 'name' | 'version' | 'arn' | 'state' | 'createdAt' | 'updatedAt'> & { name: string };

export type ImageDeletion = { deleted: true; record: StoredImage } | { deleted: false; activeMicroVms: number };

export interface ImageRepository {
  /** Allocates the next major version of `name` for the account and records it as CREATING. */
  createVersion(accountId: string, fields: NewImageFields): Promise<StoredImage>;
  /** Writes the record's mutable fields (state, reasons, everything but identity); sets `updatedAt`. */
  save(record: StoredImage): Promise<void>;
  /** A given version, or the latest ACTIVE one. */
  get(accountId: string, name: string, version?: string): Promise<StoredImage>;
  /** Every version of `name`, oldest first. */
  list(accountId: string, name: string): Promise<StoredImage[]>;
  names(accountId: string): Promise<string[]>;
  /** Every CREATING record of every account: builds a restart interrupted. */
  listCreating(): Promise<StoredImage[]>;
  /** Removes the record (files and the in-use check are the caller's); returns what was removed. */
  delete(accountId: string, name: string, version: string): Promise<StoredImage>;
  /** Removes the record only if no MicroVM (other than TERMINATED/FAILED) uses it, in one transaction. */
  deleteIfUnused(accountId: string, name: string, version: string): Promise<ImageDeletion>;
}

type ImageRow = {
  account_id: string;
  name: string;
  major: number;
  minor: number;
  arn: string;
  state: string;
  state_reason: string | null;
  state_reason_code: string | null;
  created_at: string;
  updated_at: string;
  data: string;
};

const VERSION = /^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$/;
const COLUMNS = ['accountId', 'name', 'version', 'arn', 'state', 'stateReason', 'stateReasonCode', 'createdAt', 'updatedAt'] as const;

export function imageArn(name: string, version: string): string {
  return `cocoon:image:${name}:${version}`;
}

function parseVersion(version: string): { major: number; minor: number } | undefined {
  const match = VERSION.exec(version);
  return match ? { major: Number(match[1]), minor: Number(match[2]) } : undefined;
}

/** Everything that is not a column goes into the JSON `data` column. */
function dataOf(record: Partial<StoredImage>): string {
  const data: Record<string, unknown> = { ...record };
  for (const key of COLUMNS) delete data[key];
  return JSON.stringify(data);
}

function toRecord(row: ImageRow): StoredImage {
  return {
    name: row.name,
    version: `${row.major}.${row.minor}`,
    arn: row.arn,
    accountId: row.account_id,
    state: row.state as ImageState,
    ...(row.state_reason !== null && { stateReason: row.state_reason }),
    ...(row.state_reason_code !== null && { stateReasonCode: row.state_reason_code }),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    ...(JSON.parse(row.data) as Omit<ImageRecord, (typeof COLUMNS)[number]>),
  };
}

function notFound(name: string, version: string): AppError {
  return new AppError('image.not_found', `image ${name}:${version} does not exist`, { name, version });
}

export class SqliteImages implements ImageRepository {
  constructor(private readonly db: Db) {}

  async createVersion(accountId: string, fields: NewImageFields): Promise<StoredImage> {
    if (typeof fields.name !== 'string' || !IMAGE_NAME.test(fields.name)) {
      throw new AppError('config.invalid', `image name "${fields.name}" must be 1–63 lowercase letters, digits or dashes`);
    }
    return writeTransaction(this.db, () => {
      const { major } = this.db
        .prepare(
          `INSERT INTO image_names (account_id, name, last_major) VALUES (?, ?, 1)
           ON CONFLICT (account_id, name) DO UPDATE SET last_major = last_major + 1
           RETURNING last_major AS major`,
        )
        .get(accountId, fields.name) as { major: number };
      const version = `${major}.0`;
      const now = nowIso();
      const record: StoredImage = { ...fields, version, arn: imageArn(fields.name, version), accountId, state: 'CREATING', createdAt: now, updatedAt: now };
      this.db
        .prepare(
          `INSERT INTO images (account_id, name, major, minor, arn, state, state_reason, state_reason_code, created_at, updated_at, data)
           VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(accountId, record.name, major, record.arn, record.state, record.stateReason ?? null, record.stateReasonCode ?? null, now, now, dataOf(record));
      return record;
    });
  }

  async save(record: StoredImage): Promise<void> {
    const parsed = parseVersion(record.version);
    if (!parsed) throw notFound(record.name, record.version);
    const updatedAt = nowIso();
    const { changes } = this.db
      .prepare(
        `UPDATE images SET state = ?, state_reason = ?, state_reason_code = ?, updated_at = ?, data = ?
         WHERE account_id = ? AND name = ? AND major = ? AND minor = ?`,
      )
      .run(record.state, record.stateReason ?? null, record.stateReasonCode ?? null, updatedAt, dataOf(record), record.accountId, record.name, parsed.major, parsed.minor);
    if (changes === 0) throw notFound(record.name, record.version); // deleted meanwhile
    record.updatedAt = updatedAt;
  }

  async get(accountId: string, name: string, version?: string): Promise<StoredImage> {
    if (version !== undefined) {
      const record = this.read(accountId, name, version);
      if (!record) throw notFound(name, version);
      return record;
    }
    const row = this.db
      .prepare(`SELECT * FROM images WHERE account_id = ? AND name = ? AND state = 'ACTIVE' ORDER BY major DESC, minor DESC LIMIT 1`)
      .get(accountId, name) as ImageRow | undefined;
    if (!row) throw new AppError('image.not_found', `image ${name} has no ACTIVE version`, { name });
    return toRecord(row);
  }

  async list(accountId: string, name: string): Promise<StoredImage[]> {
    const rows = this.db.prepare('SELECT * FROM images WHERE account_id = ? AND name = ? ORDER BY major, minor').all(accountId, name) as ImageRow[];
    return rows.map(toRecord);
  }

  async names(accountId: string): Promise<string[]> {
    const rows = this.db.prepare('SELECT DISTINCT name FROM images WHERE account_id = ? ORDER BY name').all(accountId) as { name: string }[];
    return rows.map((row) => row.name);
  }

  async listCreating(): Promise<StoredImage[]> {
    const rows = this.db.prepare(`SELECT * FROM images WHERE state = 'CREATING' ORDER BY created_at, id`).all() as ImageRow[];
    return rows.map(toRecord);
  }

  async delete(accountId: string, name: string, version: string): Promise<StoredImage> {
    return writeTransaction(this.db, () => {
      const record = this.read(accountId, name, version);
      if (!record) throw notFound(name, version);
      this.remove(record);
      return record;
    });
  }

  async deleteIfUnused(accountId: string, name: string, version: string): Promise<ImageDeletion> {
    return writeTransaction(this.db, () => {
      const record = this.read(accountId, name, version);
      if (!record) throw notFound(name, version);
      const { count } = this.db
        .prepare(`SELECT count(*) AS count FROM microvms WHERE account_id = ? AND image_arn = ? AND state NOT IN (${FINAL_STATES.map(() => '?').join(', ')})`)
        .get(accountId, record.arn, ...FINAL_STATES) as { count: number };
      if (count > 0) return { deleted: false, activeMicroVms: count };
      this.remove(record);
      return { deleted: true, record };
    });
  }

  private read(accountId: string, name: string, version: string): StoredImage | undefined {
    const parsed = parseVersion(version);
    if (!parsed || typeof name !== 'string' || !IMAGE_NAME.test(name)) return undefined;
    const row = this.db
      .prepare('SELECT * FROM images WHERE account_id = ? AND name = ? AND major = ? AND minor = ?')
      .get(accountId, name, parsed.major, parsed.minor) as ImageRow | undefined;
    return row && toRecord(row);
  }

  private remove(record: StoredImage): void {
    const { major, minor } = parseVersion(record.version)!;
    this.db.prepare('DELETE FROM images WHERE account_id = ? AND name = ? AND major = ? AND minor = ?').run(record.accountId, record.name, major, minor);
  }
}
