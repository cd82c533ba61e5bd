/**
 * IP address parsing, CIDR matching and the list of destinations no guest may ever reach.
 * Pure: no sockets, no DNS, no `os` calls. The host's own addresses are passed in.
 *
 * Fail closed: anything that does not parse as an address is treated as forbidden by
 * `forbiddenReason`, and IPv6 forms that carry an IPv4 address (mapped, NAT64, 6to4, Teredo) are
 * judged by the IPv4 address they lead to.
 */

export type IpAddress =
  | { readonly version: 4; readonly bytes: Uint8Array }
  | { readonly version: 6; readonly bytes: Uint8Array; readonly zone?: string };

export type Cidr = { readonly version: 4 | 6; readonly bytes: Uint8Array; readonly prefixLength: number };

/** Strict dotted-decimal IPv4: four parts 0–255, no leading zeros (those mean octal to some parsers). */
export function parseIPv4(text: string): Uint8Array | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  const bytes = new Uint8Array(4);
  for (const [index, part] of parts.entries()) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return undefined;
    const value = Number(part);
    if (value > 255) return undefined;
    bytes[index] = value;
  }
  return bytes;
}

/** IPv6 in any RFC 4291 text form: compressed `::`, a dotted IPv4 tail, and an optional `%zone`. */
export function parseIPv6(text: string): { bytes: Uint8Array; zone?: string } | undefined {
  let address = text;
  let zone: string | undefined;
  const percent = text.indexOf('%');
  if (percent !== -1) {
    zone = text.slice(percent + 1);
    address = text.slice(0, percent);
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(zone)) return undefined;
  }
  const groups: number[] = [];
  let compressAt = -1;
  const halves = address.split('::');
  if (halves.length > 2) return undefined;
  for (const [halfIndex, half] of halves.entries()) {
    if (halfIndex === 1) compressAt = groups.length;
    if (half === '') continue;
    const pieces = half.split(':');
    for (const [pieceIndex, piece] of pieces.entries()) {
      const isLast = halfIndex === halves.length - 1 && pieceIndex === pieces.length - 1;
      if (isLast && piece.includes('.')) {
        const v4 = parseIPv4(piece);
        if (v4 === undefined) return undefined;
        groups.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9A-Fa-f]{1,4}$/.test(piece)) return undefined;
        groups.push(parseInt(piece, 16));
      }
    }
  }
  if (compressAt === -1 ? groups.length !== 8 : groups.length > 7) return undefined;
  if (compressAt !== -1) groups.splice(compressAt, 0, ...new Array<number>(8 - groups.length).fill(0));
  const bytes = new Uint8Array(16);
  for (const [index, group] of groups.entries()) {
    bytes[index * 2] = group >> 8;
    bytes[index * 2 + 1] = group & 0xff;
  }
  return zone === undefined ? { bytes } : { bytes, zone };
}

/** Parses an IPv4 or IPv6 literal; IPv6 may be wrapped in brackets as in URLs (`[::1]`). */
export function parseIp(text: string): IpAddress | undefined {
  if (text.startsWith('[') && text.endsWith(']')) {
    const v6 = parseIPv6(text.slice(1, -1));
    return v6 === undefined ? undefined : { version: 6, ...v6 };
  }
  const v4 = parseIPv4(text);
  if (v4 !== undefined) return { version: 4, bytes: v4 };
  const v6 = parseIPv6(text);
  return v6 === undefined ? undefined : { version: 6, ...v6 };
}

