/**
 * Host limits of QEMU processes through cgroups, v1 (one hierarchy per controller) or v2 (one
 * unified hierarchy): a CPU quota and weight, a memory limit without swap, a pids limit, and the
 * usage read back. Cocoon's groups live beneath the daemon's own cgroup in each hierarchy
 * (`<own>/cocoon/<name>`), never at the root, so that it also works inside a container that owns
 * only its subtree. Parsers and the plan of writes are pure; `Cgroups` does the file system work.
 */
import { access, mkdir, readdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface CgroupLimits {
  /** Hard cap of CPU time per period, in cores (1.5 = 150 % of one core). */
  cpuQuotaCores: number;
  /** Share of contended CPU, in cores (1 core = v1 `cpu.shares` 1024 = v2 `cpu.weight` 100). */
  cpuWeightCores: number;
  memoryBytes: number;
  pidsMax: number;
}

export interface ResourceUsage {
  /** CPU time used since the process (or its group) started, all threads and children. */
  cpuNs: number;
  memoryBytes: number;
}

export type CgroupVersion = 1 | 2;
type Controller = 'cpu' | 'cpuacct' | 'memory' | 'pids';

/** Where Cocoon's groups go: the `cocoon` directory beneath the daemon's own group. */
export type CgroupLayout =
  /** One parent per controller; co-mounted controllers (`cpu,cpuacct`) share a directory. pids is optional. */
  | { version: 1; parents: { cpu: string; cpuacct: string; memory: string; pids?: string } }
  /** `own`: the daemon's own group, whose subtree must have the cpu, memory and pids controllers enabled. */
  | { version: 2; own: string; parent: string };

/** cfs period of both versions: quotas are expressed per 100 ms. */
const CPU_PERIOD_US = 100_000;
const PARENT_NAME = 'cocoon';
/** v2: a group with processes cannot hand controllers to its children; the daemon then moves to this leaf. */
const DAEMON_LEAF = 'cocoon-daemon';
const V2_CONTROLLERS = ['cpu', 'memory', 'pids'];
/** An empty group this old is a leftover (its QEMU was killed from outside, or died with its daemon). */
const LEFTOVER_AGE_MS = 60_000;

interface CgroupMount {
  root: string;
  mountPoint: string;
  fsType: string;
  superOptions: string[];
}

/** The cgroup and cgroup2 mounts of /proc/self/mountinfo. */
export function parseMountinfo(text: string): CgroupMount[] {
  const mounts: CgroupMount[] = [];
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const fields = left.split(' ');
    const [fsType, , superOptions = ''] = right.split(' ');
    if (fsType !== 'cgroup' && fsType !== 'cgroup2') continue;
    mounts.push({ root: unescapeMountPath(fields[3] ?? '/'), mountPoint: unescapeMountPath(fields[4] ?? ''), fsType, superOptions: superOptions.split(',') });
  }
  return mounts;
}

/** mountinfo writes space, tab, newline and backslash in paths as octal escapes. */
function unescapeMountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** /proc/self/cgroup: `id:controllers:path`, one line per hierarchy (v2: `0::path`). */
export function parseProcCgroup(text: string): Array<{ controllers: string[]; path: string }> {
  return text.split('\n').flatMap((line) => {
    const match = /^(\d+):([^:]*):(\/.*)$/.exec(line);
    return match ? [{ controllers: match[2] === '' ? [] : match[2]!.split(','), path: match[3]! }] : [];
  });
}

/**
 * Where Cocoon's groups go on this host, from /proc/self/mountinfo and /proc/self/cgroup; undefined
 * (with why) when neither version can limit both CPU and memory. v1 wins when it holds the cpu or
 * memory controller: a controller is active in one hierarchy only (hybrid hosts mount an empty v2).
 */
