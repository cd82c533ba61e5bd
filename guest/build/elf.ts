// Just enough ELF64 parsing to check what we boot and ship. Pure: buffers in, facts out.

export const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);
export const ELF64_HEADER_BYTES = 64;
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const EM_X86_64 = 62;
const PT_INTERP = 3;
const PT_NOTE = 4;
// Xen's ELF note type for the 32-bit PVH entry point: QEMU needs it to boot an ELF kernel.
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export interface Elf64Header {
  type: number;
  machine: number;
  programHeaderOffset: number;
  programHeaderEntryBytes: number;
  programHeaderCount: number;
  sectionHeaderOffset: number;
  sectionHeaderEntryBytes: number;
  sectionHeaderCount: number;
}

export interface ProgramHeader {
  type: number;
  fileOffset: number;
  fileBytes: number;
}

/** Parses a little-endian x86-64 ELF64 header, or says why the bytes are not one. */
export function parseElf64Header(bytes: Buffer): Elf64Header | { error: string } {
  if (bytes.length < ELF64_HEADER_BYTES) return { error: `too short for an ELF header (${bytes.length} bytes)` };
  if (!bytes.subarray(0, 4).equals(ELF_MAGIC)) return { error: 'no ELF magic' };
  if (bytes[4] !== ELFCLASS64 || bytes[5] !== ELFDATA2LSB) return { error: 'not a little-endian ELF64 file' };
  const header: Elf64Header = {
    type: bytes.readUInt16LE(16),
    machine: bytes.readUInt16LE(18),
    programHeaderOffset: Number(bytes.readBigUInt64LE(32)),
    sectionHeaderOffset: Number(bytes.readBigUInt64LE(40)),
    programHeaderEntryBytes: bytes.readUInt16LE(54),
    programHeaderCount: bytes.readUInt16LE(56),
    sectionHeaderEntryBytes: bytes.readUInt16LE(58),
    sectionHeaderCount: bytes.readUInt16LE(60),
  };
  if (header.machine !== EM_X86_64) return { error: `not an x86-64 ELF file (machine ${header.machine})` };
  return header;
}

/**
 * A decompressed kernel is complete when its section header table (at the end of the file)
 * fits inside it: a truncated stream or trailing garbage fails this check.
 */
export function checkCompleteElf(header: Elf64Header, fileBytes: number): string | undefined {
  const sectionTableEnd = header.sectionHeaderOffset + header.sectionHeaderEntryBytes * header.sectionHeaderCount;
  const programTableEnd = header.programHeaderOffset + header.programHeaderEntryBytes * header.programHeaderCount;
  if (header.programHeaderCount === 0) return 'has no program headers';
  if (programTableEnd > fileBytes) return `program headers end at ${programTableEnd}, past the file's ${fileBytes} bytes`;
  if (sectionTableEnd > fileBytes) return `section headers end at ${sectionTableEnd}, past the file's ${fileBytes} bytes (truncated)`;
  return undefined;
}

export function parseProgramHeaders(header: Elf64Header, table: Buffer): ProgramHeader[] {
  const headers: ProgramHeader[] = [];
  for (let index = 0; index < header.programHeaderCount; index++) {
    const base = index * header.programHeaderEntryBytes;
    if (base + 40 > table.length) break;
    headers.push({
      type: table.readUInt32LE(base),
      fileOffset: Number(table.readBigUInt64LE(base + 8)),
      fileBytes: Number(table.readBigUInt64LE(base + 32)),
    });
  }
  return headers;
}

/** A static executable has no PT_INTERP (no dynamic loader to find inside the guest). */
export function isStaticExecutable(programHeaders: readonly ProgramHeader[]): boolean {
  return !programHeaders.some((programHeader) => programHeader.type === PT_INTERP);
}

export function noteSegments(programHeaders: readonly ProgramHeader[]): ProgramHeader[] {
  return programHeaders.filter((programHeader) => programHeader.type === PT_NOTE);
}

/** True when a PT_NOTE segment's bytes hold Xen's PHYS32_ENTRY note (the PVH entry point). */
export function hasPvhEntryNote(noteBytes: Buffer): boolean {
  let offset = 0;
  const align4 = (value: number): number => (value + 3) & ~3;
  while (offset + 12 <= noteBytes.length) {
    const nameBytes = noteBytes.readUInt32LE(offset);
    const descBytes = noteBytes.readUInt32LE(offset + 4);
    const type = noteBytes.readUInt32LE(offset + 8);
    const name = noteBytes.subarray(offset + 12, offset + 12 + nameBytes).toString('latin1');
    if (name === 'Xen\0' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
    offset += 12 + align4(nameBytes) + align4(descBytes);
  }
  return false;
}
