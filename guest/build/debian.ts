// The Debian rootfs: bookworm minbase from the host's own apt sources (mmdebstrap), plus what
// Cocoon adds. Building takes minutes and needs root (mkfs.ext4 -d keeps the files' owners).
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GuestBuildError, run, type Log } from './exec.ts';
import { APP_GID, APP_UID, TESTAPP_GUEST_PATH, materializeTree, networkEtcFiles, type TreeNode } from './rootfs.ts';

export const DEBIAN_SUITE = 'bookworm';
export const DEBIAN_PACKAGES: readonly string[] = ['python3', 'ca-certificates', 'curl', 'procps', 'iproute2'];
export const DEBIAN_MIN_SIZE_MIB = 512;
export const DEBIAN_HEADROOM_RATIO = 0.3;
// Documentation is dead weight in a guest disk; copyright files stay (licence terms).
const DPKG_PATH_EXCLUDES: readonly string[] = [
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/locale/*',
  'path-include=/usr/share/locale/locale.alias',
];

export interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
  signedBy?: string;
}

/** Parses a deb822 (.sources) or one-line (.list) apt sources file. Disabled entries are dropped. */
export function parseAptSources(text: string, format: 'deb822' | 'one-line'): AptSource[] {
  return format === 'deb822' ? parseDeb822Sources(text) : parseOneLineSources(text);
}

function parseDeb822Sources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const paragraph of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let lastKey: string | undefined;
    for (const line of paragraph.split('\n')) {
      if (line.startsWith('#') || line.trim() === '') continue;
      if (/^\s/.test(line) && lastKey !== undefined) {
        fields.set(lastKey, `${fields.get(lastKey) ?? ''}\n${line.trim()}`);
        continue;
      }
      const colon = line.indexOf(':');
      if (colon < 0) continue;
      lastKey = line.slice(0, colon).trim().toLowerCase();
      fields.set(lastKey, line.slice(colon + 1).trim());
    }
    const list = (key: string): string[] => (fields.get(key) ?? '').split(/\s+/).filter((word) => word !== '');
    if ((fields.get('enabled') ?? 'yes').toLowerCase() === 'no' || list('types').length === 0) continue;
    const signedBy = fields.get('signed-by');
    sources.push({
      types: list('types'),
      uris: list('uris'),
      suites: list('suites'),
      components: list('components'),
      ...(signedBy !== undefined && !signedBy.includes('\n') ? { signedBy } : {}),
    });
  }
  return sources;
}

function parseOneLineSources(text: string): AptSource[] {
  const sources: AptSource[] = [];
  for (const rawLine of text.split('\n')) {
    const line = rawLine.replace(/#.*$/, '').trim();
    const match = /^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
    if (match === null) continue;
    const [, type = '', options = '', uri = '', suite = '', components = ''] = match;
    const signedBy = /(?:^|\s)signed-by=(\S+)/.exec(options)?.[1];
    sources.push({
      types: [type],
      uris: [uri],
      suites: [suite],
      components: components.split(/\s+/).filter((word) => word !== ''),
      ...(signedBy !== undefined ? { signedBy } : {}),
    });
  }
  return sources;
}

/**
 * The host's binary sources for `suite` and its -updates/-security companions, as one deb822
 * text for mmdebstrap's standard input. Other suites (backports, third-party repositories) stay
 * out of the guest.
 */
export function guestAptSources(sources: readonly AptSource[], suite: string): string {
  const wantedSuite = (name: string): boolean => name === suite || name === `${suite}-updates` || name === `${suite}-security` || name === `${suite}/updates`;
  const paragraphs: string[] = [];
  for (const source of sources) {
    const suites = source.suites.filter(wantedSuite);
    if (!source.types.includes('deb') || suites.length === 0 || source.uris.length === 0) continue;
    paragraphs.push(
      [
        'Types: deb',
        `URIs: ${source.uris.join(' ')}`,
        `Suites: ${suites.join(' ')}`,
        `Components: ${source.components.join(' ') || 'main'}`,
        ...(source.signedBy !== undefined ? [`Signed-By: ${source.signedBy}`] : []),
      ].join('\n'),
    );
  }
  return paragraphs.length === 0 ? '' : `${paragraphs.join('\n\n')}\n`;
}

/** Reads the host's enabled apt sources (sources.list and sources.list.d/*.list|*.sources). */
export async function readHostAptSources(aptDir = '/etc/apt'): Promise<AptSource[]> {
  const files: { path: string; format: 'deb822' | 'one-line' }[] = [{ path: join(aptDir, 'sources.list'), format: 'one-line' }];
  const partsDir = join(aptDir, 'sources.list.d');
  for (const name of (await readdir(partsDir).catch(() => [] as string[])).sort()) {
    if (name.endsWith('.list')) files.push({ path: join(partsDir, name), format: 'one-line' });
    if (name.endsWith('.sources')) files.push({ path: join(partsDir, name), format: 'deb822' });
  }
  const sources: AptSource[] = [];
  for (const file of files) {
    const text = await readFile(file.path, 'utf8').catch(() => '');
    sources.push(...parseAptSources(text, file.format));
  }
  return sources;
}

export function mmdebstrapArgv(options: { suite: string; treeDir: string }): string[] {
  return [
    '--variant=minbase',
    '--mode=root',
    '--format=directory',
    `--include=${DEBIAN_PACKAGES.join(',')}`,
    ...DPKG_PATH_EXCLUDES.map((option) => `--dpkgopt=${option}`),
    options.suite,
    options.treeDir,
    '-', // the sources come from standard input
  ];
}

export interface UserDatabase {
  passwd: string;
  group: string;
  shadow: string;
  gshadow: string;
}

/** Adds the `app` user and group (uid/gid 1000, home /app, no password) unless present. Pure. */
export function withAppUser(database: UserDatabase): UserDatabase {
  const has = (text: string, name: string): boolean => text.split('\n').some((line) => line.startsWith(`${name}:`));
  const append = (text: string, line: string): string => `${text}${text === '' || text.endsWith('\n') ? '' : '\n'}${line}\n`;
  const taken = (text: string, id: number, name: string): boolean =>
    text.split('\n').some((line) => line.split(':')[2] === String(id) && !line.startsWith(`${name}:`));
  if (taken(database.passwd, APP_UID, 'app') || taken(database.group, APP_GID, 'app')) {
    throw new Error(`uid/gid ${APP_UID} is already taken in the rootfs`);
  }
  return {
    passwd: has(database.passwd, 'app') ? database.passwd : append(database.passwd, `app:x:${APP_UID}:${APP_GID}:app:/app:/bin/sh`),
    group: has(database.group, 'app') ? database.group : append(database.group, `app:x:${APP_GID}:`),
    shadow: has(database.shadow, 'app') ? database.shadow : append(database.shadow, 'app:!:19000:0:99999:7:::'),
    gshadow: has(database.gshadow, 'app') ? database.gshadow : append(database.gshadow, 'app:!::'),
  };
}

/** Mount points at or below `dir`, from /proc/self/mountinfo text (field 5, octal escapes). */
export function mountPointsUnder(mountinfoText: string, dir: string): string[] {
  const prefix = dir.replace(/\/+$/, '');
  return mountinfoText
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((field): field is string => field !== undefined)
    .map((field) => field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))))
    .filter((mountPoint) => mountPoint === prefix || mountPoint.startsWith(`${prefix}/`));
}

