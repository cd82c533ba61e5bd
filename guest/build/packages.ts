// The Debian packages the guest build reads from or runs, and the check that they are installed.
import { GuestBuildError, run } from './exec.ts';

/** What the README's setup step installs; named in the error so the fix is one copy-paste away. */
export const SETUP_PACKAGES: readonly string[] = [
  'qemu-system-x86', 'qemu-utils', 'linux-image-amd64', 'busybox-static', 'e2fsprogs', 'mmdebstrap', 'musl-tools', 'zstd', 'socat',
];

/** Packages a build needs: the kernel, busybox, mkfs, xz (vmlinux extraction), the agent's toolchain, QEMU's version. */
export function requiredPackages(options: { debian: boolean }): string[] {
  return [
    'linux-image-amd64', 'busybox-static', 'e2fsprogs', 'xz-utils', 'musl-tools', 'make', 'qemu-system-x86',
    ...(options.debian ? ['mmdebstrap'] : []),
  ];
}

export interface PackageState {
  installed: boolean;
  version: string;
}

/** Parses `dpkg-query -W -f '${Package}\t${db:Status-Abbrev}\t${Version}\n'` output. Pure. */
export function parseDpkgQuery(output: string): Map<string, PackageState> {
  const states = new Map<string, PackageState>();
  for (const line of output.split('\n')) {
    const [name, status, version] = line.split('\t');
    if (name === undefined || name === '' || status === undefined) continue;
    states.set(name.replace(/:[a-z0-9]+$/, ''), { installed: status.trim() === 'ii', version: version?.trim() ?? '' });
  }
  return states;
}

export function missingPackages(wanted: readonly string[], states: ReadonlyMap<string, PackageState>): string[] {
  return wanted.filter((name) => states.get(name)?.installed !== true);
}

export async function queryPackages(names: readonly string[], signal?: AbortSignal): Promise<Map<string, PackageState>> {
  const { stdout } = await run('dpkg-query', ['-W', '-f', '${Package}\t${db:Status-Abbrev}\t${Version}\n', ...names], {
    step: 'packages',
    signal,
    timeoutMs: 30_000,
    okExitCodes: [0, 1], // 1: some package is unknown, which the caller reports by name
  }).catch((error: unknown) => {
    if (error instanceof GuestBuildError && /not installed/.test(error.message)) {
      throw new GuestBuildError('packages', 'dpkg-query not found: the guest build needs a Debian host (bookworm)', { cause: error });
    }
    throw error;
  });
  return parseDpkgQuery(stdout);
}

/** Fails with the names of the missing packages and the setup command that installs them. */
export async function checkPackages(options: { debian: boolean; signal?: AbortSignal }): Promise<Map<string, PackageState>> {
  const wanted = requiredPackages(options);
  const states = await queryPackages(wanted, options.signal);
  const missing = missingPackages(wanted, states);
  if (missing.length > 0) {
    const install = [...new Set([...SETUP_PACKAGES, ...missing])].join(' ');
    throw new GuestBuildError('packages', `missing Debian packages: ${missing.join(', ')}. Install them with: apt-get install ${install}`);
  }
  return states;
}

/** The package that owns an installed file, e.g. /boot/vmlinuz-6.1.0-56-amd64 → linux-image-6.1.0-56-amd64. */
export async function owningPackage(path: string, signal?: AbortSignal): Promise<string | undefined> {
  const result = await run('dpkg-query', ['-S', path], { step: 'packages', signal, timeoutMs: 30_000, okExitCodes: [0, 1] });
  const first = result.stdout.split('\n')[0] ?? '';
  const colon = first.indexOf(': ');
  return colon > 0 ? first.slice(0, colon).split(',')[0]?.trim().replace(/:[a-z0-9]+$/, '') : undefined;
}
