import { create, fromJson, type JsonObject, toJson } from "@bufbuild/protobuf";
import { type Duration, DurationSchema, type Timestamp, timestampFromMs, ValueSchema } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { ChildExecutionStrategy, StepContextValuesSchema } from "../../../gen/steprunner/context/v1/context_service_pb.js";
import { type BuildProgress as BuildProgressMessage, BuildProgressSchema, LogStream, VertexState } from "../../../gen/steprunner/image/v1/image_service_pb.js";
import {
  type ChildStep,
  type LogLine as LogLineMessage,
  Phase,
  type RunStepRequest,
  type RunStepResponse,
  type Step,
  StepKind,
  type StepService,
} from "../../../gen/steprunner/step/v1/step_service_pb.js";
import { MAX_OWNERS, MAX_SECRET_POINTERS, ownerRule, repositoryUrlRule, revisionRule, secretPointerRule } from "../../shared/request-rules.js";
import { durationMs, invalidField } from "../../shared/validation.js";
import { cgroupVersion, runcInfo } from "../runtime/runc.js";
import type { Limits } from "../runtime/spec.js";
import type { LogLine } from "../steps/logs.js";
import type { BuildLog, BuildProgress, BuildVertexState, StepRequest } from "../steps/ports.js";
import type { ChildDefinition } from "../steps/result.js";
import { FINAL_STATES, type StepRecord, type StepState as DomainState } from "../steps/records.js";
import { CallerLimitError, type StepEvent, StepExistsError, StepNotFoundError, type StepRunner, StepRunnerDrainingError } from "../steps/step-runner.js";
import { callerOf } from "../../shared/server/caller.js";
import { ChangeRunner } from "../steps/change-runner.js";
import { continueChangeHandler, getChangeHandler, runChangeHandler, toInputArgument } from "./change-adapter.js";
import { STATES } from "./states.js";
import { ActionRuleError, checkNamedAction, MAX_ACTION_WORDS, normalisedAction } from "../steps/action-arguments.js";
import { withRequestDefaults } from "./context-values.js";
import { EventChannel } from "../../shared/event-channel.js";

export interface StepServiceSettings {
  runcPath: string;
  maxConcurrentSteps: number;
  defaultLimits: Limits;
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  defaultRepoFolder: string;
}

const STEP_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const STEP_ID_RULE = "must be 1-64 characters of [A-Za-z0-9_.-]";
const MiB = 1024n * 1024n;
/** The range of google.protobuf.Timestamp: 0001-01-01 to 9999-12-31. */
const EARLIEST_SECONDS = -62_135_596_800n;
const LATEST_SECONDS = 253_402_300_799n;
const PHASES = { queue: Phase.QUEUE, context: Phase.CONTEXT, build: Phase.BUILD, pull: Phase.PULL, run: Phase.RUN, teardown: Phase.TEARDOWN } as const;
const STREAMS = { stdout: LogStream.STDOUT, stderr: LogStream.STDERR, system: LogStream.SYSTEM } as const;
const BUILD_STREAMS: Record<BuildLog["stream"], LogStream> = { unspecified: LogStream.UNSPECIFIED, ...STREAMS };
const VERTEX_STATES: Record<BuildVertexState, VertexState> = {
  unspecified: VertexState.UNSPECIFIED,
  started: VertexState.STARTED,
  completed: VertexState.COMPLETED,
  cached: VertexState.CACHED,
  errored: VertexState.ERRORED,
  canceled: VertexState.CANCELED,
};