export function detectLayout(mountinfo: string, procSelfCgroup: string): CgroupLayout | string {
  const mounts = parseMountinfo(mountinfo);
  const memberships = parseProcCgroup(procSelfCgroup);
  const v1Dir = (controller: Controller): string | undefined => {
    const mount = mounts.find((m) => m.fsType === 'cgroup' && m.superOptions.includes(controller));
    const own = memberships.find((m) => m.controllers.includes(controller));
    return mount && own ? ownDir(mount, own.path) : undefined;
  };
  const cpu = v1Dir('cpu');
  const memory = v1Dir('memory');
  if (cpu !== undefined || memory !== undefined) {
    const cpuacct = v1Dir('cpuacct');
    if (cpu === undefined || memory === undefined || cpuacct === undefined) {
      return 'cgroup v1 without all of the cpu, cpuacct and memory controllers mounted';
    }
    const pids = v1Dir('pids');
    return {
      version: 1,
      parents: { cpu: path.join(cpu, PARENT_NAME), cpuacct: path.join(cpuacct, PARENT_NAME), memory: path.join(memory, PARENT_NAME), ...(pids !== undefined && { pids: path.join(pids, PARENT_NAME) }) },
    };
  }
  const unified = mounts.find((m) => m.fsType === 'cgroup2');
  const own = memberships.find((m) => m.controllers.length === 0);
  const dir = unified && own ? ownDir(unified, own.path) : undefined;
  if (dir === undefined) return 'no cgroup v1 cpu/memory hierarchies and no cgroup v2 mount that holds this process';
  return { version: 2, own: dir, parent: path.join(dir, PARENT_NAME) };
}

/** The directory of the process's own group: its path is relative to the hierarchy, the mount may show a subtree. */
function ownDir(mount: CgroupMount, ownPath: string): string | undefined {
  if (mount.root === '/') return path.join(mount.mountPoint, ownPath);
  if (ownPath === mount.root || ownPath.startsWith(`${mount.root}/`)) return path.join(mount.mountPoint, ownPath.slice(mount.root.length));
  return undefined;
}

export interface CgroupWrite {
  controller: Exclude<Controller, 'cpuacct'>;
  file: string;
  value: string;
  /** Written only when the kernel has the file (swap accounting, oom.group). */
  ifPresent?: boolean;
}

/** The control files a group's limits are written to, in order (memsw must not go below the limit). */
export function limitWrites(version: CgroupVersion, limits: CgroupLimits): CgroupWrite[] {
  const quotaUs = Math.max(1000, Math.round(limits.cpuQuotaCores * CPU_PERIOD_US));
  const memory = String(Math.floor(limits.memoryBytes));
  const pids = String(limits.pidsMax);
  if (version === 1) {
    return [
      { controller: 'cpu', file: 'cpu.cfs_period_us', value: String(CPU_PERIOD_US) },
      { controller: 'cpu', file: 'cpu.cfs_quota_us', value: String(quotaUs) },
      { controller: 'cpu', file: 'cpu.shares', value: String(clamp(Math.round(1024 * limits.cpuWeightCores), 2, 262_144)) },
      { controller: 'memory', file: 'memory.limit_in_bytes', value: memory },
      // Memory + swap at the same limit: the guest's RAM is never swapped out to make room.
      { controller: 'memory', file: 'memory.memsw.limit_in_bytes', value: memory, ifPresent: true },
      { controller: 'pids', file: 'pids.max', value: pids },
    ];
  }
  return [
    { controller: 'cpu', file: 'cpu.max', value: `${quotaUs} ${CPU_PERIOD_US}` },
    { controller: 'cpu', file: 'cpu.weight', value: String(clamp(Math.round(100 * limits.cpuWeightCores), 1, 10_000)) },
    { controller: 'memory', file: 'memory.max', value: memory },
    { controller: 'memory', file: 'memory.swap.max', value: '0', ifPresent: true },
    // An OOM kill takes QEMU's helper processes (socat, zstd) with it.
    { controller: 'memory', file: 'memory.oom.group', value: '1', ifPresent: true },
    { controller: 'pids', file: 'pids.max', value: pids },
  ];
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(max, Math.max(min, value));
}

