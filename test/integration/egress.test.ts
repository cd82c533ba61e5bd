/**
 * Egress isolation on real VMs: from inside a guest, in `none` and `internet` mode, the host (its
 * loopback through slirp's 10.0.2.2, its own address, the host side of the VM's veth), another VM,
 * the cloud metadata address and a private address are unreachable; in `internet` mode DNS works
 * and the Debian mirror answers. Root only (namespaces, nftables).
 *
 * Traffic goes only to loopback, to the host's own address, to the mirror, and to test hosts this
 * file creates in a namespace of its own: 169.254.169.254 and 10.99.0.1 are routed from the host to
 * that namespace, where a listener records every connection, so a failing block reaches only it.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../src/config/config.ts';
import { isAppError } from '../../src/errors/errors.ts';
import { httpGet, waitUntil } from '../../src/host/http-probe.ts';
import { run } from '../../src/host/run.ts';
import { startEngine, type Engine } from '../../src/main/engine.ts';
import type { EgressSpec, RunningVm, TemplateSnapshot } from '../../src/vmm/driver.ts';
import { QemuDriver } from '../../src/vmm/qemu/driver.ts';

const APP_PORT = 8080;
const TEST_NETNS = `cocoon-test-${process.pid}`;
const TEST_VETH = `ct${process.pid}`.slice(0, 15);
/** Test hosts in TEST_NETNS: the cloud metadata address and a private one. */
const METADATA = '169.254.169.254';
const PRIVATE = '10.99.0.1';
const TEST_HOST_PORT = 80;
const MIRROR_GET = 'printf "GET /debian/dists/bookworm/Release HTTP/1.1\\r\\nHost: deb.debian.org\\r\\nRange: bytes=0-99\\r\\nConnection: close\\r\\n\\r\\n"';
const isRoot = process.getuid?.() === 0;

let engine: Engine;
let workDir: string;
let template: TemplateSnapshot;
const running = new Set<RunningVm>();
let testHosts: ChildProcess | undefined;
const testHostConnections: string[] = [];
let hostListener: net.Server;
let hostListenerPort: number;
const hostConnections: string[] = [];
let tableExisted = true;
let forwardingBefore = '';

async function launch(name: string, egress?: EgressSpec): Promise<RunningVm> {
  const vm = await engine.driver.launch(template, path.join(workDir, name), egress ? { egress } : {});
  running.add(vm);
  await vm.agent.startApp({ argv: ['/usr/local/bin/cocoon-testapp', String(APP_PORT)] });
  await waitUntil(async () => (await httpGet({ host: vm.hostAddress, port: vm.hostPort(APP_PORT) }, '/', 5000)).status === 200, 60_000, 100);
  return vm;
}

async function stop(vm: RunningVm): Promise<void> {
  running.delete(vm);
  await engine.driver.stop(vm);
}

async function sh(vm: RunningVm, script: string, timeoutMs = 30_000): Promise<{ code: number | null; out: string }> {
  const result = await vm.agent.exec({ argv: ['/bin/sh', '-c', script], timeoutMs });
  return { code: result.exitCode, out: `${result.stdout.toString()}${result.stderr.toString()}`.trim() };
}

