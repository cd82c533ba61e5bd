/** The end of planning: the final stage, which stages it needs, step positions and the runtime config. */
import { fail } from './fail.ts';
import { chainKey } from './hash.ts';
import type { PlannedStage } from './steps.ts';
import type { BuildPlan, RuntimeConfig, Stage } from './types.ts';

export function finishPlan(planned: readonly PlannedStage[], target: string | undefined, warnings: string[]): BuildPlan {
  let final = planned[planned.length - 1]!;
  if (target !== undefined) {
    const found = planned.find((s) => s.name === target.toLowerCase());
    const names = planned.flatMap((s) => (s.name === undefined ? [] : [s.name]));
    if (!found) fail('dockerfile.unknown_stage', undefined, `target stage ${target} is not defined (stages: ${names.join(', ') || 'none named'})`, { stage: target, stages: names });
    final = found;
  }

  const used = new Set<number>();
  const visit = (index: number): void => {
    if (used.has(index)) return;
    used.add(index);
    for (const dep of planned[index]!.deps) visit(dep);
  };
  visit(final.index);

  const stages = planned.map((s): Stage => {
    const label = used.size > 1 || !used.has(s.index) ? (s.name ?? `stage-${s.index}`) : undefined;
    s.steps.forEach((step, i) => {
      step.position = label === undefined ? { n: i + 1, total: s.steps.length } : { stage: label, n: i + 1, total: s.steps.length };
    });
    const name = s.name === undefined ? {} : { name: s.name };
    return { index: s.index, ...name, base: s.base, used: used.has(s.index), parentKey: s.parentKey, resultKey: s.resultKey, steps: s.steps };
  });

  const config = final.state.config;
  // Docker's table: a shell-form ENTRYPOINT ignores CMD; an exec-form one gets CMD as arguments.
  const cmd = config.cmd ?? [];
  const ignoresCmd = config.entrypoint !== undefined && config.entrypointIsShellForm;
  const argv = [...(config.entrypoint ?? []), ...(ignoresCmd ? [] : cmd)];
  if (argv.length === 0) {
    fail('dockerfile.invalid', final.line, 'no CMD or ENTRYPOINT in the final stage: the image needs a command that starts the app');
  }
  if (ignoresCmd && cmd.length > 0) {
    warnings.push(`ENTRYPOINT uses the shell form, so CMD ${JSON.stringify(cmd)} is ignored; use ENTRYPOINT ["..."] to pass it arguments`);
  }
  const runtime: RuntimeConfig = {
    argv,
    env: Object.fromEntries(config.env),
    cwd: config.cwd,
    user: config.user,
    exposedPorts: [...config.exposedPorts].sort((a, b) => a - b),
    labels: Object.fromEntries(config.labels),
  };
  const imageKey = chainKey(final.resultKey, { runtime: { ...runtime } });
  return { stages, finalStage: final.index, warnings, runtime, imageKey };
}
