/**
 * Dockerfile → build plan: stages, their steps and each step's cache key. Pure and deterministic:
 * the same Dockerfile, build args, file list and base keys give the same plan.
 */
import { BASE_IMAGE_REFERENCES, PLATFORM_ARGS, resolveBaseImage } from './bases.ts';
import {
  argDeclarations, baseConfig, cloneConfig, commandForm, expander, exposedPorts, nameValues,
  scopeVars, shellInstruction, type StageState,
} from './config.ts';
import { indexContext, type ContextIndex } from './copy.ts';
import { fail } from './fail.ts';
import { finishPlan } from './finish.ts';
import { readDockerfile, type SourceInstruction } from './source.ts';
import { copyStep, runStep, workdirStep, type PlannedStage } from './steps.ts';
import type { BuildPlan, PlanInput, Step } from './types.ts';

const UNSUPPORTED = new Set(['HEALTHCHECK', 'ONBUILD', 'STOPSIGNAL', 'VOLUME']);
const KNOWN = new Set(['FROM', 'RUN', 'COPY', 'ADD', 'WORKDIR', 'ENV', 'ARG', 'USER', 'EXPOSE', 'LABEL', 'MAINTAINER', 'CMD', 'ENTRYPOINT', 'SHELL']);
const STAGE_NAME = /^[a-z][a-z0-9-_.]*$/;

export function planBuild(input: PlanInput): BuildPlan {
  return new Planner(input).plan();
}

class Planner {
  private readonly escape: string;
  private readonly instructions: SourceInstruction[];
  private readonly context: ContextIndex;
  private readonly buildArgs: ReadonlyMap<string, string>;
  private readonly globalArgs = new Map<string, string | undefined>();
  private readonly declaredArgs = new Set<string>();
  private readonly stages: PlannedStage[] = [];
  private readonly warnings: string[] = [];

  constructor(private readonly input: PlanInput) {
    const source = readDockerfile(input.dockerfileText);
    this.escape = source.escape;
    this.instructions = source.instructions;
    this.context = indexContext(input.files);
    this.buildArgs = new Map(Object.entries(input.buildArgs ?? {}));
  }

  plan(): BuildPlan {
    for (const ins of this.instructions) this.dispatch(ins);
    if (this.stages.length === 0) fail('dockerfile.invalid', undefined, 'the Dockerfile has no FROM instruction');
    for (const name of this.buildArgs.keys()) {
      if (!this.declaredArgs.has(name)) this.warnings.push(`build arg ${name} is not declared by any ARG and is ignored`);
    }
    return finishPlan(this.stages, this.input.target, this.warnings);
  }

  private get current(): PlannedStage | undefined {
    return this.stages[this.stages.length - 1];
  }

  private dispatch(ins: SourceInstruction): void {
    const { keyword, line } = ins;
    if (UNSUPPORTED.has(keyword)) {
      fail('dockerfile.unsupported_instruction', line, `${keyword} is not supported`, { instruction: keyword });
    }
    if (!KNOWN.has(keyword)) fail('dockerfile.syntax', line, `unknown instruction ${keyword}`, { instruction: keyword });
    if (keyword === 'FROM') return this.from(ins);
    const stage = this.current;
    if (stage === undefined) {
      if (keyword === 'ARG') return this.globalArg(ins);
      fail('dockerfile.syntax', line, `${keyword} before the first FROM (only ARG may come before FROM)`, { instruction: keyword });
    }
    if (ins.flags.length > 0 && !['RUN', 'COPY', 'ADD'].includes(keyword)) {
      fail('dockerfile.syntax', line, `unknown flag --${ins.flags[0]!.name} for ${keyword}`, { flag: ins.flags[0]!.name });
    }
    const state = stage.state;
    const config = state.config;
    const expand = expander(line, scopeVars(state), this.escape);
    switch (keyword) {
      case 'RUN': return this.addStep(stage, runStep(ins, stage));
      case 'COPY':
      case 'ADD': return this.addStep(stage, copyStep(ins, stage, expand, { escape: this.escape, context: this.context, stages: this.stages }));
      case 'WORKDIR': return this.addStep(stage, workdirStep(ins, stage, expand));
      case 'ENV':
        for (const [name, value] of nameValues(ins, expand, this.escape)) config.env.set(name, value);
        return;
      case 'ARG': return this.stageArg(ins, state, expand);
      case 'LABEL':
        for (const [name, value] of nameValues(ins, expand, this.escape)) config.labels.set(name, value);
        return;
      case 'MAINTAINER':
        config.labels.set('maintainer', ins.text);
        this.warnings.push(`line ${line}: MAINTAINER is deprecated; recorded as the label maintainer`);
        return;
      case 'EXPOSE':
        for (const port of exposedPorts(ins, expand, this.escape, this.warnings)) config.exposedPorts.add(port);
        return;
      case 'USER': {
        const user = expand(ins.text);
        if (user === '') fail('dockerfile.syntax', line, 'USER requires a user name or id');
        config.user = user;
        return;
      }
      case 'SHELL':
        config.shell = shellInstruction(ins);
        return;
      case 'CMD':
        config.cmd = commandForm(ins, config.shell, this.warnings).argv;
        state.cmdSet = true;
        return;
      case 'ENTRYPOINT': {
        const { argv, shellForm } = commandForm(ins, config.shell, this.warnings);
        config.entrypoint = argv;
        config.entrypointIsShellForm = shellForm;
        if (!state.cmdSet) config.cmd = undefined;
        return;
      }
    }
  }

