/**
 * The auth token keys: `<dataDir>/keys/auth-tokens.json` (directory 0700, file 0600), a list of
 * `{kid, key, createdAt}` with the newest first. The newest mints; every listed key verifies.
 * Rotation adds a key and keeps only the one before it: tokens live at most 60 minutes, so a token
 * minted just before a rotation keeps working, and a second rotation retires the oldest key.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AppError } from '../errors/errors.ts';
import { renameDurably } from '../host/files.ts';

export interface TokenKey {
  kid: string;
  /** 32 random bytes, base64url. */
  key: string;
  createdAt: string;
}

const KID = /^[A-Za-z0-9_-]{1,64}$/;
const KEY = /^[A-Za-z0-9_-]{43}$/;
/** The newest key and the one before it. */
const KEPT_KEYS = 2;

export function keyFilePath(dataDir: string): string {
  return path.join(dataDir, 'keys', 'auth-tokens.json');
}

/** The keys, newest first; the file (and its directory) is created with one key on first use. */
export async function loadKeys(dataDir: string, now: () => number): Promise<TokenKey[]> {
  const file = keyFilePath(dataDir);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  // mkdir leaves an existing directory's mode alone: tighten it.
  await chmod(path.dirname(file), 0o700);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    const keys = [newKey(now)];
    await writeKeys(dataDir, keys);
    return keys;
  }
  await chmod(file, 0o600);
  return parseKeyFile(text, file);
}

/** A new newest key; the previous newest stays for verification, older ones go. */
export async function rotateKeys(dataDir: string, current: readonly TokenKey[], now: () => number): Promise<TokenKey[]> {
  const keys = [newKey(now), ...current].slice(0, KEPT_KEYS);
  await writeKeys(dataDir, keys);
  return keys;
}

function newKey(now: () => number): TokenKey {
  return { kid: randomBytes(9).toString('base64url'), key: randomBytes(32).toString('base64url'), createdAt: new Date(now()).toISOString() };
}

async function writeKeys(dataDir: string, keys: readonly TokenKey[]): Promise<void> {
  const file = keyFilePath(dataDir);
  const temp = `${file}.tmp-${process.pid}`;
  // A leftover temp file could carry a wider mode: start afresh so that `mode` applies.
  await rm(temp, { force: true });
  await writeFile(temp, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
  await renameDurably(temp, file);
}

/** The messages name the file, never key material. */
function parseKeyFile(text: string, file: string): TokenKey[] {
  const broken = (why: string) => new AppError('config.invalid', `${file} is not a valid auth token key file: ${why}`, { file });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw broken('not JSON');
  }
  const keys = (parsed as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0) throw broken('expected {"keys": [...]} with at least one key');
  const kids = new Set<string>();
  return keys.map((entry: unknown, index) => {
    const { kid, key, createdAt } = (entry ?? {}) as Partial<Record<keyof TokenKey, unknown>>;
    if (typeof kid !== 'string' || !KID.test(kid) || kids.has(kid)) throw broken(`key ${index}: missing, malformed or duplicate kid`);
    if (typeof key !== 'string' || !KEY.test(key)) throw broken(`key ${index}: the key must be 32 bytes, base64url`);
    if (typeof createdAt !== 'string' || Number.isNaN(Date.parse(createdAt))) throw broken(`key ${index}: createdAt must be a date`);
    kids.add(kid);
    return { kid, key, createdAt };
  });
}
