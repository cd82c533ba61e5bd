/**
 * Network namespaces for VMs with `internet` egress (root only). Such a VM's QEMU runs in a
 * namespace of its own, joined to the host by a veth pair, and its user-mode networking may open
 * connections (restrict=off): they leave the namespace through the host, where one nftables table
 * (`inet cocoon`) lets only public destinations through. The guest never reaches the host itself
 * (slirp's 10.0.2.2 is the namespace's own loopback, where nothing listens), other VMs, private,
 * shared, loopback, link-local or multicast ranges, nor anything over IPv6. The host's resolvers
 * (port 53 only) are the one private exception, so that DNS works. Ports forwarded to the guest
 * listen on the namespace's address, which only the host can reach.
 *
 * Names derive from the VM's directory (and the daemon's data directory), so a restarted daemon
 * finds the namespace of a VM it re-adopts, and `sweep` finds the leftovers of its own VMs only.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import { FORBIDDEN_IPV4_CIDRS, formatIp, parseCidr, parseIPv4 } from '../egress/ranges.ts';
import { AppError } from '../errors/errors.ts';
import { run } from '../host/run.ts';

export type EgressMode = 'none' | 'internet';

/** A destination an `internet` VM with an allow-list may reach: an IPv4 CIDR and, optionally, only these TCP/UDP ports. */
export interface EgressAllowRule {
  cidr: string;
  ports?: number[];
}

/** `none`: nothing leaves the guest. `internet`: public IPv4 destinations (all, or only `allow`). */
export interface EgressSpec {
  mode: EgressMode;
  allow?: EgressAllowRule[];
}

/** One VM's namespace: QEMU runs in `netns`; the host reaches its forwarded ports at `address`. */
export interface VmNetwork {
  netns: string;
  /** The host side of the veth pair (the namespace side is `eth0`). */
  veth: string;
  address: string;
}

export const NFT_TABLE = 'cocoon';
const NETNS_DIR = '/run/netns';
/** Host-side interfaces of VM namespaces: what the table's rules match on. */
const VETH_PREFIX = 'cv';
export const DEFAULT_ADDRESS_POOL = '10.201.0.0/16';

/**
 * The table, created once per host boot (`create` fails as a whole if it exists, so concurrent
 * daemons never duplicate rules, and per-VM allow-lists of running VMs survive a daemon restart).
 * Forbidden destinations are rejected rather than dropped, TCP with a reset: a connect from the
 * namespace fails at once (8 ms, measured). The guest behind slirp still waits for its own timeout:
 * slirp does not pass the refusal on.
 */
