/** Helpers shared by this folder's tests. */
import assert from 'node:assert/strict';
import { isAppError, type ErrorCode } from '../../errors/errors.ts';
import { planBuild } from './planner.ts';
import type { BuildPlan, FileInfo, PlanInput, Step } from './types.ts';

export const baseKeys = { debian: 'd'.repeat(64), tiny: 't'.repeat(64) } as const;

export function file(content: string, mode = 0o644): FileInfo {
  return { sizeBytes: content.length, mode, sha256: content.padEnd(64, '0').slice(0, 64) };
}

export function filesOf(paths: Record<string, string>): Map<string, FileInfo> {
  return new Map(Object.entries(paths).map(([path, content]) => [path, file(content)]));
}

export const defaultFiles = filesOf({ 'app.py': 'a1', 'requirements.txt': 'r1', 'Dockerfile': 'df' });

export function plan(dockerfileText: string, options: Partial<PlanInput> = {}): BuildPlan {
  return planBuild({ dockerfileText, files: defaultFiles, baseKeys, ...options });
}

/** The steps of the final stage. */
export function finalSteps(result: BuildPlan): Step[] {
  return result.stages[result.finalStage]!.steps;
}

export function step<K extends Step['kind']>(result: BuildPlan, index: number, kind: K, stage = result.finalStage): Extract<Step, { kind: K }> {
  const found = result.stages[stage]!.steps[index];
  assert.equal(found?.kind, kind);
  return found as Extract<Step, { kind: K }>;
}

export function assertFails(fn: () => unknown, code: ErrorCode, line?: number, pattern?: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(isAppError(error), `expected an AppError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    if (line !== undefined) {
      assert.equal(error.details.line, line, error.message);
      assert.match(error.message, new RegExp(`^line ${line}: `));
    }
    if (pattern) assert.match(error.message, pattern);
    return true;
  });
}