/** One VM's group: a directory per hierarchy (v1) or one directory (v2). */
export class Cgroup {
  constructor(readonly version: CgroupVersion, private readonly dirs: Partial<Record<Controller, string>>) {}

  /** The distinct directories (co-mounted v1 controllers share one). */
  get directories(): string[] {
    return [...new Set(Object.values(this.dirs))];
  }

  dirOf(controller: Controller): string | undefined {
    return this.dirs[controller];
  }

  async usage(): Promise<ResourceUsage> {
    if (this.version === 1) {
      const [cpu, memory] = await Promise.all([
        readFile(path.join(this.dirs.cpuacct!, 'cpuacct.usage'), 'utf8'),
        readFile(path.join(this.dirs.memory!, 'memory.usage_in_bytes'), 'utf8'),
      ]);
      return { cpuNs: Number(cpu.trim()), memoryBytes: Number(memory.trim()) };
    }
    const [stat, memory] = await Promise.all([
      readFile(path.join(this.dirs.cpu!, 'cpu.stat'), 'utf8'),
      readFile(path.join(this.dirs.memory!, 'memory.current'), 'utf8'),
    ]);
    const usec = /^usage_usec (\d+)$/m.exec(stat)?.[1];
    return { cpuNs: Number(usec ?? 0) * 1000, memoryBytes: Number(memory.trim()) };
  }

  /**
   * Removes the group once its QEMU has exited. Helpers QEMU left behind (a `socat` of a guest
   * connection still open) are killed: nothing else ever runs in a VM's group.
   */
  async remove(): Promise<void> {
    for (const dir of this.directories) {
      for (let attempt = 0; ; attempt++) {
        const code = await rmdir(dir).then(() => undefined, (error: NodeJS.ErrnoException) => error.code);
        if (code === undefined || code === 'ENOENT') break;
        if (code !== 'EBUSY' || attempt >= 40) throw new Error(`could not remove cgroup ${dir}: ${code}`);
        for (const pid of await readFile(path.join(dir, 'cgroup.procs'), 'utf8').then(pidsOf, () => [])) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone meanwhile
          }
        }
        await sleep(50);
      }
    }
  }
}

export class Cgroups {
  private constructor(readonly layout: CgroupLayout) {}

  /**
   * Detects this host's cgroups (or takes `layout`, e.g. a fake hierarchy in tests) and prepares
   * Cocoon's parent group. Throws with the reason when limits cannot be enforced (no root, a
   * read-only cgroupfs, missing controllers): the caller runs VMs without host limits then.
   */
  static async open(layout?: CgroupLayout): Promise<Cgroups> {
    const resolved = layout ?? detectLayout(await readFile('/proc/self/mountinfo', 'utf8'), await readFile('/proc/self/cgroup', 'utf8'));
    if (typeof resolved === 'string') throw new Error(resolved);
    const parents = resolved.version === 1 ? [...new Set(Object.values(resolved.parents))] : [resolved.parent];
    if (resolved.version === 1) {
      for (const parent of parents) await mkdir(parent, { recursive: true });
    } else {
      await prepareV2(resolved);
    }
    for (const parent of parents) await removeLeftovers(parent);
    return new Cgroups(resolved);
  }

  get version(): CgroupVersion {
    return this.layout.version;
  }

  /** The group `name` (it may not exist). */
  group(name: string): Cgroup {
    if (!/^[A-Za-z0-9_.-]+$/.test(name) || name.startsWith('.')) throw new RangeError(`invalid cgroup name ${name}`);
    if (this.layout.version === 2) {
      const dir = path.join(this.layout.parent, name);
      return new Cgroup(2, { cpu: dir, cpuacct: dir, memory: dir, pids: dir });
    }
    const { parents } = this.layout;
    return new Cgroup(1, {
      cpu: path.join(parents.cpu, name), cpuacct: path.join(parents.cpuacct, name), memory: path.join(parents.memory, name),
      ...(parents.pids !== undefined && { pids: path.join(parents.pids, name) }),
    });
  }