/** The Connect adapter of StepService: validates requests and maps the core's records and events. */
export function stepServiceAdapter(settings: StepServiceSettings, runner: StepRunner, changes = new ChangeRunner(runner)): ServiceImpl<typeof StepService> {
  return {
    runChange: runChangeHandler(settings, changes),
    continueChange: continueChangeHandler(changes),
    getChange: getChangeHandler(changes),

    async *runStep(request, context) {
      const domain = validateRunStep(request, settings);
      const existing = domain.stepId ? runner.get(domain.stepId) : undefined;
      if (existing && existing.state !== "handed_back") {
        // A retry with the same id: that step's events, not a second run.
        yield { event: { case: "accepted", value: { step: toStep(existing) } } };
        for await (const line of runner.logs(existing.id, 0, true, context.signal)) yield { event: { case: "logLine", value: toLogLine(line) } };
        yield { event: { case: "finished", value: { step: toStep(runner.get(existing.id)!) } } };
        return;
      }
      const events = new EventChannel<StepEvent>(context.signal);
      try {
        runner.submit(domain, (event) => events.push(event), context.signal, callerOf(context));
      } catch (error) {
        throw mapError(error);
      }
      for await (const event of events) {
        const response = toResponse(event);
        if (response) yield response;
        if (event.type === "finished") return;
      }
    },

    async getStep(request) {
      return { step: toStep(find(runner, request.stepId)) };
    },

    async listSteps(request) {
      const pageSize = request.pageSize === 0 ? 50 : request.pageSize;
      if (pageSize < 0 || pageSize > 1000) throw invalidField("page_size", "must be between 0 and 1000 (0 for 50)", request.pageSize);
      const states = request.states.map((state, position) => {
        const entry = Object.entries(STATES).find(([, value]) => value === state);
        if (!entry) throw invalidField(`states[${position}]`, "must be a StepState other than STEP_STATE_UNSPECIFIED", state);
        return entry[0] as DomainState;
      });
      let after: { createdAt: number; id: string } | undefined;
      if (request.pageToken) {
        try {
          after = JSON.parse(Buffer.from(request.pageToken, "base64url").toString("utf8")) as { createdAt: number; id: string };
          if (typeof after.createdAt !== "number" || typeof after.id !== "string") throw new Error();
        } catch {
          throw invalidField("page_token", "must be a next_page_token this service gave out, or empty", request.pageToken);
        }
      }
      const records = runner.list(pageSize + 1, states, after);
      const page = records.slice(0, pageSize);
      const last = page[page.length - 1];
      return {
        steps: page.map(toStep),
        nextPageToken: records.length > pageSize && last ? Buffer.from(JSON.stringify({ createdAt: last.createdAt, id: last.id })).toString("base64url") : "",
      };
    },

    async *followLogs(request, context) {
      if (request.fromOffset < 0n) throw invalidField("from_offset", "must not be negative", request.fromOffset);
      find(runner, request.stepId);
      for await (const line of runner.logs(request.stepId, Number(request.fromOffset), request.follow, context.signal)) {
        yield { line: toLogLine(line) };
      }
    },

    async cancelStep(request) {
      // A change's id, or a step of a running change: the whole change stops.
      const changeId = changes.changeOf(request.stepId);
      if (changeId && changes.cancel(request.stepId)) {
        const current = runner.get(request.stepId) ?? runner.get(`${changeId}.1`);
        if (current) return { step: toStep(current) };
      }
      find(runner, request.stepId);
      return { step: toStep(runner.cancel(request.stepId)) };
    },

    async getRuntimeInfo(_request, context: HandlerContext) {
      const runc = await runcInfo(settings.runcPath, context.signal).catch((error: Error) => {
        throw new ConnectError(`runc at ${settings.runcPath} does not answer: ${error.message}`, Code.FailedPrecondition);
      });
      const counts = runner.counts();
      return {
        runcVersion: runc.version,
        ociSpecVersion: runc.specVersion,
        cgroupVersion: await cgroupVersion(),
        maxConcurrentSteps: settings.maxConcurrentSteps,
        runningSteps: counts.running,
        queuedSteps: counts.queued,
      };
    },
  };
}

function find(runner: StepRunner, id: string): StepRecord {
  if (!STEP_ID.test(id)) throw invalidField("step_id", STEP_ID_RULE, id);
  const record = runner.get(id);
  if (!record) throw new ConnectError(`step_id: no step with id "${id}"; ListSteps shows the steps this service knows`, Code.NotFound);
  return record;
}

