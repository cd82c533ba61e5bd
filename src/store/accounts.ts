/**
 * Accounts and their API keys. A key's secret (`ck_` + 32 random bytes, base64url) is returned
 * once, at creation; only its SHA-256 is stored, with the first 8 characters for display.
 */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { AppError } from '../errors/errors.ts';
import { nowIso, writeTransaction, type Db } from './db.ts';

export const ACCOUNT_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
export const ADMIN_ACCOUNT = 'admin';
const SECRET = /^ck_[A-Za-z0-9_-]{43}$/;
/** `last_used_at` is rewritten at most this often per key: each write costs an fsync. */
const LAST_USED_RESOLUTION_MS = 60_000;

export interface Account {
  id: string;
  name: string;
  createdAt: string;
}

/** What may be shown about a key: never its secret or hash. */
export interface ApiKeyInfo {
  id: string;
  accountId: string;
  prefix: string;
  createdAt: string;
  lastUsedAt?: string;
  revokedAt?: string;
}

export interface AccountRepository {
  createAccount(name: string): Promise<Account>;
  getAccount(id: string): Promise<Account | undefined>;
  getAccountByName(name: string): Promise<Account | undefined>;
  /** The secret is in this answer and nowhere else, ever. */
  createApiKey(accountId: string): Promise<{ id: string; secret: string }>;
  listApiKeys(accountId: string): Promise<ApiKeyInfo[]>;
  /** The account and key behind a secret; undefined for an unknown, malformed or revoked one. */
  authenticate(secret: string): Promise<{ accountId: string; keyId: string } | undefined>;
  /** False when no such key exists; revoking twice keeps the first revocation time. */
  revokeApiKey(id: string): Promise<boolean>;
  /** First start: creates the `admin` account and a key, and returns its secret once. */
  ensureAdmin(): Promise<{ account: Account; created: boolean; secret?: string }>;
}

type AccountRow = { id: string; name: string; created_at: string };
type KeyRow = { id: string; account_id: string; hash: string; prefix: string; created_at: string; last_used_at: string | null; revoked_at: string | null };

function toAccount(row: AccountRow): Account {
  return { id: row.id, name: row.name, createdAt: row.created_at };
}

function toKeyInfo(row: KeyRow): ApiKeyInfo {
  return {
    id: row.id,
    accountId: row.account_id,
    prefix: row.prefix,
    createdAt: row.created_at,
    ...(row.last_used_at !== null && { lastUsedAt: row.last_used_at }),
    ...(row.revoked_at !== null && { revokedAt: row.revoked_at }),
  };
}

function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

export class SqliteAccounts implements AccountRepository {
  constructor(private readonly db: Db) {}

  async createAccount(name: string): Promise<Account> {
    return writeTransaction(this.db, () => this.insertAccount(name));
  }

  async getAccount(id: string): Promise<Account | undefined> {
    const row = this.db.prepare('SELECT * FROM accounts WHERE id = ?').get(id) as AccountRow | undefined;
    return row && toAccount(row);
  }

  async getAccountByName(name: string): Promise<Account | undefined> {
    const row = this.db.prepare('SELECT * FROM accounts WHERE name = ?').get(name) as AccountRow | undefined;
    return row && toAccount(row);
  }

  async createApiKey(accountId: string): Promise<{ id: string; secret: string }> {
    return writeTransaction(this.db, () => this.insertKey(accountId));
  }

  async listApiKeys(accountId: string): Promise<ApiKeyInfo[]> {
    const rows = this.db.prepare('SELECT * FROM api_keys WHERE account_id = ? ORDER BY created_at, id').all(accountId) as KeyRow[];
    return rows.map(toKeyInfo);
  }

  async authenticate(secret: string): Promise<{ accountId: string; keyId: string } | undefined> {
    if (typeof secret !== 'string' || !SECRET.test(secret)) return undefined;
    const hash = hashSecret(secret);
    const row = this.db.prepare('SELECT * FROM api_keys WHERE hash = ? AND revoked_at IS NULL').get(hash) as KeyRow | undefined;
    if (!row || !timingSafeEqual(Buffer.from(row.hash, 'hex'), Buffer.from(hash, 'hex'))) return undefined;
    const now = new Date();
    const stale = new Date(now.getTime() - LAST_USED_RESOLUTION_MS).toISOString();
    this.db
      .prepare('UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)')
      .run(now.toISOString(), row.id, stale);
    return { accountId: row.account_id, keyId: row.id };
  }

  async revokeApiKey(id: string): Promise<boolean> {
    return writeTransaction(this.db, () => {
      const exists = this.db.prepare('SELECT 1 FROM api_keys WHERE id = ?').get(id) !== undefined;
      this.db.prepare('UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(nowIso(), id);
      return exists;
    });
  }

  async ensureAdmin(): Promise<{ account: Account; created: boolean; secret?: string }> {
    return writeTransaction(this.db, () => {
      const row = this.db.prepare('SELECT * FROM accounts WHERE name = ?').get(ADMIN_ACCOUNT) as AccountRow | undefined;
      if (row) return { account: toAccount(row), created: false };
      const account = this.insertAccount(ADMIN_ACCOUNT);
      const { secret } = this.insertKey(account.id);
      return { account, created: true, secret };
    });
  }

  private insertAccount(name: string): Account {
    if (typeof name !== 'string' || !ACCOUNT_NAME.test(name)) {
      throw new AppError('config.invalid', `account name "${name}" must be 1–63 lowercase letters, digits or dashes`, { name });
    }
    if (this.db.prepare('SELECT 1 FROM accounts WHERE name = ?').get(name)) {
      throw new AppError('config.invalid', `account "${name}" already exists`, { name });
    }
    const account: Account = { id: `acct-${randomUUID()}`, name, createdAt: nowIso() };
    this.db.prepare('INSERT INTO accounts (id, name, created_at) VALUES (?, ?, ?)').run(account.id, account.name, account.createdAt);
    return account;
  }

  private insertKey(accountId: string): { id: string; secret: string } {
    if (!this.db.prepare('SELECT 1 FROM accounts WHERE id = ?').get(accountId)) {
      throw new AppError('config.invalid', `account ${accountId} does not exist`, { accountId });
    }
    const secret = `ck_${randomBytes(32).toString('base64url')}`;
    const id = `key-${randomUUID()}`;
    this.db
      .prepare('INSERT INTO api_keys (id, account_id, hash, prefix, created_at) VALUES (?, ?, ?, ?, ?)')
      .run(id, accountId, hashSecret(secret), secret.slice(0, 8), nowIso());
    return { id, secret };
  }
}
