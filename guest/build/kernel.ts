// The guest kernel: Debian's installed kernel, booted as the uncompressed ELF vmlinux because
// its PVH entry boots about twice as fast under TCG as the bzImage's real-mode setup.
import { open, readFile, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ELF64_HEADER_BYTES,
  checkCompleteElf,
  hasPvhEntryNote,
  isStaticExecutable,
  noteSegments,
  parseElf64Header,
  parseProgramHeaders,
} from './elf.ts';
import { GuestBuildError, run, type Log } from './exec.ts';

/** XZ stream header magic, as searched for by the kernel's scripts/extract-vmlinux. */
export const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);

/** Compares kernel release strings by their numeric runs: "6.1.0-9" < "6.1.0-56" < "6.10.0-1". */
export function compareKernelVersions(a: string, b: string): number {
  const partsA = a.split(/(\d+)/);
  const partsB = b.split(/(\d+)/);
  for (let index = 0; index < Math.max(partsA.length, partsB.length); index++) {
    const partA = partsA[index] ?? '';
    const partB = partsB[index] ?? '';
    if (partA === partB) continue;
    const numeric = index % 2 === 1; // split with a capture group puts digit runs at odd indexes
    if (numeric && partA !== '' && partB !== '') return Number(partA) - Number(partB);
    return partA < partB ? -1 : 1;
  }
  return 0;
}

/** The newest kernel release that has both /boot/vmlinuz-<release> and /lib/modules/<release>. */
export function pickKernelRelease(bootFileNames: readonly string[], moduleDirNames: readonly string[]): string | undefined {
  const withModules = new Set(moduleDirNames);
  const releases = bootFileNames
    .filter((name) => name.startsWith('vmlinuz-'))
    .map((name) => name.slice('vmlinuz-'.length))
    .filter((release) => withModules.has(release));
  return releases.sort(compareKernelVersions).at(-1);
}

/** Every offset where `magic` starts inside `bytes`, in ascending order. */
export function findMagicOffsets(bytes: Buffer, magic: Buffer): number[] {
  const offsets: number[] = [];
  for (let offset = bytes.indexOf(magic); offset >= 0; offset = bytes.indexOf(magic, offset + 1)) offsets.push(offset);
  return offsets;
}

export interface InstalledKernel {
  release: string;
  bzImagePath: string;
  modulesDir: string;
}

export async function findInstalledKernel(bootDir = '/boot', modulesRoot = '/lib/modules'): Promise<InstalledKernel> {
  const [bootFileNames, moduleDirNames] = await Promise.all([
    readdir(bootDir).catch(() => [] as string[]),
    readdir(modulesRoot).catch(() => [] as string[]),
  ]);
  const release = pickKernelRelease(bootFileNames, moduleDirNames);
  if (release === undefined) {
    throw new GuestBuildError('kernel', `no ${bootDir}/vmlinuz-* with modules in ${modulesRoot} (install linux-image-amd64)`);
  }
  return { release, bzImagePath: join(bootDir, `vmlinuz-${release}`), modulesDir: join(modulesRoot, release) };
}

export interface ElfFileFacts {
  error?: string;
  static: boolean;
  pvhEntry: boolean;
}

/** Reads only the ELF header, program headers and note segments of a (possibly large) file. */
export async function inspectElfFile(path: string): Promise<ElfFileFacts> {
  const file = await open(path, 'r');
  try {
    const sizeBytes = (await file.stat()).size;
    const read = async (position: number, length: number): Promise<Buffer> => {
      const buffer = Buffer.alloc(Math.max(0, Math.min(length, sizeBytes - position)));
      await file.read(buffer, 0, buffer.length, position);
      return buffer;
    };
    const header = parseElf64Header(await read(0, ELF64_HEADER_BYTES));
    if ('error' in header) return { error: header.error, static: false, pvhEntry: false };
    const incomplete = checkCompleteElf(header, sizeBytes);
    if (incomplete !== undefined) return { error: incomplete, static: false, pvhEntry: false };
    const table = await read(header.programHeaderOffset, header.programHeaderEntryBytes * header.programHeaderCount);
    const programHeaders = parseProgramHeaders(header, table);
    let pvhEntry = false;
    for (const note of noteSegments(programHeaders)) {
      if (hasPvhEntryNote(await read(note.fileOffset, note.fileBytes))) pvhEntry = true;
    }
    return { static: isStaticExecutable(programHeaders), pvhEntry };
  } finally {
    await file.close();
  }
}

/**
 * Extracts the ELF vmlinux from a bzImage into `outPath`: decompresses from each XZ magic in
 * turn (the first may be a false match) until the result is a complete ELF with a PVH entry.
 * `xz --single-stream` stops at the end of the stream and ignores the bzImage's trailing bytes.
 */
export async function extractVmlinux(bzImagePath: string, outPath: string, options: { log: Log; signal?: AbortSignal }): Promise<void> {
  const step = 'kernel';
  const bzImage = await readFile(bzImagePath);
  const offsets = findMagicOffsets(bzImage, XZ_MAGIC);
  if (offsets.length === 0) {
    throw new GuestBuildError(step, `${bzImagePath} holds no XZ stream (a kernel compressed another way is not supported yet)`);
  }
  const failures: string[] = [];
  for (const offset of offsets) {
    options.log(`kernel: decompressing XZ stream at byte ${offset} of ${bzImagePath}`);
    try {
      await run('xz', ['--decompress', '--stdout', '--single-stream'], {
        step,
        signal: options.signal,
        timeoutMs: 120_000,
        stdin: { path: bzImagePath, startByte: offset },
        stdoutPath: outPath,
      });
    } catch (error) {
      if (error instanceof GuestBuildError && /not installed/.test(error.message)) {
        throw new GuestBuildError(step, 'xz is not installed (apt-get install xz-utils)', { cause: error });
      }
      failures.push(`offset ${offset}: ${(error as Error).message.split('\n')[0]}`);
      continue;
    }
    const facts = await inspectElfFile(outPath);
    if (facts.error !== undefined) {
      failures.push(`offset ${offset}: ${facts.error}`);
      continue;
    }
    if (!facts.pvhEntry) {
      await rm(outPath, { force: true });
      throw new GuestBuildError(step, `${bzImagePath}'s vmlinux has no PVH entry note (kernel built without CONFIG_PVH)`);
    }
    const sizeMiB = (await stat(outPath)).size / 2 ** 20;
    options.log(`kernel: vmlinux extracted (${sizeMiB.toFixed(1)} MiB, PVH entry present)`);
    return;
  }
  await rm(outPath, { force: true });
  throw new GuestBuildError(step, `no XZ stream in ${bzImagePath} decompressed to an ELF vmlinux:\n${failures.join('\n')}`);
}
