/**
 * The HTTP contract of the images routes, in zod: requests are strict (an unknown field is refused
 * before any side effect) and responses are explicit views (no account ids, no host paths). The
 * OpenAPI document is generated from these schemas.
 */
import path from 'node:path';
import { z } from 'zod';
import { IMAGE_NAME } from '../images/records.ts';
import { findSize, SIZE_MEMORY_MIB } from '../images/sizes.ts';
import type { StoredImage } from '../store/index.ts';
import { MAX_EXPIRES_IN_MINUTES, MAX_PORT_ENTRIES } from '../tokens/index.ts';
import type { MicroVm } from '../vms/manager.ts';

/** As the store parses versions: `major.minor`, no leading zeros, at most 9 digits each. */
export const VERSION = /^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$/;
const ARG_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const NO_CONTROL_CHARS = /^[^\u0000-\u001f\u007f]*$/;
const MAX_BUILD_ARGS = 64;

export const ImageName = z.string().regex(IMAGE_NAME).describe('1–63 lowercase letters, digits or dashes, starting with a letter or digit');
export const ImageVersion = z.string().regex(VERSION).describe('`major.minor`, e.g. `1.0`');
const Port = z.int().min(1).max(65535);
const ReadinessTimeoutSeconds = z.int().min(1).max(3600);
const MemoryMiB = z.literal(SIZE_MEMORY_MIB)
  .describe('the size, named by its baseline memory in MiB: 512, 1024, 2048 (default), 4096 or 8192 (2 GiB = 1 vCPU, bursting to 4×); 128 and 256 are test sizes with the CPU of the smallest');
const DockerfilePath = z.string().min(1).max(1024).regex(NO_CONTROL_CHARS).describe('path of the Dockerfile inside the zip (default `Dockerfile`)');
const BuildArgs = z
  .record(z.string().regex(ARG_NAME), z.string().max(4096))
  .refine((args) => Object.keys(args).length <= MAX_BUILD_ARGS, `at most ${MAX_BUILD_ARGS} build args`);

export const CreateImageBody = z.strictObject({
  name: ImageName,
  codeArtifact: z.strictObject({
    uri: z.string().min(1).max(2048).regex(NO_CONTROL_CHARS).describe('`s3://bucket/key` (local paths only when the server allows them; otherwise upload the zip)'),
  }),
  dockerfilePath: DockerfilePath.optional(),
  buildArgs: BuildArgs.optional(),
  appPort: Port.optional().describe('default: the first EXPOSEd port, else 8080'),
  hooksPort: Port.optional().describe('default 9000'),
  readinessTimeoutSeconds: ReadinessTimeoutSeconds.optional().describe('default 300'),
  memoryMiB: MemoryMiB.optional(),
});
export type CreateImageBody = z.infer<typeof CreateImageBody>;

/** Query numbers arrive as strings: digits only, then the same bounds as in the JSON body. */
const queryInt = (schema: z.ZodType<number, number>) => z.string().regex(/^\d{1,10}$/).transform(Number).pipe(schema);

export const UploadQuery = z.strictObject({
  dockerfilePath: DockerfilePath.optional(),
  appPort: queryInt(Port).optional(),
  hooksPort: queryInt(Port).optional(),
  readinessTimeoutSeconds: queryInt(ReadinessTimeoutSeconds).optional(),
  memoryMiB: queryInt(MemoryMiB).optional(),
  buildArg: z
    .union([z.string(), z.array(z.string()).max(MAX_BUILD_ARGS)])
    .describe('`KEY=VALUE`, repeatable')
    .transform((value, ctx) => {
      const args: Record<string, string> = {};
      for (const pair of Array.isArray(value) ? value : [value]) {
        const eq = pair.indexOf('=');
        const key = eq === -1 ? pair : pair.slice(0, eq);
        if (eq === -1 || !ARG_NAME.test(key) || pair.length - eq - 1 > 4096) {
          ctx.addIssue({ code: 'custom', message: 'buildArg must be KEY=VALUE with KEY a valid ARG name', input: pair });
          return z.NEVER;
        }
        args[key] = pair.slice(eq + 1);
      }
      return args;
    })
    .optional(),
});

