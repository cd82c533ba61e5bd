/**
 * The MicroVM state machine: one table of allowed transitions. Every state change the lifecycle
 * makes is checked against it before it reaches the store's compare-and-set. Pure, no I/O.
 *
 * Rollbacks are edges too: a suspend whose save fails goes SUSPENDING → RUNNING (QEMU continues),
 * a resume whose restore fails goes RESUMING → SUSPENDED (the saved state is still on disk).
 */
import type { MicroVmState } from '../store/index.ts';

export const TRANSITIONS: Readonly<Record<MicroVmState, readonly MicroVmState[]>> = {
  PENDING: ['RUNNING', 'FAILED', 'TERMINATING'],
  RUNNING: ['SUSPENDING', 'TERMINATING', 'FAILED'],
  SUSPENDING: ['SUSPENDED', 'RUNNING', 'FAILED'],
  SUSPENDED: ['RESUMING', 'TERMINATING'],
  RESUMING: ['RUNNING', 'SUSPENDED', 'FAILED'],
  TERMINATING: ['TERMINATED'],
  TERMINATED: [],
  // A FAILED VM may still have files (its directory, serial log): terminating it removes them.
  FAILED: ['TERMINATING'],
};

export function canTransition(from: MicroVmState, to: MicroVmState): boolean {
  return TRANSITIONS[from].includes(to);
}

/** Every state from which `to` may be reached. */
export function sourcesOf(to: MicroVmState): MicroVmState[] {
  return (Object.keys(TRANSITIONS) as MicroVmState[]).filter((from) => canTransition(from, to));
}

/**
 * The `from` states of a transition the lifecycle wants to make, checked against the table:
 * asking for an edge the table lacks is a programming error, not a client's.
 */
export function checkedSources(from: readonly MicroVmState[], to: MicroVmState): readonly MicroVmState[] {
  const illegal = from.filter((state) => !canTransition(state, to));
  if (illegal.length > 0) throw new Error(`transition ${illegal.join('|')} → ${to} is not in the table`);
  return from;
}

/** States in which a VM holds (or is about to hold) memory on this host. */
export const MEMORY_STATES: readonly MicroVmState[] = ['PENDING', 'RUNNING', 'RESUMING'];
