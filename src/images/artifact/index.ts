/** Getting the user's code artifact safely onto the host: fetch → extract → locate the Dockerfile. */
export {
  fetchArtifact, storeUploadedArtifact, parseArtifactUri, DEFAULT_MAX_COMPRESSED_BYTES, DEFAULT_FETCH_TIMEOUT_MS,
  type ArtifactSource, type FetchedArtifact, type FetchOptions, type S3Config, type StoreOptions,
} from './fetch.ts';
export {
  extractZip, DEFAULT_ZIP_LIMITS, EXTRACTING_DIR_INFIX,
  type ExtractedArtifact, type ExtractedFile, type ZipLimits,
} from './unzip.ts';
export { locateDockerfile } from './dockerfile-location.ts';
export { toSafeRelativePath, type SafeRelativePath } from './safe-path.ts';
