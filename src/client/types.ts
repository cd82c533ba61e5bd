/**
 * The request and response shapes of the REST API, written by hand so that the SDK carries no
 * server code (zod, fastify) at runtime. `contract.test.ts` checks at compile time that they match
 * src/api/schemas.ts.
 */

export type ImageState = 'CREATING' | 'ACTIVE' | 'FAILED';

export interface CreateImageRequest {
  name: string;
  codeArtifact: { uri: string };
  dockerfilePath?: string;
  buildArgs?: Record<string, string>;
  appPort?: number;
  hooksPort?: number;
  readinessTimeoutSeconds?: number;
  memoryMiB?: number;
}

/** Everything of CreateImageRequest except the artifact (the upload is the artifact). */
export type UploadImageOptions = Omit<CreateImageRequest, 'name' | 'codeArtifact'>;

export interface ImageRuntime {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  user: string;
  exposedPorts: number[];
  labels: Record<string, string>;
}

export interface ImageBuiltWith {
  kernel: string;
  kernelPackageVersion: string;
  agentVersion: string;
  qemuVersion: string;
  accelerator: string;
}

export interface Image {
  name: string;
  version: string;
  arn: string;
  state: ImageState;
  stateReason?: string;
  stateReasonCode?: string;
  createdAt: string;
  updatedAt: string;
  codeArtifact: { uri: string; sha256?: string };
  baseImage?: string;
  appPort: number;
  hooksPort: number;
  readinessTimeoutSeconds: number;
  memoryMiB: number;
  runtime?: ImageRuntime;
  builtWith?: ImageBuiltWith;
  warnings?: string[];
  timingsMs?: Record<string, number>;
  buildLogsPath: string;
}

export interface ImageList {
  images: Image[];
}

export interface ImageVersionList {
  versions: Image[];
}

/** The data of the log stream's final `end` event: the version's state once its build ended. */
export interface BuildEnd {
  state: ImageState;
  stateReason?: string;
  stateReasonCode?: string;
}

export type MicroVmState = 'PENDING' | 'RUNNING' | 'SUSPENDING' | 'SUSPENDED' | 'RESUMING' | 'TERMINATING' | 'TERMINATED' | 'FAILED';

export interface IdlePolicy {
  /** ≥ 60. */
  maxIdleDurationSeconds: number;
  /** 0 = terminate when suspended. */
  suspendedDurationSeconds: number;
  autoResumeEnabled: boolean;
}

export interface RunMicroVmRequest {
  /** `name`, `name:version` or the image's arn; without a version, the latest ACTIVE one. */
  imageIdentifier: string;
  idlePolicy?: Partial<IdlePolicy>;
  /** ≤ 28800. */
  maximumDurationInSeconds?: number;
  /** Delivered to the app's `run` hook after launch (secrets, per-VM config). */
  runHookPayload?: string;
}

export interface MicroVm {
  microvmId: string;
  state: MicroVmState;
  stateReason?: string;
  imageArn: string;
  imageName: string;
  imageVersion: string;
  idlePolicy: IdlePolicy;
  maximumDurationInSeconds: number;
  endpoint?: string;
  /** The app's loopback port on the Cocoon host while RUNNING (until the endpoint proxy exists). */
  localPort?: number;
  createdAt: string;
  updatedAt: string;
  startedAt?: string;
  suspendedAt?: string;
  terminatedAt?: string;
  lastActivityAt?: string;
  resumeCount: number;
  runningSeconds: number;
}

export interface MicroVmList {
  microvms: MicroVm[];
}

export interface ListMicroVmsFilter {
  state?: MicroVmState;
  imageVersion?: string;
}
