/**
 * The shape of a MicroVM image version. Records live in the state store (src/store/); each
 * version's files (build log, template snapshot) live under `<data>/images/<account>/<name>/<version>/`.
 */

export type ImageState = 'CREATING' | 'ACTIVE' | 'FAILED';

export const IMAGE_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;

export interface ImageRecord {
  name: string;
  version: string;
  arn: string;
  state: ImageState;
  stateReason?: string;
  /** The error code behind a FAILED state (e.g. `artifact.unsafe_path`, `image.build_failed`). */
  stateReasonCode?: string;
  createdAt: string;
  updatedAt: string;
  codeArtifact: { uri: string; sha256?: string };
  baseImage?: string;
  appPort: number;
  hooksPort: number;
  readinessTimeoutSeconds: number;
  memoryMiB: number;
  runtime?: { argv: string[]; env: Record<string, string>; cwd: string; user: string; exposedPorts: number[]; labels: Record<string, string> };
  builtWith?: { kernel: string; kernelPackageVersion: string; agentVersion: string; qemuVersion: string; accelerator: string };
  layers?: string[];
  warnings?: string[];
  timingsMs?: Record<string, number>;
}
