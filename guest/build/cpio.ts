// A writer for the "newc" cpio format, the one the kernel unpacks as an initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst). Pure: entries in, bytes out.

export type CpioEntry =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; data: Buffer }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'chardev'; path: string; mode: number; major: number; minor: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const HEADER_BYTES = 110;
const MAX_FIELD = 0xffffffff;

/**
 * Encodes entries as an uncompressed newc archive with its TRAILER!!!. Paths are stored without
 * the leading "/" (as the kernel's gen_init_cpio does); owners are root and mtimes are 0 so the
 * same inputs always give the same bytes. Parents must come before their children.
 */
export function encodeCpio(entries: readonly CpioEntry[]): Buffer {
  const chunks: Buffer[] = [];
  let offsetBytes = 0;
  const push = (chunk: Buffer): void => {
    chunks.push(chunk);
    offsetBytes += chunk.length;
  };
  const pad = (): void => {
    const padding = (4 - (offsetBytes % 4)) % 4;
    if (padding > 0) push(Buffer.alloc(padding));
  };
  const seen = new Set<string>();
  let inode = 1;
  for (const entry of entries) {
    const name = normalizeArchivePath(entry.path);
    if (seen.has(name)) throw new Error(`cpio: duplicate path ${entry.path}`);
    const parent = name.includes('/') ? name.slice(0, name.lastIndexOf('/')) : undefined;
    if (parent !== undefined && !seen.has(parent)) throw new Error(`cpio: ${entry.path} comes before its directory`);
    seen.add(name);
    const { mode, data, nlink, rdevMajor, rdevMinor } = describe(entry);
    writeEntry(push, pad, { name, inode: inode++, mode, nlink, data, rdevMajor, rdevMinor });
  }
  writeEntry(push, pad, { name: 'TRAILER!!!', inode: 0, mode: 0, nlink: 1, data: Buffer.alloc(0), rdevMajor: 0, rdevMinor: 0 });
  return Buffer.concat(chunks, offsetBytes);
}

function normalizeArchivePath(path: string): string {
  const name = path.replace(/^\/+/, '').replace(/\/+$/, '');
  if (name === '' || name.split('/').some((part) => part === '' || part === '.' || part === '..')) {
    throw new Error(`cpio: invalid path ${JSON.stringify(path)}`);
  }
  return name;
}

function describe(entry: CpioEntry): { mode: number; data: Buffer; nlink: number; rdevMajor: number; rdevMinor: number } {
  switch (entry.kind) {
    case 'dir':
      return { mode: S_IFDIR | (entry.mode & 0o7777), data: Buffer.alloc(0), nlink: 2, rdevMajor: 0, rdevMinor: 0 };
    case 'file':
      return { mode: S_IFREG | (entry.mode & 0o7777), data: entry.data, nlink: 1, rdevMajor: 0, rdevMinor: 0 };
    case 'symlink':
      return { mode: S_IFLNK | 0o777, data: Buffer.from(entry.target), nlink: 1, rdevMajor: 0, rdevMinor: 0 };
    case 'chardev':
      return { mode: S_IFCHR | (entry.mode & 0o7777), data: Buffer.alloc(0), nlink: 1, rdevMajor: entry.major, rdevMinor: entry.minor };
  }
}

interface RawEntry {
  name: string;
  inode: number;
  mode: number;
  nlink: number;
  data: Buffer;
  rdevMajor: number;
  rdevMinor: number;
}

function writeEntry(push: (chunk: Buffer) => void, pad: () => void, entry: RawEntry): void {
  const nameBytes = Buffer.from(`${entry.name}\0`);
  if (entry.data.length > MAX_FIELD) throw new Error(`cpio: ${entry.name} is too large for newc`);
  const fields = [
    entry.inode,
    entry.mode,
    0, // uid
    0, // gid
    entry.nlink,
    0, // mtime
    entry.data.length,
    0, // devmajor
    0, // devminor
    entry.rdevMajor,
    entry.rdevMinor,
    nameBytes.length,
    0, // check (only used by the "crc" variant)
  ];
  const header = `070701${fields.map((value) => value.toString(16).padStart(8, '0')).join('')}`;
  if (header.length !== HEADER_BYTES) throw new Error('cpio: header field overflow');
  push(Buffer.from(header, 'ascii'));
  push(nameBytes);
  pad();
  if (entry.data.length > 0) {
    push(entry.data);
    pad();
  }
}
