/**
 * Owns QEMU processes: spawns them (never through a shell) or adopts the ones a previous daemon
 * left running, records their pids, and kills them by that pid. Every owned process is killed when
 * the daemon exits, unless it was released (a graceful server restart: its VMs keep running and
 * the next daemon adopts them).
 */
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readdirSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { AppError } from '../../errors/errors.ts';

export const QEMU_BINARY = 'qemu-system-x86_64';

/** An adopted process is not our child: its exit is noticed by polling /proc this often. */
const ADOPTED_POLL_MS = 300;

const owned = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pid of owned) killPid(pid);
  });
}

export interface ExitInfo {
  /** Both null for an adopted process: only a parent learns how its child ended. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class QemuProcess {
  readonly exited: Promise<ExitInfo>;
  private exitInfo: ExitInfo | undefined;

  /** `watch`: the /proc poll of an adopted process, held ref'd while someone waits for the exit. */
  private constructor(
    readonly pid: number,
    private readonly stderrPath: string,
    exit: Promise<ExitInfo>,
    private readonly child?: ChildProcess,
    private readonly watch?: NodeJS.Timeout,
  ) {
    this.exited = exit.then((info) => {
      owned.delete(pid);
      this.exitInfo = info;
      return info;
    });
  }

  /**
   * `execPrefix`: a command that execs QEMU in its own place (`nsenter --net=… --`), so the pid
   * spawned is QEMU's.
   */
  /** `inheritedFds`: open descriptors QEMU gets as fds 3, 4, … (the caller closes its own copies). */
  static async start(argv: string[], files: { pidFile: string; stderrPath: string; execPrefix?: string[]; inheritedFds?: number[] }): Promise<QemuProcess> {
    installExitHook();
    const stderr = openSync(files.stderrPath, 'a');
    let child: ChildProcess;
    try {
      // detached: its own process group, so a Ctrl-C meant for the daemon does not kill VMs mid-save.
      const [file, ...prefixArgs] = [...(files.execPrefix ?? []), QEMU_BINARY];
      child = spawn(file!, [...prefixArgs, ...argv], { detached: true, stdio: ['ignore', 'ignore', stderr, ...(files.inheritedFds ?? [])] });
    } finally {
      closeSync(stderr);
    }
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid!));
      child.once('error', (error) => reject(new AppError('vmm.start_failed', `could not start ${QEMU_BINARY}: ${error.message}`, {}, { cause: error })));
    });
    owned.add(pid);
    // QEMU writes its own -pidfile too, but only once it is up; this one exists from the start.
    await writeFile(files.pidFile, `${pid}\n`);
    const exit = new Promise<ExitInfo>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    return new QemuProcess(pid, files.stderrPath, exit, child);
  }

  /**
   * Takes over a live process that a previous daemon started (the caller has checked that it is
   * the right QEMU). Its start time is remembered, so a pid recycled later never passes for it.
   */
  static adopt(pid: number, stderrPath: string): QemuProcess {
    const startTime = processStartTime(pid);
    if (startTime === undefined) throw new AppError('vmm.exited', `process ${pid} is not running`);
    installExitHook();
    owned.add(pid);
    let watch: NodeJS.Timeout | undefined;
    const exit = new Promise<ExitInfo>((resolve) => {
      watch = setInterval(() => {
        if (processStartTime(pid) === startTime) return;
        clearInterval(watch);
        resolve({ code: null, signal: null });
      }, ADOPTED_POLL_MS);
      // Watching a VM must not keep the daemon alive.
      watch.unref();
    });
    return new QemuProcess(pid, stderrPath, exit, undefined, watch);
  }

  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** The end of QEMU's stderr, for error messages. */
  stderrTail(maxBytes = 2000): string {
    try {
      const text = readFileSync(this.stderrPath, 'utf8');
      return text.slice(-maxBytes).trim();
    } catch {
      return '';
    }
  }

  /** Rejects with `vmm.exited` (and QEMU's own words) once the process ends. */
  failOnExit(what: string): Promise<never> {
    return this.exited.then((info) => {
      const how = info.signal ?? (info.code === null ? 'it was not our child' : `code ${info.code}`);
      throw new AppError('vmm.exited', `QEMU exited during ${what} (${how}): ${this.stderrTail() || 'no message'}`);
    });
  }

  async kill(): Promise<void> {
    if (this.running) killPid(this.pid);
    await this.waitForExit();
  }

  /** Waits for a clean exit, then kills by pid when it takes longer than `timeoutMs`. */
  async waitOrKill(timeoutMs: number): Promise<void> {
    const timer = setTimeout(() => killPid(this.pid), timeoutMs);
    await this.waitForExit();
    clearTimeout(timer);
  }

  /**
   * This daemon stops owning the process: it is not killed at exit and keeps running after the
   * daemon is gone (the next daemon adopts it).
   */
  release(): void {
    owned.delete(this.pid);
    this.child?.unref();
    clearInterval(this.watch);
  }

  private async waitForExit(): Promise<void> {
    this.watch?.ref();
    try {
      await this.exited;
    } finally {
      this.watch?.unref();
    }
  }
}

/** The argv of `pid` if it is a live QEMU; undefined for a dead pid or any other program. */
export function qemuCommandLine(pid: number): string[] | undefined {
  if (processStartTime(pid) === undefined) return undefined;
  let argv: string[];
  try {
    argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined;
  }
  return argv[0]?.includes('qemu-system') ? argv : undefined;
}

/**
 * Live QEMUs whose command line names a file inside `dir` (kernel, disk, pidfile, logs): the
 * VMs of one data directory, found without trusting any recorded pid.
 */
export function qemuPidsUsing(dir: string): number[] {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .map(Number)
    .filter((pid) => qemuCommandLine(pid)?.some((arg) => arg.includes(prefix)));
}

/** True while `pid` is a live process (not gone, not a zombie). */
export function processAlive(pid: number): boolean {
  return processStartTime(pid) !== undefined;
}

/**
 * Kills `pid` only if it is a live QEMU of the VM in `dir` (its command line names files there),
 * never a recycled pid of something else; true if it was.
 */
export async function killQemuOf(pid: number, dir: string): Promise<boolean> {
  const prefix = `${path.resolve(dir)}/`;
  if (!qemuCommandLine(pid)?.some((arg) => arg.includes(prefix))) return false;
  await killAndWait(pid);
  return true;
}

/** Kills a process that is not ours to wait for (an orphan), and polls /proc until it is gone (5 s at most). */
export async function killAndWait(pid: number): Promise<void> {
  const startTime = processStartTime(pid);
  if (startTime === undefined) return;
  killPid(pid);
  const deadline = Date.now() + 5000;
  while (processStartTime(pid) === startTime && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
}

/**
 * Field 22 of /proc/<pid>/stat (start time in clock ticks since boot): with the pid it identifies
 * one process for good. Undefined when the process is gone or a zombie (an orphan reparented to an
 * init that does not reap is as good as dead).
 */
function processStartTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may contain spaces and parentheses: fields are counted after its ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
  return fields[19];
}

function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
