/**
 * The image actions that take more than one call into the domain: an upload (store the zip, then
 * build from it) and a delete (state check, in-use check, then the files). Routes call these.
 */
import { randomUUID } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { AppError } from '../errors/errors.ts';
import { storeUploadedArtifact } from '../images/artifact/fetch.ts';
import type { BuildRequest, ImageBuilder } from '../images/builder.ts';
import type { Store, StoredImage } from '../store/index.ts';

export const MAX_UPLOAD_BYTES = 512 * 2 ** 20;

export interface ImagesDeps {
  builder: ImageBuilder;
  store: Pick<Store, 'images'>;
}

/** Every zip starts with a local file header, or (empty) with the end-of-central-directory record. */
async function assertZipMagic(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    const { bytesRead, buffer } = await handle.read(Buffer.alloc(4), 0, 4, 0);
    const magic = buffer.subarray(0, bytesRead).toString('hex');
    if (magic !== '504b0304' && magic !== '504b0506') {
      throw new AppError('artifact.invalid_zip', bytesRead === 0 ? 'the uploaded body is empty; send the zip as the body' : 'the uploaded body is not a zip file');
    }
  } finally {
    await handle.close();
  }
}

/**
 * Stores an uploaded zip under `uploadDir/<uuid>/` and starts a build from it; the directory is
 * removed when the build ends (the build copies the zip into its own work directory first).
 */
export async function createFromUpload(
  images: ImagesDeps,
  accountId: string,
  body: Readable,
  request: Omit<BuildRequest, 'codeArtifactUri'>,
  uploadDir: string,
  onBuildError: (error: unknown) => void,
): Promise<StoredImage> {
  const dir = path.join(uploadDir, randomUUID());
  try {
    const artifact = await storeUploadedArtifact(body, dir, { maxCompressedBytes: MAX_UPLOAD_BYTES });
    await assertZipMagic(artifact.zipPath);
    const { record, done } = await images.builder.create(accountId, { ...request, codeArtifactUri: artifact.zipPath });
    done.catch(onBuildError).finally(() => rm(dir, { recursive: true, force: true }).catch(onBuildError));
    return record;
  } catch (error) {
    body.resume(); // drain what the client still sends, so that the error response reaches it
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

/** Deletes one version unless it is still building or a MicroVM uses it; then its files. */
export async function deleteVersion(images: ImagesDeps, accountId: string, name: string, version: string): Promise<StoredImage> {
  const record = await images.store.images.get(accountId, name, version);
  if (record.state === 'CREATING') {
    throw new AppError('image.invalid_state', `image ${name}:${version} is still being built; delete it once it is ACTIVE or FAILED`, { name, version, state: record.state });
  }
  const result = await images.store.images.deleteIfUnused(accountId, name, version);
  if (!result.deleted) {
    throw new AppError('image.in_use', `image ${name}:${version} is used by ${result.activeMicroVms} MicroVM(s); terminate them first`, { name, version, activeMicroVms: result.activeMicroVms });
  }
  await rm(images.builder.versionDir(result.record), { recursive: true, force: true });
  return result.record;
}

/** The latest version of each of the account's image names, by name. */
export async function latestVersions(images: ImagesDeps, accountId: string): Promise<StoredImage[]> {
  const latest: StoredImage[] = [];
  for (const name of await images.store.images.names(accountId)) {
    const versions = await images.store.images.list(accountId, name);
    const last = versions.at(-1);
    if (last) latest.push(last);
  }
  return latest;
}

/** Every version of a name, oldest first; `image.not_found` if there is none. */
export async function versionsOf(images: ImagesDeps, accountId: string, name: string): Promise<StoredImage[]> {
  const versions = await images.store.images.list(accountId, name);
  if (versions.length === 0) throw new AppError('image.not_found', `image ${name} does not exist`, { name });
  return versions;
}
