/**
 * A stage's configuration and the instructions that only change it (ENV, ARG, LABEL, MAINTAINER,
 * EXPOSE, USER, SHELL, CMD, ENTRYPOINT). They create no step, but the configuration enters the
 * cache key of every later step.
 */
import { BASE_DIRECTORIES, DEFAULT_PATH, DEFAULT_SHELL } from './bases.ts';
import { fail } from './fail.ts';
import type { Json } from './hash.ts';
import { expandWord, splitWords, SubstitutionError, type Vars } from './lexer.ts';
import { parseExecForm, type SourceInstruction } from './source.ts';

/** What a stage inherits from its parent stage (everything but ARGs). */
export interface StageConfig {
  env: Map<string, string>;
  cwd: string;
  user: string;
  shell: string[];
  cmd?: string[];
  entrypoint?: string[];
  entrypointIsShellForm: boolean;
  labels: Map<string, string>;
  exposedPorts: Set<number>;
  /** Directories known to exist (WORKDIRs, COPY destinations, the base's standard ones). */
  knownDirs: Set<string>;
}

export interface StageState {
  config: StageConfig;
  /** ARGs declared in this stage; undefined = declared without a value. */
  args: Map<string, string | undefined>;
  /** A CMD in this stage; without one, ENTRYPOINT clears the inherited CMD, as Docker does. */
  cmdSet: boolean;
}

export function baseConfig(): StageConfig {
  return {
    env: new Map([['PATH', DEFAULT_PATH]]),
    cwd: '/',
    user: 'root',
    shell: [...DEFAULT_SHELL],
    entrypointIsShellForm: false,
    labels: new Map(),
    exposedPorts: new Set(),
    knownDirs: new Set(BASE_DIRECTORIES),
  };
}

export function cloneConfig(config: StageConfig): StageConfig {
  return {
    ...config,
    env: new Map(config.env),
    shell: [...config.shell],
    cmd: config.cmd && [...config.cmd],
    entrypoint: config.entrypoint && [...config.entrypoint],
    labels: new Map(config.labels),
    exposedPorts: new Set(config.exposedPorts),
    knownDirs: new Set(config.knownDirs),
  };
}

/** Variables for substitution and for RUN's environment: ARGs with a value, then ENV over them. */
export function scopeVars(state: StageState): Map<string, string> {
  const vars = new Map<string, string>();
  for (const [name, value] of state.args) if (value !== undefined) vars.set(name, value);
  for (const [name, value] of state.config.env) vars.set(name, value);
  return vars;
}

/** Everything in a stage's state that can change what a later step does, for cache keys. */
export function configSnapshot(state: StageState): Json {
  const c = state.config;
  const args = [...state.args].filter((entry): entry is [string, string] => entry[1] !== undefined);
  return {
    env: Object.fromEntries(c.env),
    args: Object.fromEntries(args),
    cwd: c.cwd,
    user: c.user,
    shell: c.shell,
    cmd: c.cmd,
    entrypoint: c.entrypoint,
    labels: Object.fromEntries(c.labels),
    exposedPorts: [...c.exposedPorts].sort((a, b) => a - b),
  };
}

export type Expand = (word: string) => string;

/** `expandWord` with Docker's errors turned into Cocoon's, at the instruction's line. */
export function expander(line: number, vars: Vars, escape: string): Expand {
  return (word) => {
    try {
      return expandWord(word, vars, escape);
    } catch (error) {
      if (!(error instanceof SubstitutionError)) throw error;
      fail(error.kind === 'required' ? 'dockerfile.invalid' : 'dockerfile.syntax', line, error.message, { word });
    }
  };
}

