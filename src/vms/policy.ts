/**
 * Validation and defaults of what run-microvm asks for: the idle policy and the maximum duration.
 * Pure. The minimums (60 s) can be lowered by the daemon's own options so that tests can use
 * seconds; the public API cannot lower them.
 */
import { AppError } from '../errors/errors.ts';
import type { IdlePolicy } from '../store/index.ts';

export const MAXIMUM_DURATION_SECONDS = 28_800;
/** How long a VM may stay SUSPENDED at most (30 days): its saved state occupies disk meanwhile. */
export const MAX_SUSPENDED_SECONDS = 30 * 86_400;
export const DEFAULT_IDLE_POLICY: IdlePolicy = { maxIdleDurationSeconds: 900, suspendedDurationSeconds: 300, autoResumeEnabled: true };

export interface PolicyLimits {
  /** Lowest maxIdleDurationSeconds and maximumDurationInSeconds accepted: 60 unless a test lowers it. */
  minimumSeconds: number;
}

export interface RunPolicy {
  idlePolicy: IdlePolicy;
  maximumDurationInSeconds: number;
}

function wholeNumber(field: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new AppError('config.invalid', `${field} must be a whole number of seconds from ${min} to ${max}`, { field, value, min, max });
  }
}

export function resolvePolicy(
  input: { idlePolicy?: Partial<IdlePolicy>; maximumDurationInSeconds?: number },
  limits: PolicyLimits = { minimumSeconds: 60 },
): RunPolicy {
  const idlePolicy: IdlePolicy = { ...DEFAULT_IDLE_POLICY, ...input.idlePolicy };
  const maximumDurationInSeconds = input.maximumDurationInSeconds ?? MAXIMUM_DURATION_SECONDS;
  wholeNumber('idlePolicy.maxIdleDurationSeconds', idlePolicy.maxIdleDurationSeconds, limits.minimumSeconds, MAXIMUM_DURATION_SECONDS);
  wholeNumber('idlePolicy.suspendedDurationSeconds', idlePolicy.suspendedDurationSeconds, 0, MAX_SUSPENDED_SECONDS);
  wholeNumber('maximumDurationInSeconds', maximumDurationInSeconds, limits.minimumSeconds, MAXIMUM_DURATION_SECONDS);
  if (typeof idlePolicy.autoResumeEnabled !== 'boolean') throw new AppError('config.invalid', 'idlePolicy.autoResumeEnabled must be true or false');
  return { idlePolicy, maximumDurationInSeconds };
}

/** `name`, `name:version` or the arn `cocoon:image:<name>:<version>`. */
export function parseImageIdentifier(identifier: string): { name: string; version?: string } {
  const arn = /^cocoon:image:([^:]+):([^:]+)$/.exec(identifier);
  if (arn) return { name: arn[1]!, version: arn[2]! };
  const [name, version, ...rest] = identifier.split(':');
  if (!name || rest.length > 0 || version === '') throw new AppError('image.not_found', `image identifier "${identifier}" is not a name, name:version or arn`, { imageIdentifier: identifier });
  return version === undefined ? { name } : { name, version };
}