/** Deletes a chroot tree, refusing if anything is still mounted inside (a killed mmdebstrap). */
export async function removeTreeSafely(dir: string): Promise<void> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const mounted = mountPointsUnder(mountinfo, dir);
  if (mounted.length > 0) {
    throw new GuestBuildError('cleanup', `not deleting ${dir}: still mounted there: ${mounted.join(', ')} (unmount them first)`);
  }
  await rm(dir, { recursive: true, force: true });
}

/** Runs mmdebstrap into `treeDir` (which must not exist) and applies Cocoon's additions. */
export async function buildDebianTree(options: { treeDir: string; testappPath: string; log: Log; signal?: AbortSignal; aptDir?: string }): Promise<void> {
  const step = 'rootfs-debian';
  if (process.getuid?.() !== 0) {
    throw new GuestBuildError(step, 'building the Debian rootfs needs root (mmdebstrap --mode=root; mkfs.ext4 -d keeps file owners)');
  }
  const sourcesText = guestAptSources(await readHostAptSources(options.aptDir), DEBIAN_SUITE);
  if (sourcesText === '') {
    throw new GuestBuildError(step, `the host's apt sources (/etc/apt) list no "${DEBIAN_SUITE}" deb source to build from`);
  }
  options.log(`${step}: mmdebstrap ${DEBIAN_SUITE} minbase + ${DEBIAN_PACKAGES.join(', ')} (takes minutes)`);
  try {
    await run('mmdebstrap', mmdebstrapArgv({ suite: DEBIAN_SUITE, treeDir: options.treeDir }), {
      step,
      signal: options.signal,
      timeoutMs: 30 * 60_000,
      stdin: sourcesText,
      onStderrLine: (line) => {
        if (/^[IWE]: /.test(line)) options.log(`${step}: ${line}`);
      },
    });
  } catch (error) {
    const detail = error instanceof GuestBuildError ? error.detail : String(error);
    if (/(Failed to fetch|Could not resolve|Temporary failure|Unable to connect|apt-get update failed|404\s+Not Found)/i.test(detail)) {
      throw new GuestBuildError(step, `mmdebstrap could not download packages from the host's apt mirror (network or mirror problem):\n${detail}`, { cause: error });
    }
    throw error;
  }
  await customizeDebianTree(options.treeDir, options.testappPath);
}

async function customizeDebianTree(treeDir: string, testappPath: string): Promise<void> {
  const etc = join(treeDir, 'etc');
  const read = (name: string): Promise<string> => readFile(join(etc, name), 'utf8').catch(() => '');
  const database = withAppUser({ passwd: await read('passwd'), group: await read('group'), shadow: await read('shadow'), gshadow: await read('gshadow') });
  await writeFile(join(etc, 'passwd'), database.passwd);
  await writeFile(join(etc, 'group'), database.group);
  await writeFile(join(etc, 'shadow'), database.shadow, { mode: 0o640 });
  await writeFile(join(etc, 'gshadow'), database.gshadow, { mode: 0o640 });
  // Nothing periodic may run in a guest (idle wakeups cost host CPU under TCG). minbase has no
  // cron and no systemd runs (the agent is PID 1); drop any cron tables a dependency brought.
  for (const name of ['cron.d', 'cron.daily', 'cron.hourly', 'cron.weekly', 'cron.monthly', 'crontab']) {
    await rm(join(etc, name), { recursive: true, force: true });
  }
  await rm(join(etc, 'resolv.conf'), { force: true }); // may be a symlink left by the build
  const nodes: TreeNode[] = [
    { kind: 'dir', path: '/app', mode: 0o755 },
    ...networkEtcFiles(),
    { kind: 'copy', path: TESTAPP_GUEST_PATH, mode: 0o755, fromPath: testappPath },
  ];
  for (const node of nodes) if (node.kind !== 'dir') await rm(join(treeDir, node.path), { force: true });
  await materializeTree(treeDir, nodes);
  await writeFile(join(etc, 'apt', 'apt.conf.d', '99cocoon'), '// Written by Cocoon: guests run no apt timers.\nAPT::Periodic::Enable "0";\n');
}
