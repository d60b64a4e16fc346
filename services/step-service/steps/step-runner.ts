import { randomUUID } from "node:crypto";
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { BuildProgress } from "../../../gen/steprunner/image/v1/image_service_pb.js";
import type { Logger } from "../../shared/log.js";
import type { ImageRootfs } from "../images/images.js";
import { type ContainerExit, RuntimeError } from "../runtime/container.js";
import { followLog, type LogLine, logPath, recoverLog, StepLog } from "./logs.js";
import type { ContainerRunner, ContextPreparer, ImageBuilder, ImageSource, LayerUpkeep, StepRequest } from "./ports.js";
import { FINAL_STATES, type PhaseName, type StepRecord, StepRecords, type StepState } from "./records.js";
import { InvalidResultError, parseStepResult } from "./result.js";
import { SecretMasker } from "./secrets.js";

export type StepEvent =
  | { type: "accepted"; step: StepRecord }
  | { type: "phase"; state: StepState; phase: PhaseName; time: number }
  | { type: "build"; progress: BuildProgress }
  | { type: "log"; line: LogLine }
  | { type: "warning"; message: string }
  | { type: "finished"; step: StepRecord };

export interface StepRunnerSettings {
  stateDir: string;
  maxConcurrentSteps: number;
  logCapBytes: number;
}

export interface StepRunnerParts {
  contexts: ContextPreparer;
  images: ImageBuilder;
  materialiser: ImageSource;
  layers: LayerUpkeep;
  runtime: ContainerRunner;
  logger: Logger;
  /** Told of each step's end, for metrics. */
  observer?: StepObserver;
}

export interface StepObserver {
  stepFinished(record: Readonly<StepRecord>): void;
}

export class StepNotFoundError extends Error {}
export class StepExistsError extends Error {}

interface Active {
  record: StepRecord;
  log: StepLog;
  controller: AbortController;
  cancelReason?: string;
  /** Set when the step's timeout ran out, in whichever phase it was. */
  timedOut?: string;
  listeners: Set<(event: StepEvent) => void>;
}

/**
 * The step-service's core: queues steps (FIFO, a fixed number at once), runs each through
 * prepare-context → build → pull → run → teardown, and keeps its record and log durable.
 */
export class StepRunner {
  private readonly records: StepRecords;
  private readonly active = new Map<string, Active>();
  private readonly queue: { id: string; start: () => void }[] = [];
  private running = 0;
  private readonly executions = new Set<Promise<void>>();

  constructor(
    private readonly settings: StepRunnerSettings,
    private readonly parts: StepRunnerParts,
  ) {
    this.records = new StepRecords(settings.stateDir);
  }

  private get logDir() {
    return join(this.settings.stateDir, "logs");
  }
  private get contextDir() {
    return join(this.settings.stateDir, "contexts");
  }

  /** Reaps what a crash left behind and marks the steps it interrupted. Call once before serving. */
  async recover(): Promise<void> {
    await mkdir(this.logDir, { recursive: true });
    await rm(this.contextDir, { recursive: true, force: true });
    await mkdir(this.contextDir, { recursive: true, mode: 0o700 });
    await this.parts.layers.init();
    await this.parts.runtime.reap();
    for (const record of this.records.unfinished()) {
      const reason = `the step-service stopped while the step was ${record.state}; its container was reaped at restart`;
      // The record's line count is from its last save; the file, written line by line, is the truth.
      const path = logPath(this.logDir, record.id);
      const written = await recoverLog(path);
      const log = new StepLog(path, this.settings.logCapBytes, { lines: written.lines, truncated: record.logTruncated || written.truncated });
      log.append("system", `[steprunner] system_error: ${reason}`);
      log.end();
      Object.assign(record, { state: "system_error", reason, finishedAt: Date.now(), logLines: log.lines, logTruncated: log.truncated });
      this.records.save(record);
      this.parts.logger.warn("marked an interrupted step", { step: record.id, reason });
    }
  }

  counts(): { running: number; queued: number } {
    return { running: this.running, queued: this.queue.length };
  }

  get(id: string): StepRecord | undefined {
    return this.active.get(id)?.record ?? this.records.get(id);
  }

  list(limit: number, states: StepState[], after?: { createdAt: number; id: string }): StepRecord[] {
    return this.records.list(limit, states, after);
  }

  /** Lines of a step's log from an offset; with follow, live until the step ends. */
  logs(id: string, from: number, follow: boolean, signal: AbortSignal): AsyncGenerator<LogLine> {
    if (!this.get(id)) throw new StepNotFoundError(`no step with id "${id}"`);
    return followLog(logPath(this.logDir, id), from, follow ? this.active.get(id)?.log : undefined, signal);
  }

