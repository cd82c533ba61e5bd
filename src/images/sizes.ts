/**
 * MicroVM sizes (DESIGN.md §2, as the reference service): an image is built at one size, named by
 * its baseline memory. The baseline vCPU follows memory (2 GiB = 1 vCPU) and bursts to 4× it; the
 * root disk has a size per size. Pure: the table and what a size means for a VM on a given host.
 */
import { AppError } from '../errors/errors.ts';
import type { HostLimits } from '../vmm/driver.ts';

export interface VmSize {
  /** Guest RAM: the size's name. */
  memoryMiB: number;
  baselineVcpus: number;
  /** The CPU the VM may use at a peak (its QEMU's CPU quota). */
  burstVcpus: number;
  /** Virtual size of the root disk. */
  diskGiB: number;
}

export const BURST_FACTOR = 4;
export const DEFAULT_MEMORY_MIB = 2048;

/** The sizes of the reference service: 0.5 GiB/0.25 vCPU … 8 GiB/4 vCPU, disks of 8 to 32 GiB. */
const SIZES: readonly VmSize[] = [size(512, 8), size(1024, 8), size(2048, 8), size(4096, 16), size(8192, 32)];

/**
 * Test sizes: the small guests of the test suites (DESIGN.md §9) and of TCG hosts. They have the
 * CPU of the smallest size (a proportional 0.0625 vCPU would make every TCG boot 4× slower) and a
 * 1 GiB disk.
 */
const TEST_SIZES: readonly VmSize[] = [128, 256].map((memoryMiB) => ({ ...SIZES[0]!, memoryMiB, diskGiB: 1 }));

function size(memoryMiB: number, diskGiB: number): VmSize {
  const baselineVcpus = memoryMiB / 2048;
  return { memoryMiB, baselineVcpus, burstVcpus: baselineVcpus * BURST_FACTOR, diskGiB };
}

/** Every accepted `memoryMiB`, ascending. */
export const SIZE_MEMORY_MIB: readonly number[] = [...TEST_SIZES, ...SIZES].map((size) => size.memoryMiB);

/** The size named by `memoryMiB`; undefined for any other value (images built before sizes existed). */
export function findSize(memoryMiB: number): VmSize | undefined {
  return [...TEST_SIZES, ...SIZES].find((s) => s.memoryMiB === memoryMiB);
}

/** The size named by `memoryMiB`; `config.invalid` for any other value. */
export function sizeOf(memoryMiB: number): VmSize {
  const size = findSize(memoryMiB);
  if (!size) throw new AppError('config.invalid', `memoryMiB must be one of ${SIZE_MEMORY_MIB.join(', ')} (the sizes); got ${memoryMiB}`, { memoryMiB });
  return size;
}

/** The guest's vCPUs: enough for the burst, but never more than the host has cores. */
export function guestVcpus(size: VmSize, hostCores: number): number {
  return Math.max(1, Math.min(Math.ceil(size.burstVcpus), hostCores));
}

/** What the host enforces on the VM's QEMU: the burst as a hard quota, the baseline as its share. */
export function hostLimitsOf(size: VmSize): HostLimits {
  return { cpuBaselineCores: size.baselineVcpus, cpuBurstCores: size.burstVcpus };
}
