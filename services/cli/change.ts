import { type JsonObject, toJson } from "@bufbuild/protobuf";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import {
  type Change,
  type ChangeStep,
  ChangeSchema,
  type RunChangeResponse,
  RunChangeResponseSchema,
  StepState,
} from "../../gen/steprunner/step/v1/step_service_pb.js";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import type { RunProgress } from "./step.js";

/** The CLI's exit status for a finished change, as for a step: 0, 1 for an error, 124 timed out, 130 cancelled. */
export function exitStatusOfChange(change: Change): number {
  switch (change.state) {
    case StepState.SUCCESS:
      return 0;
    case StepState.ERROR:
      return 1;
    case StepState.TIMED_OUT:
      return 124;
    case StepState.CANCELLED:
      return 130;
    case StepState.HANDED_BACK:
      return 75;
    default:
      return 70;
  }
}

const stateName = (state: StepState) => (state === StepState.UNSPECIFIED ? "not run" : StepState[state].toLowerCase());

/** The tree as indented lines: "<id> <action> — <state> (<reason>)", children under their parent. */
export function renderTree(step: ChangeStep, indent = ""): string[] {
  const strategy =
    step.children.length > 0 ? ` [children ${step.childExecutionStrategy === ChildExecutionStrategy.PARALLEL ? "in parallel" : "in sequence"}]` : "";
  const lines = [`${indent}${step.id} ${step.action}: ${stateName(step.state)}${step.reason ? ` (${step.reason})` : ""}${strategy}`];
  for (const child of step.children) lines.push(...renderTree(child, `${indent}  `));
  return lines;
}

/** Shows a change's events as they arrive (every step's log lines prefixed with its id), then its tree and properties. */
export async function presentChange(responses: AsyncIterable<RunChangeResponse>, progress: RunProgress): Promise<Change> {
  let finished: Change | undefined;
  const announced = new Map<string, StepState>();
  for await (const response of responses) {
    const event = response.event;
    if (event.case === "finished") finished = event.value.change;
    if (progress === "json") {
      console.log(JSON.stringify(toJson(RunChangeResponseSchema, response)));
      continue;
    }
    switch (event.case) {
      case "accepted":
        console.error(`change ${event.value.change?.id} accepted`);
        break;
      case "warning":
        console.error(`warning: ${event.value}`);
        break;
      case "treeChanged": {
        // Each step's start and end, once.
        const walk = (step: ChangeStep) => {
          const seen = announced.get(step.id);
          const final = step.state >= StepState.SUCCESS;
          if (step.state === StepState.RUNNING && seen !== StepState.RUNNING) console.error(`[${step.id}] ${step.action}: running…`);
          if (final && seen !== step.state) console.error(`[${step.id}] ${step.action}: ${stateName(step.state)} (${step.reason})`);
          announced.set(step.id, step.state);
          step.children.forEach(walk);
        };
        if (event.value.change?.root) walk(event.value.change.root);
        break;
      }
      case "stepEvent": {
        const inner = event.value.event?.event;
        if (inner?.case === "logLine") {
          const out = inner.value.stream === LogStream.STDERR || inner.value.stream === LogStream.SYSTEM ? process.stderr : process.stdout;
          out.write(`[${event.value.stepId}] ${inner.value.text}\n`);
        } else if (inner?.case === "warning") {
          console.error(`[${event.value.stepId}] warning: ${inner.value}`);
        }
        break;
      }
    }
  }
  if (!finished) throw new Error("the step-service ended the stream without a finished event");
  if (progress !== "json") {
    if (finished.root) for (const line of renderTree(finished.root)) console.error(line);
    console.error(`change ${finished.id}: ${stateName(finished.state)} (${finished.reason})`);
    const json = toJson(ChangeSchema, finished) as JsonObject;
    console.log(JSON.stringify({ properties: json.properties ?? [] }, null, 2));
  }
  return finished;
}
