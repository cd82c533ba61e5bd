import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkCompleteElf, hasPvhEntryNote, isStaticExecutable, parseElf64Header, parseProgramHeaders } from './elf.ts';
import { XZ_MAGIC, compareKernelVersions, findMagicOffsets, pickKernelRelease } from './kernel.ts';

describe('findMagicOffsets', () => {
  it('finds every XZ magic, including overlapping and edge positions', () => {
    const bytes = Buffer.concat([XZ_MAGIC, Buffer.from('setup code'), XZ_MAGIC, Buffer.from([0xfd, 0x37, 0x7a]), XZ_MAGIC]);
    assert.deepEqual(findMagicOffsets(bytes, XZ_MAGIC), [0, 16, 25]);
  });

  it('finds nothing in a buffer without the magic or with only a prefix of it', () => {
    assert.deepEqual(findMagicOffsets(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a]), XZ_MAGIC), []);
    assert.deepEqual(findMagicOffsets(Buffer.alloc(0), XZ_MAGIC), []);
  });
});

describe('pickKernelRelease', () => {
  it('picks the newest vmlinuz whose modules are installed', () => {
    const boot = ['config-6.1.0-56-amd64', 'vmlinuz-6.1.0-9-amd64', 'vmlinuz-6.1.0-56-amd64', 'vmlinuz-6.10.0-1-amd64', 'System.map-6.1.0-56-amd64'];
    assert.equal(pickKernelRelease(boot, ['6.1.0-9-amd64', '6.1.0-56-amd64']), '6.1.0-56-amd64');
    assert.equal(pickKernelRelease(boot, ['6.1.0-9-amd64', '6.1.0-56-amd64', '6.10.0-1-amd64']), '6.10.0-1-amd64');
    assert.equal(pickKernelRelease(boot, []), undefined);
  });

  it('compares release strings numerically', () => {
    assert.ok(compareKernelVersions('6.1.0-9-amd64', '6.1.0-56-amd64') < 0);
    assert.ok(compareKernelVersions('6.10.0-1-amd64', '6.9.0-99-amd64') > 0);
    assert.equal(compareKernelVersions('6.1.0-56-amd64', '6.1.0-56-amd64'), 0);
  });
});

/** A minimal ELF64 x86-64 image: header, program headers, optional note, section table at the end. */
function fakeElf(options: { interp?: boolean; pvhNote?: boolean; truncateBy?: number }): Buffer {
  const note = Buffer.alloc(12 + 4 + 4);
  note.writeUInt32LE(4, 0); // name size ("Xen\0")
  note.writeUInt32LE(4, 4); // desc size
  note.writeUInt32LE(options.pvhNote ? 18 : 17, 8);
  note.write('Xen\0', 12, 'latin1');
  const programHeaders = [{ type: 1, offset: 0, bytes: 64 }, { type: 4, offset: 64 + 56 * 3, bytes: note.length }];
  if (options.interp) programHeaders.push({ type: 3, offset: 0, bytes: 0 });
  else programHeaders.push({ type: 6, offset: 0, bytes: 0 });
  const sectionTableOffset = 64 + 56 * 3 + note.length;
  const total = sectionTableOffset + 64 * 2;
  const elf = Buffer.alloc(total);
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(elf, 0);
  elf.writeUInt16LE(2, 16); // ET_EXEC
  elf.writeUInt16LE(62, 18); // EM_X86_64
  elf.writeBigUInt64LE(64n, 32);
  elf.writeBigUInt64LE(BigInt(sectionTableOffset), 40);
  elf.writeUInt16LE(56, 54);
  elf.writeUInt16LE(programHeaders.length, 56);
  elf.writeUInt16LE(64, 58);
  elf.writeUInt16LE(2, 60);
  programHeaders.forEach((header, index) => {
    const base = 64 + index * 56;
    elf.writeUInt32LE(header.type, base);
    elf.writeBigUInt64LE(BigInt(header.offset), base + 8);
    elf.writeBigUInt64LE(BigInt(header.bytes), base + 32);
  });
  note.copy(elf, 64 + 56 * 3);
  return elf.subarray(0, total - (options.truncateBy ?? 0));
}

describe('ELF checks', () => {
  it('accepts a complete ELF and finds the PVH note', () => {
    const elf = fakeElf({ pvhNote: true });
    const header = parseElf64Header(elf);
    assert.ok(!('error' in header));
    assert.equal(checkCompleteElf(header, elf.length), undefined);
    const programHeaders = parseProgramHeaders(header, elf.subarray(header.programHeaderOffset));
    const note = programHeaders.find((programHeader) => programHeader.type === 4);
    assert.ok(note);
    assert.equal(hasPvhEntryNote(elf.subarray(note.fileOffset, note.fileOffset + note.fileBytes)), true);
    assert.equal(isStaticExecutable(programHeaders), true);
  });

  it('notices a missing PVH note, a dynamic executable and a truncated file', () => {
    const plain = fakeElf({ interp: true });
    const header = parseElf64Header(plain);
    assert.ok(!('error' in header));
    const programHeaders = parseProgramHeaders(header, plain.subarray(header.programHeaderOffset));
    const note = programHeaders.find((programHeader) => programHeader.type === 4);
    assert.ok(note);
    assert.equal(hasPvhEntryNote(plain.subarray(note.fileOffset, note.fileOffset + note.fileBytes)), false);
    assert.equal(isStaticExecutable(programHeaders), false);
    const truncated = fakeElf({ truncateBy: 10 });
    const truncatedHeader = parseElf64Header(truncated);
    assert.ok(!('error' in truncatedHeader));
    assert.match(checkCompleteElf(truncatedHeader, truncated.length) ?? '', /truncated/);
  });

  it('rejects bytes that are not an x86-64 ELF64 file', () => {
    assert.deepEqual(parseElf64Header(Buffer.alloc(64)), { error: 'no ELF magic' });
    assert.match((parseElf64Header(Buffer.alloc(10)) as { error: string }).error, /too short/);
    const arm = fakeElf({});
    arm.writeUInt16LE(183, 18);
    assert.match((parseElf64Header(arm) as { error: string }).error, /not an x86-64/);
  });
});