  /**
   * Accepts a step and runs it when a slot is free. The listener sees every event from "accepted" to
   * "finished". Aborting `signal` (the caller went away) cancels the step.
   */
  submit(request: StepRequest, listener: (event: StepEvent) => void, signal: AbortSignal): StepRecord {
    const id = request.stepId || randomUUID();
    const record: StepRecord = {
      id,
      state: "queued",
      reason: "waiting for a free slot",
      repositoryUrl: request.repositoryUrl,
      gitRev: request.gitRev,
      gitSha: "",
      action: request.action,
      imageId: "",
      imageReused: false,
      createdAt: Date.now(),
      finishedAt: null,
      exitCode: null,
      signal: null,
      oomKilled: false,
      phases: [],
      result: null,
      logLines: 0,
      logTruncated: false,
    };
    if (!this.records.insert(record)) throw new StepExistsError(`a step with id "${id}" exists already`);
    const active: Active = {
      record,
      log: new StepLog(logPath(this.logDir, id), this.settings.logCapBytes),
      controller: new AbortController(),
      listeners: new Set([listener]),
    };
    this.active.set(id, active);
    active.log.on("line", (line) => this.emit(active, { type: "log", line }));
    const onCallerGone = () => this.cancel(id, "the caller of RunStep went away");
    signal.addEventListener("abort", onCallerGone, { once: true });
    this.emit(active, { type: "accepted", step: { ...record } });
    const queuedAt = Date.now();
    const start = () => {
      this.running++;
      this.phaseDone(active, "queue", queuedAt);
      const execution = this.execute(request, active).finally(() => {
        signal.removeEventListener("abort", onCallerGone);
        this.executions.delete(execution);
        this.running--;
        this.queue.shift()?.start();
      });
      this.executions.add(execution);
    };
    if (this.running < this.settings.maxConcurrentSteps) start();
    else this.queue.push({ id, start });
    return { ...record };
  }

