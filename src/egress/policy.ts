/**
 * Egress policy: which destinations a guest may reach, and the refusal codes the proxy answers
 * with. Pure: the proxy passes in resolved addresses and a forbidden-range predicate.
 */
import { AppError } from '../errors/errors.ts';
import { cidrContains, parseCidr, parseIp, unwrapMapped, type Cidr } from './ranges.ts';

export type EgressPortRange = number[] | { from: number; to: number };

export type EgressAllowRule = {
  /** Destination addresses in this range (`203.0.113.0/24`, `2001:db8::/32`, or one address). */
  cidr?: string;
  /** Exact name (`deb.debian.org`) or `*.suffix`, which matches names below the suffix only. */
  domain?: string;
  /** Destination ports; any port when absent. */
  ports?: EgressPortRange;
};

export type EgressPolicy = {
  mode: 'none' | 'internet';
  /** When non-empty, only destinations matching at least one rule (every given field) pass. */
  allow?: EgressAllowRule[];
};

/** Why the proxy refused; the value of the `X-Cocoon-Egress-Refused` header. */
export const egressRefusalStatus = {
  'egress.forbidden_destination': 403,
  'egress.not_allowed': 403,
  'egress.mode_none': 403,
  'egress.dns_failed': 502,
  'egress.connect_failed': 502,
  'egress.bad_request': 400,
} as const satisfies Record<string, number>;

export type EgressRefusalCode = keyof typeof egressRefusalStatus;

export type Refusal = { code: EgressRefusalCode; message: string };

type CompiledRule = { cidr?: Cidr; domain?: { exact: string } | { suffix: string }; ports?: (port: number) => boolean };

export type CompiledPolicy = { readonly mode: 'none' | 'internet'; readonly rules: readonly CompiledRule[] };

function invalid(message: string, details: Record<string, unknown>): AppError {
  return new AppError('config.invalid', `egress policy: ${message}`, details);
}

function isPort(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 1 && (value as number) <= 65535;
}

function compilePorts(ports: EgressPortRange, index: number): (port: number) => boolean {
  if (Array.isArray(ports)) {
    if (ports.length === 0 || !ports.every(isPort)) throw invalid('ports must be 1–65535', { index, ports });
    const set = new Set(ports);
    return (port) => set.has(port);
  }
  const { from, to } = ports;
  if (!isPort(from) || !isPort(to) || from > to) throw invalid('port range must be 1–65535, from ≤ to', { index, ports });
  return (port) => port >= from && port <= to;
}

function compileDomain(domain: string, index: number): { exact: string } | { suffix: string } {
  const lower = domain.toLowerCase().replace(/\.$/, '');
  const name = lower.startsWith('*.') ? lower.slice(2) : lower;
  const labels = name.split('.');
  if (!labels.every((label) => /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/.test(label))) {
    throw invalid('domain must be a name or *.suffix', { index, domain });
  }
  return lower.startsWith('*.') ? { suffix: `.${name}` } : { exact: name };
}

/** Validates a policy once, at start; throws `config.invalid` for anything malformed. */
export function compilePolicy(policy: EgressPolicy): CompiledPolicy {
  if (policy.mode !== 'none' && policy.mode !== 'internet') throw invalid('mode must be none or internet', { mode: policy.mode });
  const rules = (policy.allow ?? []).map((rule, index): CompiledRule => {
    const compiled: CompiledRule = {};
    if (rule.cidr !== undefined) {
      const parsed = parseCidr(rule.cidr);
      if (parsed === undefined) throw invalid('bad cidr', { index, cidr: rule.cidr });
      compiled.cidr = parsed;
    }
    if (rule.domain !== undefined) compiled.domain = compileDomain(rule.domain, index);
    if (rule.ports !== undefined) compiled.ports = compilePorts(rule.ports, index);
    return compiled;
  });
  return Object.freeze({ mode: policy.mode, rules: Object.freeze(rules) });
}

function domainMatches(domain: NonNullable<CompiledRule['domain']>, host: string): boolean {
  return 'exact' in domain ? host === domain.exact : host.endsWith(domain.suffix);
}

/**
 * The check that needs no DNS: mode `none`, and allow-lists that no rule could match for this
 * name and port. Refusing here keeps a guest from sending arbitrary names to the resolver.
 */
export function checkBeforeResolve(policy: CompiledPolicy, host: string, port: number, isIpLiteral: boolean): Refusal | undefined {
  if (policy.mode === 'none') return { code: 'egress.mode_none', message: 'egress is disabled for this machine' };
  if (policy.rules.length === 0) return undefined;
  const possible = policy.rules.some((rule) =>
    (rule.ports === undefined || rule.ports(port)) &&
    (rule.domain === undefined || (!isIpLiteral && domainMatches(rule.domain, host))));
  return possible ? undefined : { code: 'egress.not_allowed', message: `${host}:${port} is not on the allow-list` };
}

/**
 * Judges a destination after resolution. Any forbidden address refuses the whole destination (a
 * name that resolves to one public and one private address is an attack, not a fallback). With an
 * allow-list, returns only the addresses a rule matches; the caller dials nothing else.
 */
export function checkAddresses(
  policy: CompiledPolicy,
  target: { host: string; port: number; isIpLiteral: boolean },
  addresses: readonly string[],
  isForbidden: (address: string) => string | undefined,
): { ok: true; addresses: string[] } | { ok: false; refusal: Refusal } {
  const early = checkBeforeResolve(policy, target.host, target.port, target.isIpLiteral);
  if (early !== undefined) return { ok: false, refusal: early };
  if (addresses.length === 0) {
    return { ok: false, refusal: { code: 'egress.dns_failed', message: `${target.host} has no addresses` } };
  }
  for (const address of addresses) {
    const reason = isForbidden(address);
    if (reason !== undefined) {
      return {
        ok: false,
        refusal: { code: 'egress.forbidden_destination', message: `${target.host} resolves to ${address} (${reason})` },
      };
    }
  }
  if (policy.rules.length === 0) return { ok: true, addresses: [...addresses] };
  const permitted = addresses.filter((address) => {
    const ip = parseIp(address);
    return ip !== undefined && policy.rules.some((rule) =>
      (rule.ports === undefined || rule.ports(target.port)) &&
      (rule.domain === undefined || (!target.isIpLiteral && domainMatches(rule.domain, target.host))) &&
      (rule.cidr === undefined || cidrContains(rule.cidr, unwrapMapped(ip))));
  });
  if (permitted.length === 0) {
    return { ok: false, refusal: { code: 'egress.not_allowed', message: `${target.host}:${target.port} is not on the allow-list` } };
  }
  return { ok: true, addresses: permitted };
}
