import type { ChangeStep } from "../../gen/steprunner/step/v1/step_service_pb.js";

/** The step of a change's tree (as the API returns it) with this id, if any. */
export function findStep(step: ChangeStep | undefined, id: string): ChangeStep | undefined {
  if (!step) return undefined;
  if (step.id === id) return step;
  for (const child of step.children) {
    const found = findStep(child, id);
    if (found) return found;
  }
  return undefined;
}