function mapError(error: unknown): ConnectError {
  if (error instanceof StepExistsError) return new ConnectError(error.message, Code.AlreadyExists);
  if (error instanceof StepNotFoundError) return new ConnectError(error.message, Code.NotFound);
  if (error instanceof StepRunnerDrainingError) return new ConnectError(error.message, Code.Unavailable);
  if (error instanceof CallerLimitError) return new ConnectError(error.message, Code.ResourceExhausted);
  return ConnectError.from(error);
}

export function validateRunStep(request: RunStepRequest, settings: StepServiceSettings): StepRequest {
  if (request.stepId !== "" && !STEP_ID.test(request.stepId))
    throw invalidField("step_id", `${STEP_ID_RULE}, or empty for one the service picks`, request.stepId);
  const urlRule = repositoryUrlRule(request.repositoryUrl);
  if (urlRule) throw invalidField("repository_url", urlRule, request.repositoryUrl);
  const revRule = request.gitRev === "" ? undefined : revisionRule(request.gitRev);
  if (revRule) throw invalidField("git_rev", `${revRule}, or empty for HEAD`, request.gitRev);
  const { action, actions } = validateActions(request);
  if (request.properties.length > MAX_OWNERS) throw invalidField("properties", `must have at most ${MAX_OWNERS} owners`, request.properties.length);
  const owners = new Set<string>();
  for (const [position, set] of request.properties.entries()) {
    const ownerProblem = ownerRule(set.owner);
    if (ownerProblem) throw invalidField(`properties[${position}].owner`, ownerProblem, set.owner);
    if (owners.has(set.owner)) throw invalidField(`properties[${position}].owner`, "must differ from the owners before it", set.owner);
    owners.add(set.owner);
  }
  if (request.secretPointers.length > MAX_SECRET_POINTERS)
    throw invalidField("secret_pointers", `must have at most ${MAX_SECRET_POINTERS} pointers`, request.secretPointers.length);
  for (const [position, pointer] of request.secretPointers.entries()) {
    const rule = secretPointerRule(pointer, owners);
    if (rule) throw invalidField(`secret_pointers[${position}]`, rule, pointer);
  }
  const strategy = request.contextValues?.step?.childExecutionStrategy ?? ChildExecutionStrategy.UNSPECIFIED;
  if (!(strategy in ChildExecutionStrategy)) {
    throw invalidField(
      "context_values.step.child_execution_strategy",
      "must be CHILD_EXECUTION_STRATEGY_SEQUENTIAL, CHILD_EXECUTION_STRATEGY_PARALLEL or unset",
      strategy,
    );
  }
  const createdAt = request.contextValues?.change?.createdAt;
  if (createdAt && !(createdAt.seconds >= EARLIEST_SECONDS && createdAt.seconds <= LATEST_SECONDS && createdAt.nanos >= 0 && createdAt.nanos < 1e9)) {
    throw invalidField("context_values.change.created_at", "must be a time between 0001-01-01 and 9999-12-31", `${createdAt.seconds}s ${createdAt.nanos}ns`);
  }
  const repoFolder = request.repoFolder || settings.defaultRepoFolder;
  if (!/^[A-Za-z0-9_.-]{1,255}$/.test(repoFolder) || repoFolder === "." || repoFolder === ".." || repoFolder === ".git") {
    throw invalidField(
      "repo_folder",
      'must be one directory name other than ".", ".." and ".git" (letters, digits, \'_\', \'.\' or \'-\'), e.g. ".mintpress", or empty for the default',
      request.repoFolder,
    );
  }
  const requestedTimeoutMs = request.timeout ? durationMs("timeout", request.timeout) : 0;
  if (requestedTimeoutMs < 0 || requestedTimeoutMs > settings.maxTimeoutMs) {
    throw invalidField("timeout", `must be between 0 and ${settings.maxTimeoutMs / 1000} s (0 or unset for the default)`, `${request.timeout!.seconds}s`);
  }
  const timeoutMs = requestedTimeoutMs || settings.defaultTimeoutMs;
  const limit = (field: keyof Limits, name: string, least: bigint, most: bigint, range: string): number => {
    const value = request.limits?.[field] ?? 0n;
    if (value === 0n) return settings.defaultLimits[field];
    if (value < least || value > most) throw invalidField(`limits.${name}`, `must be ${range}, or 0 for the default`, value);
    return Number(value);
  };
  const limits = {
    memoryBytes: limit("memoryBytes", "memory_bytes", 16n * MiB, 1n << 50n, "at least 16 MiB (16777216) and at most 1 PiB"),
    cpuMillis: limit("cpuMillis", "cpu_millis", 10n, 1_000_000n, "between 10 and 1000000 thousandths of a core"),
    pids: limit("pids", "pids", 8n, 1n << 22n, "between 8 and 4194304"),
  };
  return {
    stepId: request.stepId,
    repositoryUrl: request.repositoryUrl,
    gitRev: request.gitRev || "HEAD",
    action,
    ...(actions ? { actions } : {}),
    properties: request.properties.map((set) => ({ owner: set.owner, properties: (set.properties ?? {}) as Record<string, unknown> })),
    secretPointers: request.secretPointers,
    contextValues: toJson(StepContextValuesSchema, withRequestDefaults(request.contextValues, action)) as JsonObject,
    repoFolder,
    excludeGitHistory: request.excludeGitHistory,
    timeoutMs,
    hostNetwork: request.hostNetwork,
    limits,
    buildWithoutCache: request.buildWithoutCache,
    dryRun: request.dryRun,
  };
}

