/** One line per step for build logs: `[2/7] RUN apt-get install -y python3-flask`. */
import type { Step } from './types.ts';

const MAX_INSTRUCTION_LENGTH = 200;

export function describeStep(step: Step): string {
  const { stage, n, total } = step.position;
  const where = stage === undefined ? `[${n}/${total}]` : `[${stage} ${n}/${total}]`;
  const text = step.instruction.length > MAX_INSTRUCTION_LENGTH ? `${step.instruction.slice(0, MAX_INSTRUCTION_LENGTH - 1)}…` : step.instruction;
  return `${where} ${text}`;
}
