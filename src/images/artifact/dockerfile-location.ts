/**
 * Finds the Dockerfile in an extracted artifact. Pure: it decides from the extraction's file list,
 * so the answer is the same as what the builder will read, and the error tells the user what the
 * zip actually contains (the usual mistake is zipping the project folder instead of its contents).
 */
import path from 'node:path';
import { AppError } from '../../errors/errors.ts';
import { toSafeRelativePath } from './safe-path.ts';
import type { ExtractedArtifact } from './unzip.ts';

const LISTED_ROOT_NAMES = 20;

/** Returns the absolute host path of the Dockerfile. */
export function locateDockerfile(
  extracted: Pick<ExtractedArtifact, 'rootDir' | 'files'> & Partial<Pick<ExtractedArtifact, 'directories'>>,
  dockerfilePath = 'Dockerfile',
): string {
  const { path: relativePath } = toSafeRelativePath(dockerfilePath, 'Dockerfile path');
  if (extracted.files.some((file) => file.path === relativePath)) {
    return path.join(extracted.rootDir, ...relativePath.split('/'));
  }

  const rootNames = listRootNames(extracted);
  const shown = rootNames.slice(0, LISTED_ROOT_NAMES);
  const more = rootNames.length > shown.length ? ` (and ${rootNames.length - shown.length} more)` : '';
  const contents = rootNames.length === 0 ? 'the zip is empty' : `its root contains: ${shown.join(', ')}${more}`;
  throw new AppError('artifact.no_dockerfile',
    `no Dockerfile at "${relativePath}" in the zip; ${contents}${hint(extracted, relativePath, rootNames)}`,
    { dockerfilePath: relativePath, rootEntries: shown, rootEntryCount: rootNames.length });
}

/** Top-level names, directories with a trailing '/', sorted. */
function listRootNames(extracted: Pick<ExtractedArtifact, 'files'> & Partial<Pick<ExtractedArtifact, 'directories'>>): string[] {
  const names = new Set<string>();
  for (const file of extracted.files) {
    const slash = file.path.indexOf('/');
    names.add(slash === -1 ? file.path : `${file.path.slice(0, slash + 1)}`);
  }
  for (const dir of extracted.directories ?? []) {
    if (!dir.includes('/')) names.add(`${dir}/`);
  }
  return [...names].sort();
}

function hint(extracted: Pick<ExtractedArtifact, 'files'>, relativePath: string, rootNames: string[]): string {
  const lower = relativePath.toLowerCase();
  const caseVariant = extracted.files.find((file) => file.path.toLowerCase() === lower);
  if (caseVariant) return ` (found "${caseVariant.path}": names are case-sensitive)`;
  const onlyName = rootNames.length === 1 ? rootNames[0] : undefined;
  if (onlyName?.endsWith('/') && extracted.files.some((file) => file.path === `${onlyName}${relativePath}`)) {
    return ` (found "${onlyName}${relativePath}": zip the contents of "${onlyName}", not the folder itself)`;
  }
  return '';
}