  private globalVars(): Map<string, string> {
    const vars = new Map(PLATFORM_ARGS);
    for (const [name, value] of this.globalArgs) if (value !== undefined) vars.set(name, value);
    return vars;
  }

  private globalArg(ins: SourceInstruction): void {
    const expand = expander(ins.line, this.globalVars(), this.escape);
    for (const [name, fallback] of argDeclarations(ins, expand, this.escape)) {
      this.declaredArgs.add(name);
      this.globalArgs.set(name, this.buildArgs.get(name) ?? fallback);
    }
  }

  /** A stage's ARG: the build arg, else its own default, else the global ARG of that name (Docker's redeclaration). */
  private stageArg(ins: SourceInstruction, state: StageState, expand: (word: string) => string): void {
    for (const [name, fallback] of argDeclarations(ins, expand, this.escape)) {
      this.declaredArgs.add(name);
      const inherited = this.globalArgs.has(name) ? this.globalArgs.get(name) : PLATFORM_ARGS.get(name);
      state.args.set(name, this.buildArgs.get(name) ?? fallback ?? inherited);
    }
  }

  private from(ins: SourceInstruction): void {
    const { line } = ins;
    for (const flag of ins.flags) {
      if (flag.name !== 'platform') fail('dockerfile.syntax', line, `unknown flag --${flag.name} for FROM`, { flag: flag.name });
      this.warnings.push(`line ${line}: FROM --platform is ignored; images are built for linux/amd64`);
    }
    const words = ins.text.split(/\s+/).filter(Boolean);
    if (!(words.length === 1 || (words.length === 3 && words[1]!.toLowerCase() === 'as'))) {
      fail('dockerfile.syntax', line, 'FROM takes an image, optionally followed by AS <name>');
    }
    const image = expander(line, this.globalVars(), this.escape)(words[0]!);
    if (image === '') fail('dockerfile.invalid', line, `FROM ${words[0]} names an empty image`);
    const name = words[2]?.toLowerCase();
    if (name !== undefined) {
      if (!STAGE_NAME.test(name)) fail('dockerfile.syntax', line, `invalid stage name ${words[2]}: use lowercase letters, digits, -, _ and .`);
      const clash = this.stages.find((s) => s.name === name);
      if (clash) fail('dockerfile.invalid', line, `stage name ${name} is already used on line ${clash.line}`, { stage: name });
    }
    const index = this.stages.length;
    const parent = this.stages.find((s) => s.name === image.toLowerCase());
    const common = { index, name, line, steps: [], deps: new Set<number>() };
    if (parent) {
      const state = { config: cloneConfig(parent.state.config), args: new Map(), cmdSet: false };
      common.deps.add(parent.index);
      this.stages.push({ ...common, base: { kind: 'stage', index: parent.index }, parentKey: parent.resultKey, resultKey: parent.resultKey, state });
      return;
    }
    const base = resolveBaseImage(image);
    if (!base) {
      fail('dockerfile.unknown_base', line, `unknown base image ${image}; use one of ${BASE_IMAGE_REFERENCES.join(', ')} or an earlier stage`, {
        image, validNames: BASE_IMAGE_REFERENCES,
      });
    }
    if (base.warning) this.warnings.push(`line ${line}: ${base.warning}`);
    const parentKey = this.input.baseKeys[base.name];
    const state = { config: baseConfig(), args: new Map(), cmdSet: false };
    this.stages.push({ ...common, base: { kind: 'base-image', name: base.name }, parentKey, resultKey: parentKey, state });
  }

  private addStep(stage: PlannedStage, step: Step): void {
    stage.steps.push(step);
    stage.resultKey = step.cacheKey;
  }
}
