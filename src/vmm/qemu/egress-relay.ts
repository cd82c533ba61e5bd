/**
 * Build egress for a QEMU that dropped privileges (vm-users.ts). libslirp runs a guestfwd `cmd:`
 * once per guest connection, splitting the string into argv itself (no shell), after QEMU has
 * chrooted and dropped to its VM's uid: there, neither socat nor the egress proxy's socket (in a
 * root-only directory) exists. So a static relay (guest/agent/egress-relay.c) lives in the chroot
 * and connects to a socket of this VM's own, which Cocoon pipes to the egress proxy: every
 * connection meets the same proxy and policy as without the drop.
 */
import { createHash, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { chmod, chown, copyFile, mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { removeStaleDirs } from '../../host/files.ts';
import type { VmUser } from './vm-users.ts';

export interface EgressRelay {
  /** The relay program and the socket it connects to, as the chrooted QEMU sees them. */
  program: string;
  socket: string;
  /** Stops accepting and removes the VM's socket directory (after its QEMU exited). */
  close(): Promise<void>;
}

/** Unlike the relay's own name (cocoon-egress-relay-…), so that the sweep never takes the relay for a leftover. */
const DIR_PREFIX = 'cocoon-build-egress-';
/** A directory this old whose socket nobody serves was left by a daemon that died while its build ran. */
const STALE_DIR_MS = 60_000;

/**
 * Serves the egress of one VM chrooted in `chroot` as `user`: a socket in a directory that only
 * that user can enter (`cocoon-build-egress-<name>`, replaced if a previous run left it), whose
 * every connection is piped to `egressSocket`.
 */
export async function startEgressRelay(options: {
  chroot: string; name: string; user: VmUser; relayPath: string; egressSocket: string;
}): Promise<EgressRelay> {
  const { chroot, user, egressSocket } = options;
  const program = await installRelay(chroot, options.relayPath);
  const dir = path.join(chroot, `${DIR_PREFIX}${options.name}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { mode: 0o700 });
  const socket = path.join(dir, 'egress.sock');
  // Half-open both ways: a guest that has sent its whole request may still be owed the answer.
  const server = net.createServer({ allowHalfOpen: true }, (guest) => {
    const proxy = net.connect({ path: egressSocket, allowHalfOpen: true });
    const end = (): void => { guest.destroy(); proxy.destroy(); };
    guest.on('error', end).on('close', end);
    proxy.on('error', end).on('close', end);
    guest.pipe(proxy);
    proxy.pipe(guest);
  });
  const close = async (): Promise<void> => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    server.listen(socket);
    await once(server, 'listening');
    await chown(socket, user.uid, user.gid);
    await chown(dir, user.uid, user.gid);
  } catch (error) {
    await close();
    throw error;
  }
  return { program: path.join('/', path.relative(chroot, program)), socket: path.join('/', path.relative(chroot, socket)), close };
}

/** Removes the egress directories of build VMs whose daemon died: nothing serves their socket any more. */
export async function sweepStaleEgressDirs(chroot: string): Promise<void> {
  await removeStaleDirs(chroot, DIR_PREFIX, STALE_DIR_MS, (dir) => new Promise<boolean>((resolve) => {
    const probe = net.connect(path.join(dir, 'egress.sock'));
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  }));
}

/**
 * Puts the relay into the chroot under a name of its content (root's, 0755: VM users may run it,
 * not change it), so daemons of different versions sharing the chroot never swap it under each other.
 */
async function installRelay(chroot: string, relayPath: string): Promise<string> {
  const content = await readFile(relayPath);
  const target = path.join(chroot, `cocoon-egress-relay-${createHash('sha256').update(content).digest('hex').slice(0, 16)}`);
  if (await stat(target).then((info) => info.size === content.length, () => false)) return target;
  const temp = `${target}.tmp-${randomUUID()}`;
  await copyFile(relayPath, temp);
  await chmod(temp, 0o755);
  await rename(temp, target);
  return target;
}
