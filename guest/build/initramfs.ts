// The initramfs: the agent as /init plus the kernel modules it loads before mounting the root
// disk (guest/PROTOCOL.md, "Boot"). Uncompressed: it is small, and the kernel skips a
// decompression step on every cold boot.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { encodeCpio, type CpioEntry } from './cpio.ts';
import { GuestBuildError, run, type Log } from './exec.ts';
import { GUEST_MODULES, orderModules, type ModuleFile } from './modules.ts';

export interface InitramfsModule {
  name: string;
  /** Uncompressed .ko bytes (finit_module in Debian 6.1 takes no compressed modules). */
  data: Buffer;
}

/** Archive layout, pure: /init, /modules/<name>.ko in load order, /modules.order listing them. */
export function planInitramfs(agent: Buffer, modules: readonly InitramfsModule[]): CpioEntry[] {
  const modulePaths = modules.map((module) => `/modules/${module.name}.ko`);
  return [
    { kind: 'dir', path: '/dev', mode: 0o755 },
    // The kernel opens /dev/console for init's stdio before the agent can mount devtmpfs.
    { kind: 'chardev', path: '/dev/console', mode: 0o600, major: 5, minor: 1 },
    { kind: 'dir', path: '/proc', mode: 0o755 },
    { kind: 'dir', path: '/sys', mode: 0o755 },
    { kind: 'dir', path: '/newroot', mode: 0o755 },
    { kind: 'dir', path: '/modules', mode: 0o755 },
    ...modules.map((module, index): CpioEntry => ({ kind: 'file', path: modulePaths[index] ?? '', mode: 0o644, data: module.data })),
    { kind: 'file', path: '/modules.order', mode: 0o644, data: Buffer.from(modulePaths.map((path) => `${path}\n`).join('')) },
    { kind: 'file', path: '/init', mode: 0o755, data: agent },
  ];
}

/** The guest modules of an installed kernel, dependencies first (from its modules.dep). */
export async function resolveGuestModules(modulesDir: string): Promise<ModuleFile[]> {
  const [depText, builtinText] = await Promise.all([
    readFile(join(modulesDir, 'modules.dep'), 'utf8'),
    readFile(join(modulesDir, 'modules.builtin'), 'utf8').catch(() => ''),
  ]);
  try {
    return orderModules(depText, GUEST_MODULES, builtinText);
  } catch (error) {
    throw new GuestBuildError('initramfs', `${modulesDir}: ${(error as Error).message}`, { cause: error });
  }
}

async function readModule(path: string, scratchPath: string, signal?: AbortSignal): Promise<Buffer> {
  const decompressor = path.endsWith('.xz') ? 'xz' : path.endsWith('.zst') ? 'zstd' : undefined;
  if (decompressor === undefined) return readFile(path);
  try {
    await run(decompressor, ['--decompress', '--stdout', path], { step: 'initramfs', signal, timeoutMs: 60_000, stdoutPath: scratchPath });
    return await readFile(scratchPath);
  } finally {
    await rm(scratchPath, { force: true });
  }
}

export async function buildInitramfs(options: {
  agentPath: string;
  modulesDir: string;
  modules: readonly ModuleFile[];
  outPath: string;
  log: Log;
  signal?: AbortSignal;
}): Promise<void> {
  const agent = await readFile(options.agentPath);
  const modules: InitramfsModule[] = [];
  for (const module of options.modules) {
    const data = await readModule(join(options.modulesDir, module.path), `${options.outPath}.module`, options.signal);
    modules.push({ name: module.name, data });
  }
  const archive = encodeCpio(planInitramfs(agent, modules));
  await writeFile(options.outPath, archive, { mode: 0o644 });
  options.log(`initramfs: ${modules.length} modules + agent, ${(archive.length / 2 ** 20).toFixed(1)} MiB`);
}
