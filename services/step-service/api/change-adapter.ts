import { create, fromJson, type JsonObject, type JsonValue, toJson } from "@bufbuild/protobuf";
import { timestampFromMs, ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { ChildExecutionStrategy } from "../../../gen/steprunner/context/v1/context_service_pb.js";
import {
  type Change,
  type ChangeStep,
  ChangeSchema,
  type ContinueChangeRequest,
  type ContinueChangeResponse,
  type GetChangeRequest,
  type GetChangeResponse,
  type InputArgument as InputArgumentMessage,
  type RunChangeRequest,
  RunChangeRequestSchema,
  type RunChangeResponse,
  StepKind,
  StepState,
} from "../../../gen/steprunner/step/v1/step_service_pb.js";
import { callerOf } from "../../shared/server/caller.js";
import { durationMs, invalidField, invalidFieldMessage } from "../../shared/validation.js";
import {
  type ChangeEvent,
  ChangeExistsError,
  ChangeInputError,
  type ChangeNode,
  ChangeNotFoundError,
  type ChangeRunner,
  ChangeStateError,
  type ChangeView,
} from "../steps/change-runner.js";
import type { InputArgument } from "../steps/input-values.js";
import type { StepKind as DomainKind } from "../steps/result.js";
import { CallerLimitError, StepRunnerDrainingError } from "../steps/step-runner.js";
import type { StepRequest } from "../steps/ports.js";
import { type StepServiceSettings, toResponse, validateRunStep } from "./step-service-adapter.js";
import { STATES } from "./states.js";

const CHANGE_ID = /^[A-Za-z0-9_.-]{1,48}$/;
const CHANGE_ID_RULE = "must be 1-48 characters of [A-Za-z0-9_.-]";
const STEP_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const KINDS: Record<DomainKind, StepKind> = { action: StepKind.ACTION, group: StepKind.GROUP, wait: StepKind.WAIT, input: StepKind.INPUT };

/** RunChange: validates the request, starts the change, and streams its events until it ends. */
export function runChangeHandler(settings: StepServiceSettings, changes: ChangeRunner) {
  return async function* runChange(request: RunChangeRequest, context: HandlerContext): AsyncGenerator<RunChangeResponse> {
    if (request.changeId !== "" && !CHANGE_ID.test(request.changeId)) {
      throw invalidField("change_id", "must be 1-48 characters of [A-Za-z0-9_.-], or empty for one the service picks", request.changeId);
    }
    if (!request.step) throw invalidField("step", "must be given: the first step of the change, as RunStep takes it");
    if (request.step.stepId !== "")
      throw invalidField("step.step_id", "must be empty: the change names its steps <change_id>.1, <change_id>.2, …", request.step.stepId);
    let root: StepRequest;
    try {
      root = validateRunStep(request.step, settings);
    } catch (error) {
      throw prefixed(error, "step.");
    }
    const timeoutMs = request.timeout ? durationMs("timeout", request.timeout) : 0;
    if (timeoutMs < 0 || timeoutMs > settings.maxTimeoutMs) {
      throw invalidField("timeout", `must be between 0 and ${settings.maxTimeoutMs / 1000} s (0 or unset for the default)`, `${request.timeout!.seconds}s`);
    }
    const events: ChangeEvent[] = [];
    let wake: (() => void) | undefined;
    const push = (event: ChangeEvent) => {
      events.push(event);
      wake?.();
    };
    try {
      changes.start(
        {
          changeId: request.changeId,
          root,
          timeoutMs: timeoutMs || settings.maxTimeoutMs,
          requestJson: canonicalJson(toJson(RunChangeRequestSchema, request)),
        },
        push,
        context.signal,
        callerOf(context),
      );
    } catch (error) {
      if (error instanceof ChangeExistsError) throw new ConnectError(error.message, Code.AlreadyExists);
      if (error instanceof StepRunnerDrainingError) throw new ConnectError(error.message, Code.Unavailable);
      if (error instanceof CallerLimitError) throw new ConnectError(error.message, Code.ResourceExhausted);
      throw ConnectError.from(error);
    }
    const onAbort = () => wake?.();
    context.signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        while (events.length > 0) {
          const event = events.shift()!;
          const response = toChangeResponse(event);
          if (response) yield response;
          if (event.type === "finished") return;
        }
        if (context.signal.aborted) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      context.signal.removeEventListener("abort", onAbort);
    }
  };
}