/** RunStep's action (words) or actions (one name each), never both. */
function validateActions(request: RunStepRequest): { action: string; actions?: string[] } {
  if (request.actions.length === 0) {
    try {
      return { action: normalisedAction(request.action) };
    } catch (error) {
      if (error instanceof ActionRuleError) throw invalidField("action", error.message, request.action);
      throw error;
    }
  }
  if (request.action !== "")
    throw invalidField("actions", "give either action (words separated by spaces) or actions (one name each), not both", request.action);
  if (request.actions.length > MAX_ACTION_WORDS) throw invalidField("actions", `must name at most ${MAX_ACTION_WORDS} actions`, request.actions.length);
  for (const [position, name] of request.actions.entries()) {
    try {
      checkNamedAction(name);
    } catch (error) {
      if (error instanceof ActionRuleError) throw invalidField(`actions[${position}]`, error.message, name);
      throw error;
    }
  }
  return { action: request.actions.join(" "), actions: [...request.actions] };
}

export function toResponse(event: StepEvent): RunStepResponse | undefined {
  switch (event.type) {
    case "result":
      return undefined;
    case "accepted":
      return { event: { case: "accepted", value: { step: toStep(event.step) } } } as RunStepResponse;
    case "phase":
      return { event: { case: "phaseChanged", value: { state: STATES[event.state], phase: PHASES[event.phase], time: ts(event.time) } } } as RunStepResponse;
    case "build":
      return { event: { case: "buildProgress", value: toBuildProgress(event.progress) } } as RunStepResponse;
    case "log":
      return { event: { case: "logLine", value: toLogLine(event.line) } } as RunStepResponse;
    case "warning":
      return { event: { case: "warning", value: event.message } } as RunStepResponse;
    case "finished":
      return { event: { case: "finished", value: { step: toStep(event.step) } } } as RunStepResponse;
  }
}

function toLogLine(line: LogLine): LogLineMessage {
  return { offset: BigInt(line.offset), stream: STREAMS[line.stream], text: line.text, time: ts(line.time) } as LogLineMessage;
}

