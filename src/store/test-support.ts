/** Fixtures for the store tests: a fresh database file per test, sample records, a child writer. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after } from 'node:test';
import { fileURLToPath } from 'node:url';

export { imageFields, microvmRecord } from './test-fixtures.ts';

const root = await mkdtemp(path.join(os.tmpdir(), 'cocoon-store-'));
after(() => rm(root, { recursive: true, force: true }));
let files = 0;

/** A path for a database that does not exist yet, in a directory that does not exist yet either. */
export function freshDbFile(): string {
  return path.join(root, `db-${++files}`, 'cocoon.db');
}

const childScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'test-child.ts');

/** Runs test-child.ts in its own Node process (through tsx). */
export function spawnChild(args: string[]): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', childScript, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
}

export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/** Collects a child's stdout and resolves once a line equal to `line` has been printed. */
export function waitForLine(child: ChildProcess, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      out += chunk;
      if (out.split('\n').includes(line)) resolve(out);
    });
    child.once('exit', () => reject(new Error(`child exited before printing "${line}"; printed: ${out}`)));
  });
}
