// Which kernel modules the guest needs, and in which order the agent loads them. Pure.

/**
 * What the agent needs from Debian's kernel (everything is a module there): the virtio-mmio bus,
 * disk, network, the control channel (virtio-serial), the RNG, and ext4 for the root disk.
 * crc32c_generic is a soft dependency of ext4 (metadata_csum), so modules.dep does not list it;
 * it is named here, before ext4.
 */
export const GUEST_MODULES: readonly string[] = [
  'virtio_mmio',
  'virtio_blk',
  'virtio_net',
  'virtio_console',
  'virtio-rng',
  'crc32c_generic',
  'ext4',
];

export interface ModuleFile {
  /** Module name as spelled by its file name, e.g. "virtio-rng". */
  name: string;
  /** Path relative to /lib/modules/<version>, e.g. "kernel/drivers/virtio/virtio.ko". */
  path: string;
}

/** "kernel/drivers/char/hw_random/virtio-rng.ko.xz" → "virtio-rng". */
export function moduleNameFromPath(path: string): string {
  const base = path.slice(path.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, '');
}

/** The kernel treats "-" and "_" in module names as the same character. */
export function normalizeModuleName(name: string): string {
  return name.replaceAll('-', '_');
}

/** modules.dep: one "path: dep dep …" line per module; deps are the full transitive closure. */
export function parseModulesDep(text: string): Map<string, { path: string; deps: string[] }> {
  const modules = new Map<string, { path: string; deps: string[] }>();
  for (const rawLine of text.split('\n')) {
    const line = rawLine.trim();
    if (line === '' || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    if (colon < 0) throw new Error(`modules.dep: malformed line ${JSON.stringify(line)}`);
    const path = line.slice(0, colon).trim();
    const deps = line.slice(colon + 1).trim().split(/\s+/).filter((dep) => dep !== '');
    modules.set(normalizeModuleName(moduleNameFromPath(path)), { path, deps });
  }
  return modules;
}

/** modules.builtin: paths of modules compiled into the kernel (nothing to load for them). */
export function parseModulesBuiltin(text: string): Set<string> {
  return new Set(
    text
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '')
      .map((path) => normalizeModuleName(moduleNameFromPath(path))),
  );
}

/**
 * The modules to load for `wanted`, dependencies first, each once. Wanted modules keep their
 * relative order; a module's dependencies are visited in reverse modules.dep order, which is the
 * order modprobe loads them in. Built-in modules are skipped; an unknown module is an error.
 */
export function orderModules(modulesDepText: string, wanted: readonly string[], builtinText = ''): ModuleFile[] {
  const modules = parseModulesDep(modulesDepText);
  const builtin = parseModulesBuiltin(builtinText);
  const byPath = new Map<string, string>();
  for (const [name, module] of modules) byPath.set(module.path, name);

  const order: ModuleFile[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (key: string, chain: readonly string[]): void => {
    if (done.has(key)) return;
    if (visiting.has(key)) throw new Error(`modules.dep: dependency cycle ${[...chain, key].join(' → ')}`);
    const module = modules.get(key);
    if (module === undefined) throw new Error(`modules.dep: no module ${key} (needed by ${chain.join(' → ') || 'the guest'})`);
    visiting.add(key);
    for (const depPath of [...module.deps].reverse()) {
      const depKey = byPath.get(depPath) ?? normalizeModuleName(moduleNameFromPath(depPath));
      visit(depKey, [...chain, key]);
    }
    visiting.delete(key);
    done.add(key);
    order.push({ name: moduleNameFromPath(module.path), path: module.path });
  };
  for (const name of wanted) {
    const key = normalizeModuleName(name);
    if (!modules.has(key) && builtin.has(key)) continue;
    visit(key, []);
  }
  return order;
}
