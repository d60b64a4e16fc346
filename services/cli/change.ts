import { readFile } from "node:fs/promises";
import { type JsonObject, type JsonValue, toJson } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import {
  type Change,
  type ChangeStep,
  ChangeSchema,
  type RunChangeResponse,
  RunChangeResponseSchema,
  StepService,
  StepState,
} from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../shared/client/transport.js";
import { type Command, clientSecurity, serviceAddressOptions } from "./command.js";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { ChangeTreeView, isFinal, renderChangeFrame, stepLabel } from "./change-tty.js";
import type { RunProgress } from "./step.js";
import { LiveView } from "./tty-progress.js";

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

/** The tree as indented lines: "<id> <step name or action> — <state> (<reason>)", children under their parent. */
export function renderTree(step: ChangeStep, indent = ""): string[] {
  const strategy =
    step.children.length > 0 ? ` [children ${step.childExecutionStrategy === ChildExecutionStrategy.PARALLEL ? "in parallel" : "in sequence"}]` : "";
  const lines = [`${indent}${step.id} ${stepLabel(step)}: ${stateName(step.state)}${step.reason ? ` (${step.reason})` : ""}${strategy}`];
  for (const child of step.children) lines.push(...renderTree(child, `${indent}  `));
  return lines;
}

/** How to continue a waiting step from the command line. */
export function continueHint(changeId: string, step: ChangeStep): string {
  const inputs = step.inputArguments.map((argument) => ` --input ${argument.name}=${argument.required && !argument.defaultValue ? "…" : "[…]"}`).join("");
  return `steprunner continue ${changeId} ${step.id}${inputs}`;
}

/**
 * Shows a change's events as they arrive, then its tree and properties: with tty a live tree (redrawn in
 * place), otherwise every step's log lines prefixed with its id and each step's start and end.
 */
export async function presentChange(responses: AsyncIterable<RunChangeResponse>, progress: RunProgress): Promise<Change> {
  let finished: Change | undefined;
  const announced = new Map<string, StepState>();
  const view = new ChangeTreeView();
  const live = progress === "tty" ? new LiveView(process.stderr, (now, columns, rows) => renderChangeFrame(view, now, columns, rows)) : undefined;
  try {
    for await (const response of responses) {
      const event = response.event;
      if (event.case === "finished") finished = event.value.change;
      if (progress === "json") console.log(JSON.stringify(toJson(RunChangeResponseSchema, response)));
      else if (live) view.apply(response, Date.now());
      else presentPlain(response, announced);
    }
  } finally {
    live?.end();
  }
  if (!finished) throw new Error("the step-service ended the stream without a finished event");
  if (progress !== "json") {
    if (!live && finished.root) for (const line of renderTree(finished.root)) console.error(line);
    console.error(`change ${finished.id}: ${stateName(finished.state)} (${finished.reason})`);
    const json = toJson(ChangeSchema, finished) as JsonObject;
    console.log(JSON.stringify({ properties: json.properties ?? [] }, null, 2));
  }
  return finished;
}

function presentPlain(response: RunChangeResponse, announced: Map<string, StepState>): void {
  const event = response.event;
  switch (event.case) {
    case "accepted":
      console.error(`change ${event.value.change?.id} accepted`);
      break;
    case "warning":
      console.error(`warning: ${event.value}`);
      break;
    case "treeChanged": {
      // Each step's start and end, once; a waiting step with the command that continues it.
      const changeId = event.value.change?.id ?? "";
      const walk = (step: ChangeStep) => {
        const seen = announced.get(step.id);
        const label = stepLabel(step);
        if (step.state === StepState.RUNNING && seen !== StepState.RUNNING) console.error(`[${step.id}] ${label}: running…`);
        if (step.state === StepState.WAITING && seen !== StepState.WAITING) {
          console.error(`[${step.id}] ${label}: ${step.reason}; continue it with: ${continueHint(changeId, step)}`);
        }
        if (isFinal(step.state) && seen !== step.state) console.error(`[${step.id}] ${label}: ${stateName(step.state)} (${step.reason})`);
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

const stepAddr = { "step-addr": serviceAddressOptions["step-addr"] };

function failed(command: string, error: unknown): number {
  const connect = ConnectError.from(error);
  console.error(`steprunner ${command}: ${connect.rawMessage} (${connect.code})`);
  return 1;
}

export const continueCommand: Command = {
  usage: "CHANGE_ID [STEP_ID] [--input NAME=VALUE …] [--inputs FILE]",
  positionals: true,
  options: {
    ...stepAddr,
    input: {
      type: "string",
      multiple: true,
      description: "an input step's value NAME=VALUE, converted by the service to the argument's type (repeatable; JSON for array and hash)",
    },
    inputs: { type: "string", description: 'a JSON file of input values: {"NAME": value, …}' },
    json: { type: "boolean", description: "print the change as JSON" },
  },
  async run(values, positionals = []) {
    const [changeId, stepId = ""] = positionals;
    if (!changeId || positionals.length > 2) {
      console.error("steprunner continue: give a CHANGE_ID, and a STEP_ID when more than one step of it waits");
      return 2;
    }
    const inputValues: Record<string, JsonValue> = {};
    if (typeof values.inputs === "string") Object.assign(inputValues, JSON.parse(await readFile(values.inputs, "utf8")) as JsonObject);
    for (const pair of (values.input as string[] | undefined) ?? []) {
      const eq = pair.indexOf("=");
      if (eq <= 0) {
        console.error(`steprunner continue: --input ${pair} is not NAME=VALUE`);
        return 2;
      }
      inputValues[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
    const transport = serviceTransport(String(values["step-addr"]), clientSecurity());
    try {
      const { change } = await createClient(StepService, transport.transport).continueChange({ changeId, stepId, inputValues: inputValues as JsonObject });
      printChange(change!, values.json === true);
      return 0;
    } catch (error) {
      return failed("continue", error);
    } finally {
      transport.close();
    }
  },
};

export const changeCommand: Command = {
  usage: "CHANGE_ID [--json]",
  positionals: true,
  options: { ...stepAddr, json: { type: "boolean", description: "print the change as JSON" } },
  async run(values, positionals = []) {
    const [changeId] = positionals;
    if (!changeId) {
      console.error("steprunner change: give a CHANGE_ID");
      return 2;
    }
    const transport = serviceTransport(String(values["step-addr"]), clientSecurity());
    try {
      const { change } = await createClient(StepService, transport.transport).getChange({ changeId });
      printChange(change!, values.json === true);
      return 0;
    } catch (error) {
      return failed("change", error);
    } finally {
      transport.close();
    }
  },
};

function printChange(change: Change, json: boolean): void {
  if (json) {
    console.log(JSON.stringify(toJson(ChangeSchema, change)));
    return;
  }
  if (change.root) for (const line of renderTree(change.root)) console.log(line);
  console.log(`change ${change.id}: ${stateName(change.state)}${change.reason ? ` (${change.reason})` : ""}`);
}
