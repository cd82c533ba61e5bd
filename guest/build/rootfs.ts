// Root filesystems: a directory tree turned into an ext4 image with `mkfs.ext4 -d` (no loop
// mounts, no root needed for the tiny one), and the tiny busybox-based tree itself.
import { chmod, copyFile, lstat, mkdir, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { run, type Log } from './exec.ts';

export type TreeNode =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; content: string | Buffer }
  | { kind: 'copy'; path: string; mode: number; fromPath: string }
  | { kind: 'symlink'; path: string; target: string };

export const ROOTFS_LABEL = 'cocoon-root';
export const TINY_ROOTFS_SIZE_MIB = 64;
export const APP_UID = 1000;
export const APP_GID = 1000;
export const GUEST_HOSTNAME = 'cocoon';
/** QEMU user-mode networking's DNS forwarder. */
export const GUEST_NAMESERVER = '10.0.2.3';
export const TESTAPP_GUEST_PATH = '/usr/local/bin/cocoon-testapp';

const BUSYBOX_GUEST_PATH = '/bin/busybox';

/** /etc files shared by every Cocoon rootfs (the Debian one keeps its own passwd and group). */
export function networkEtcFiles(): TreeNode[] {
  return [
    { kind: 'file', path: '/etc/hostname', mode: 0o644, content: `${GUEST_HOSTNAME}\n` },
    {
      kind: 'file',
      path: '/etc/hosts',
      mode: 0o644,
      content: `127.0.0.1\tlocalhost\n127.0.1.1\t${GUEST_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n`,
    },
    { kind: 'file', path: '/etc/resolv.conf', mode: 0o644, content: `nameserver ${GUEST_NAMESERVER}\n` },
  ];
}

/**
 * The tiny rootfs, pure: busybox with a symlink per applet (`busybox --list-full` lines such as
 * "usr/bin/awk"), users root/app/nobody, network /etc files, the test app, and the empty
 * mount points the agent uses. /dev stays empty: the agent moves its devtmpfs onto it.
 */
export function planTinyRootfs(options: { busyboxApplets: readonly string[]; busyboxPath: string; testappPath: string }): TreeNode[] {
  const dirs: [string, number][] = [
    ['/bin', 0o755], ['/sbin', 0o755], ['/usr', 0o755], ['/usr/bin', 0o755], ['/usr/sbin', 0o755],
    ['/usr/local', 0o755], ['/usr/local/bin', 0o755], ['/etc', 0o755], ['/dev', 0o755], ['/proc', 0o555],
    ['/sys', 0o555], ['/run', 0o755], ['/tmp', 0o1777], ['/root', 0o700], ['/var', 0o755],
    ['/var/tmp', 0o1777], ['/app', 0o755],
  ];
  const nodes: TreeNode[] = dirs.map(([path, mode]) => ({ kind: 'dir', path, mode }));
  nodes.push({ kind: 'copy', path: BUSYBOX_GUEST_PATH, mode: 0o755, fromPath: options.busyboxPath });
  const seen = new Set([BUSYBOX_GUEST_PATH]);
  for (const applet of options.busyboxApplets) {
    const path = `/${applet.trim().replace(/^\/+/, '')}`;
    // linuxrc is the applet's initrd entry point; the agent is the guest's init.
    if (path === '/' || path === '/linuxrc' || !path.includes('/', 1) || seen.has(path)) continue;
    seen.add(path);
    nodes.push({ kind: 'symlink', path, target: BUSYBOX_GUEST_PATH });
  }
  nodes.push(
    {
      kind: 'file',
      path: '/etc/passwd',
      mode: 0o644,
      content: [
        'root:x:0:0:root:/root:/bin/sh',
        `app:x:${APP_UID}:${APP_GID}:app:/app:/bin/sh`,
        'nobody:x:65534:65534:nobody:/nonexistent:/bin/false',
        '',
      ].join('\n'),
    },
    { kind: 'file', path: '/etc/group', mode: 0o644, content: ['root:x:0:', `app:x:${APP_GID}:`, 'nogroup:x:65534:', ''].join('\n') },
    ...networkEtcFiles(),
    { kind: 'copy', path: TESTAPP_GUEST_PATH, mode: 0o755, fromPath: options.testappPath },
  );
  return nodes;
}

/** Creates the nodes under `rootDir` with exact modes (mkdir and writeFile are subject to umask). */
export async function materializeTree(rootDir: string, nodes: readonly TreeNode[]): Promise<void> {
  for (const node of nodes) {
    const path = join(rootDir, node.path);
    await mkdir(dirname(path), { recursive: true });
    switch (node.kind) {
      case 'dir':
        await mkdir(path, { recursive: true });
        await chmod(path, node.mode);
        break;
      case 'file':
        await writeFile(path, node.content);
        await chmod(path, node.mode);
        break;
      case 'copy':
        await copyFile(node.fromPath, path);
        await chmod(path, node.mode);
        break;
      case 'symlink':
        await symlink(node.target, path);
        break;
    }
  }
}

