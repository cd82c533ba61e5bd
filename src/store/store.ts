/**
 * The store: every piece of Cocoon's state that is not a file. SQLite is the embedded default
 * (one file, WAL, fsync on commit); the repository interfaces return promises so that a
 * PostgreSQL implementation can stand behind the same types.
 */
import { SqliteAccounts, type AccountRepository } from './accounts.ts';
import { openDatabase } from './db.ts';
import { SqliteImages, type ImageRepository } from './images.ts';
import { SqliteMicroVms, type MicroVmRepository } from './microvms.ts';

export interface Store {
  readonly accounts: AccountRepository;
  readonly images: ImageRepository;
  readonly microvms: MicroVmRepository;
  /** Closes the connection; committed changes are already on disk, so this is not needed for durability. */
  close(): void;
}

/**
 * Opens (creating if needed, mode 0600) the SQLite database at `file` and brings its schema up to
 * date. `config.invalid` if the file's schema is newer than this code knows.
 */
export function openStore(file: string): Store {
  const db = openDatabase(file);
  return {
    accounts: new SqliteAccounts(db),
    images: new SqliteImages(db),
    microvms: new SqliteMicroVms(db),
    close: () => {
      if (db.open) db.close();
    },
  };
}
