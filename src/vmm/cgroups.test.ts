/**
 * cgroup detection and writers. The file system tests run against a fake hierarchy in a temp
 * directory (plain files, no kernel): this development host mounts only v1 controllers, so the v2
 * path is checked here and the v1 path for real in test/integration/limits.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { Cgroups, detectLayout, limitWrites, parseMountinfo, processUsage, type CgroupLimits } from './cgroups.ts';

const LIMITS: CgroupLimits = { cpuQuotaCores: 0.5, cpuWeightCores: 0.25, memoryBytes: 384 * 2 ** 20, pidsMax: 256 };

/** This development host: v1 controllers each mounted alone, an empty v2 beside them, a memory group per sandbox. */
const HYBRID_MOUNTINFO = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
const HYBRID_CGROUP = `8:pids:/
4:memory:/process_api/e187
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
`;

const workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-cgroups-'));
after(() => rm(workDir, { recursive: true, force: true }));

test('v1 wins on a hybrid host; groups go beneath the own group of each hierarchy', () => {
  assert.deepEqual(detectLayout(HYBRID_MOUNTINFO, HYBRID_CGROUP), {
    version: 1,
    parents: {
      cpu: '/sys/fs/cgroup/cpu/cocoon', cpuacct: '/sys/fs/cgroup/cpuacct/cocoon',
      memory: '/sys/fs/cgroup/memory/process_api/e187/cocoon', pids: '/sys/fs/cgroup/pids/cocoon',
    },
  });
});

test('v1 with co-mounted cpu,cpuacct (systemd) shares one directory; a container sees its subtree as the mount root', () => {
  const mountinfo = `25 24 0:22 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 /docker/abc /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
`;
  const layout = detectLayout(mountinfo, '5:cpu,cpuacct:/docker/abc/sub\n4:memory:/docker/abc\n');
  assert.deepEqual(layout, {
    version: 1,
    parents: { cpu: '/sys/fs/cgroup/cpu,cpuacct/sub/cocoon', cpuacct: '/sys/fs/cgroup/cpu,cpuacct/sub/cocoon', memory: '/sys/fs/cgroup/memory/cocoon' },
  });
});

test('v2: the unified mount and the 0:: line', () => {
  const mountinfo = '30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n';
  assert.deepEqual(detectLayout(mountinfo, '0::/system.slice/cocoon.service\n'), {
    version: 2, own: '/sys/fs/cgroup/system.slice/cocoon.service', parent: '/sys/fs/cgroup/system.slice/cocoon.service/cocoon',
  });
});

test('without both cpu and memory there is no layout, only the reason', () => {
  const onlyCpu = '32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n';
  assert.match(String(detectLayout(onlyCpu, '1:cpu,cpuacct:/\n')), /memory/);
  assert.match(String(detectLayout('', '')), /no cgroup/);
});

test('mountinfo paths are unescaped', () => {
  const [mount] = parseMountinfo('40 31 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n');
  assert.equal(mount?.mountPoint, '/mnt/with space');
});

test('limit writes: v1 quota, shares and memory+swap; v2 cpu.max, weight, no swap, group OOM', () => {
  const v1 = Object.fromEntries(limitWrites(1, LIMITS).map((w) => [w.file, w.value]));
  assert.deepEqual(v1, {
    'cpu.cfs_period_us': '100000', 'cpu.cfs_quota_us': '50000', 'cpu.shares': '256',
    'memory.limit_in_bytes': String(384 * 2 ** 20), 'memory.memsw.limit_in_bytes': String(384 * 2 ** 20), 'pids.max': '256',
  });
  const v2 = Object.fromEntries(limitWrites(2, LIMITS).map((w) => [w.file, w.value]));
  assert.deepEqual(v2, {
    'cpu.max': '50000 100000', 'cpu.weight': '25', 'memory.max': String(384 * 2 ** 20), 'memory.swap.max': '0', 'memory.oom.group': '1', 'pids.max': '256',
  });
});

