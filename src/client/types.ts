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
  /** The size, named by its baseline memory: 512, 1024, 2048 (default), 4096 or 8192; 128 and 256 are test sizes. */
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

/** A size (what an image's `memoryMiB` names). */
export interface VmSize {
  memoryMiB: number;
  baselineVcpus: number;
  /** The CPU quota of its QEMU; the guest has this many vCPUs, at most the host's cores. */
  burstVcpus: number;
  diskGiB: number;
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
  /** Absent for images built before sizes existed. */
  size?: VmSize;
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
  /** What the guest may reach; default `{ mode: 'none' }`. `internet` needs a root host (else `vm.egress_unavailable`). */
  egress?: EgressPolicy;
}

/** `none`: nothing leaves the guest. `internet`: public IPv4 destinations, all or only those in `allow`. */
export interface EgressPolicy {
  mode: 'none' | 'internet';
  allow?: Array<{ cidr: string; ports?: number[] }>;
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
  /** The app's port on the Cocoon host while RUNNING, on `localAddress` (for the host itself; clients use `endpoint`). */
  localPort?: number;
  /** Where `localPort` listens: 127.0.0.1, or the MicroVM's network namespace (`internet` egress). */
  localAddress?: string;
  egress: EgressPolicy;
  createdAt: string;
  updatedAt: string;
  startedAt?: string;
  suspendedAt?: string;
  terminatedAt?: string;
  lastActivityAt?: string;
  resumeCount: number;
  runningSeconds: number;
  /** Its image's size; absent once the image is deleted. */
  size?: VmSize;
  usage: MicroVmUsage;
  /** While RUNNING: what holds its QEMU to its size's CPU quota and memory limit. */
  limitsEnforcedBy?: 'cgroup-v1' | 'cgroup-v2' | 'none';
}

/** Sampled each second: the basis of cost reports. */
export interface MicroVmUsage {
  /** Seconds RUNNING, billed at the baseline size. */
  baselineSeconds: number;
  /** CPU-seconds used above the baseline vCPUs while RUNNING. */
  burstCpuSeconds: number;
  suspendedSeconds: number;
  /** Size of its last suspend snapshot (saved state + disk overlay). */
  snapshotBytes: number;
}

export interface MicroVmList {
  microvms: MicroVm[];
}

export interface MicroVmLogOptions {
  /** Only the newest N lines of the log so far. */
  tail?: number;
}

/** The data of a followed runtime log's final `end` event: the MicroVM's state once it ended. */
export interface MicroVmLogEnd {
  state: MicroVmState;
  stateReason?: string;
}

export interface ListMicroVmsFilter {
  state?: MicroVmState;
  imageVersion?: string;
}

/** A guest port, an inclusive range, or every port (alone). */
export type AllowedPort = { port: number } | { fromPort: number; toPort: number } | { all: true };

export interface CreateMicroVmAuthTokenRequest {
  /** 1–60, default 60. */
  expirationInMinutes?: number;
  /** Default: the image's app port only. */
  allowedPorts?: AllowedPort[];
}

export interface MicroVmAuthToken {
  /** The header to send to the MicroVM's endpoint. */
  authToken: { 'X-Cocoon-Auth': string };
  expiresAt: string;
  /** Sorted, overlapping ranges merged. */
  allowedPorts: AllowedPort[];
}

export interface AuthTokenKeyRotation {
  /** The id of the new minting key. */
  kid: string;
}