export interface TreeSize {
  /** Bytes the tree occupies in 4 KiB blocks. */
  blockBytes: number;
  inodeCount: number;
}

const BLOCK_BYTES = 4096;

export async function measureTree(rootDir: string): Promise<TreeSize> {
  let blockBytes = 0;
  let inodeCount = 0;
  const seenInodes = new Set<string>();
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      const stats = await lstat(path);
      const key = `${stats.dev}:${stats.ino}`;
      if (seenInodes.has(key)) continue; // hard links share one inode and its blocks
      seenInodes.add(key);
      inodeCount++;
      blockBytes += Math.ceil(stats.size / BLOCK_BYTES) * BLOCK_BYTES;
      if (entry.isDirectory()) await walk(path);
    }
  };
  await walk(rootDir);
  return { blockBytes, inodeCount: inodeCount + 1 };
}

export interface Ext4Plan {
  sizeMiB: number;
  inodeCount: number;
}

/**
 * Image size and inode count for a tree, pure: content plus inode tables plus `headroomRatio`,
 * plus room for the journal, rounded up to whole MiB and at least `minSizeMiB`. Inodes: 1.5× the
 * tree's plus slack, and never fewer than one per 8 KiB so apps with many small files fit.
 */
export function planExt4(size: TreeSize, options: { minSizeMiB: number; headroomRatio: number }): Ext4Plan {
  const mib = 2 ** 20;
  const inodeTableBytes = size.inodeCount * 256;
  const contentMiB = Math.ceil(((size.blockBytes + inodeTableBytes) * (1 + options.headroomRatio)) / mib);
  // mke2fs's default journal: 16 MiB for images up to 1 GiB, 64 MiB up to 16 GiB.
  const journalMiB = contentMiB + 16 <= 1024 ? 16 : 64;
  const neededMiB = contentMiB + journalMiB;
  const sizeMiB = Math.max(options.minSizeMiB, neededMiB);
  const inodeCount = Math.max(Math.ceil(size.inodeCount * 1.5) + 1024, Math.floor((sizeMiB * mib) / 8192));
  return { sizeMiB, inodeCount };
}

/** `debugfs` commands that make every path root-owned (for images built by a non-root user). */
export function debugfsChownScript(guestPaths: readonly string[]): string {
  return guestPaths.map((path) => `sif "${path}" uid 0\nsif "${path}" gid 0\n`).join('');
}

export async function listTreePaths(rootDir: string): Promise<string[]> {
  const paths: string[] = [];
  const walk = async (dir: string, guestDir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const guestPath = `${guestDir}/${entry.name}`;
      paths.push(guestPath);
      if (entry.isDirectory()) await walk(join(dir, entry.name), guestPath);
    }
  };
  await walk(rootDir, '');
  return paths;
}

/**
 * `mkfs.ext4 -d` copies the tree into a fresh image (with a journal, for crash safety). It keeps
 * the files' owners, so a non-root build fixes them to root afterwards with debugfs.
 */
export async function makeExt4Image(options: {
  step: string;
  treeDir: string;
  imagePath: string;
  plan: Ext4Plan;
  log: Log;
  signal?: AbortSignal;
}): Promise<void> {
  const { step, treeDir, imagePath, plan } = options;
  await run(
    'mkfs.ext4',
    [
      '-q', '-F',
      '-L', ROOTFS_LABEL,
      '-b', '4096', // mke2fs would pick 1 KiB blocks for small images

      '-N', String(plan.inodeCount),
      '-m', '0', // no blocks reserved for root: the whole image is the guest's
      '-E', 'root_owner=0:0',
      '-d', treeDir,
      imagePath,
      `${plan.sizeMiB}M`,
    ],
    { step, signal: options.signal, timeoutMs: 600_000 },
  );
  if (process.getuid?.() !== 0) {
    const scriptPath = `${imagePath}.debugfs`;
    try {
      await writeFile(scriptPath, debugfsChownScript(await listTreePaths(treeDir)));
      await run('debugfs', ['-w', '-f', scriptPath, imagePath], { step, signal: options.signal, timeoutMs: 300_000 });
    } finally {
      await rm(scriptPath, { force: true });
    }
  }
  options.log(`${step}: ext4 image ${plan.sizeMiB} MiB, ${plan.inodeCount} inodes`);
}
