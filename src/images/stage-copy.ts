/**
 * COPY --from=<stage>: the paths are exported from a VM booted on that stage's top layer as a tar
 * on the host (cached by the stage's result key), then unpacked in the consuming stage's VM and
 * placed with Docker's rules (a directory's contents go into the destination).
 */
import { createHash } from 'node:crypto';
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AppError } from '../errors/errors.ts';
import type { RunningVm } from '../vmm/driver.ts';
import type { CopyEntry } from './dockerfile/index.ts';

const EXPORT_TAR = '/tmp/.cocoon-export.tar';
const IMPORT_TAR = '/tmp/.cocoon-import.tar';
const IMPORT_DIR = '/tmp/.cocoon-import';
const MAX_EXPORT_BYTES = 1024 ** 3;

export function exportPath(layersDir: string, stageResultKey: string, sourcePath: string): string {
  const pathHash = createHash('sha256').update(sourcePath).digest('hex').slice(0, 16);
  return path.join(layersDir, `${stageResultKey}-export-${pathHash}.tar`);
}

export async function fileExists(file: string): Promise<boolean> {
  return stat(file).then(() => true, () => false);
}

export async function exportFromGuest(vm: RunningVm, sourcePath: string, hostFile: string): Promise<void> {
  if (!sourcePath.startsWith('/')) throw new AppError('dockerfile.invalid', `COPY --from source ${sourcePath} must be absolute`);
  // `tar -C / -- path` keeps the full path inside the archive; the shell expands globs in it.
  const result = await vm.agent.exec({ argv: ['/bin/sh', '-c', `cd / && tar -c -f ${EXPORT_TAR} -- ${globSafe(sourcePath.slice(1) || '.')}`] });
  if (result.exitCode !== 0) {
    throw new AppError('dockerfile.copy_source_missing', `COPY --from: ${sourcePath} could not be read from the stage: ${result.stderr.toString().trim()}`);
  }
  const tar = await vm.agent.readFile(EXPORT_TAR, { maxBytes: MAX_EXPORT_BYTES });
  const temp = `${hostFile}.tmp-${process.pid}`;
  await writeFile(temp, tar);
  await rename(temp, hostFile);
}

/** Quotes everything but glob characters, so that `/out/*.js` still expands in the guest shell. */
function globSafe(pattern: string): string {
  return pattern.split(/([*?[\]])/).map((part) => (/^[*?[\]]$/.test(part) ? part : part ? `'${part.replace(/'/g, `'\\''`)}'` : '')).join('');
}

const PLACE_SCRIPT = `
set -e
dest_is_dir=$1; shift
while [ $# -gt 0 ]; do
  src=${IMPORT_DIR}/\${1#/}; dest=$2; shift 2
  for one in $src; do
    if [ -d "$one" ]; then mkdir -p "$dest" && cp -a "$one/." "$dest/"
    elif [ "$dest_is_dir" = 1 ]; then mkdir -p "$dest" && cp -a "$one" "$dest/"
    else mkdir -p "$(dirname "$dest")" && cp -a "$one" "$dest"
    fi
  done
done
rm -rf ${IMPORT_DIR} ${IMPORT_TAR}
`;

export async function copyFromExport(
  vm: RunningVm,
  hostFile: string,
  entries: readonly CopyEntry[],
  destIsDirectory: boolean,
  exec: (argv: string[]) => Promise<void>,
): Promise<void> {
  await vm.agent.writeFile(IMPORT_TAR, await readFile(hostFile), { mode: 0o600 });
  await exec(['mkdir', '-p', IMPORT_DIR]);
  await exec(['tar', '-x', '-f', IMPORT_TAR, '-C', IMPORT_DIR]);
  await exec(['/bin/sh', '-c', PLACE_SCRIPT, 'place', destIsDirectory ? '1' : '0', ...entries.flatMap((e) => [e.source, e.dest])]);
}
