/**
 * Debian tools a benchmark drives (nginx, wrk, …): found on PATH, or installed with apt-get when
 * missing. Not root: the exact command to run is the error. Debian's nginx package would start a
 * system nginx on port 80; a policy-rc.d that refuses every start keeps it down while installing.
 */
import { constants } from 'node:fs';
import { access, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../src/host/run.ts';

export interface DebianTool {
  command: string;
  debianPackage: string;
}

const POLICY_RC_D = '/usr/sbin/policy-rc.d';
const APT_TIMEOUT_MS = 600_000;

/** Installs the packages of the missing commands; returns their absolute paths. */
export async function ensureDebianTools(tools: DebianTool[], say: (line: string) => void): Promise<Record<string, string>> {
  const found: Record<string, string> = {};
  const missing: DebianTool[] = [];
  for (const tool of tools) {
    const where = await onPath(tool.command);
    if (where) found[tool.command] = where;
    else missing.push(tool);
  }
  if (missing.length === 0) return found;
  const packages = [...new Set(missing.map((tool) => tool.debianPackage))];
  const install = ['apt-get', 'install', '-y', '-q', '--no-install-recommends', ...packages];
  if (process.getuid?.() !== 0) {
    throw new Error(`${missing.map((tool) => tool.command).join(', ')} missing; install with: sudo ${install.join(' ')}`);
  }
  say(`installing ${packages.join(' ')} (${install.join(' ')}), services kept from starting`);
  const ownPolicy = !(await onDisk(POLICY_RC_D));
  if (ownPolicy) await writeFile(POLICY_RC_D, '#!/bin/sh\n# cocoon bench: no service starts while installing\nexit 101\n', { mode: 0o755 });
  try {
    process.env.DEBIAN_FRONTEND = 'noninteractive';
    await run('apt-get', ['update', '-q'], { timeoutMs: APT_TIMEOUT_MS });
    await run(install[0]!, install.slice(1), { timeoutMs: APT_TIMEOUT_MS });
  } finally {
    if (ownPolicy) await rm(POLICY_RC_D, { force: true });
  }
  for (const tool of missing) {
    const where = await onPath(tool.command);
    if (!where) throw new Error(`${tool.command} still missing after installing ${tool.debianPackage}`);
    found[tool.command] = where;
  }
  return found;
}

/** The sbin directories too: nginx lives there and a non-login PATH may lack them. */
async function onPath(command: string): Promise<string | undefined> {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), '/usr/sbin', '/sbin'];
  for (const dir of dirs) {
    const candidate = path.join(dir, command);
    if (await access(candidate, constants.X_OK).then(() => true, () => false)) return candidate;
  }
  return undefined;
}

function onDisk(file: string): Promise<boolean> {
  return access(file).then(() => true, () => false);
}