/** Canonical text: dotted IPv4, RFC 5952 IPv6 (lowercase, longest zero run compressed). */
export function formatIp(ip: IpAddress): string {
  if (ip.version === 4) return Array.from(ip.bytes).join('.');
  const groups = Array.from({ length: 8 }, (_, i) => (ip.bytes[i * 2]! << 8) | ip.bytes[i * 2 + 1]!);
  let bestStart = -1;
  let bestLength = 1;
  for (let start = 0; start < 8; ) {
    if (groups[start] !== 0) { start++; continue; }
    let end = start;
    while (end < 8 && groups[end] === 0) end++;
    if (end - start > bestLength) { bestStart = start; bestLength = end - start; }
    start = end;
  }
  const hex = groups.map((group) => group.toString(16));
  const text = bestStart === -1
    ? hex.join(':')
    : `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
  return ip.zone === undefined ? text : `${text}%${ip.zone}`;
}

/** `10.0.0.0/8`, `fe80::/10`; a bare address means a single host (/32 or /128). */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf('/');
  const ip = parseIp(slash === -1 ? text : text.slice(0, slash));
  if (ip === undefined || (ip.version === 6 && ip.zone !== undefined)) return undefined;
  const maxLength = ip.version === 4 ? 32 : 128;
  let prefixLength = maxLength;
  if (slash !== -1) {
    const suffix = text.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(suffix) || Number(suffix) > maxLength) return undefined;
    prefixLength = Number(suffix);
  }
  return { version: ip.version, bytes: ip.bytes, prefixLength };
}

/** Whether `ip` lies in `cidr`. Versions never match each other; unwrap mapped addresses first. */
export function cidrContains(cidr: Cidr, ip: IpAddress): boolean {
  if (cidr.version !== ip.version) return false;
  const fullBytes = Math.floor(cidr.prefixLength / 8);
  for (let i = 0; i < fullBytes; i++) if (cidr.bytes[i] !== ip.bytes[i]) return false;
  const remainingBits = cidr.prefixLength % 8;
  if (remainingBits === 0) return true;
  const mask = (0xff << (8 - remainingBits)) & 0xff;
  return (cidr.bytes[fullBytes]! & mask) === (ip.bytes[fullBytes]! & mask);
}

function cidr(text: string): Cidr {
  const parsed = parseCidr(text);
  if (parsed === undefined) throw new Error(`bad built-in CIDR ${text}`);
  return parsed;
}

/**
 * IPv4 ranges no guest may reach. Deliberately absent: the documentation and benchmark ranges
 * (192.0.2.0/24, 198.18.0.0/15, 198.51.100.0/24, 203.0.113.0/24): on Cocoon's own test machines
 * real services such as the Debian mirror resolve to them.
 */
const forbiddenV4: ReadonlyArray<readonly [Cidr, string]> = [
  [cidr('255.255.255.255/32'), 'broadcast'],
  [cidr('0.0.0.0/8'), 'this-network'],
  [cidr('10.0.0.0/8'), 'private'],
  [cidr('100.64.0.0/10'), 'shared-address-space'],
  [cidr('127.0.0.0/8'), 'loopback'],
  [cidr('169.254.0.0/16'), 'link-local'],
  [cidr('172.16.0.0/12'), 'private'],
  [cidr('192.168.0.0/16'), 'private'],
  [cidr('224.0.0.0/4'), 'multicast'],
  [cidr('240.0.0.0/4'), 'reserved'],
];

/** The forbidden IPv4 ranges as CIDR text, for rules enforced outside this process (nftables). */
export const FORBIDDEN_IPV4_CIDRS: readonly string[] = forbiddenV4.map(([range]) => `${formatIp({ version: 4, bytes: range.bytes })}/${range.prefixLength}`);

const forbiddenV6: ReadonlyArray<readonly [Cidr, string]> = [
  [cidr('::/128'), 'unspecified'],
  [cidr('::1/128'), 'loopback'],
  // IPv4-compatible addresses are deprecated (RFC 4291); nothing legitimate uses them.
  [cidr('::/96'), 'ipv4-compatible'],
  // Local-use NAT64 prefix (RFC 8215) translates to whatever the local operator chooses.
  [cidr('64:ff9b:1::/48'), 'local-nat64'],
  [cidr('fc00::/7'), 'unique-local'],
  [cidr('fe80::/10'), 'link-local'],
  [cidr('fec0::/10'), 'site-local'],
  [cidr('ff00::/8'), 'multicast'],
];

const mappedPrefix = cidr('::ffff:0:0/96');
const translatedPrefix = cidr('::ffff:0:0:0/96');
const nat64Prefix = cidr('64:ff9b::/96');
const sixToFourPrefix = cidr('2002::/16');
const teredoPrefix = cidr('2001::/32');

/** The IPv4 addresses an IPv6 address leads to, each with the mechanism that embeds it. */
export function embeddedIPv4(ip: IpAddress): Array<{ via: string; ipv4: IpAddress }> {
  if (ip.version === 4) return [];
  const v4 = (offset: number, invert = false): IpAddress => ({
    version: 4,
    bytes: ip.bytes.slice(offset, offset + 4).map((byte) => (invert ? ~byte & 0xff : byte)),
  });
  if (cidrContains(mappedPrefix, ip)) return [{ via: 'ipv4-mapped', ipv4: v4(12) }];
  if (cidrContains(translatedPrefix, ip)) return [{ via: 'ipv4-translated', ipv4: v4(12) }];
  if (cidrContains(nat64Prefix, ip)) return [{ via: 'nat64', ipv4: v4(12) }];
  if (cidrContains(sixToFourPrefix, ip)) return [{ via: '6to4', ipv4: v4(2) }];
  if (cidrContains(teredoPrefix, ip)) {
    return [{ via: 'teredo-server', ipv4: v4(4) }, { via: 'teredo-client', ipv4: v4(12, true) }];
  }
  return [];
}

/** `::ffff:a.b.c.d` becomes `a.b.c.d` (what the kernel actually dials); other addresses stay. */
export function unwrapMapped(ip: IpAddress): IpAddress {
  if (ip.version === 6 && cidrContains(mappedPrefix, ip)) return { version: 4, bytes: ip.bytes.slice(12) };
  return ip;
}

function sameAddress(a: IpAddress, b: IpAddress): boolean {
  const left = unwrapMapped(a);
  const right = unwrapMapped(b);
  return left.version === right.version && left.bytes.every((byte, i) => byte === right.bytes[i]);
}

/**
 * Why a guest may not connect to `address`, or undefined when it may. `hostAddresses` are the
 * host's own interface addresses ("this host": a service bound to 0.0.0.0 answers on all of them).
 */
export function forbiddenReason(address: string | IpAddress, hostAddresses: readonly string[] = []): string | undefined {
  const ip = typeof address === 'string' ? parseIp(address) : address;
  if (ip === undefined) return 'not-an-ip-address';
  if (ip.version === 6 && ip.zone !== undefined) return 'scoped-address';
  for (const hostAddress of hostAddresses) {
    const own = parseIp(hostAddress);
    if (own !== undefined && sameAddress(own, ip)) return 'this-host';
  }
  const table = ip.version === 4 ? forbiddenV4 : forbiddenV6;
  for (const [range, reason] of table) if (cidrContains(range, ip)) return reason;
  for (const { via, ipv4 } of embeddedIPv4(ip)) {
    const inner = forbiddenReason(ipv4, hostAddresses);
    if (inner !== undefined) return `${via}:${inner}`;
  }
  return undefined;
}
