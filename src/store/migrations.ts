/**
 * The schema, as an ordered list of SQL scripts: script i brings the database to version i + 1.
 * Scripts are only ever appended; a shipped script is never edited (a database that applied it
 * would silently differ from a fresh one). `openStore` applies each pending script in its own
 * transaction and records it in `schema_migrations`.
 */
export const migrations: readonly string[] = [
  // 1: accounts, API keys, images, MicroVMs.
  `
  CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
  ) STRICT;

  CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT
  ) STRICT;
  CREATE INDEX api_keys_account ON api_keys(account_id);

  -- The last major version handed out per (account, name): deleting the newest version never
  -- makes its number (and so its arn) point at a different image later.
  CREATE TABLE image_names (
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    last_major INTEGER NOT NULL,
    PRIMARY KEY (account_id, name)
  ) STRICT;

  CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    major INTEGER NOT NULL,
    minor INTEGER NOT NULL,
    arn TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT,
    state_reason_code TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    data TEXT NOT NULL CHECK (json_valid(data))
  ) STRICT;
  CREATE UNIQUE INDEX images_version ON images(account_id, name, major, minor);
  CREATE INDEX images_state ON images(state);

  CREATE TABLE microvms (
    microvm_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    image_arn TEXT NOT NULL,
    image_name TEXT NOT NULL,
    image_version TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    data TEXT NOT NULL CHECK (json_valid(data))
  ) STRICT;
  CREATE INDEX microvms_account ON microvms(account_id, created_at);
  CREATE INDEX microvms_image ON microvms(account_id, image_arn, state);
  CREATE INDEX microvms_state ON microvms(state);
  `,
  // 2: usage counters on every MicroVM (records before sizes and sampling start from zero).
  `
  UPDATE microvms
  SET data = json_set(data, '$.usage', json('{"baselineSeconds":0,"burstCpuSeconds":0,"suspendedSeconds":0,"snapshotBytes":0}'))
  WHERE json_type(data, '$.usage') IS NULL;
  `,
  // 3: an egress policy on every MicroVM; the ones before it had none (restricted user-mode networking).
  `
  UPDATE microvms SET data = json_set(data, '$.egress', json('{"mode":"none"}')) WHERE json_type(data, '$.egress') IS NULL;
  `,
];