export const NameParams = z.strictObject({ name: ImageName });
export const VersionParams = z.strictObject({ name: ImageName, version: ImageVersion });
export const GetImageQuery = z.strictObject({ version: ImageVersion.optional().describe('default: the latest ACTIVE version') });
export const DeleteImageQuery = z.strictObject({ version: ImageVersion });
export const LogsQuery = z.strictObject({
  follow: z.enum(['true', 'false']).optional().describe('`true`: Server-Sent Events (also with `Accept: text/event-stream`)'),
});
export const MicroVmLogsQuery = LogsQuery.extend({
  tail: queryInt(z.int().min(0).max(1_000_000)).optional().describe('only the newest N lines of the log so far (a follow then goes on live)'),
});

const SizeView = z.object({
  memoryMiB: z.number().describe('guest RAM'),
  baselineVcpus: z.number(),
  burstVcpus: z.number().describe('the CPU quota of its QEMU; the guest has this many vCPUs, at most the host\'s cores'),
  diskGiB: z.number().describe('virtual size of the root disk'),
});

export const ImageView = z.object({
  name: z.string(),
  version: z.string(),
  arn: z.string(),
  state: z.enum(['CREATING', 'ACTIVE', 'FAILED']),
  stateReason: z.string().optional(),
  stateReasonCode: z.string().optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
  codeArtifact: z.object({ uri: z.string(), sha256: z.string().optional() }),
  baseImage: z.string().optional(),
  appPort: z.number(),
  hooksPort: z.number(),
  readinessTimeoutSeconds: z.number(),
  memoryMiB: z.number(),
  size: SizeView.optional().describe('what `memoryMiB` names; absent for images built before sizes existed'),
  runtime: z
    .object({
      argv: z.array(z.string()),
      env: z.record(z.string(), z.string()),
      cwd: z.string(),
      user: z.string(),
      exposedPorts: z.array(z.number()),
      labels: z.record(z.string(), z.string()),
    })
    .optional(),
  builtWith: z
    .object({ kernel: z.string(), kernelPackageVersion: z.string(), agentVersion: z.string(), qemuVersion: z.string(), accelerator: z.string() })
    .optional(),
  warnings: z.array(z.string()).optional(),
  timingsMs: z.record(z.string(), z.number()).optional(),
  buildLogsPath: z.string().describe('GET it for the build log; `?follow=true` follows a running build'),
});
export type ImageView = z.infer<typeof ImageView>;

export const ImageList = z.object({ images: z.array(ImageView) });
export const VersionList = z.object({ versions: z.array(ImageView) });

export const ErrorBody = z.object({
  error: z.object({ code: z.string(), message: z.string(), details: z.record(z.string(), z.unknown()).optional() }),
});

/**
 * What a client may see of a record. Uploaded artifacts live in a server directory: their URI is
 * shown as `upload:<file name>` (the file name carries the sha256).
 */
export function toImageView(record: StoredImage, uploadDir: string): ImageView {
  const uri = record.codeArtifact.uri;
  const uploaded = path.isAbsolute(uri) && path.resolve(uri).startsWith(path.resolve(uploadDir) + path.sep);
  const size = findSize(record.memoryMiB);
  return {
    name: record.name,
    version: record.version,
    arn: record.arn,
    state: record.state,
    ...(record.stateReason !== undefined && { stateReason: record.stateReason }),
    ...(record.stateReasonCode !== undefined && { stateReasonCode: record.stateReasonCode }),
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
    codeArtifact: {
      uri: uploaded ? `upload:${path.basename(uri)}` : uri,
      ...(record.codeArtifact.sha256 !== undefined && { sha256: record.codeArtifact.sha256 }),
    },
    ...(record.baseImage !== undefined && { baseImage: record.baseImage }),
    appPort: record.appPort,
    hooksPort: record.hooksPort,
    readinessTimeoutSeconds: record.readinessTimeoutSeconds,
    memoryMiB: record.memoryMiB,
    ...(size && { size }),
    ...(record.runtime !== undefined && { runtime: record.runtime }),
    ...(record.builtWith !== undefined && { builtWith: record.builtWith }),
    ...(record.warnings !== undefined && { warnings: record.warnings }),
    ...(record.timingsMs !== undefined && { timingsMs: record.timingsMs }),
    buildLogsPath: `/v1/images/${record.name}/versions/${record.version}/logs`,
  };
}

