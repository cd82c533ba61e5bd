/**
 * Per-VM host users. When Cocoon runs as root, each runtime VM's QEMU drops to a uid (and a gid of
 * the same number) of its own after it has opened its files (`-runas uid:gid`): the uid owns no
 * file, so a QEMU taken over by its guest reaches nothing of another VM's (VM directories are 0700
 * root) and cannot signal another VM's QEMU. The numbers need no passwd entries.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';

export interface VmUser {
  uid: number;
  gid: number;
}

/**
 * Above the ranges that distributions hand out for users, subuids (100000+) and containers
 * (systemd's 524288–1879048191), below 2^31.
 */
export const VM_UID_BASE = 2_000_000_000;
export const VM_UID_COUNT = 65_536;

/** Whether QEMU can be dropped to another user: only root may switch. */
export function canDropPrivileges(): boolean {
  return process.getuid?.() === 0;
}

const taken = new Set<number>();

/**
 * A uid in the range that no live process of this host uses and no other VM of this daemon holds.
 * Random, so that two daemons on one host rarely race for the same number.
 */
export function allocateVmUser(): VmUser {
  const inUse = uidsInUse();
  for (let attempt = 0; attempt < 1000; attempt++) {
    const uid = VM_UID_BASE + Math.floor(Math.random() * VM_UID_COUNT);
    if (taken.has(uid) || inUse.has(uid)) continue;
    taken.add(uid);
    return { uid, gid: uid };
  }
  throw new Error(`no free VM uid in ${VM_UID_BASE}+${VM_UID_COUNT}`);
}

/** Marks the user of an adopted VM's QEMU as held, so no new VM gets it. */
export function holdVmUser(uid: number): void {
  if (uid >= VM_UID_BASE && uid < VM_UID_BASE + VM_UID_COUNT) taken.add(uid);
}

export function releaseVmUser(user: VmUser | undefined): void {
  if (user) taken.delete(user.uid);
}

/** The real uid of a live process (`Uid:` of /proc/<pid>/status), undefined once it is gone. */
export function processUid(pid: number): number | undefined {
  try {
    const match = /^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The owners of /proc/<pid> (a process's effective uid): a stat each, cheaper than reading status files. */
function uidsInUse(): Set<number> {
  const uids = new Set<number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const uid = statSync(`/proc/${name}`, { throwIfNoEntry: false })?.uid;
    if (uid !== undefined && uid >= VM_UID_BASE) uids.add(uid);
  }
  return uids;
}
