/**
 * Test helper: a tiny zip writer with full control over names, external attributes and declared
 * sizes, so that hostile zips are built in the test instead of shipped as binary fixtures.
 */
import { crc32, deflateRawSync } from 'node:zlib';

export interface ZipEntrySpec {
  /** Written byte for byte; a trailing '/' makes a directory entry. */
  name: string | Buffer;
  data?: Buffer | string;
  method?: 'store' | 'deflate';
  /** Full st_mode (type + permission bits), stored in the upper 16 bits of the external attributes. */
  unixMode?: number;
  /** Overrides unixMode entirely (e.g. 0 for a zip made on Windows). */
  externalAttributes?: number;
  /** A lie about the uncompressed size, written in both headers. */
  declaredUncompressedSize?: number;
}

export const unixFile = (permissions = 0o644): number => 0o100000 | permissions;
export const unixDir = (permissions = 0o755): number => 0o040000 | permissions;
export const unixSymlink = 0o120777;

const MADE_BY_UNIX = (3 << 8) | 20;
const UTF8_FLAG = 0x800;

export function buildZip(entries: ZipEntrySpec[]): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const spec of entries) {
    const name = typeof spec.name === 'string' ? Buffer.from(spec.name, 'utf8') : spec.name;
    const data = typeof spec.data === 'string' ? Buffer.from(spec.data) : (spec.data ?? Buffer.alloc(0));
    const deflate = spec.method === 'deflate';
    const body = deflate ? deflateRawSync(data) : data;
    const isDir = name.at(-1) === 0x2f;
    const unixMode = spec.unixMode ?? (isDir ? unixDir() : unixFile());
    const external = spec.externalAttributes ?? (((unixMode << 16) | (isDir ? 0x10 : 0)) >>> 0);
    const crc = crc32(data);
    const uncompressed = spec.declaredUncompressedSize ?? data.length;

    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(UTF8_FLAG, 6);
    local.writeUInt16LE(deflate ? 8 : 0, 8);
    local.writeUInt16LE(0, 10); // time
    local.writeUInt16LE((2024 - 1980) << 9 | 1 << 5 | 1, 12); // date
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(uncompressed, 22);
    local.writeUInt16LE(name.length, 26);
    local.writeUInt16LE(0, 28);
    locals.push(local, name, body);

    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(MADE_BY_UNIX, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(UTF8_FLAG, 8);
    central.writeUInt16LE(deflate ? 8 : 0, 10);
    central.writeUInt16LE(0, 12);
    central.writeUInt16LE((2024 - 1980) << 9 | 1 << 5 | 1, 14);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(body.length, 20);
    central.writeUInt32LE(uncompressed, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(external, 38);
    central.writeUInt32LE(offset, 42);
    centrals.push(central, name);

    offset += local.length + name.length + body.length;
  }
  const centralDirectory = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(centralDirectory.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, centralDirectory, end]);
}