/** A TCP connection attempt from the guest: true if it was established. */
async function guestConnects(vm: RunningVm, host: string, port: number): Promise<boolean> {
  const { code, out } = await sh(vm, `echo probe | nc -w 3 ${host} ${port}`);
  if (code === 0) return true;
  assert.match(out, /can't connect|timed out|refused|unreachable|No route/i, `nc ${host} ${port}: ${out}`);
  return false;
}

/** Every destination a guest must never reach, given the VM under test and a second VM. */
function forbiddenTargets(vm: RunningVm, other: RunningVm): Array<[string, string, number]> {
  const targets: Array<[string, string, number]> = [
    ['the host loopback through slirp\'s gateway', '10.0.2.2', hostListenerPort],
    ['the host\'s own address', hostAddress(), hostListenerPort],
    ['the cloud metadata address', METADATA, TEST_HOST_PORT],
    ['a private address', PRIVATE, TEST_HOST_PORT],
    ['another VM\'s forwarded app port (via slirp\'s gateway)', '10.0.2.2', other.hostPort(APP_PORT)],
  ];
  if (other.hostAddress !== '127.0.0.1') targets.push(['another VM\'s namespace', other.hostAddress, other.hostPort(APP_PORT)]);
  if (vm.hostAddress !== '127.0.0.1') {
    // The host side of its own veth pair: the host itself, one hop away.
    const hostSide = vm.hostAddress.replace(/\d+$/, (last) => String(Number(last) - 1));
    targets.push(['the host side of its veth', hostSide, hostListenerPort]);
  }
  return targets;
}

function hostAddress(): string {
  const address = Object.values(os.networkInterfaces()).flat().find((a) => a && a.family === 'IPv4' && !a.internal && !a.address.startsWith('10.201.'));
  assert.ok(address, 'the host has a non-loopback IPv4 address');
  return address.address;
}

/** Tries every forbidden target at once (a blocked connection waits for nc's timeout in the guest). */
async function assertIsolated(vm: RunningVm, other: RunningVm): Promise<void> {
  const targets = forbiddenTargets(vm, other);
  const probes = targets.map(([, host, port], i) => `(echo probe | nc -w 3 ${host} ${port} >/dev/null 2>&1; echo "${i} $?") &`);
  const { out } = await sh(vm, `${probes.join('\n')}\nwait`);
  const codes = new Map(out.split('\n').map((line) => line.split(' ').map(Number) as [number, number]));
  for (const [i, [what, host, port]] of targets.entries()) {
    assert.ok(codes.has(i), `no outcome for ${what}: ${out}`);
    assert.notEqual(codes.get(i), 0, `the guest reached ${what} (${host}:${port})`);
  }
  assert.deepEqual(hostConnections, [], 'the host listener saw no connection');
  assert.deepEqual(testHostConnections, [], 'the test hosts saw no connection');
}

/** A namespace with the test hosts, routed from the host through a veth pair. */
async function startTestHosts(): Promise<void> {
  await run('ip', ['netns', 'add', TEST_NETNS]);
  await run('ip', ['link', 'add', TEST_VETH, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', TEST_NETNS]);
  await run('ip', ['addr', 'add', '10.98.0.1/30', 'dev', TEST_VETH]);
  await run('ip', ['link', 'set', TEST_VETH, 'up']);
  for (const args of [
    ['addr', 'add', '10.98.0.2/30', 'dev', 'eth0'], ['addr', 'add', `${METADATA}/32`, 'dev', 'lo'], ['addr', 'add', `${PRIVATE}/32`, 'dev', 'lo'],
    ['link', 'set', 'eth0', 'up'], ['link', 'set', 'lo', 'up'], ['route', 'add', 'default', 'via', '10.98.0.1'],
  ]) await run('ip', ['-n', TEST_NETNS, ...args]);
  for (const address of [METADATA, PRIVATE]) await run('ip', ['route', 'add', `${address}/32`, 'via', '10.98.0.2', 'dev', TEST_VETH]);
  const script = `const net = require('node:net');
    for (const host of ${JSON.stringify([METADATA, PRIVATE])}) net.createServer((s) => { console.log('connection ' + host + ' from ' + s.remoteAddress); s.destroy(); }).listen(${TEST_HOST_PORT}, host, () => console.log('listening ' + host));`;
  testHosts = spawn('nsenter', [`--net=/run/netns/${TEST_NETNS}`, '--', process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const listening = new Set<string>();
  testHosts.stdout!.setEncoding('utf8').on('data', (text: string) => {
    for (const line of text.split('\n').filter(Boolean)) {
      if (line.startsWith('listening ')) listening.add(line);
      else testHostConnections.push(line);
    }
  });
  await waitUntil(async () => listening.size === 2, 10_000);
  // The test hosts answer the host itself: a blocked guest is blocked by the rules, not by a missing route.
  for (const address of [METADATA, PRIVATE]) await connectOnce(address, TEST_HOST_PORT);
  await waitUntil(async () => testHostConnections.length === 2, 5000);
  testHostConnections.length = 0;
}

function connectOnce(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, timeout: 5000 }, () => { socket.destroy(); resolve(); });
    socket.on('error', reject);
    socket.on('timeout', () => socket.destroy(new Error(`${host}:${port} timed out`)));
  });
}

describe('egress isolation', { skip: isRoot ? false : 'needs root (network namespaces, nftables)' }, () => {
  before(async () => {
    workDir = await mkdtemp(path.join(os.tmpdir(), 'cocoon-egress-'));
    tableExisted = await run('nft', ['list', 'table', 'inet', 'cocoon']).then(() => true, () => false);
    forwardingBefore = readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim();
    engine = await startEngine({ config: loadConfig({ dataDir: path.join(workDir, 'data') }), log: (line) => console.log(`# ${line}`) });
    assert.ok(engine.networks, `internet egress is available: ${engine.driver.internetEgressUnavailable}`);
    hostListener = net.createServer((socket) => { hostConnections.push(`from ${socket.remoteAddress}`); socket.destroy(); });
    await new Promise<void>((resolve) => hostListener.listen(0, '0.0.0.0', resolve));
    hostListenerPort = (hostListener.address() as net.AddressInfo).port;
    await connectOnce('127.0.0.1', hostListenerPort);
    await waitUntil(async () => hostConnections.length === 1, 5000);
    hostConnections.length = 0;
    await startTestHosts();
    const source = await engine.driver.boot({
      dir: path.join(workDir, 'template'), rootDisk: { kind: 'copy', rootfsPath: engine.artifacts.rootfs.tiny }, hostname: 'egress',
      memoryMiB: 128, vcpus: 1, guestPorts: [APP_PORT], templateSource: true,
    });
    running.add(source);
    template = await engine.driver.snapshotTemplate(source);
    running.delete(source);
  });

  after(async () => {
    // Every VM, namespace, route and rule this file made goes, even when a test failed.
    await Promise.all([...running].map((vm) => engine.driver.stop(vm).catch(() => process.kill(vm.pid, 'SIGKILL'))));
    testHosts?.kill('SIGKILL');
    hostListener?.close();
    await run('ip', ['netns', 'delete', TEST_NETNS]).catch(() => {});
    await run('ip', ['link', 'delete', TEST_VETH]).catch(() => {});
    await engine?.networks?.sweep();
    if (!tableExisted) await run('nft', ['delete', 'table', 'inet', 'cocoon']).catch(() => {});
    if (forwardingBefore === '0') await run('sysctl', ['-qw', 'net.ipv4.ip_forward=0']).catch(() => {});
    await engine?.driver.idle();
    await rm(workDir, { recursive: true, force: true });
  });

  test('none: the guest reaches nothing, not even DNS', { timeout: 180_000 }, async () => {
    const [vm, other] = await Promise.all([launch('none-a'), launch('none-b')]);
    assert.equal(vm.hostAddress, '127.0.0.1');
    await assertIsolated(vm, other);
    assert.notEqual((await sh(vm, 'nslookup deb.debian.org', 15_000)).code, 0);
    await Promise.all([stop(vm), stop(other)]);
  });

  test('internet: DNS and the Debian mirror work, the host, other VMs and private ranges do not', { timeout: 240_000 }, async () => {
    const [vm, other] = await Promise.all([launch('inet-a', { mode: 'internet' }), launch('inet-b', { mode: 'internet' })]);
    assert.notEqual(vm.hostAddress, '127.0.0.1');
    assert.notEqual(vm.hostAddress, other.hostAddress);
    const lookup = await sh(vm, 'nslookup deb.debian.org');
    assert.equal(lookup.code, 0, lookup.out);
    assert.match(lookup.out, /Address:?\s+\d+\.\d+\.\d+\.\d+/);
    const mirror = await sh(vm, `(${MIRROR_GET}; sleep 2) | nc -w 10 deb.debian.org 80 | head -1`);
    assert.match(mirror.out, /^HTTP\/1\.1 20[06]/, mirror.out);
    await assertIsolated(vm, other);
    await assertIsolated(other, vm);

    // A resume gets a fresh namespace; the one of the suspended VM is gone meanwhile.
    const { netns } = engine.networks!.namesOf(vm.dir);
    running.delete(vm);
    const suspended = await engine.driver.suspend(vm);
    assert.equal(existsSync(`/run/netns/${netns}`), false);
    const resumed = await engine.driver.resume(suspended, { egress: { mode: 'internet' } });
    running.add(resumed);
    assert.equal((await httpGet({ host: resumed.hostAddress, port: resumed.hostPort(APP_PORT) }, '/', 10_000)).status, 200);
    const again = await sh(resumed, `(${MIRROR_GET}; sleep 2) | nc -w 10 deb.debian.org 80 | head -1`);
    assert.match(again.out, /^HTTP\/1\.1 20[06]/, again.out);
    await assertIsolated(resumed, other);
    await Promise.all([stop(resumed), stop(other)]);
    assert.equal(existsSync(`/run/netns/${netns}`), false);
  });

  test('internet with an allow-list: only the listed destinations', { timeout: 180_000 }, async () => {
    const mirror = (await run('getent', ['ahostsv4', 'deb.debian.org'])).split(/\s+/)[0]!;
    const [vm, other] = await Promise.all([
      launch('allow-a', { mode: 'internet', allow: [{ cidr: `${mirror}/32`, ports: [80] }] }),
      launch('allow-b'),
    ]);
    const allowed = await sh(vm, `(${MIRROR_GET}; sleep 2) | nc -w 10 ${mirror} 80 | head -1`);
    assert.match(allowed.out, /^HTTP\/1\.1 20[06]/, allowed.out);
    assert.equal(await guestConnects(vm, mirror, 443), false, 'a port not on the list');
    await assertIsolated(vm, other);
    await Promise.all([stop(vm), stop(other)]);
  });

  test('a host without namespaces refuses internet egress', async () => {
    const rootless = await QemuDriver.create({ accelerator: engine.driver.accelerator, artifacts: engine.bootFiles, networksUnavailable: 'Cocoon does not run as root' });
    assert.match(rootless.internetEgressUnavailable ?? '', /root/);
    await assert.rejects(rootless.launch(template, path.join(workDir, 'refused'), { egress: { mode: 'internet' } }),
      (error) => isAppError(error, 'vm.egress_unavailable'));
  });
});