/** ENV and LABEL: `a=b c="d e"`, or the old `name value with spaces`. All values see the state before the instruction. */
export function nameValues(ins: SourceInstruction, expand: Expand, escape: string): Array<[string, string]> {
  const words = splitWords(ins.text, escape);
  if (words.length === 0) fail('dockerfile.syntax', ins.line, `${ins.keyword} requires at least one name=value`);
  if (!words[0]!.includes('=')) {
    const legacy = /^(\S+)\s+(\S[\s\S]*)$/.exec(ins.text);
    if (!legacy) fail('dockerfile.syntax', ins.line, `${ins.keyword} ${words[0]} has no value; write ${ins.keyword} name=value`);
    return [[expand(legacy[1]!), expand(legacy[2]!)]];
  }
  return words.map((word) => {
    const eq = word.indexOf('=');
    if (eq < 0) fail('dockerfile.syntax', ins.line, `${ins.keyword}: can't find = in ${JSON.stringify(word)}; write name=value`);
    const name = expand(word.slice(0, eq));
    if (name === '') fail('dockerfile.syntax', ins.line, `${ins.keyword}: empty name in ${JSON.stringify(word)}`);
    return [name, expand(word.slice(eq + 1))];
  });
}

/** ARG: `NAME` or `NAME=default`, several per line. Defaults are expanded, names are not. */
export function argDeclarations(ins: SourceInstruction, expand: Expand, escape: string): Array<[string, string | undefined]> {
  const words = splitWords(ins.text, escape);
  if (words.length === 0) fail('dockerfile.syntax', ins.line, 'ARG requires a name');
  return words.map((word) => {
    const eq = word.indexOf('=');
    const name = eq < 0 ? word : word.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) fail('dockerfile.syntax', ins.line, `invalid ARG name ${JSON.stringify(name)}`);
    return [name, eq < 0 ? undefined : expand(word.slice(eq + 1))];
  });
}

/** EXPOSE 8080, 8080/tcp, 8000-8003; UDP and SCTP ports are ignored with a warning (the proxy is TCP only). */
export function exposedPorts(ins: SourceInstruction, expand: Expand, escape: string, warnings: string[]): number[] {
  const specs = splitWords(ins.text, escape).flatMap((word) => expand(word).split(/\s+/)).filter(Boolean);
  if (specs.length === 0) fail('dockerfile.syntax', ins.line, 'EXPOSE requires at least one port');
  const ports: number[] = [];
  for (const spec of specs) {
    const match = /^(\d+)(?:-(\d+))?(?:\/([A-Za-z]+))?$/.exec(spec);
    const first = Number(match?.[1]);
    const last = match?.[2] === undefined ? first : Number(match[2]);
    const protocol = (match?.[3] ?? 'tcp').toLowerCase();
    if (!match || first < 1 || last > 65535 || last < first || last - first >= 1024 || !['tcp', 'udp', 'sctp'].includes(protocol)) {
      fail('dockerfile.invalid', ins.line, `invalid EXPOSE port ${JSON.stringify(spec)}`, { port: spec });
    }
    if (protocol !== 'tcp') {
      warnings.push(`line ${ins.line}: EXPOSE ${spec} is ignored: only TCP ports can be reached`);
      continue;
    }
    for (let port = first; port <= last; port++) ports.push(port);
  }
  return ports;
}

/** CMD, ENTRYPOINT: exec form as written, shell form as `[...SHELL, text]`. */
export function commandForm(ins: SourceInstruction, shell: readonly string[], warnings: string[]): { argv: string[]; shellForm: boolean } {
  const exec = parseExecForm(ins.text);
  if (exec) return { argv: exec, shellForm: false };
  if (ins.text === '') fail('dockerfile.syntax', ins.line, `${ins.keyword} requires a command`);
  if (ins.text.startsWith('[')) {
    warnings.push(`line ${ins.line}: ${ins.keyword} starts with [ but is not a JSON array of strings; it runs as a shell command`);
  }
  return { argv: [...shell, ins.text], shellForm: true };
}

export function shellInstruction(ins: SourceInstruction): string[] {
  const exec = parseExecForm(ins.text);
  if (!exec || exec.length === 0) {
    fail('dockerfile.syntax', ins.line, 'SHELL requires a non-empty JSON array of strings, e.g. ["/bin/bash", "-c"]');
  }
  return exec;
}