  /** Creates the group with `limits` and moves `pid` (all its threads) into it. */
  async place(name: string, pid: number, limits: CgroupLimits): Promise<Cgroup> {
    const group = this.group(name);
    try {
      for (const dir of group.directories) await mkdir(dir, { recursive: true });
      for (const write of limitWrites(group.version, limits)) {
        const dir = group.dirOf(write.controller);
        if (dir === undefined) continue;
        const file = path.join(dir, write.file);
        if (write.ifPresent && !(await access(file).then(() => true, () => false))) continue;
        await writeFile(file, write.value);
      }
      for (const dir of group.directories) await writeFile(path.join(dir, 'cgroup.procs'), String(pid));
    } catch (error) {
      await group.remove().catch(() => {});
      throw error;
    }
    return group;
  }

  /** The existing group `name` (a VM that another daemon started), else undefined. */
  async find(name: string): Promise<Cgroup | undefined> {
    const group = this.group(name);
    const exists = await Promise.all(group.directories.map((dir) => access(dir).then(() => true, () => false)));
    return exists.every(Boolean) ? group : undefined;
  }
}

/**
 * v2 hands a controller to a group's children only through its parent's `cgroup.subtree_control`,
 * and not at all while the parent itself holds processes (EBUSY; the root is exempt). Inside a
 * container or a systemd unit with `Delegate=yes` the daemon sits in such a group: its processes
 * then move to a leaf beside Cocoon's groups, as container inits do.
 */
async function prepareV2(layout: Extract<CgroupLayout, { version: 2 }>): Promise<void> {
  const available = (await readFile(path.join(layout.own, 'cgroup.controllers'), 'utf8')).trim().split(/\s+/);
  const missing = V2_CONTROLLERS.filter((c) => !available.includes(c));
  if (missing.length > 0) throw new Error(`cgroup v2 group ${layout.own} lacks the ${missing.join(', ')} controller(s)`);
  const enable = V2_CONTROLLERS.map((c) => `+${c}`).join(' ');
  const ownControl = path.join(layout.own, 'cgroup.subtree_control');
  try {
    await writeFile(ownControl, enable);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EBUSY') throw error;
    const leaf = path.join(layout.own, DAEMON_LEAF);
    await mkdir(leaf, { recursive: true });
    const pids = (await readFile(path.join(layout.own, 'cgroup.procs'), 'utf8')).split('\n').filter(Boolean);
    for (const pid of pids) await writeFile(path.join(leaf, 'cgroup.procs'), pid).catch(() => {}); // a process may exit meanwhile
    await writeFile(ownControl, enable);
  }
  await mkdir(layout.parent, { recursive: true });
  await writeFile(path.join(layout.parent, 'cgroup.subtree_control'), enable);
}

function pidsOf(text: string): number[] {
  return text.split('\n').filter(Boolean).map(Number);
}

/**
 * Empty VM groups older than a minute: their QEMU was killed from outside (a daemon reclaiming the
 * VMs of one that crashed). Young empty groups are left alone: another daemon sharing this parent
 * may be setting one up.
 */
async function removeLeftovers(parent: string): Promise<void> {
  const entries = await readdir(parent, { withFileTypes: true });
  for (const entry of entries.filter((e) => e.isDirectory())) {
    const dir = path.join(parent, entry.name);
    const [procs, info] = await Promise.all([readFile(path.join(dir, 'cgroup.procs'), 'utf8').catch(() => undefined), stat(dir)]);
    if (procs === '' && Date.now() - info.mtimeMs > LEFTOVER_AGE_MS) await rmdir(dir).catch(() => {});
  }
}

/** Usage of a process without a group of its own, from /proc (all threads; USER_HZ is 100 on Linux). */
export async function processUsage(pid: number): Promise<ResourceUsage> {
  const [stat, status] = await Promise.all([readFile(`/proc/${pid}/stat`, 'utf8'), readFile(`/proc/${pid}/status`, 'utf8')]);
  // Fields after the command name (which may hold spaces): utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const rssKiB = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0);
  return { cpuNs: ticks * 10_000_000, memoryBytes: rssKiB * 1024 };
}