  /** Stops a step at once; a step that has ended is returned as it is. */
  cancel(id: string, reason = "cancelled by a CancelStep call"): StepRecord {
    const active = this.active.get(id);
    if (!active) {
      const record = this.records.get(id);
      if (!record) throw new StepNotFoundError(`no step with id "${id}"`);
      return record;
    }
    const queued = this.queue.findIndex((entry) => entry.id === id);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      this.finish(active, { state: "cancelled", reason });
      return { ...active.record };
    }
    active.cancelReason ??= reason;
    active.controller.abort(new Error(reason));
    return { ...active.record };
  }

  /** Cancels every step, waits for their teardown, and closes the database. */
  async close(): Promise<void> {
    for (const id of [...this.active.keys()]) this.cancel(id, "the step-service is shutting down");
    await Promise.all([...this.executions]);
    this.records.close();
  }

  private async execute(request: StepRequest, active: Active): Promise<void> {
    let end: { state: StepState; reason: string };
    const { record, log, controller } = active;
    const signal = controller.signal;
    const masker = new SecretMasker(request.properties, request.secretPointers);
    const contextFile = join(this.contextDir, `${record.id}.json`);
    let image: ImageRootfs | undefined;
    // The timeout covers the whole step from its start (context, build, pull and run), not only the run.
    const deadline = Date.now() + request.timeoutMs;
    const timer = setTimeout(() => {
      active.timedOut = `timed out after ${request.timeoutMs / 1000} s${record.state === "running" ? "" : `, while ${record.state}`}`;
      controller.abort(new Error(active.timedOut));
    }, request.timeoutMs);
    try {
      this.enter(active, "preparing", "context");
      let started = Date.now();
      const prepared = await this.parts.contexts.prepare(request, signal);
      record.gitSha = prepared.gitSha;
      this.phaseDone(active, "context", started);
      for (const warning of prepared.warnings) this.emit(active, { type: "warning", message: masker.text(warning) });

      this.enter(active, "building", "build");
      started = Date.now();
      const built = await this.parts.images.build(prepared, request, (progress) => this.emit(active, { type: "build", progress }), signal);
      Object.assign(record, { imageId: built.imageId, imageReused: built.reused });
      this.phaseDone(active, "build", started);

      this.enter(active, "running", "pull");
      started = Date.now();
      image = await this.parts.materialiser.materialise(built.image, signal);
      this.phaseDone(active, "pull", started);

      await writeFile(contextFile, JSON.stringify(prepared.stepContext), { mode: 0o644 });
      const repoDir = `/opt/opschain/${prepared.repoFolder}`;
      started = Date.now();
      log.append("system", `[steprunner] running ${request.action} in image ${record.imageId}`);
      const exit = await this.parts.runtime.run({
        stepId: record.id,
        image,
        args: ["opschain-action", request.action],
        env: { ...envProperties(request), OPSCHAIN_REPO_FOLDER: prepared.repoFolder },
        limits: request.limits,
        hostNetwork: request.hostNetwork,
        binds: [{ source: contextFile, destination: `${repoDir}/step_context.json` }],
        userDirs: [repoDir],
        ...(prepared.repositoryDir ? { repositoryDir: prepared.repositoryDir } : {}),
        resultPath: `${repoDir.slice(1)}/step_result.json`,
        timeoutMs: Math.max(1, deadline - Date.now()),
        onOutput: (stream, text, time) => log.append(stream, masker.text(text), time.getTime()),
        onStarted: () => this.emit(active, { type: "phase", state: "running", phase: "run", time: Date.now() }),
        signal,
      });
      this.phaseDone(active, "run", started);
      Object.assign(record, { exitCode: exit.exitCode, signal: exit.signal, oomKilled: exit.oomKilled });
      end = outcome(exit, request);
      if (exit.result && "text" in exit.result) {
        try {
          record.result = masker.json(parseStepResult(exit.result.text));
        } catch (error) {
          // A step that failed anyway keeps its own reason; the bad result is only noted.
          if (end.state === "success" || !(error instanceof InvalidResultError)) throw error;
          log.append("system", `[steprunner] ignored an invalid ${error.message}`);
        }
      }
      if (end.state === "cancelled" && active.timedOut) end = { state: "timed_out", reason: active.timedOut };
      else if (end.state === "cancelled" && active.cancelReason) end.reason = active.cancelReason;
    } catch (error) {
      if (error instanceof InvalidResultError) end = { state: "error", reason: `invalid ${error.message}` };
      else if (active.timedOut) end = { state: "timed_out", reason: active.timedOut };
      else if (signal.aborted) end = { state: "cancelled", reason: active.cancelReason ?? "cancelled" };
      else {
        const message = masker.text((error as Error).message);
        const part = error instanceof RuntimeError ? "the container runtime failed" : `the ${record.state === "preparing" ? "context" : record.state === "building" ? "image build" : "runtime"} failed`;
        this.parts.logger.error("step failed in the service", { step: record.id, error: message });
        // A full disk is the operator's to fix: say which one.
        const full = (error as NodeJS.ErrnoException).code === "ENOSPC" ? `; the step-service's disk is full: free space under ${this.settings.stateDir}` : "";
        end = { state: "system_error", reason: `${part}: ${message}${full}` };
      }
    }
    clearTimeout(timer);
    // The container is gone by now (the runtime tears it down); what is left is ours, then the step ends.
    const started = Date.now();
    image?.release();
    await rm(contextFile, { force: true });
    await this.parts.layers.collect().catch((error: Error) => this.parts.logger.warn("layer collection failed", { error }));
    record.phases.push({ phase: "teardown", startedAt: started, durationMs: Date.now() - started });
    this.finish(active, end);
  }

  private enter(active: Active, state: StepState, phase: PhaseName): void {
    if (active.controller.signal.aborted) throw active.controller.signal.reason;
    active.record.state = state;
    active.record.reason = "";
    this.records.save(active.record);
    this.emit(active, { type: "phase", state, phase, time: Date.now() });
  }

  private phaseDone(active: Active, phase: PhaseName, startedAt: number): void {
    active.record.phases.push({ phase, startedAt, durationMs: Date.now() - startedAt });
  }

  private finish(active: Active, end: { state: StepState; reason: string }): void {
    const { record, log } = active;
    if (FINAL_STATES.has(record.state)) return;
    log.append("system", `[steprunner] ${end.state}: ${end.reason}`);
    Object.assign(record, { ...end, finishedAt: Date.now(), logLines: log.lines, logTruncated: log.truncated });
    this.records.save(record);
    log.end();
    this.parts.observer?.stepFinished(record);
    this.emit(active, { type: "finished", step: { ...record } });
    this.active.delete(record.id);
  }

  private emit(active: Active, event: StepEvent): void {
    active.record.logLines = active.log.lines;
    active.record.logTruncated = active.log.truncated;
    for (const listener of active.listeners) listener(event);
  }
}

/** The final state of a step whose container ran to its end. */
function outcome(exit: ContainerExit, request: StepRequest): { state: StepState; reason: string } {
  if (exit.cancelled) return { state: "cancelled", reason: "cancelled" };
  if (exit.timedOut) return { state: "timed_out", reason: `timed out after ${request.timeoutMs / 1000} s` };
  if (exit.oomKilled) return { state: "error", reason: `killed: out of memory (limit ${request.limits.memoryBytes} bytes)` };
  if (exit.signal) return { state: "error", reason: `killed by ${exit.signal}` };
  if (exit.result && "problem" in exit.result) return { state: "error", reason: `invalid step_result.json: ${exit.result.problem}` };
  if (exit.exitCode !== 0) return { state: "error", reason: `exit status ${exit.exitCode}` };
  return { state: "success", reason: "exit status 0" };
}

/** The env var properties (opschain.env of each owner), later owners winning. */
function envProperties(request: StepRequest): Record<string, string> {
  const env: Record<string, string> = {};
  for (const set of request.properties) {
    const values = (set.properties.opschain as { env?: Record<string, unknown> } | undefined)?.env;
    if (values && typeof values === "object") {
      for (const [name, value] of Object.entries(values)) env[name] = typeof value === "string" ? value : JSON.stringify(value);
    }
  }
  return env;
}