// --- MicroVMs ---

const MICROVM_ID = /^mvm-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MicroVmState = z.enum(['PENDING', 'RUNNING', 'SUSPENDING', 'SUSPENDED', 'RESUMING', 'TERMINATING', 'TERMINATED', 'FAILED']);
export const MAX_RUN_HOOK_PAYLOAD_CHARS = 32 * 1024;

export const MicroVmParams = z.strictObject({ microvmId: z.string().regex(MICROVM_ID).describe('`mvm-<uuid>`') });

/** The bounds the lifecycle applies (maxIdle ≥ 60, maximum ≤ 28800) are checked by it, with the same error format. */
export const RunMicroVmBody = z.strictObject({
  imageIdentifier: z.string().min(1).max(200).regex(NO_CONTROL_CHARS).describe('`name`, `name:version` or `cocoon:image:<name>:<version>`; without a version, the latest ACTIVE one'),
  idlePolicy: z
    .strictObject({
      maxIdleDurationSeconds: z.int().min(0).max(28_800).optional().describe('≥ 60; default 900'),
      suspendedDurationSeconds: z.int().min(0).max(30 * 86_400).optional().describe('0 = terminate instead of staying suspended; default 300'),
      autoResumeEnabled: z.boolean().optional().describe('default true'),
    })
    .optional(),
  maximumDurationInSeconds: z.int().min(0).max(28_800).optional().describe('running time after which the MicroVM is terminated, ≥ 60, ≤ 28800 (default)'),
  runHookPayload: z.string().max(MAX_RUN_HOOK_PAYLOAD_CHARS).optional().describe('the body of the app\'s `run` hook after launch (secrets, per-VM config); never stored'),
  egress: z
    .strictObject({
      mode: z.enum(['none', 'internet']).describe('`none`: nothing leaves the guest; `internet`: public IPv4 destinations (needs a root host, else 409 `vm.egress_unavailable`)'),
      allow: z.array(z.strictObject({
        cidr: z.string().max(18).describe('IPv4 address or CIDR'),
        ports: z.array(Port).min(1).max(64).optional().describe('TCP/UDP ports; default every port'),
      })).min(1).max(64).optional().describe('`internet` only: reach only these destinations (never private, loopback or link-local ones)'),
    })
    .optional()
    .describe('what the guest may reach; default `{"mode":"none"}` (docs/microvms.md, "Networking and egress")'),
});
export type RunMicroVmBody = z.infer<typeof RunMicroVmBody>;

export const ListMicroVmsQuery = z.strictObject({ state: MicroVmState.optional(), imageVersion: ImageVersion.optional() });

export const MicroVmView = z.object({
  microvmId: z.string(),
  state: MicroVmState,
  stateReason: z.string().optional(),
  imageArn: z.string(),
  imageName: z.string(),
  imageVersion: z.string(),
  idlePolicy: z.object({ maxIdleDurationSeconds: z.number(), suspendedDurationSeconds: z.number(), autoResumeEnabled: z.boolean() }),
  maximumDurationInSeconds: z.number(),
  endpoint: z.string().optional().describe('the MicroVM\'s HTTPS endpoint, `https://<microvmId>.<domain>[:port]` (docs/endpoints.md)'),
  localPort: z.number().optional().describe('the app\'s port on the Cocoon host while RUNNING, on `localAddress` (for the host itself; clients use the endpoint)'),
  localAddress: z.string().optional().describe('where `localPort` listens: 127.0.0.1, or the address of the MicroVM\'s network namespace (`internet` egress)'),
  egress: z.object({
    mode: z.enum(['none', 'internet']),
    allow: z.array(z.object({ cidr: z.string(), ports: z.array(z.number()).optional() })).optional(),
  }).describe('what the guest may reach, as given at run'),
  createdAt: z.string(),
  updatedAt: z.string(),
  startedAt: z.string().optional(),
  suspendedAt: z.string().optional(),
  terminatedAt: z.string().optional(),
  lastActivityAt: z.string().optional(),
  resumeCount: z.number(),
  runningSeconds: z.number(),
  size: SizeView.optional().describe('its image\'s size; absent once the image is deleted'),
  usage: z.object({
    baselineSeconds: z.number().describe('seconds RUNNING, billed at the baseline size'),
    burstCpuSeconds: z.number().describe('CPU-seconds used above the baseline vCPUs while RUNNING'),
    suspendedSeconds: z.number(),
    snapshotBytes: z.number().describe('size of its last suspend snapshot (saved state + disk overlay)'),
  }).describe('sampled each second, the basis of cost reports'),
  limitsEnforcedBy: z.enum(['cgroup-v1', 'cgroup-v2', 'none']).optional()
    .describe('while RUNNING: what holds its QEMU to the CPU quota and memory limit of its size (`none`: nothing, because cgroups are unavailable on this host or the image predates sizes)'),
});
export type MicroVmView = z.infer<typeof MicroVmView>;
export const MicroVmList = z.object({ microvms: z.array(MicroVmView) });

