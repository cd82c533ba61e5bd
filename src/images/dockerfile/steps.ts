/**
 * The instructions that produce a layer: RUN, COPY/ADD and WORKDIR. Each step's cache key chains
 * its parent's key with everything that decides its result, including the stage's configuration.
 */
import path from 'node:path';
import { configSnapshot, scopeVars, type Expand, type StageState } from './config.ts';
import { planContextCopy, planStageCopy, withAncestors, type ContextIndex, type CopyRequest } from './copy.ts';
import { fail } from './fail.ts';
import { chainKey, type Json } from './hash.ts';
import { parseExecForm, type SourceInstruction } from './source.ts';
import type { CopyStep, RunStep, Step, StageBase, WorkdirStep } from './types.ts';

const posix = path.posix;

/** A stage while it is being planned. */
export interface PlannedStage {
  index: number;
  name?: string;
  /** Line of its FROM. */
  line: number;
  base: StageBase;
  parentKey: string;
  resultKey: string;
  steps: Step[];
  /** Stages this one needs: its parent stage and the sources of its COPY --from. */
  deps: Set<number>;
  state: StageState;
}

export interface CopyContext {
  escape: string;
  context: ContextIndex;
  stages: readonly PlannedStage[];
}

function stepCommon(ins: SourceInstruction, stage: PlannedStage, content: { [key: string]: Json | undefined }) {
  const parentKey = stage.resultKey;
  // The line is left out on purpose: moving an instruction or adding a comment keeps the cache.
  const cacheKey = chainKey(parentKey, { ...content, config: configSnapshot(stage.state) });
  return { line: ins.line, instruction: ins.display, position: { n: 0, total: 0 }, parentKey, cacheKey };
}