export function tableScript(): string {
  const guest = `iifname "${VETH_PREFIX}*"`;
  return [
    `create table inet ${NFT_TABLE}`,
    `add set inet ${NFT_TABLE} forbidden4 { type ipv4_addr; flags interval; auto-merge; elements = { ${FORBIDDEN_IPV4_CIDRS.join(', ')} }; }`,
    `add set inet ${NFT_TABLE} resolvers4 { type ipv4_addr; }`,
    `add map inet ${NFT_TABLE} allowlists { type ifname : verdict; }`,
    // The host itself, on any of its addresses: only replies to connections the host opened (its port forwards).
    `add chain inet ${NFT_TABLE} input { type filter hook input priority filter; policy accept; }`,
    `add rule inet ${NFT_TABLE} input ${guest} ct state established,related accept`,
    ...reject('input', guest),
    `add chain inet ${NFT_TABLE} guest`,
    `add chain inet ${NFT_TABLE} forward { type filter hook forward priority filter; policy accept; }`,
    `add rule inet ${NFT_TABLE} forward ${guest} jump guest`,
    // Nothing routed from elsewhere (another VM, the network) opens a connection into a VM's namespace.
    `add rule inet ${NFT_TABLE} forward oifname "${VETH_PREFIX}*" ct state established,related accept`,
    ...reject('forward', `oifname "${VETH_PREFIX}*"`),
    `add rule inet ${NFT_TABLE} guest ct state established,related accept`,
    `add rule inet ${NFT_TABLE} guest meta nfproto ipv6 reject with icmpx type admin-prohibited`,
    `add rule inet ${NFT_TABLE} guest ip daddr @resolvers4 meta l4proto { tcp, udp } th dport 53 accept`,
    ...reject('guest', 'ip daddr @forbidden4'),
    `add rule inet ${NFT_TABLE} guest iifname vmap @allowlists`,
    `add rule inet ${NFT_TABLE} guest accept`,
    `add chain inet ${NFT_TABLE} postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    `add rule inet ${NFT_TABLE} postrouting ${guest} oifname != "${VETH_PREFIX}*" masquerade`,
  ].join('\n');
}

/** Rejects what `match` selects: TCP with a reset, the rest with an ICMP error. */
function reject(chain: string, match: string): string[] {
  const rule = `add rule inet ${NFT_TABLE} ${chain} ${match ? `${match} ` : ''}`;
  return [`${rule}meta l4proto tcp reject with tcp reset`, `${rule}reject with icmpx type admin-prohibited`];
}

/** A VM's allow-list: its own chain, entered through the `allowlists` map by its veth (after the forbidden ranges). */
export function allowListScript(veth: string, allow: readonly EgressAllowRule[]): string {
  const chain = `allow-${veth}`;
  const rules = allow.map((rule) => {
    const ports = rule.ports?.length ? ` meta l4proto { tcp, udp } th dport { ${rule.ports.join(', ')} }` : '';
    return `add rule inet ${NFT_TABLE} ${chain} ip daddr ${rule.cidr}${ports} accept`;
  });
  return [
    `add chain inet ${NFT_TABLE} ${chain}`,
    ...rules,
    ...reject(chain, ''),
    `add element inet ${NFT_TABLE} allowlists { "${veth}" : jump ${chain} }`,
  ].join('\n');
}

/** Checks an egress spec from a client; returns it normalised (CIDRs canonical, ports sorted). */
export function checkEgressSpec(spec: EgressSpec): EgressSpec {
  if (spec.mode === 'none') {
    if (spec.allow?.length) throw invalid('an allow-list needs mode "internet"');
    return { mode: 'none' };
  }
  if (!spec.allow) return { mode: 'internet' };
  if (spec.allow.length === 0 || spec.allow.length > 64) throw invalid('allow must list 1 to 64 destinations');
  const allow = spec.allow.map((rule) => {
    const cidr = parseCidr(rule.cidr);
    if (!cidr || cidr.version !== 4) throw invalid(`${rule.cidr} is not an IPv4 address or CIDR (internet egress is IPv4 only)`);
    const ports = rule.ports && [...new Set(rule.ports)].sort((a, b) => a - b);
    if (ports?.some((port) => !Number.isInteger(port) || port < 1 || port > 65535)) throw invalid(`ports of ${rule.cidr} must be 1–65535`);
    return { cidr: `${formatIp({ version: 4, bytes: maskedBytes(cidr.bytes, cidr.prefixLength) })}/${cidr.prefixLength}`, ...(ports?.length && { ports }) };
  });
  return { mode: 'internet', allow };
}

function invalid(message: string): AppError {
  return new AppError('request.invalid', `egress: ${message}`, { field: 'egress' });
}

function maskedBytes(bytes: Uint8Array, prefixLength: number): Uint8Array {
  return bytes.map((byte, index) => {
    const bits = Math.min(8, Math.max(0, prefixLength - index * 8));
    return byte & ((0xff << (8 - bits)) & 0xff);
  });
}

/** IPv4 nameservers of a resolv.conf text. */
export function resolversOf(resolvConf: string): string[] {
  return [...resolvConf.matchAll(/^\s*nameserver\s+(\S+)/gm)].map((m) => m[1]!).filter((address) => parseIPv4(address) !== undefined);
}

export class NetworkNamespaces {
  private allocation: Promise<unknown> = Promise.resolve();
  private hostPrepared: Promise<void> | undefined;

  private constructor(
    private readonly ownerTag: string,
    private readonly poolBase: number,
    private readonly poolSlots: number,
    private readonly log: (line: string) => void,
  ) {}

  /**
   * Checks that this host can give VMs their own namespaces (root, `ip`, `nft`, `nsenter`); changes
   * nothing yet. `owner`: the daemon's data directory (namespaces are named after it). Rejects with
   * the reason when the host cannot.
   */
  static async open(options: { owner: string; pool?: string; log?: (line: string) => void }): Promise<NetworkNamespaces> {
    if (process.getuid?.() !== 0) throw new Error('Cocoon does not run as root');
    await Promise.all([run('ip', ['-V']), run('nft', ['--version']), run('nsenter', ['--version'])]);
    const pool = parseCidr(options.pool ?? DEFAULT_ADDRESS_POOL);
    if (!pool || pool.version !== 4 || pool.prefixLength > 28) throw new Error(`the address pool ${options.pool} is not an IPv4 CIDR of /28 or larger`);
    const ownerTag = createHash('sha256').update(options.owner).digest('hex').slice(0, 6);
    const base = (pool.bytes[0]! << 24 | pool.bytes[1]! << 16 | pool.bytes[2]! << 8 | pool.bytes[3]!) >>> 0;
    return new NetworkNamespaces(ownerTag, base, 2 ** (32 - pool.prefixLength) / 4, options.log ?? (() => {}));
  }

  /**
   * The host's part, done at the first `internet` VM (a host that never runs one is never
   * changed): the table if missing, the resolvers it lets through, IPv4 forwarding.
   */
  private prepareHost(): Promise<void> {
    this.hostPrepared ??= (async () => {
      const exists = await run('nft', ['list', 'table', 'inet', NFT_TABLE]).then(() => true, () => false);
      if (!exists) await run('nft', [tableScript()]).catch((error: unknown) => {
        // Another daemon created it meanwhile: that is as good.
        return run('nft', ['list', 'table', 'inet', NFT_TABLE]).catch(() => { throw error; });
      });
      const resolvers = resolversOf(await readFile('/etc/resolv.conf', 'utf8').catch(() => ''));
      await run('nft', [[`flush set inet ${NFT_TABLE} resolvers4`,
        ...(resolvers.length ? [`add element inet ${NFT_TABLE} resolvers4 { ${resolvers.join(', ')} }`] : [])].join('\n')]);
      if (resolvers.some((address) => address.startsWith('127.'))) {
        this.log(`egress: the host's resolver ${resolvers.join(', ')} is on loopback, which VM namespaces cannot reach: DNS will not work in internet mode`);
      }
      const forwarding = (await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8')).trim();
      if (forwarding !== '1') {
        await writeFile('/proc/sys/net/ipv4/ip_forward', '1');
        this.log(`egress: net.ipv4.ip_forward was ${forwarding}, set to 1 for VM namespaces`);
      }
    })();
    // A failure is tried again at the next VM.
    this.hostPrepared.catch(() => { this.hostPrepared = undefined; });
    return this.hostPrepared;
  }

  /** The namespace and veth names of the VM in `vmDir` (interface names hold 15 bytes). */
  namesOf(vmDir: string): { netns: string; veth: string } {
    const id = createHash('sha256').update(vmDir).digest('hex').slice(0, 12);
    return { netns: `cocoon-${this.ownerTag}-${id}`, veth: `${VETH_PREFIX}${id}` };
  }

  /** The command prefix that runs a program inside the namespace (nsenter execs it: the pid stays the program's). */
  execPrefix(network: VmNetwork): string[] {
    return ['nsenter', `--net=${NETNS_DIR}/${network.netns}`, '--'];
  }

  /** Creates the VM's namespace, veth pair and allow-list (replacing a leftover of the same VM). */
  async create(vmDir: string, spec: EgressSpec): Promise<VmNetwork> {
    await Promise.all([this.remove(vmDir), this.prepareHost()]);
    const { netns, veth } = this.namesOf(vmDir);
    const turn = this.allocation.then(async () => {
      const slot = await this.freeSlot(vmDir);
      const host = formatIp({ version: 4, bytes: addressBytes(this.poolBase + slot * 4 + 1) });
      const address = formatIp({ version: 4, bytes: addressBytes(this.poolBase + slot * 4 + 2) });
      await run('ip', ['netns', 'add', netns]);
      // The namespace gets no IPv6 (interfaces created in it inherit `default`): internet egress is IPv4 only.
      await run('nsenter', [`--net=${NETNS_DIR}/${netns}`, '--', 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
      await run('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
      await writeFile(`/proc/sys/net/ipv6/conf/${veth}/disable_ipv6`, '1');
      await run('ip', ['addr', 'add', `${host}/30`, 'dev', veth]);
      await run('ip', ['link', 'set', veth, 'up']);
      await run('ip', ['-n', netns, 'addr', 'add', `${address}/30`, 'dev', 'eth0']);
      await run('ip', ['-n', netns, 'link', 'set', 'eth0', 'up']);
      await run('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
      await run('ip', ['-n', netns, 'route', 'add', 'default', 'via', host]);
      return address;
    });
    this.allocation = turn.catch(() => {});
    try {
      const address = await turn;
      // Checked again here: its CIDRs and ports go into an nft command.
      const { allow } = checkEgressSpec(spec);
      if (allow) await run('nft', [allowListScript(veth, allow)]);
      return { netns, veth, address };
    } catch (error) {
      await this.remove(vmDir);
      throw new AppError('vmm.start_failed', `could not set up the network namespace of ${vmDir}: ${(error as Error).message}`, {}, { cause: error });
    }
  }

  /** Removes the VM's namespace (its veth pair goes with it) and allow-list; nothing if there is none. */
  async remove(vmDir: string): Promise<void> {
    const { netns, veth } = this.namesOf(vmDir);
    await removeNamespace(netns, veth);
  }

  /**
   * Removes this daemon's namespaces that no process is in (their QEMU died with a crashed daemon,
   * or was stopped by reconcile). Call after reconcile, before VMs start. Returns the names removed.
   */
  async sweep(): Promise<string[]> {
    const names = (await readdir(NETNS_DIR).catch(() => [] as string[])).filter((name) => name.startsWith(`cocoon-${this.ownerTag}-`));
    if (names.length === 0) return [];
    const inUse = await namespacesInUse();
    const removed: string[] = [];
    for (const netns of names) {
      const inode = await stat(`${NETNS_DIR}/${netns}`).then((s) => s.ino, () => undefined);
      if (inode !== undefined && inUse.has(inode)) continue;
      await removeNamespace(netns, `${VETH_PREFIX}${netns.slice(netns.lastIndexOf('-') + 1)}`);
      removed.push(netns);
    }
    return removed;
  }

  /**
   * A /30 of the pool no interface of the host uses yet, starting at a slot derived from the VM's
   * directory: two daemons allocating at once start at different slots.
   */
  private async freeSlot(vmDir: string): Promise<number> {
    const used = new Set<number>();
    const links = JSON.parse(await run('ip', ['-j', '-4', 'addr', 'show'])) as Array<{ addr_info?: Array<{ local?: string }> }>;
    for (const link of links) {
      for (const info of link.addr_info ?? []) {
        const bytes = info.local && parseIPv4(info.local);
        if (!bytes) continue;
        const offset = ((bytes[0]! << 24 | bytes[1]! << 16 | bytes[2]! << 8 | bytes[3]!) >>> 0) - this.poolBase;
        if (offset >= 0 && offset < this.poolSlots * 4) used.add(Math.floor(offset / 4));
      }
    }
    const start = parseInt(createHash('sha256').update(vmDir).digest('hex').slice(0, 8), 16) % this.poolSlots;
    for (let i = 0; i < this.poolSlots; i++) {
      const slot = (start + i) % this.poolSlots;
      if (!used.has(slot)) return slot;
    }
    throw new Error('the address pool of VM namespaces is exhausted');
  }
}

function addressBytes(value: number): Uint8Array {
  return new Uint8Array([value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff]);
}

async function removeNamespace(netns: string, veth: string): Promise<void> {
  // The map element goes before its chain (a chain still jumped to cannot be deleted).
  await run('nft', [`delete element inet ${NFT_TABLE} allowlists { "${veth}" }`]).catch(() => {});
  await run('nft', [`flush chain inet ${NFT_TABLE} allow-${veth}\ndelete chain inet ${NFT_TABLE} allow-${veth}`]).catch(() => {});
  await run('ip', ['netns', 'delete', netns]).catch(() => {});
  // A veth whose namespace was already gone (the pair normally dies with it).
  await run('ip', ['link', 'delete', veth]).catch(() => {});
}

/** Inodes of the network namespaces that some process is in. */
async function namespacesInUse(): Promise<Set<number>> {
  const inUse = new Set<number>();
  for (const pid of (await readdir('/proc')).filter((name) => /^\d+$/.test(name))) {
    const link = await readlink(`/proc/${pid}/ns/net`).catch(() => '');
    const match = /^net:\[(\d+)\]$/.exec(link);
    if (match) inUse.add(Number(match[1]));
  }
  return inUse;
}
