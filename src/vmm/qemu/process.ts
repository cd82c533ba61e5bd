/**
 * Owns QEMU processes: spawns them (never through a shell), records their pids, and kills them by
 * that pid. Every process this daemon started is killed when the daemon exits, unless it was
 * explicitly released (a later issue re-adopts running VMs across daemon restarts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { AppError } from '../../errors/errors.ts';

export const QEMU_BINARY = 'qemu-system-x86_64';

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
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class QemuProcess {
  readonly exited: Promise<ExitInfo>;
  private exitInfo: ExitInfo | undefined;

  private constructor(child: ChildProcess, readonly pid: number, private readonly stderrPath: string) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        owned.delete(pid);
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
  }

  static async start(argv: string[], files: { pidFile: string; stderrPath: string }): Promise<QemuProcess> {
    installExitHook();
    const stderr = openSync(files.stderrPath, 'a');
    let child: ChildProcess;
    try {
      // detached: its own process group, so a Ctrl-C meant for the daemon does not kill VMs mid-save.
      child = spawn(QEMU_BINARY, argv, { detached: true, stdio: ['ignore', 'ignore', stderr] });
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
    return new QemuProcess(child, pid, files.stderrPath);
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
      throw new AppError('vmm.exited', `QEMU exited during ${what} (${info.signal ?? `code ${info.code}`}): ${this.stderrTail() || 'no message'}`);
    });
  }

  async kill(): Promise<void> {
    if (this.running) killPid(this.pid);
    await this.exited;
  }

  /** Waits for a clean exit, then kills by pid when it takes longer than `timeoutMs`. */
  async waitOrKill(timeoutMs: number): Promise<void> {
    const timer = setTimeout(() => killPid(this.pid), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }
}

function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}