test('v2 on a fake hierarchy: controllers enabled down to the VM group, limits written, pid moved, usage read', async () => {
  const own = path.join(workDir, 'v2', 'service');
  await mkdir(own, { recursive: true });
  await writeFile(path.join(own, 'cgroup.controllers'), 'cpuset cpu io memory pids\n');
  const cgroups = await Cgroups.open({ version: 2, own, parent: path.join(own, 'cocoon') });
  assert.equal(await readFile(path.join(own, 'cgroup.subtree_control'), 'utf8'), '+cpu +memory +pids');
  assert.equal(await readFile(path.join(own, 'cocoon', 'cgroup.subtree_control'), 'utf8'), '+cpu +memory +pids');

  const dir = path.join(own, 'cocoon', 'vm-1');
  await mkdir(dir);
  await writeFile(path.join(dir, 'memory.swap.max'), 'max\n'); // present when the kernel accounts swap
  const group = await cgroups.place('vm-1', 4242, LIMITS);
  const read = (file: string) => readFile(path.join(dir, file), 'utf8');
  assert.equal(await read('cpu.max'), '50000 100000');
  assert.equal(await read('cpu.weight'), '25');
  assert.equal(await read('memory.max'), String(384 * 2 ** 20));
  assert.equal(await read('memory.swap.max'), '0');
  await assert.rejects(read('memory.oom.group'), { code: 'ENOENT' }); // absent: skipped
  assert.equal(await read('pids.max'), '256');
  assert.equal(await read('cgroup.procs'), '4242');

  await writeFile(path.join(dir, 'cpu.stat'), 'usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n');
  await writeFile(path.join(dir, 'memory.current'), '123456\n');
  assert.deepEqual(await group.usage(), { cpuNs: 1_500_000_000, memoryBytes: 123456 });
  assert.equal((await cgroups.find('vm-1'))?.version, 2);
  assert.equal(await cgroups.find('vm-2'), undefined);
});

test('v2 refuses a group without the controllers it needs', async () => {
  const own = path.join(workDir, 'v2-bare');
  await mkdir(own, { recursive: true });
  await writeFile(path.join(own, 'cgroup.controllers'), 'cpu io\n');
  await assert.rejects(Cgroups.open({ version: 2, own, parent: path.join(own, 'cocoon') }), /memory, pids/);
});

test('v1 on a fake hierarchy: a directory per controller, the pid moved into each', async () => {
  const root = path.join(workDir, 'v1');
  const parents = { cpu: path.join(root, 'cpu', 'cocoon'), cpuacct: path.join(root, 'cpuacct', 'cocoon'), memory: path.join(root, 'memory', 'sandbox', 'cocoon') };
  const cgroups = await Cgroups.open({ version: 1, parents });
  const group = await cgroups.place('vm-1', 4242, LIMITS);
  assert.deepEqual(group.directories, [path.join(parents.cpu, 'vm-1'), path.join(parents.cpuacct, 'vm-1'), path.join(parents.memory, 'vm-1')]);
  for (const dir of group.directories) assert.equal(await readFile(path.join(dir, 'cgroup.procs'), 'utf8'), '4242');
  assert.equal(await readFile(path.join(parents.cpu, 'vm-1', 'cpu.cfs_quota_us'), 'utf8'), '50000');
  assert.equal(await readFile(path.join(parents.memory, 'vm-1', 'memory.limit_in_bytes'), 'utf8'), String(384 * 2 ** 20));
  // No pids hierarchy and no swap accounting here: neither is written.
  await assert.rejects(readFile(path.join(parents.memory, 'vm-1', 'memory.memsw.limit_in_bytes')), { code: 'ENOENT' });
  await writeFile(path.join(parents.cpuacct, 'vm-1', 'cpuacct.usage'), '2500000000\n');
  await writeFile(path.join(parents.memory, 'vm-1', 'memory.usage_in_bytes'), '4096\n');
  assert.deepEqual(await group.usage(), { cpuNs: 2_500_000_000, memoryBytes: 4096 });
});

test('a process without a group: usage from /proc', async () => {
  const usage = await processUsage(process.pid);
  assert.ok(usage.cpuNs > 0 && usage.memoryBytes > 0, JSON.stringify(usage));
});
