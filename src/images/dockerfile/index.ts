/** Dockerfile planning: pure functions from a Dockerfile and the artifact's file list to a build plan. */
export { planBuild } from './planner.ts';
export { describeStep } from './describe.ts';
export type {
  BaseImageName, BuildPlan, CopyEntry, CopySource, CopyStep, FileInfo, PlanInput, RunStep, RuntimeConfig, Stage,
  StageBase, Step, StepPosition, WorkdirStep,
} from './types.ts';