function runArgv(ins: SourceInstruction, shell: readonly string[]): string[] {
  if (ins.heredocs.length > 0) {
    // `RUN <<EOF` alone runs the body as the command (BuildKit's rule); otherwise the shell gets the
    // command line followed by the here-documents and handles them itself.
    if (ins.heredocs.length === 1 && /^<<-?(["']?)[^\s"']+\1$/.test(ins.text)) {
      const body = ins.heredocs[0]!.body;
      if (body.startsWith('#!')) {
        fail('dockerfile.unsupported_instruction', ins.line, 'RUN with a #! here-document is not supported; write RUN <interpreter> <<EOF instead', { instruction: 'RUN' });
      }
      return [...shell, body];
    }
    return [...shell, [ins.text, ...ins.heredocs.map((h) => h.body + h.name)].join('\n')];
  }
  const exec = parseExecForm(ins.text);
  if (exec) {
    if (exec.length === 0) fail('dockerfile.syntax', ins.line, 'RUN [] has no command');
    return exec;
  }
  if (ins.text === '') fail('dockerfile.syntax', ins.line, 'RUN requires a command');
  return [...shell, ins.text];
}

export function runStep(ins: SourceInstruction, stage: PlannedStage): RunStep {
  for (const flag of ins.flags) {
    if (['mount', 'network', 'security'].includes(flag.name)) {
      fail('dockerfile.unsupported_instruction', ins.line, `RUN --${flag.name} is not supported`, { instruction: 'RUN', flag: flag.name });
    }
    fail('dockerfile.syntax', ins.line, `unknown flag --${flag.name} for RUN`, { flag: flag.name });
  }
  const { config } = stage.state;
  const env = Object.fromEntries([...scopeVars(stage.state)].sort(([a], [b]) => (a < b ? -1 : 1)));
  const content = { kind: 'run' as const, argv: runArgv(ins, config.shell), env, cwd: config.cwd, user: config.user };
  return { ...content, ...stepCommon(ins, stage, content) };
}

export function workdirStep(ins: SourceInstruction, stage: PlannedStage, expand: Expand): WorkdirStep {
  const raw = expand(ins.text);
  if (raw === '') fail('dockerfile.syntax', ins.line, 'WORKDIR requires a path');
  const { config } = stage.state;
  const dir = posix.resolve(config.cwd, raw);
  config.cwd = dir;
  for (const d of withAncestors(dir)) config.knownDirs.add(d);
  const content = { kind: 'workdir' as const, path: dir, user: config.user };
  return { ...content, ...stepCommon(ins, stage, content) };
}

const COPY_FLAGS: Record<'COPY' | 'ADD', readonly string[]> = { COPY: ['from', 'chown', 'chmod', 'link'], ADD: ['chown', 'chmod', 'link'] };
const UNSUPPORTED_COPY_FLAGS = ['parents', 'exclude', 'checksum', 'keep-git-dir', 'unpack'];

function sourceStage(text: string, stage: PlannedStage, stages: readonly PlannedStage[], line: number): PlannedStage {
  const ref = text.toLowerCase();
  const found = /^\d+$/.test(ref) ? stages[Number(ref)] : stages.find((s) => s.name === ref);
  if (found === undefined || found.index >= stage.index) {
    const earlier = stages.slice(0, stage.index).map((s) => s.name ?? String(s.index));
    fail('dockerfile.unknown_stage', line, `--from=${text} names no earlier stage (earlier stages: ${earlier.join(', ') || 'none'})`, { stage: text, stages: earlier });
  }
  return found;
}

export function copyStep(ins: SourceInstruction, stage: PlannedStage, expand: Expand, ctx: CopyContext): CopyStep {
  const keyword = ins.keyword === 'ADD' ? 'ADD' : 'COPY';
  const { line } = ins;
  const flags = new Map<string, string>();
  for (const flag of ins.flags) {
    if (UNSUPPORTED_COPY_FLAGS.includes(flag.name)) {
      fail('dockerfile.unsupported_instruction', line, `${keyword} --${flag.name} is not supported`, { instruction: keyword, flag: flag.name });
    }
    if (!COPY_FLAGS[keyword].includes(flag.name)) fail('dockerfile.syntax', line, `unknown flag --${flag.name} for ${keyword}`, { flag: flag.name });
    if (flag.name === 'link') continue; // changes only how BuildKit stores the layer
    const value = flag.value === null ? '' : expand(flag.value);
    if (value === '') fail('dockerfile.syntax', line, `${keyword} --${flag.name} needs a value`, { flag: flag.name });
    flags.set(flag.name, value);
  }
  const words = parseExecForm(ins.text) ?? ins.text.split(/\s+/).filter(Boolean);
  if (ins.heredocs.length > 0 || words.some((word) => word.startsWith('<<'))) {
    fail('dockerfile.unsupported_instruction', line, `${keyword} with a here-document is not supported; put the file in the artifact`, { instruction: keyword });
  }
  if (words.length < 2) fail('dockerfile.syntax', line, `${keyword} requires at least one source and a destination`);
  const paths = words.map(expand);
  const { config } = stage.state;
  const request: CopyRequest = { line, keyword, sources: paths.slice(0, -1), dest: paths[paths.length - 1]!, cwd: config.cwd, knownDirs: config.knownDirs };

  const chmodText = flags.get('chmod');
  if (chmodText !== undefined && !/^[0-7]{3,4}$/.test(chmodText)) {
    fail('dockerfile.invalid', line, `${keyword} --chmod=${chmodText} must be an octal mode such as 755`, { chmod: chmodText });
  }
  const chmod = chmodText === undefined ? undefined : parseInt(chmodText, 8);
  const chown = flags.get('chown');

  const from = flags.get('from');
  let keySources: Json;
  let planned;
  if (from !== undefined) {
    const source = sourceStage(from, stage, ctx.stages, line);
    stage.deps.add(source.index);
    planned = planStageCopy(request, source.index);
    keySources = { stageKey: source.resultKey, paths: planned.sources.map((s) => s.path) };
  } else {
    planned = planContextCopy(request, ctx.context);
    keySources = planned.sources.map((s) => (s.from === 'context' ? { path: s.path, sha256: s.sha256, mode: s.mode } : null));
  }
  for (const dir of planned.dirs) for (const d of withAncestors(dir)) config.knownDirs.add(d);
  const { sources, entries, destIsDirectory } = planned;
  const common = stepCommon(ins, stage, {
    kind: 'copy', sources: keySources, entries: entries.map((e) => ({ source: e.source, dest: e.dest })), destIsDirectory, chown, chmod,
  });
  return { kind: 'copy', sources, entries, destIsDirectory, chown, chmod, ...common };
}
