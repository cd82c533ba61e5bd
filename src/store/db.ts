/**
 * The SQLite connection: file creation (0600, parent directory 0700), pragmas chosen for
 * durability over speed, and the migration runner.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { AppError } from '../errors/errors.ts';
import { migrations } from './migrations.ts';

export type Db = Database.Database;

/** How long a statement waits for another connection's write lock before failing with SQLITE_BUSY. */
export const BUSY_TIMEOUT_MS = 5_000;

export function nowIso(): string {
  return new Date().toISOString();
}

/**
 * Runs `fn` inside BEGIN IMMEDIATE: the write lock is taken before the first read, so a
 * read-then-write (version allocation, compare-and-set) cannot interleave with another
 * connection's, and never fails half-way with SQLITE_BUSY_SNAPSHOT as a deferred one can.
 */
export function writeTransaction<T>(db: Db, fn: () => T): T {
  return db.transaction(fn).immediate();
}

export function openDatabase(file: string): Db {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  try {
    // Created here rather than by SQLite so that it is 0600 from its first byte; SQLite gives the
    // -wal and -shm files the database file's mode.
    closeSync(openSync(file, 'wx', 0o600));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
  try {
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    const mode = db.pragma('journal_mode = WAL', { simple: true });
    if (mode !== 'wal') throw new AppError('config.invalid', `database ${file} cannot use WAL journaling (got ${String(mode)})`, { file });
    // FULL: every commit fsyncs the WAL, so a committed change survives a power cut, not only a crash.
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    migrate(db, file);
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

export function schemaVersion(db: Db): number {
  return (db.prepare('SELECT coalesce(max(version), 0) AS version FROM schema_migrations').get() as { version: number }).version;
}

function refuseNewer(file: string, version: number): void {
  if (version <= migrations.length) return;
  throw new AppError(
    'config.invalid',
    `database ${file} has schema version ${version}, newer than this Cocoon knows (${migrations.length}); run a newer Cocoon or another data directory`,
    { file, schemaVersion: version, knownSchemaVersion: migrations.length },
  );
}

/** Applies pending migrations, one transaction each; safe when several processes open the file at once. */
function migrate(db: Db, file: string): void {
  db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL) STRICT');
  refuseNewer(file, schemaVersion(db));
  migrations.forEach((sql, index) => {
    const version = index + 1;
    writeTransaction(db, () => {
      const current = schemaVersion(db); // re-read under the write lock: another process may have just migrated
      refuseNewer(file, current);
      if (current >= version) return;
      db.exec(sql);
      db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(version, nowIso());
    });
  });
}