/** What a client may see of a MicroVM: no account id, host directory or pid. */
export function toMicroVmView(microvm: MicroVm): MicroVmView {
  const { record } = microvm;
  const optional = <K extends 'stateReason' | 'endpoint' | 'startedAt' | 'suspendedAt' | 'terminatedAt' | 'lastActivityAt'>(key: K) =>
    record[key] !== undefined ? { [key]: record[key] } : {};
  return {
    microvmId: record.microvmId,
    state: record.state,
    ...optional('stateReason'),
    imageArn: record.imageArn,
    imageName: record.imageName,
    imageVersion: record.imageVersion,
    idlePolicy: { ...record.idlePolicy },
    maximumDurationInSeconds: record.maximumDurationInSeconds,
    ...optional('endpoint'),
    ...(microvm.localPort !== undefined && { localPort: microvm.localPort }),
    ...(microvm.localAddress !== undefined && { localAddress: microvm.localAddress }),
    egress: { mode: record.egress.mode, ...(record.egress.allow && { allow: record.egress.allow.map((rule) => ({ ...rule })) }) },
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
    ...optional('startedAt'),
    ...optional('suspendedAt'),
    ...optional('terminatedAt'),
    ...optional('lastActivityAt'),
    resumeCount: record.resumeCount,
    runningSeconds: microvm.runningSeconds,
    ...(microvm.size && { size: { ...microvm.size } }),
    usage: { ...microvm.usage },
    ...(microvm.limitsEnforcedBy && { limitsEnforcedBy: microvm.limitsEnforcedBy }),
  };
}

// --- Auth tokens ---

export const AllowedPort = z.union([
  z.strictObject({ port: Port }),
  z.strictObject({ fromPort: Port, toPort: Port }).describe('inclusive; fromPort ≤ toPort'),
  z.strictObject({ all: z.literal(true) }).describe('every port; stands alone'),
], { error: 'expected {"port": N}, {"fromPort": N, "toPort": M} or {"all": true}' });

export const CreateAuthTokenBody = z.strictObject({
  expirationInMinutes: z.int().min(1).max(MAX_EXPIRES_IN_MINUTES).optional().describe(`1–${MAX_EXPIRES_IN_MINUTES}, default ${MAX_EXPIRES_IN_MINUTES}`),
  allowedPorts: z.array(AllowedPort).min(1).max(MAX_PORT_ENTRIES).optional().describe('guest ports the token opens; default: the image\'s app port only'),
});
export type CreateAuthTokenBody = z.infer<typeof CreateAuthTokenBody>;

export const AuthTokenView = z.object({
  authToken: z.object({ 'X-Cocoon-Auth': z.string().describe('send it as this header (or as the WebSocket subprotocol `cocoon.auth.<token>`)') }),
  expiresAt: z.string(),
  allowedPorts: z.array(AllowedPort).describe('sorted, overlapping ranges merged'),
});
export type AuthTokenView = z.infer<typeof AuthTokenView>;

export const AuthTokenKeyRotationView = z.object({ kid: z.string().describe('the id of the new minting key') });
export type AuthTokenKeyRotationView = z.infer<typeof AuthTokenKeyRotationView>;
