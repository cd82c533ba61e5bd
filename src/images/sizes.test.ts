import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isAppError } from '../errors/errors.ts';
import { DEFAULT_MEMORY_MIB, guestVcpus, hostLimitsOf, SIZE_MEMORY_MIB, sizeOf } from './sizes.ts';

test('the sizes: vCPU follows memory (2 GiB = 1 vCPU), bursting to 4×', () => {
  assert.deepEqual(sizeOf(512), { memoryMiB: 512, baselineVcpus: 0.25, burstVcpus: 1, diskGiB: 8 });
  assert.deepEqual(sizeOf(DEFAULT_MEMORY_MIB), { memoryMiB: 2048, baselineVcpus: 1, burstVcpus: 4, diskGiB: 8 });
  assert.deepEqual(sizeOf(8192), { memoryMiB: 8192, baselineVcpus: 4, burstVcpus: 16, diskGiB: 32 });
  assert.deepEqual(SIZE_MEMORY_MIB, [128, 256, 512, 1024, 2048, 4096, 8192]);
});

test('test sizes have the CPU of the smallest size and a 1 GiB disk', () => {
  assert.deepEqual(sizeOf(128), { memoryMiB: 128, baselineVcpus: 0.25, burstVcpus: 1, diskGiB: 1 });
  assert.deepEqual(hostLimitsOf(sizeOf(256)), { cpuBaselineCores: 0.25, cpuBurstCores: 1 });
});

test('other memory sizes are refused', () => {
  for (const memoryMiB of [0, 127, 300, 3000, 16384]) assert.throws(() => sizeOf(memoryMiB), (error) => isAppError(error, 'config.invalid'));
});

test('the guest gets the burst in vCPUs, at most the host cores', () => {
  assert.equal(guestVcpus(sizeOf(512), 2), 1);
  assert.equal(guestVcpus(sizeOf(1024), 2), 2);
  assert.equal(guestVcpus(sizeOf(8192), 2), 2);
  assert.equal(guestVcpus(sizeOf(8192), 64), 16);
  assert.equal(guestVcpus(sizeOf(128), 1), 1);
});
