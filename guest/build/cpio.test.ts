import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { encodeCpio, type CpioEntry } from './cpio.ts';

interface ParsedEntry {
  name: string;
  mode: number;
  uid: number;
  nlink: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Buffer;
}

/** An independent newc reader, written from the format description, to check the writer. */
function parseNewc(archive: Buffer): ParsedEntry[] {
  const entries: ParsedEntry[] = [];
  let offset = 0;
  const align = (value: number): number => (value + 3) & ~3;
  for (;;) {
    assert.equal(archive.toString('ascii', offset, offset + 6), '070701', `magic at ${offset}`);
    const field = (index: number): number => parseInt(archive.toString('ascii', offset + 6 + index * 8, offset + 14 + index * 8), 16);
    const nameBytes = field(11);
    const dataBytes = field(6);
    const name = archive.toString('utf8', offset + 110, offset + 110 + nameBytes - 1);
    assert.equal(archive[offset + 110 + nameBytes - 1], 0, 'name is NUL-terminated');
    const dataStart = align(offset + 110 + nameBytes);
    const entry = {
      name,
      mode: field(1),
      uid: field(2),
      nlink: field(4),
      rdevMajor: field(9),
      rdevMinor: field(10),
      data: archive.subarray(dataStart, dataStart + dataBytes),
    };
    offset = align(dataStart + dataBytes);
    if (name === 'TRAILER!!!') break;
    entries.push(entry);
  }
  assert.equal(offset, archive.length, 'nothing after the trailer');
  return entries;
}

const SAMPLE: CpioEntry[] = [
  { kind: 'dir', path: '/dev', mode: 0o755 },
  { kind: 'chardev', path: '/dev/console', mode: 0o600, major: 5, minor: 1 },
  { kind: 'dir', path: '/modules', mode: 0o755 },
  { kind: 'file', path: '/modules/a.ko', mode: 0o644, data: Buffer.from('abc') }, // odd size: needs padding
  { kind: 'file', path: '/modules.order', mode: 0o644, data: Buffer.from('/modules/a.ko\n') },
  { kind: 'file', path: '/empty', mode: 0o600, data: Buffer.alloc(0) },
  { kind: 'symlink', path: '/sh', target: '/bin/busybox' },
  { kind: 'file', path: '/init', mode: 0o755, data: Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]) },
];

describe('encodeCpio', () => {
  it('writes a newc archive that reads back entry by entry', () => {
    const archive = encodeCpio(SAMPLE);
    assert.equal(archive.length % 4, 0);
    const entries = parseNewc(archive);
    assert.deepEqual(entries.map((entry) => entry.name), ['dev', 'dev/console', 'modules', 'modules/a.ko', 'modules.order', 'empty', 'sh', 'init']);
    const byName = new Map(entries.map((entry) => [entry.name, entry]));
    assert.equal(byName.get('dev')?.mode, 0o040755);
    assert.equal(byName.get('dev')?.nlink, 2);
    assert.equal(byName.get('dev/console')?.mode, 0o020600);
    assert.deepEqual([byName.get('dev/console')?.rdevMajor, byName.get('dev/console')?.rdevMinor], [5, 1]);
    assert.equal(byName.get('modules/a.ko')?.data.toString(), 'abc');
    assert.equal(byName.get('init')?.mode, 0o100755);
    assert.deepEqual(byName.get('init')?.data, Buffer.from([0x7f, 0x45, 0x4c, 0x46, 1, 2, 3]));
    assert.equal(byName.get('sh')?.mode, 0o120777);
    assert.equal(byName.get('sh')?.data.toString(), '/bin/busybox');
    assert.ok(entries.every((entry) => entry.uid === 0));
  });

  it('is deterministic', () => {
    assert.deepEqual(encodeCpio(SAMPLE), encodeCpio(SAMPLE));
  });

  it('rejects duplicates, bad paths and children before their directory', () => {
    assert.throws(() => encodeCpio([{ kind: 'dir', path: '/a', mode: 0o755 }, { kind: 'dir', path: 'a', mode: 0o755 }]), /duplicate/);
    assert.throws(() => encodeCpio([{ kind: 'dir', path: '/a/../b', mode: 0o755 }]), /invalid path/);
    assert.throws(() => encodeCpio([{ kind: 'file', path: '/x/y', mode: 0o644, data: Buffer.alloc(1) }]), /before its directory/);
  });

  it('is read by GNU cpio when it is installed', async (t) => {
    if (spawnSync('cpio', ['--version']).status !== 0) {
      t.skip('cpio is not installed');
      return;
    }
    const archive = encodeCpio(SAMPLE.filter((entry) => entry.kind !== 'chardev')); // mknod needs privileges
    const listing = spawnSync('cpio', ['-t', '--quiet'], { input: archive, encoding: 'utf8' });
    assert.equal(listing.status, 0, listing.stderr);
    assert.deepEqual(listing.stdout.trim().split('\n'), ['dev', 'modules', 'modules/a.ko', 'modules.order', 'empty', 'sh', 'init']);
    const dir = await mkdtemp(join(tmpdir(), 'cocoon-cpio-'));
    try {
      const extract = spawnSync('cpio', ['-i', '--quiet', '--make-directories', '--no-absolute-filenames'], { input: archive, cwd: dir });
      assert.equal(extract.status, 0, extract.stderr?.toString());
      assert.equal(await readFile(join(dir, 'modules/a.ko'), 'utf8'), 'abc');
      assert.equal((await stat(join(dir, 'init'))).mode & 0o7777, 0o755);
      assert.equal(await readlink(join(dir, 'sh')), '/bin/busybox');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
