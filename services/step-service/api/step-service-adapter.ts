import { fromJson, type JsonObject, toJson } from "@bufbuild/protobuf";
import { type Duration, durationFromMs, type Timestamp, timestampFromMs, ValueSchema } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { ChildExecutionStrategy, StepContextValuesSchema } from "../../../gen/steprunner/context/v1/context_service_pb.js";
import { LogStream } from "../../../gen/steprunner/image/v1/image_service_pb.js";
import {
  type LogLine as LogLineMessage,
  Phase,
  type RunStepRequest,
  type RunStepResponse,
  type Step,
  StepService,
  StepState,
} from "../../../gen/steprunner/step/v1/step_service_pb.js";
import { cgroupVersion, runcInfo } from "../runtime/runc.js";
import type { Limits } from "../runtime/spec.js";
import type { LogLine } from "../steps/logs.js";
import type { StepRequest } from "../steps/ports.js";
import { FINAL_STATES, type StepRecord, type StepState as DomainState } from "../steps/records.js";
import { CallerLimitError, type StepEvent, StepExistsError, StepNotFoundError, type StepRunner, StepRunnerDrainingError } from "../steps/step-runner.js";
import { callerOf } from "../../shared/server/caller.js";

export interface StepServiceSettings {
  runcPath: string;
  maxConcurrentSteps: number;
  defaultLimits: Limits;
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  defaultRepoFolder: string;
}

const STEP_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const STATES: Record<DomainState, StepState> = {
  queued: StepState.QUEUED,
  preparing: StepState.PREPARING,
  building: StepState.BUILDING,
  running: StepState.RUNNING,
  success: StepState.SUCCESS,
  error: StepState.ERROR,
  timed_out: StepState.TIMED_OUT,
  cancelled: StepState.CANCELLED,
  system_error: StepState.SYSTEM_ERROR,
  handed_back: StepState.HANDED_BACK,
};
const PHASES = { queue: Phase.QUEUE, context: Phase.CONTEXT, build: Phase.BUILD, pull: Phase.PULL, run: Phase.RUN, teardown: Phase.TEARDOWN } as const;
const STREAMS = { stdout: LogStream.STDOUT, stderr: LogStream.STDERR, system: LogStream.SYSTEM } as const;

