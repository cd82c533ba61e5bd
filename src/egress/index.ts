/** The egress proxy's public surface; other modules import from here only. */
export { startEgressProxy } from './proxy.ts';
export type { EgressProxy, EgressProxyOptions, EgressStats } from './proxy.ts';
export type { EgressAllowRule, EgressPolicy, EgressPortRange, EgressRefusalCode } from './policy.ts';
export { egressRefusalStatus } from './policy.ts';
export type { EgressLogEvent } from './forward.ts';
export type { ConnectFn, IsForbiddenFn, ResolveFn } from './dial.ts';
export { forbiddenReason } from './ranges.ts';