export function toStep(record: StepRecord): Step {
  return {
    id: record.id,
    state: STATES[record.state],
    reason: record.reason,
    repositoryUrl: record.repositoryUrl,
    gitRev: record.gitRev,
    gitSha: record.gitSha,
    action: record.action,
    imageId: record.imageId,
    imageReused: record.imageReused,
    createdAt: ts(record.createdAt),
    finishedAt: record.finishedAt === null ? undefined : ts(record.finishedAt),
    exitCode: record.exitCode ?? (FINAL_STATES.has(record.state) && record.signal ? -1 : 0),
    signal: record.signal ?? "",
    oomKilled: record.oomKilled,
    phases: record.phases.map((phase) => ({ phase: PHASES[phase.phase], startedAt: ts(phase.startedAt), duration: duration(phase.durationMs) })),
    phaseParts: (record.phaseParts ?? []).map((part) => ({ phase: PHASES[part.phase], name: part.name, duration: duration(part.durationMs) })),
    result: record.result
      ? {
          properties: record.result.properties as JsonObject,
          propertiesDiffs: record.result.propertiesDiffs.map((diff) => ({
            owner: diff.owner,
            operations: { values: diff.operations.map((op) => fromJson(ValueSchema, op as JsonObject)) },
          })),
          childStepDefinitions: {
            children: record.result.children.map(toChildStep),
            childExecutionStrategy: toStrategy(record.result.childExecutionStrategy),
          },
          ...(record.result.expectedStepTree !== undefined ? { expectedStepTree: fromJson(ValueSchema, record.result.expectedStepTree as JsonObject) } : {}),
        }
      : undefined,
    logLines: BigInt(record.logLines),
    logTruncated: record.logTruncated,
  } as unknown as Step;
}

const CHILD_KINDS: Record<ChildDefinition["kind"], StepKind> = { action: StepKind.ACTION, group: StepKind.GROUP, wait: StepKind.WAIT, input: StepKind.INPUT };

function toChildStep(child: ChildDefinition): ChildStep {
  return {
    action: child.action,
    stepName: child.stepName,
    kind: CHILD_KINDS[child.kind],
    ignoreFailure: child.ignoreFailure,
    children: child.children.map(toChildStep),
    childExecutionStrategy: toStrategy(child.childExecutionStrategy),
    waitSeconds: child.waitSeconds,
    inputArguments: child.inputArguments.map(toInputArgument),
  } as ChildStep;
}

function toStrategy(strategy: "sequential" | "parallel"): ChildExecutionStrategy {
  return strategy === "parallel" ? ChildExecutionStrategy.PARALLEL : ChildExecutionStrategy.SEQUENTIAL;
}

function ts(ms: number): Timestamp {
  return timestampFromMs(ms);
}
/** In whole nanoseconds: a part's time is measured to a fraction of a millisecond. */
function duration(ms: number): Duration {
  const nanos = Math.max(0, Math.round(ms * 1e6));
  return create(DurationSchema, { seconds: BigInt(Math.floor(nanos / 1e9)), nanos: nanos % 1e9 });
}

/** A build's progress as RunStep sends it (the image-service's BuildProgress message, which the API reuses). */
export function toBuildProgress(progress: BuildProgress): BuildProgressMessage {
  return create(BuildProgressSchema, {
    vertexes: progress.vertexes.map((vertex) => ({
      digest: vertex.digest,
      number: vertex.number,
      name: vertex.name,
      state: VERTEX_STATES[vertex.state],
      startedAt: vertex.startedAtMs === undefined ? undefined : ts(vertex.startedAtMs),
      completedAt: vertex.completedAtMs === undefined ? undefined : ts(vertex.completedAtMs),
      error: vertex.error,
    })),
    statuses: progress.statuses.map((status) => ({ ...status })),
    logs: progress.logs.map((log) => ({
      vertexDigest: log.vertexDigest,
      stream: BUILD_STREAMS[log.stream],
      data: log.data,
      time: log.timeMs === undefined ? undefined : ts(log.timeMs),
    })),
  });
}