/** The Connect adapter of StepService: validates requests and maps the core's records and events. */
export function stepServiceAdapter(settings: StepServiceSettings, runner: StepRunner): ServiceImpl<typeof StepService> {
  return {
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
      const events = new EventQueue<StepEvent>();
      try {
        runner.submit(domain, (event) => events.push(event), context.signal, callerOf(context));
      } catch (error) {
        throw mapError(error);
      }
      for await (const event of events.drain(context.signal)) {
        yield toResponse(event);
        if (event.type === "finished") return;
      }
    },

    async getStep(request) {
      return { step: toStep(find(runner, request.stepId)) };
    },

    async listSteps(request) {
      const pageSize = request.pageSize === 0 ? 50 : request.pageSize;
      if (pageSize < 0 || pageSize > 1000) throw new ConnectError("page_size must be between 0 and 1000", Code.InvalidArgument);
      const states = request.states.map((state) => {
        const entry = Object.entries(STATES).find(([, value]) => value === state);
        if (!entry) throw new ConnectError(`unknown state ${state} in states`, Code.InvalidArgument);
        return entry[0] as DomainState;
      });
      let after: { createdAt: number; id: string } | undefined;
      if (request.pageToken) {
        try {
          after = JSON.parse(Buffer.from(request.pageToken, "base64url").toString("utf8")) as { createdAt: number; id: string };
          if (typeof after.createdAt !== "number" || typeof after.id !== "string") throw new Error();
        } catch {
          throw new ConnectError("page_token is not one this service gave out", Code.InvalidArgument);
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
      find(runner, request.stepId);
      if (request.fromOffset < 0n) throw new ConnectError("from_offset must not be negative", Code.InvalidArgument);
      for await (const line of runner.logs(request.stepId, Number(request.fromOffset), request.follow, context.signal)) {
        yield { line: toLogLine(line) };
      }
    },

    async cancelStep(request) {
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
  if (!STEP_ID.test(id)) throw new ConnectError("step_id must be 1-64 characters of [A-Za-z0-9_.-]", Code.InvalidArgument);
  const record = runner.get(id);
  if (!record) throw new ConnectError(`no step with id "${id}"; ListSteps shows the steps this service knows`, Code.NotFound);
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
  const invalid = (message: string) => new ConnectError(message, Code.InvalidArgument);
  if (request.stepId !== "" && !STEP_ID.test(request.stepId)) throw invalid("step_id must be 1-64 characters of [A-Za-z0-9_.-], or empty");
  if (request.repositoryUrl === "") throw invalid("repository_url is required: a local path or a git URL");
  if (!/^[A-Za-z0-9_:.-]+$/.test(request.action)) throw invalid("action is required: a Rake task name of actions.rb, e.g. deploy or ns:task");
  const owners = new Set<string>();
  for (const set of request.properties) {
    if (!/^[a-z][a-z0-9_]*$/.test(set.owner)) throw invalid(`properties owner "${set.owner}" must be a lowercase name such as project`);
    if (owners.has(set.owner)) throw invalid(`properties owner "${set.owner}" is given twice`);
    owners.add(set.owner);
  }
  for (const pointer of request.secretPointers) {
    if (!pointer.startsWith("/") || !owners.has(pointer.split("/")[1]!.replace(/~1/g, "/").replace(/~0/g, "~"))) {
      throw invalid(`secret pointer "${pointer}" must be a JSON pointer starting with the owner, e.g. /project/opschain/env/TOKEN`);
    }
  }
  const repoFolder = request.repoFolder || settings.defaultRepoFolder;
  if (!/^[A-Za-z0-9_.-]+$/.test(repoFolder) || repoFolder === "." || repoFolder === "..") throw invalid("repo_folder must be one directory name, e.g. .mintpress");
  const timeoutMs = request.timeout ? Number(request.timeout.seconds) * 1000 + Math.floor(request.timeout.nanos / 1e6) : settings.defaultTimeoutMs;
  if (timeoutMs <= 0 || timeoutMs > settings.maxTimeoutMs) throw invalid(`timeout must be positive and at most ${settings.maxTimeoutMs / 1000} s`);
  const limits = {
    memoryBytes: Number(request.limits?.memoryBytes ?? 0n) || settings.defaultLimits.memoryBytes,
    cpuMillis: Number(request.limits?.cpuMillis ?? 0n) || settings.defaultLimits.cpuMillis,
    pids: Number(request.limits?.pids ?? 0n) || settings.defaultLimits.pids,
  };
  if (limits.memoryBytes < 16 * 1024 * 1024) throw invalid("limits.memory_bytes must be at least 16 MiB");
  if (limits.cpuMillis < 10) throw invalid("limits.cpu_millis must be at least 10");
  if (limits.pids < 8) throw invalid("limits.pids must be at least 8");
  return {
    stepId: request.stepId,
    repositoryUrl: request.repositoryUrl,
    gitRev: request.gitRev || "HEAD",
    action: request.action,
    properties: request.properties.map((set) => ({ owner: set.owner, properties: (set.properties ?? {}) as Record<string, unknown> })),
    secretPointers: request.secretPointers,
    contextValues: request.contextValues ? (toJson(StepContextValuesSchema, request.contextValues) as JsonObject) : {},
    repoFolder,
    excludeGitHistory: request.excludeGitHistory,
    timeoutMs,
    hostNetwork: request.hostNetwork,
    limits,
    buildWithoutCache: request.buildWithoutCache,
  };
}

function toResponse(event: StepEvent): RunStepResponse {
  switch (event.type) {
    case "accepted":
      return { event: { case: "accepted", value: { step: toStep(event.step) } } } as RunStepResponse;
    case "phase":
      return { event: { case: "phaseChanged", value: { state: STATES[event.state], phase: PHASES[event.phase], time: ts(event.time) } } } as RunStepResponse;
    case "build":
      return { event: { case: "buildProgress", value: event.progress } } as RunStepResponse;
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
    result: record.result
      ? {
          properties: record.result.properties as JsonObject,
          propertiesDiffs: record.result.propertiesDiffs.map((diff) => ({
            owner: diff.owner,
            operations: { values: diff.operations.map((op) => fromJson(ValueSchema, op as JsonObject)) },
          })),
          childStepDefinitions: {
            children: record.result.children.map((child) => ({ action: child.action })),
            childExecutionStrategy: record.result.childExecutionStrategy === "parallel" ? ChildExecutionStrategy.PARALLEL : ChildExecutionStrategy.SEQUENTIAL,
          },
        }
      : undefined,
    logLines: BigInt(record.logLines),
    logTruncated: record.logTruncated,
  } as unknown as Step;
}

function ts(ms: number): Timestamp {
  return timestampFromMs(ms);
}
function duration(ms: number): Duration {
  return durationFromMs(ms);
}

/** Events pushed by the core, pulled by the stream; ends when the caller goes away. */
class EventQueue<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;

  push(item: T): void {
    this.items.push(item);
    this.wake?.();
  }

  async *drain(signal: AbortSignal): AsyncGenerator<T> {
    const onAbort = () => this.wake?.();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        while (this.items.length > 0) yield this.items.shift()!;
        if (signal.aborted) return;
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