/** ContinueChange: continues a waiting wait or input step of a running change. */
export function continueChangeHandler(changes: ChangeRunner) {
  return async function continueChange(request: ContinueChangeRequest): Promise<ContinueChangeResponse> {
    if (!CHANGE_ID.test(request.changeId)) throw invalidField("change_id", CHANGE_ID_RULE, request.changeId);
    if (request.stepId !== "" && !STEP_ID.test(request.stepId)) {
      throw invalidField("step_id", "must be 1-64 characters of [A-Za-z0-9_.-], or empty when one step of the change waits", request.stepId);
    }
    try {
      const view = changes.continue(request.changeId, request.stepId, (request.inputValues ?? {}) as Record<string, unknown>);
      return { change: toChange(view) } as ContinueChangeResponse;
    } catch (error) {
      if (error instanceof ChangeInputError)
        throw invalidField(`input_values.${error.argument}`, error.message, JSON.stringify(request.inputValues?.[error.argument] ?? null));
      if (error instanceof ChangeNotFoundError) throw new ConnectError(error.message, Code.NotFound);
      if (error instanceof ChangeStateError) throw new ConnectError(error.message, Code.FailedPrecondition);
      throw ConnectError.from(error);
    }
  };
}

/** GetChange: a running change's live tree, or a finished one's as kept. */
export function getChangeHandler(changes: ChangeRunner) {
  return async function getChange(request: GetChangeRequest): Promise<GetChangeResponse> {
    if (!CHANGE_ID.test(request.changeId)) throw invalidField("change_id", CHANGE_ID_RULE, request.changeId);
    const view = changes.get(request.changeId);
    if (!view) throw new ConnectError(`change_id: no change with id "${request.changeId}" (a change is kept once it has finished)`, Code.NotFound);
    return { change: toChange(view) } as GetChangeResponse;
  };
}

/** JSON with sorted keys, so that a retry's field order does not matter. */
function canonicalJson(value: JsonValue): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    return `{${Object.keys(value)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key]!)}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

/** An INVALID_ARGUMENT of the inner request with its field named from the outer one ("action" → "step.action"). */
function prefixed(error: unknown, prefix: string): unknown {
  if (!(error instanceof ConnectError) || error.code !== Code.InvalidArgument) return error;
  const match = /^([a-z_][a-z0-9_.[\]]*): /.exec(error.rawMessage);
  if (!match) return error;
  return invalidFieldMessage(`${prefix}${match[1]}`, `${prefix}${error.rawMessage}`);
}

function toChangeResponse(event: ChangeEvent): RunChangeResponse | undefined {
  switch (event.type) {
    case "accepted":
      return { event: { case: "accepted", value: { change: toChange(event.change) } } } as RunChangeResponse;
    case "tree":
      return { event: { case: "treeChanged", value: { change: toChange(event.change) } } } as RunChangeResponse;
    case "warning":
      return { event: { case: "warning", value: event.message } } as RunChangeResponse;
    case "finished":
      return { event: { case: "finished", value: { change: toChange(event.change) } } } as RunChangeResponse;
    case "step": {
      const inner = toResponse(event.event);
      return inner ? ({ event: { case: "stepEvent", value: { stepId: event.stepId, event: inner } } } as RunChangeResponse) : undefined;
    }
  }
}

export function toChange(view: ChangeView): Change {
  return create(ChangeSchema, {
    id: view.id,
    state: view.state === "running" ? StepState.RUNNING : STATES[view.state],
    reason: view.reason,
    root: toChangeStep(view.root),
    properties: view.properties.map((set) => ({ owner: set.owner, properties: set.properties as JsonObject })),
    createdAt: timestampFromMs(view.createdAt),
    ...(view.finishedAt !== null ? { finishedAt: timestampFromMs(view.finishedAt) } : {}),
  });
}

function toChangeStep(node: ChangeNode): ChangeStep {
  const state =
    node.state === "pending"
      ? StepState.QUEUED
      : node.state === "not_run"
        ? StepState.UNSPECIFIED
        : node.state === "waiting"
          ? StepState.WAITING
          : STATES[node.state];
  return {
    id: node.id,
    action: node.action,
    parentId: node.parentId,
    state,
    reason: node.reason,
    childExecutionStrategy: node.childExecutionStrategy === "parallel" ? ChildExecutionStrategy.PARALLEL : ChildExecutionStrategy.SEQUENTIAL,
    children: node.children.map(toChangeStep),
    stepName: node.stepName,
    kind: KINDS[node.kind],
    ignoreFailure: node.ignoreFailure,
    waitSeconds: node.waitSeconds,
    inputArguments: node.inputArguments.map(toInputArgument),
    ...(node.inputValues ? { inputValues: node.inputValues as JsonObject } : {}),
  } as ChangeStep;
}

export function toInputArgument(argument: InputArgument): InputArgumentMessage {
  return {
    name: argument.name,
    path: argument.path,
    guiName: argument.guiName,
    description: argument.description,
    required: argument.required,
    type: argument.type,
    ...(argument.defaultValue !== undefined ? { defaultValue: fromJsonValue(argument.defaultValue) } : {}),
    validValues: argument.validValues.map(fromJsonValue),
    overwrite: argument.overwrite,
  } as InputArgumentMessage;
}

function fromJsonValue(value: unknown) {
  return fromJson(ValueSchema, value as JsonValue);
}
