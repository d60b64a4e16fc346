import { actionArguments } from "./action-arguments.js";
import type { StepRequest } from "./ports.js";

/** The step container's command: opschain-action with the request's named actions, its tasks, or its listing option. */
export function stepCommand(request: StepRequest): string[] {
  return ["opschain-action", ...(request.actions ?? actionArguments(request.action))];
}

/** Environment variables the request itself sets for the action (beside the env var properties). */
export function requestEnvironment(request: StepRequest): Record<string, string> {
  return request.dryRun ? { OPSCHAIN_DRY_RUN: "true" } : {};
}

/**
 * The step_context.json mounted into the step's container: the context-service's document with the step's
 * own id (when the caller gave none) and the request's run-time values over it. These values are kept out of
 * the build context, so that steps that differ only in them still share an image.
 */
export function runtimeStepContext(document: Record<string, unknown>, stepId: string, request: StepRequest): Record<string, unknown> {
  const copy = structuredClone(document);
  const context = (isObject(copy.context) ? copy.context : (copy.context = {})) as Record<string, unknown>;
  for (const [section, values] of Object.entries(request.runtimeContext ?? {})) {
    const target = isObject(context[section]) ? (context[section] as Record<string, unknown>) : (context[section] = {});
    Object.assign(target as Record<string, unknown>, values);
  }
  const step = (isObject(context.step) ? context.step : (context.step = {})) as Record<string, unknown>;
  if (typeof step.id !== "string" || step.id === "") step.id = stepId;
  return copy;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
