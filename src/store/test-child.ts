/**
 * A separate process for the store tests (not a test itself):
 * - `versions <file> <accountId>`: prints `ready`, waits for a line on stdin holding a deadline (epoch
 *   ms), creates versions of image `race` until then (at least one) and prints them as JSON on one line, then `done`.
 * - `open <file>`: opens the store (applying migrations) and exits.
 * - `crash <file>`: commits an account, an ACTIVE image and a RUNNING MicroVM, then starts a
 *   transaction it never commits and kills itself with SIGKILL inside it.
 */
import { once } from 'node:events';
import Database from 'better-sqlite3';
import { openStore } from './store.ts';
import { imageFields, microvmRecord } from './test-fixtures.ts';

const [mode, file, ...rest] = process.argv.slice(2);
const store = openStore(file!);

if (mode === 'open') {
  store.close();
} else if (mode === 'versions') {
  const [accountId] = rest;
  process.stdout.write('ready\n');
  const [line] = (await once(process.stdin, 'data')) as [Buffer];
  const until = Number(line.toString().trim());
  const versions: string[] = [];
  do versions.push((await store.images.createVersion(accountId!, imageFields('race'))).version);
  while (Date.now() < until);
  process.stdout.write(`${JSON.stringify(versions)}\ndone\n`);
  process.exit(0); // no store.close(): committed means durable
} else if (mode === 'crash') {
  const account = await store.accounts.createAccount('crash');
  const image = await store.images.createVersion(account.id, imageFields('web'));
  image.state = 'ACTIVE';
  await store.images.save(image);
  await store.microvms.insert(microvmRecord(account.id, image, 'mvm-crash'));
  await store.microvms.transition('mvm-crash', ['PENDING'], 'RUNNING', { pid: 4242 });
  const raw = new Database(file!);
  raw.transaction(() => {
    raw.prepare(`INSERT INTO accounts (id, name, created_at) VALUES ('acct-torn', 'torn', '2024-01-01T00:00:00.000Z')`).run();
    process.kill(process.pid, 'SIGKILL');
  })();
}
