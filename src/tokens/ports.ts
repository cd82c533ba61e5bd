/**
 * The ports a token opens: all of them, or a list of ranges (a single port is a range of one).
 * Two spellings exist: the API's entries (`{port}`, `{fromPort, toPort}`, `{all: true}`, as in
 * the reference service) and the compact claim inside the JWE (`"*"` or `[[from, to], …]`).
 */
import { AppError } from '../errors/errors.ts';

export type PortSet = { all: true } | { ranges: Array<{ from: number; to: number }> };

/** One `allowedPorts` entry of the REST API. */
export type PortEntry = { port: number } | { fromPort: number; toPort: number } | { all: true };

/** Keeps tokens small: each range costs about a dozen bytes of the header-sized token. */
export const MAX_PORT_ENTRIES = 64;

export function allowsPort(ports: PortSet, port: number): boolean {
  if ('all' in ports) return true;
  return ports.ranges.some((range) => port >= range.from && port <= range.to);
}

/** Sorted, overlapping and adjacent ranges merged; `request.invalid` for anything out of bounds. */
export function normalizePortSet(ports: PortSet): PortSet {
  if ('all' in ports) {
    if (ports.all !== true) throw invalid('`all` must be true');
    return { all: true };
  }
  const { ranges } = ports;
  if (!Array.isArray(ranges) || ranges.length === 0) throw invalid('at least one port or range is needed');
  if (ranges.length > MAX_PORT_ENTRIES) throw invalid(`at most ${MAX_PORT_ENTRIES} ports or ranges`);
  for (const { from, to } of ranges) {
    if (!isPort(from) || !isPort(to)) throw invalid(`ports are integers from 1 to 65535 (got ${String(from)}–${String(to)})`);
    if (from > to) throw invalid(`a range must not end before it starts (got ${from}–${to})`);
  }
  const merged: Array<{ from: number; to: number }> = [];
  for (const range of [...ranges].sort((a, b) => a.from - b.from)) {
    const last = merged.at(-1);
    if (last && range.from <= last.to + 1) last.to = Math.max(last.to, range.to);
    else merged.push({ from: range.from, to: range.to });
  }
  return { ranges: merged };
}

/** The API's entries as a normalized set; `{all: true}` stands alone. */
export function portSetOf(entries: readonly PortEntry[]): PortSet {
  const ranges: Array<{ from: number; to: number }> = [];
  for (const entry of entries) {
    if ('all' in entry) {
      if (entries.length > 1) throw invalid('`{"all": true}` cannot be combined with other entries');
      return normalizePortSet(entry);
    }
    ranges.push('port' in entry ? { from: entry.port, to: entry.port } : { from: entry.fromPort, to: entry.toPort });
  }
  return normalizePortSet({ ranges });
}

export function portEntriesOf(ports: PortSet): PortEntry[] {
  if ('all' in ports) return [{ all: true }];
  return ports.ranges.map(({ from, to }) => (from === to ? { port: from } : { fromPort: from, toPort: to }));
}

export type PortsClaim = '*' | Array<[number, number]>;

export function portsClaimOf(ports: PortSet): PortsClaim {
  return 'all' in ports ? '*' : ports.ranges.map(({ from, to }) => [from, to]);
}

/** Undefined for a claim this code does not mint (the caller treats the token as invalid). */
export function portSetOfClaim(claim: unknown): PortSet | undefined {
  if (claim === '*') return { all: true };
  if (!Array.isArray(claim) || claim.length === 0 || claim.length > MAX_PORT_ENTRIES) return undefined;
  const ranges: Array<{ from: number; to: number }> = [];
  for (const pair of claim) {
    if (!Array.isArray(pair) || pair.length !== 2 || !isPort(pair[0]) || !isPort(pair[1]) || pair[0] > pair[1]) return undefined;
    ranges.push({ from: pair[0], to: pair[1] });
  }
  return { ranges };
}

function isPort(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 1 && (value as number) <= 65535;
}

function invalid(message: string): AppError {
  return new AppError('request.invalid', `allowedPorts: ${message}`);
}
