/** Sample records for the store tests and their child process (no node:test here: the child is not a test). */
import type { NewImageFields } from './images.ts';
import { ZERO_USAGE, type MicroVmRecord } from './microvms.ts';

export function imageFields(name: string): NewImageFields {
  return { name, codeArtifact: { uri: './app.zip', sha256: 'ab'.repeat(32) }, appPort: 8080, hooksPort: 9000, readinessTimeoutSeconds: 60, memoryMiB: 128 };
}

export function microvmRecord(accountId: string, image: { arn: string; name: string; version: string }, microvmId: string): MicroVmRecord {
  const now = new Date().toISOString();
  return {
    microvmId,
    accountId,
    imageArn: image.arn,
    imageName: image.name,
    imageVersion: image.version,
    state: 'PENDING',
    idlePolicy: { maxIdleDurationSeconds: 900, suspendedDurationSeconds: 300, autoResumeEnabled: true },
    maximumDurationInSeconds: 28800,
    dir: `/tmp/vms/${microvmId}`,
    hostPorts: { '8080': 40123 },
    createdAt: now,
    updatedAt: now,
    resumeCount: 0,
    runningSeconds: 0,
    usage: { ...ZERO_USAGE },
    egress: { mode: 'none' },
  };
}
