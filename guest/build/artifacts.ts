// Builds (or finds cached) the guest artifacts every Cocoon VM boots from: the ELF vmlinux, the
// initramfs with the agent, and the root filesystem images. Host code and tests call
// ensureGuestArtifacts(); `npm run build:guest` is its CLI.
import { mkdir, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { acquireBuildLock, ensureArtifact, reclaimTemporaries, type ArtifactRecord } from './cache.ts';
import { DEBIAN_HEADROOM_RATIO, DEBIAN_MIN_SIZE_MIB, DEBIAN_PACKAGES, DEBIAN_SUITE, buildDebianTree, guestAptSources, readHostAptSources, removeTreeSafely } from './debian.ts';
import { GuestBuildError, run, sha256File, writeFileAtomic, type Log } from './exec.ts';
import { buildInitramfs, resolveGuestModules } from './initramfs.ts';
import { extractVmlinux, findInstalledKernel, inspectElfFile } from './kernel.ts';
import { checkPackages, owningPackage, queryPackages } from './packages.ts';
import { TINY_ROOTFS_SIZE_MIB, makeExt4Image, materializeTree, planExt4, planTinyRootfs, measureTree } from './rootfs.ts';

export const REPO_DIR = fileURLToPath(new URL('../..', import.meta.url));
export const DEFAULT_OUT_DIR = join(REPO_DIR, 'build', 'guest');
export const DEFAULT_AGENT_DIR = join(REPO_DIR, 'guest', 'agent');
const BUSYBOX_PATH = '/bin/busybox';

// Bump a recipe number when a step's code changes what it produces: the cache keys include it.
const RECIPES = { vmlinux: 1, initramfs: 1, rootfsTiny: 1, rootfsDebian: 1 } as const;

export type ArtifactName = 'vmlinux' | 'initramfs' | 'rootfs-tiny' | 'rootfs-debian';

export interface GuestManifest {
  schemaVersion: 1;
  kernel: {
    /** Kernel release, e.g. "6.1.0-56-amd64". */
    release: string;
    bzImagePath: string;
    /** The package owning the bzImage (e.g. linux-image-6.1.0-56-amd64) and its version. */
    package: string;
    packageVersion: string;
    /** Version of the linux-image-amd64 meta-package. */
    metaPackageVersion: string;
    /** Modules in /modules.order, load order. */
    modules: string[];
  };
  qemu: { package: 'qemu-system-x86'; version: string };
  /** From the agent's sources (AGENT_VERSION, PROTOCOL_VERSION); null when not found. */
  agent: { version: string | null; protocolVersion: number | null; sha256: string };
  testapp: { sha256: string };
  artifacts: Partial<Record<ArtifactName, ArtifactRecord>>;
}

export interface GuestArtifacts {
  kernelPath: string;
  initramfsPath: string;
  rootfs: { tiny: string; debian?: string };
  manifest: GuestManifest;
  /** Host helper (static): a build VM's guestfwd runs it inside QEMU's chroot to reach the egress proxy. */
  egressRelayPath: string;
}

export interface EnsureGuestArtifactsOptions {
  /** Also build (or find cached) the Debian bookworm rootfs; first build takes minutes. */
  debian?: boolean;
  /** Rebuild every requested artifact even if cached. */
  force?: boolean;
  /** Progress lines; default: silent. */
  log?: Log;
  signal?: AbortSignal;
  /** Default: <repo>/build/guest. */
  outDir?: string;
  /** The agent's sources (with a Makefile making out/cocoon-agent, out/cocoon-testapp); default: <repo>/guest/agent. */
  agentDir?: string;
}

const FILES: Record<ArtifactName, string> = {
  vmlinux: 'vmlinux',
  initramfs: 'initramfs.cpio',
  'rootfs-tiny': 'rootfs-tiny.ext4',
  'rootfs-debian': 'rootfs-debian.ext4',
};

export async function ensureGuestArtifacts(options: EnsureGuestArtifactsOptions = {}): Promise<GuestArtifacts> {
  const outDir = options.outDir ?? DEFAULT_OUT_DIR;
  const log: Log = options.log ?? (() => {});
  const { signal } = options;
  const debian = options.debian ?? false;
  const force = options.force ?? false;
  await mkdir(outDir, { recursive: true });
  const release = await acquireBuildLock(join(outDir, '.lock'), log, signal);
  try {
    await reclaimTemporaries(outDir, log);
    const packages = await checkPackages({ debian, signal });
    const agent = await buildAgent(options.agentDir ?? DEFAULT_AGENT_DIR, signal);
    const kernel = await findInstalledKernel();
    const kernelPackage = (await owningPackage(kernel.bzImagePath, signal)) ?? `linux-image-${kernel.release}`;
    const kernelPackageVersion = (await queryPackages([kernelPackage], signal)).get(kernelPackage)?.version ?? '';
    const modules = await resolveGuestModules(kernel.modulesDir);
    const previous = await readManifest(outDir);
    const manifest: GuestManifest = {
      schemaVersion: 1,
      kernel: {
        release: kernel.release,
        bzImagePath: kernel.bzImagePath,
        package: kernelPackage,
        packageVersion: kernelPackageVersion,
        metaPackageVersion: packages.get('linux-image-amd64')?.version ?? '',
        modules: modules.map((module) => module.name),
      },
      qemu: { package: 'qemu-system-x86', version: packages.get('qemu-system-x86')?.version ?? '' },
      agent: { version: agent.version, protocolVersion: agent.protocolVersion, sha256: agent.agentSha256 },
      testapp: { sha256: agent.testappSha256 },
      // An artifact not requested this time (the Debian rootfs) stays on record, unchecked.
      artifacts: { ...previous?.artifacts },
    };
    const manifestPath = join(outDir, 'manifest.json');
    // Saved after every artifact, so a failure later on does not forget what was built.
    const ensure = async (name: ArtifactName, inputs: unknown, build: (tmpPath: string) => Promise<void>): Promise<void> => {
      manifest.artifacts[name] = await ensureArtifact({ outDir, force, log, name, file: FILES[name], previous: previous?.artifacts[name], inputs, build });
      const text = `${JSON.stringify(manifest, null, 2)}\n`;
      if (text !== (await readFile(manifestPath, 'utf8').catch(() => ''))) await writeFileAtomic(manifestPath, text);
    };

    await ensure('vmlinux', { recipe: RECIPES.vmlinux, bzImageSha256: await sha256File(kernel.bzImagePath) }, (tmpPath) =>
      extractVmlinux(kernel.bzImagePath, tmpPath, { log, signal }),
    );

    const moduleHashes = await Promise.all(modules.map(async (module) => ({ ...module, sha256: await sha256File(join(kernel.modulesDir, module.path)) })));
    await ensure('initramfs', { recipe: RECIPES.initramfs, release: kernel.release, modules: moduleHashes, agentSha256: agent.agentSha256 }, (tmpPath) =>
      buildInitramfs({ agentPath: agent.agentPath, modulesDir: kernel.modulesDir, modules, outPath: tmpPath, log, signal }),
    );

    await ensure('rootfs-tiny', { recipe: RECIPES.rootfsTiny, busyboxSha256: await sha256File(BUSYBOX_PATH), testappSha256: agent.testappSha256 }, (tmpPath) =>
      buildTinyRootfs(tmpPath, agent.testappPath, log, signal),
    );

    if (debian) {
      const inputs = {
        recipe: RECIPES.rootfsDebian,
        suite: DEBIAN_SUITE,
        packages: DEBIAN_PACKAGES,
        sources: guestAptSources(await readHostAptSources(), DEBIAN_SUITE),
        testappSha256: agent.testappSha256,
      };
      await ensure('rootfs-debian', inputs, (tmpPath) => buildDebianRootfs(tmpPath, agent.testappPath, log, signal));
    }

    return {
      kernelPath: join(outDir, FILES.vmlinux),
      initramfsPath: join(outDir, FILES.initramfs),
      rootfs: {
        tiny: join(outDir, FILES['rootfs-tiny']),
        ...(debian ? { debian: join(outDir, FILES['rootfs-debian']) } : {}),
      },
      manifest,
      egressRelayPath: agent.egressRelayPath,
    };
  } finally {
    await release();
  }
}

async function readManifest(outDir: string): Promise<GuestManifest | undefined> {
  try {
    const parsed = JSON.parse(await readFile(join(outDir, 'manifest.json'), 'utf8')) as GuestManifest;
    return parsed.schemaVersion === 1 && typeof parsed.artifacts === 'object' ? parsed : undefined;
  } catch {
    return undefined; // absent or corrupt: everything is rebuilt
  }
}

interface AgentBinaries {
  agentPath: string;
  testappPath: string;
  egressRelayPath: string;
  agentSha256: string;
  testappSha256: string;
  version: string | null;
  protocolVersion: number | null;
}

/** Runs the agent's make (a no-op when up to date) and checks its binaries are static ELF files. */
async function buildAgent(agentDir: string, signal?: AbortSignal): Promise<AgentBinaries> {
  const step = 'agent';
  const makefile = join(agentDir, 'Makefile');
  if ((await readFile(makefile).catch(() => undefined)) === undefined) {
    throw new GuestBuildError(step, `${makefile} not found: the agent's sources are missing`);
  }
  await run('make', ['-C', agentDir], { step, signal, timeoutMs: 300_000 });
  const agentPath = join(agentDir, 'out', 'cocoon-agent');
  const testappPath = join(agentDir, 'out', 'cocoon-testapp');
  const egressRelayPath = join(agentDir, 'out', 'cocoon-egress-relay');
  for (const path of [agentPath, testappPath, egressRelayPath]) {
    const facts = await inspectElfFile(path).catch((error: unknown) => ({ error: (error as Error).message, static: false }));
    if (facts.error !== undefined) throw new GuestBuildError(step, `${path}: ${facts.error} (make -C guest/agent did not produce it?)`);
    if (!facts.static) throw new GuestBuildError(step, `${path} is dynamically linked: the guest (or QEMU's chroot) has no libc to load it with`);
  }
  return {
    agentPath,
    testappPath,
    egressRelayPath,
    agentSha256: await sha256File(agentPath),
    testappSha256: await sha256File(testappPath),
    ...(await readAgentVersions(agentDir)),
  };
}

/** The agent's versions from its sources: `#define AGENT_VERSION "1.0"`, `#define PROTOCOL_VERSION 1`. */
async function readAgentVersions(agentDir: string): Promise<{ version: string | null; protocolVersion: number | null }> {
  let version: string | null = null;
  let protocolVersion: number | null = null;
  for (const name of (await readdir(agentDir).catch(() => [] as string[])).sort()) {
    if (!/\.(h|c)$/.test(name)) continue;
    const text = await readFile(join(agentDir, name), 'utf8');
    version ??= /#\s*define\s+AGENT_VERSION\s+"([^"]+)"/.exec(text)?.[1] ?? null;
    const protocol = /#\s*define\s+PROTOCOL_VERSION\s+(\d+)/.exec(text)?.[1];
    protocolVersion ??= protocol === undefined ? null : Number(protocol);
  }
  return { version, protocolVersion };
}

async function buildTinyRootfs(imagePath: string, testappPath: string, log: Log, signal?: AbortSignal): Promise<void> {
  const treeDir = `${imagePath}.tree.tmp-${process.pid}`;
  try {
    const { stdout } = await run(BUSYBOX_PATH, ['--list-full'], { step: 'rootfs-tiny', signal, timeoutMs: 10_000 });
    await removeTreeSafely(treeDir);
    await materializeTree(treeDir, planTinyRootfs({ busyboxApplets: stdout.split('\n'), busyboxPath: BUSYBOX_PATH, testappPath }));
    const plan = planExt4(await measureTree(treeDir), { minSizeMiB: TINY_ROOTFS_SIZE_MIB, headroomRatio: 0 });
    if (plan.sizeMiB > TINY_ROOTFS_SIZE_MIB) throw new GuestBuildError('rootfs-tiny', `content needs ${plan.sizeMiB} MiB, over ${TINY_ROOTFS_SIZE_MIB} MiB`);
    await makeExt4Image({ step: 'rootfs-tiny', treeDir, imagePath, plan, log, signal });
  } finally {
    await removeTreeSafely(treeDir);
  }
}

async function buildDebianRootfs(imagePath: string, testappPath: string, log: Log, signal?: AbortSignal): Promise<void> {
  const treeDir = `${imagePath}.tree.tmp-${process.pid}`;
  try {
    await removeTreeSafely(treeDir);
    await buildDebianTree({ treeDir, testappPath, log, signal });
    const size = await measureTree(treeDir);
    const plan = planExt4(size, { minSizeMiB: DEBIAN_MIN_SIZE_MIB, headroomRatio: DEBIAN_HEADROOM_RATIO });
    log(`rootfs-debian: tree holds ${(size.blockBytes / 2 ** 20).toFixed(0)} MiB in ${size.inodeCount} inodes`);
    await makeExt4Image({ step: 'rootfs-debian', treeDir, imagePath, plan, log, signal });
  } finally {
    await removeTreeSafely(treeDir);
  }
}
