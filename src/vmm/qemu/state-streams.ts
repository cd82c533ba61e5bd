/**
 * Migration streams served by Cocoon instead of QEMU's `exec:` URIs: QEMU then never starts a
 * process (its seccomp filter denies it) and never opens a file after it has dropped privileges.
 * A save connects to a socket Cocoon listens on; a restore listens on a socket bound while QEMU
 * started. zstd runs as Cocoon's child, reading or writing the socket directly.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { chown, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { AppError } from '../../errors/errors.ts';
import { removeStaleDirs } from '../../host/files.ts';
import type { VmUser } from './vm-users.ts';

export interface StateFile {
  path: string;
  /** zstd (a full RAM save) or plain (device state only, ~70 KiB). */
  compressed: boolean;
}

/**
 * Streams a saved state into the socket a restoring QEMU listens on. QEMU closes the connection as
 * soon as it has read the end of the stream, which may cut the writer short without anything being
 * lost: the migration's own status says whether the restore worked, so this resolves with the
 * writer's error (for the message when it did not) instead of rejecting. Rejects when QEMU does not listen.
 */
export async function sendState(socketPath: string, file: StateFile): Promise<Error | undefined> {
  const socket = net.connect(socketPath);
  await once(socket, 'connect');
  try {
    if (!file.compressed) {
      socket.on('error', () => {});
      socket.end(await readFile(file.path));
      await once(socket, 'close');
      return undefined;
    }
    const zstd = spawn('zstd', ['-dc', '-q', file.path], { stdio: ['ignore', socket, 'pipe'] });
    socket.destroy();
    await helperDone(zstd, 'zstd -dc', 'vmm.restore_failed');
    return undefined;
  } catch (error) {
    socket.destroy();
    return error as Error;
  }
}

export interface StateReceiver {
  /** The `migrate` URI for QEMU. */
  uri: string;
  /** Resolves once the whole stream is in `file` (QEMU closed it and zstd exited). */
  done: Promise<void>;
  close(): Promise<void>;
}

const SAVE_DIR_PREFIX = 'cocoon-save-';
/** Far longer than any save takes: an older save directory was left by a daemon that died mid-save. */
const STALE_SAVE_DIR_MS = 60 * 60_000;

/**
 * Listens for one save stream in a fresh private directory under `place.parent` that only QEMU's
 * user (and Cocoon) can enter, and writes it to `file`. A QEMU that dropped to
 * `place.chrootedAs` is chrooted into `parent`: the URI names the socket as that QEMU sees it.
 */
export async function receiveState(file: StateFile, place: { parent: string; chrootedAs?: VmUser }): Promise<StateReceiver> {
  const dir = await mkdtemp(path.join(place.parent, SAVE_DIR_PREFIX));
  const socketPath = path.join(dir, 'save.sock');
  const user = place.chrootedAs;
  // pauseOnConnect: the stream goes to zstd's stdin without passing through this process.
  const server = net.createServer({ pauseOnConnect: true });
  const closed = new AbortController();
  const close = async (): Promise<void> => {
    closed.abort();
    server.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    server.listen(socketPath);
    await once(server, 'listening');
    if (user) {
      await chown(dir, user.uid, user.gid);
      await chown(socketPath, user.uid, user.gid);
    }
  } catch (error) {
    await close();
    throw error;
  }
  const done = (async () => {
    const [socket] = await once(server, 'connection', { signal: closed.signal }) as [net.Socket];
    server.close();
    if (!file.compressed) {
      await pipeline(socket, createWriteStream(file.path, { mode: 0o600 }));
      return;
    }
    const output = await open(file.path, 'w', 0o600);
    try {
      const zstd = spawn('zstd', ['-1', '-q', '-c'], { stdio: [socket, output.fd, 'pipe'] });
      socket.destroy();
      await helperDone(zstd, 'zstd -1', 'vmm.snapshot_failed');
    } finally {
      await output.close();
    }
  })();
  done.catch(() => {});
  return { uri: `unix:${user ? path.join('/', path.relative(place.parent, socketPath)) : socketPath}`, done, close };
}

/** Removes the save directories in `parent` that daemons killed mid-save left behind. */
export async function sweepStaleSaveDirs(parent: string): Promise<void> {
  await removeStaleDirs(parent, SAVE_DIR_PREFIX, STALE_SAVE_DIR_MS);
}

async function helperDone(child: ReturnType<typeof spawn>, what: string, code: 'vmm.restore_failed' | 'vmm.snapshot_failed'): Promise<void> {
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const [exitCode, signal] = await Promise.race([
    once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>,
    once(child, 'error').then(([error]) => { throw new AppError(code, `${what} could not start: ${(error as Error).message}`); }),
  ]);
  if (exitCode !== 0) throw new AppError(code, `${what} failed (${signal ?? `code ${exitCode}`}): ${stderr.trim() || 'no message'}`);
}
