/**
 * The shape of a build plan: what the builder executes, step by step, inside the build VM.
 * A plan is pure data: it is computed from the Dockerfile text and the artifact's file list alone.
 */

/** One file of the extracted artifact, keyed by its relative POSIX path. */
export interface FileInfo {
  sizeBytes: number;
  mode: number;
  sha256: string;
}

export type BaseImageName = 'debian' | 'tiny';

export interface PlanInput {
  dockerfileText: string;
  /** `--build-arg` values; they override the defaults of the ARGs that declare them. */
  buildArgs?: Readonly<Record<string, string>>;
  files: ReadonlyMap<string, FileInfo>;
  /** Name of the stage to build (Docker's `--target`); the last stage by default. */
  target?: string;
  /** Identity of each base root filesystem (e.g. its sha256): the parent key of a stage's first step. */
  baseKeys: Readonly<Record<BaseImageName, string>>;
}

export type StageBase = { kind: 'base-image'; name: BaseImageName } | { kind: 'stage'; index: number };

export interface Stage {
  /** Position of the stage's FROM among all FROMs (0-based); equals its index in `BuildPlan.stages`. */
  index: number;
  /** Lower-cased, as Docker treats stage names. */
  name?: string;
  base: StageBase;
  /** False when the final stage does not depend on this stage: the builder skips it (like BuildKit). */
  used: boolean;
  /** Key of the layer the stage starts from: the base key, or the result key of the parent stage. */
  parentKey: string;
  /** Key of the stage's last layer (its `parentKey` when it has no steps). */
  resultKey: string;
  steps: Step[];
}

/** Where a step sits, for build logs: `[build 2/5]`, or `[2/5]` when only one stage is built. */
export interface StepPosition {
  stage?: string;
  n: number;
  total: number;
}

interface StepCommon {
  /** 1-based line of the instruction in the Dockerfile. */
  line: number;
  /** The instruction as written, continuations joined, for logs. */
  instruction: string;
  position: StepPosition;
  /** Key of the layer this step runs on. */
  parentKey: string;
  /** sha256(parentKey + canonical JSON of everything that affects the step's result). */
  cacheKey: string;
}

export interface RunStep extends StepCommon {
  kind: 'run';
  /** Exec form as written; shell form becomes `[...SHELL, command]`. */
  argv: string[];
  /** The whole process environment: ENV plus the ARGs in scope (ENV wins). */
  env: Record<string, string>;
  cwd: string;
  user: string;
}

export type CopySource =
  | { from: 'context'; path: string; sha256: string; mode: number }
  | { from: 'stage'; stage: number; path: string };

export interface CopyEntry {
  /** Context copies: a file's relative path in the artifact. Stage copies: an absolute path (or glob) in that stage. */
  source: string;
  /** Context copies: the file's absolute path in the guest. Stage copies: see `destIsDirectory`. */
  dest: string;
}

export interface CopyStep extends StepCommon {
  kind: 'copy';
  /** Context copies list every copied file once; stage copies list each source path as written. */
  sources: CopySource[];
  entries: CopyEntry[];
  /**
   * Whether a file source lands inside `dest` (true) or becomes `dest` (false). Context entries are
   * already resolved; for stage entries the executor applies it (a directory source's contents
   * always go into `dest`, as in Docker).
   */
  destIsDirectory: boolean;
  chown?: string;
  chmod?: number;
}

export interface WorkdirStep extends StepCommon {
  kind: 'workdir';
  path: string;
  /** Owner of the created directory: the USER in effect, as BuildKit does. */
  user: string;
}

export type Step = RunStep | CopyStep | WorkdirStep;

export interface RuntimeConfig {
  /** ENTRYPOINT followed by CMD, each already in exec form. */
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  user: string;
  /** TCP ports, ascending. */
  exposedPorts: number[];
  labels: Record<string, string>;
}

export interface BuildPlan {
  stages: Stage[];
  finalStage: number;
  warnings: string[];
  runtime: RuntimeConfig;
  /** Key of the whole image: the final stage's result key plus the runtime configuration. */
  imageKey: string;
}
