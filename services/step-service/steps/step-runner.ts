import { randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { BuildProgress } from "./ports.js";
import { type Context, context, type Span, SpanStatusCode, trace } from "@opentelemetry/api";
import type { Logger } from "../../shared/log.js";
import { inSpan, tracer } from "../../shared/tracing.js";
import type { ImageRootfs } from "../images/images.js";
import { type ContainerExit, RuntimeError } from "../runtime/container.js";
import { followLog, type LogLine, logPath, recoverLog, StepLog } from "./logs.js";
import {
  type BuiltStepImage,
  type ContainerRunner,
  type ContextPreparer,
  type ImageBuilder,
  type ImageSource,
  type LayerUpkeep,
  type PreparedStepContext,
  RefusedInputError,
  type StepRequest,
} from "./ports.js";
import { type ChangeRecord, FINAL_STATES, type PhaseName, type StepRecord, StepRecords, type StepState } from "./records.js";
import { InvalidResultError, parseStepResult, type StepResultData } from "./result.js";
import { requestEnvironment, runtimeStepContext, stepCommand } from "./run-command.js";
import { FifoQueue, QueueLeftError } from "../../shared/fifo-queue.js";
import { writeTextFile } from "../../shared/files/small-files.js";
import { BuildLogMasker, SecretMasker } from "./secrets.js";
import { type ImageGuess, ImageSpeculation } from "./image-speculation.js";

export type StepEvent =
  | { type: "accepted"; step: StepRecord }
  | { type: "phase"; state: StepState; phase: PhaseName; time: number }
  | { type: "build"; progress: BuildProgress }
  | { type: "log"; line: LogLine }
  | { type: "warning"; message: string }
  /** The step's parsed step_result.json before secrets are masked: for the service's own use, never sent to a caller. */
  | { type: "result"; result: StepResultData }
  | { type: "finished"; step: StepRecord };

export interface StepRunnerSettings {
  stateDir: string;
  maxConcurrentSteps: number;
  /** Unfinished (queued or running) steps one caller may have; 0 or absent for no limit. */
  maxStepsPerCaller?: number;
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
/** The service is shutting down and takes no new step. */
export class StepRunnerDrainingError extends Error {}
export class CallerLimitError extends Error {}

interface Active {
  record: StepRecord;
  /** The service's logger with the step's and its change's ids on every line. */
  logger: Logger;
  caller: string;
  log: StepLog;
  controller: AbortController;
  /** The step's span (a no-op with tracing off) and the context its phases run in. */
  span: Span;
  trace: Context;
  cancelReason?: string;
  /** Set when a shutdown stopped the step: it ends handed back, for the caller to run again. */
  handedBack?: boolean;
  /** Set when the step's timeout ran out, in whichever phase it was. */
  timedOut?: string;
  listeners: Set<(event: StepEvent) => void>;
  /** The phase the step is in, to which measured parts (record saves, …) are counted. */
  phase: PhaseName;
}

type StepEnd = { state: StepState; reason: string };

interface RunInputs {
  prepared: PreparedStepContext;
  image: ImageRootfs;
  contextFile: string;
  masker: SecretMasker;
  deadline: number;
}

/**
 * The step-service's core: queues steps (FIFO, a fixed number at once), runs each through
 * prepare-context → build → pull → run → teardown, and keeps its record and log durable.
 */
export class StepRunner {
  private readonly records: StepRecords;
  private readonly active = new Map<string, Active>();
  private readonly queue: FifoQueue;
  private readonly executions = new Set<Promise<void>>();
  private readonly speculation: ImageSpeculation;
  private draining = false;

  constructor(
    private readonly settings: StepRunnerSettings,
    private readonly parts: StepRunnerParts,
  ) {
    this.records = new StepRecords(settings.stateDir);
    this.queue = new FifoQueue(settings.maxConcurrentSteps);
    this.speculation = new ImageSpeculation(parts.images, (error) =>
      parts.logger.debug("the early request for a step's image failed; the step asks again", { error: (error as Error).message }),
    );
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
    return { running: this.queue.running, queued: this.queue.depth };
  }

  get(id: string): StepRecord | undefined {
    return this.active.get(id)?.record ?? this.records.get(id);
  }

  /** Keeps a finished change beside its steps' records. */
  /** See StepRecords.requestDigest. */
  requestDigest(requestJson: string): string {
    return this.records.requestDigest(requestJson);
  }

  saveChange(record: ChangeRecord): void {
    this.records.saveChange(record);
  }

  storedChange(id: string): ChangeRecord | undefined {
    return this.records.getChange(id);
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
   * "finished". Aborting `signal` (the caller went away) cancels the step. A caller with maxStepsPerCaller
   * unfinished steps is refused until one ends.
   */
  submit(request: StepRequest, listener: (event: StepEvent) => void, signal: AbortSignal, caller = "unknown caller"): StepRecord {
    if (this.draining) throw new StepRunnerDrainingError("the step-service is shutting down and takes no new step; send it to another instance or retry");
    const limit = this.settings.maxStepsPerCaller ?? 0;
    if (limit > 0) {
      const unfinished = [...this.active.values()].filter((active) => active.caller === caller).length;
      if (unfinished >= limit) {
        throw new CallerLimitError(
          `${caller} has ${unfinished} steps queued or running, the most one caller may have (STEPRUNNER_MAX_STEPS_PER_CALLER=${limit}); retry when one has ended`,
        );
      }
    }
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
    const rerun = this.records.get(id)?.state === "handed_back";
    if (!this.records.insert(record)) throw new StepExistsError(`a step with id "${id}" exists already`);
    // A step handed back at a shutdown runs again under its id, with a fresh log.
    if (rerun) rmSync(logPath(this.logDir, id), { force: true });
    const span = tracer().startSpan("step", { attributes: stepAttributes(request, id) });
    const logger = this.parts.logger.child({ step_id: id, ...changeIdOf(request) });
    logger.info("step accepted", { action: request.action, repository: request.repositoryUrl, git_rev: request.gitRev });
    const active: Active = {
      span,
      trace: trace.setSpan(context.active(), span),
      record,
      logger,
      caller,
      log: new StepLog(logPath(this.logDir, id), this.settings.logCapBytes),
      controller: new AbortController(),
      listeners: new Set([listener]),
      phase: "queue",
    };
    this.active.set(id, active);
    active.log.on("line", (line) => this.emit(active, { type: "log", line }));
    const onCallerGone = () => this.cancel(id, "the caller of RunStep went away");
    signal.addEventListener("abort", onCallerGone, { once: true });
    this.emit(active, { type: "accepted", step: { ...record } });
    const queuedAt = Date.now();
    const start = () => {
      this.phaseDone(active, "queue", queuedAt);
      tracer()
        .startSpan("step.queue", { startTime: queuedAt, attributes: { "step.id": id } }, active.trace)
        .end();
      // A queued step starts when another ends: its spans belong to its own trace, not that one's.
      return context.with(active.trace, () => this.execute(request, active));
    };
    // A step taken out of the queue (cancel, drain) is finished by whoever took it out.
    const execution = this.queue
      .run(start, { key: id })
      .catch((error: unknown) => {
        if (!(error instanceof QueueLeftError)) throw error;
      })
      .finally(() => {
        signal.removeEventListener("abort", onCallerGone);
        this.executions.delete(execution);
      });
    this.executions.add(execution);
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
    if (this.queue.remove(id)) {
      this.finish(active, { state: "cancelled", reason });
      return { ...active.record };
    }
    active.cancelReason ??= reason;
    active.controller.abort(new Error(reason));
    return { ...active.record };
  }

  /**
   * Takes no new step, hands the queued ones back at once, lets running ones finish for graceMs and then
   * stops them too, handed back (state handed_back: nothing of them is left, the caller runs them again).
   */
  async drain(graceMs: number): Promise<void> {
    this.draining = true;
    for (const id of this.queue.removeAll()) {
      const active = this.active.get(id);
      if (active) this.finish(active, { state: "handed_back", reason: HANDED_BACK_QUEUED });
    }
    const running = Promise.all([...this.executions]);
    const deadline = setTimeout(() => {
      for (const active of this.active.values()) {
        active.handedBack = true;
        active.controller.abort(new Error(HANDED_BACK_RUNNING));
      }
    }, graceMs);
    await running;
    clearTimeout(deadline);
  }

  /** Cancels every step, waits for their teardown, and closes the database. */
  async close(): Promise<void> {
    for (const id of [...this.active.keys()]) this.cancel(id, "the step-service is shutting down");
    await Promise.all([...this.executions]);
    this.records.close();
  }

  /**
   * Runs a started step through its phases (context → build → pull → run), then its teardown, and ends it.
   * The timeout covers the whole step from its start, not only the run.
   */
  private async execute(request: StepRequest, active: Active): Promise<void> {
    const { controller, record } = active;
    const masker = new SecretMasker(request.properties, request.secretPointers);
    const contextFile = join(this.contextDir, `${record.id}.json`);
    const deadline = Date.now() + request.timeoutMs;
    const timer = setTimeout(() => {
      active.timedOut = `timed out after ${request.timeoutMs / 1000} s${record.state === "running" ? "" : `, while ${record.state}`}`;
      controller.abort(new Error(active.timedOut));
    }, request.timeoutMs);
    let image: ImageRootfs | undefined;
    let end: StepEnd;
    // A step like an earlier one asks for that one's image while its own context is prepared.
    const guess = this.speculation.guess(request, controller.signal);
    try {
      let prepared: PreparedStepContext;
      try {
        prepared = await this.prepareContext(request, active, masker);
      } catch (error) {
        guess?.abandon();
        throw error;
      }
      this.speculation.remember(request, prepared);
      const built = await this.buildImage(request, active, prepared, masker, guess);
      image = await this.pullImage(active, built);
      const exit = await this.runAction(request, active, { prepared, image, contextFile, masker, deadline });
      end = this.endOfRun(request, active, exit, masker);
    } catch (error) {
      end = this.endOfFailure(active, error, masker);
    }
    clearTimeout(timer);
    await this.teardown(active, image, contextFile);
    this.finish(active, end);
  }

  /** The context phase: the revision resolved and the build context made (the context-service's round trips). */
  private async prepareContext(request: StepRequest, active: Active, masker: SecretMasker): Promise<PreparedStepContext> {
    this.enter(active, "preparing", "context");
    const signal = active.controller.signal;
    const prepared = await this.phase(active, "context", () => this.parts.contexts.prepare(request, signal, (name, ms) => this.addPart(active, name, ms)));
    active.record.gitSha = prepared.gitSha;
    for (const warning of prepared.warnings) this.emit(active, { type: "warning", message: masker.text(warning) });
    return prepared;
  }

  /** The build phase: the image built or reused (the image-service's round trip), its progress masked and passed on. */
  private async buildImage(
    request: StepRequest,
    active: Active,
    prepared: PreparedStepContext,
    masker: SecretMasker,
    guess: ImageGuess | undefined,
  ): Promise<BuiltStepImage> {
    this.enter(active, "building", "build");
    const built = await this.phase(active, "build", async (span) => {
      const onWarning = (message: string) => this.emit(active, { type: "warning", message: masker.text(message) });
      const asked = performance.now();
      const guessed = await guess?.take(prepared);
      if (guessed) {
        this.addPart(active, guessed.built.answerKept ? "image-answer-kept" : "image-asked-early", performance.now() - asked);
        guessed.warnings.forEach(onWarning);
        span.setAttributes({
          "image.id": guessed.built.imageId,
          "image.reused": guessed.built.reused,
          "image.asked_early": true,
          "image.answer_kept": guessed.built.answerKept ?? false,
        });
        return guessed.built;
      }
      const buildLog = new BuildLogMasker(masker);
      const onProgress = (progress: BuildProgress) => this.emit(active, { type: "build", progress: buildLog.mask(progress) });
      const result = await this.parts.images.build(prepared.contextId, request, onProgress, active.controller.signal, onWarning).finally(() => {
        const rest = buildLog.flush();
        if (rest) this.emit(active, { type: "build", progress: rest });
      });
      if (result.answerKept) this.addPart(active, "image-answer-kept", performance.now() - asked);
      span.setAttributes({ "image.id": result.imageId, "image.reused": result.reused, "image.answer_kept": result.answerKept ?? false });
      return result;
    });
    Object.assign(active.record, { imageId: built.imageId, imageReused: built.reused });
    return built;
  }

  /** The pull phase: the image's layers as lower directories (pulled into the layer store when they are not local). */
  private async pullImage(active: Active, built: BuiltStepImage): Promise<ImageRootfs> {
    this.enter(active, "running", "pull");
    return this.phase(active, "pull", () => this.parts.materialiser.materialise(built.image, active.controller.signal));
  }

  /** The run phase: step_context.json written for its mount, then the container run to its end (see ContainerRuntime). */
  private async runAction(request: StepRequest, active: Active, inputs: RunInputs): Promise<ContainerExit> {
    const { record, log } = active;
    const { prepared, image, contextFile, masker, deadline } = inputs;
    const repoDir = `/opt/opschain/${prepared.repoFolder}`;
    return this.phase(active, "run", async (span) => {
      await this.timedPart(active, "context-file", () =>
        writeTextFile(contextFile, JSON.stringify(runtimeStepContext(prepared.stepContext, record.id, request)), 0o644),
      );
      log.append("system", `[steprunner] running ${request.action} in image ${record.imageId}`);
      const exited = await this.parts.runtime.run({
        stepId: record.id,
        image,
        args: stepCommand(request),
        env: { ...envProperties(request), ...requestEnvironment(request), OPSCHAIN_REPO_FOLDER: prepared.repoFolder },
        limits: request.limits,
        hostNetwork: request.hostNetwork,
        binds: [{ source: contextFile, destination: `${repoDir}/step_context.json` }],
        userDirs: [repoDir],
        ...(prepared.repositoryDir ? { repositoryDir: prepared.repositoryDir } : {}),
        resultPath: `${repoDir.slice(1)}/step_result.json`,
        timeoutMs: Math.max(1, deadline - Date.now()),
        onOutput: (stream, text, time) => log.append(stream, masker.text(text), time.getTime()),
        onStarted: () => this.emit(active, { type: "phase", state: "running", phase: "run", time: Date.now() }),
        onPart: (part, ms) => this.addPart(active, part, ms),
        signal: active.controller.signal,
      });
      span.setAttributes({ "process.exit_code": exited.exitCode ?? -1 });
      return exited;
    });
  }

  /** How a step whose container ran to its end ends, with its step_result.json parsed (secrets masked). */
  private endOfRun(request: StepRequest, active: Active, exit: ContainerExit, masker: SecretMasker): StepEnd {
    const { record, log } = active;
    Object.assign(record, { exitCode: exit.exitCode, signal: exit.signal, oomKilled: exit.oomKilled });
    let end = outcome(exit, request);
    if (exit.result && "text" in exit.result) {
      const started = performance.now();
      try {
        const parsed = parseStepResult(exit.result.text);
        this.emit(active, { type: "result", result: parsed });
        record.result = masker.json(parsed);
      } catch (error) {
        // A step that failed anyway keeps its own reason; the bad result is only noted.
        if (end.state === "success" || !(error instanceof InvalidResultError)) throw error;
        log.append("system", `[steprunner] ignored an invalid ${error.message}`);
      } finally {
        this.addPart(active, "result-parse", performance.now() - started, "run");
      }
    }
    if (end.state === "cancelled") end = stopped(active);
    return end;
  }

  /** How a step that failed on the way ends: the step's own fault, the service's, or a stop. */
  private endOfFailure(active: Active, error: unknown, masker: SecretMasker): StepEnd {
    const { record } = active;
    if (error instanceof InvalidResultError) return { state: "error", reason: `invalid ${error.message}` };
    if (active.controller.signal.aborted) return stopped(active);
    if (error instanceof RefusedInputError) {
      return {
        state: "error",
        reason: `${record.state === "preparing" ? "the context was refused" : "the image build failed"}: ${masker.text(error.message)}`,
      };
    }
    const message = masker.text((error as Error).message);
    const part =
      error instanceof RuntimeError
        ? "the container runtime failed"
        : `the ${record.state === "preparing" ? "context" : record.state === "building" ? "image build" : "runtime"} failed`;
    active.logger.error("step failed in the service", { error: message });
    // A full disk is the operator's to fix: say which one.
    const full = (error as NodeJS.ErrnoException).code === "ENOSPC" ? `; the step-service's disk is full: free space under ${this.settings.stateDir}` : "";
    return { state: "system_error", reason: `${part}: ${message}${full}` };
  }

  /** The teardown phase: the container is gone by now (the runtime removes it); what is left is ours. */
  private async teardown(active: Active, image: ImageRootfs | undefined, contextFile: string): Promise<void> {
    await this.phase(active, "teardown", async () => {
      image?.release();
      rmSync(contextFile, { force: true });
      await this.parts.layers.collect().catch((error: Error) => this.parts.logger.warn("layer collection failed", { error }));
    });
  }

  private enter(active: Active, state: StepState, phase: PhaseName): void {
    if (active.controller.signal.aborted) throw active.controller.signal.reason;
    active.record.state = state;
    active.record.reason = "";
    active.phase = phase;
    this.save(active);
    this.emit(active, { type: "phase", state, phase, time: Date.now() });
  }

  /** Runs a phase in its own span, a child of the step's, and records its time when it succeeds. */
  private async phase<T>(active: Active, phase: PhaseName, work: (span: Span) => Promise<T>): Promise<T> {
    const startedAt = Date.now();
    active.phase = phase;
    const result = await inSpan(`step.${phase}`, { "step.id": active.record.id }, work);
    this.phaseDone(active, phase, startedAt);
    return result;
  }

  private phaseDone(active: Active, phase: PhaseName, startedAt: number): void {
    active.record.phases.push({ phase, startedAt, durationMs: Date.now() - startedAt });
  }

  /** Adds time to a part of the current phase (parts of one name add up, e.g. each record save). */
  private addPart(active: Active, name: string, durationMs: number, phase: PhaseName = active.phase): void {
    const parts = (active.record.phaseParts ??= []);
    const part = parts.find((candidate) => candidate.phase === phase && candidate.name === name);
    const ms = Math.round(durationMs * 1000) / 1000;
    if (part) part.durationMs = Math.round((part.durationMs + ms) * 1000) / 1000;
    else parts.push({ phase, name, durationMs: ms });
  }

  private async timedPart<T>(active: Active, name: string, work: () => Promise<T>): Promise<T> {
    const started = performance.now();
    try {
      return await work();
    } finally {
      this.addPart(active, name, performance.now() - started);
    }
  }

  /** Writes the record (a synchronous SQLite write), its time counted as the current phase's "record-save" part. */
  private save(active: Active): void {
    const started = performance.now();
    this.records.save(active.record);
    this.addPart(active, "record-save", performance.now() - started);
  }

  private finish(active: Active, end: { state: StepState; reason: string }): void {
    const { record, log } = active;
    if (FINAL_STATES.has(record.state)) return;
    log.append("system", `[steprunner] ${end.state}: ${end.reason}`);
    Object.assign(record, { ...end, finishedAt: Date.now(), logLines: log.lines, logTruncated: log.truncated });
    this.records.save(record);
    log.end();
    active.logger.info("step finished", {
      state: record.state,
      reason: record.reason,
      duration_ms: record.finishedAt! - record.createdAt,
      image_reused: record.imageReused,
      ...(record.exitCode !== null ? { exit_code: record.exitCode } : {}),
    });
    this.parts.observer?.stepFinished(record);
    active.span.setAttribute("step.state", end.state);
    if (end.state !== "success") active.span.setStatus({ code: SpanStatusCode.ERROR, message: end.reason });
    active.span.end();
    this.emit(active, { type: "finished", step: { ...record } });
    this.active.delete(record.id);
  }

  private emit(active: Active, event: StepEvent): void {
    active.record.logLines = active.log.lines;
    active.record.logTruncated = active.log.truncated;
    for (const listener of active.listeners) listener(event);
  }
}

const HANDED_BACK_QUEUED = "handed back: the step-service shut down before the step started; run it again";
const HANDED_BACK_RUNNING = "handed back: the step-service shut down before the step finished and stopped it; run it again";

/** The change a step belongs to (context.change.id of step_context.json), for the service's logs. */
function changeIdOf(request: StepRequest): { change_id?: string } {
  const id = (request.contextValues.change as { id?: unknown } | undefined)?.id;
  return typeof id === "string" && id ? { change_id: id } : {};
}

/** The end of a step that was stopped: handed back at a shutdown, timed out, or cancelled by a caller. */
function stopped(active: Active): { state: StepState; reason: string } {
  if (active.handedBack) return { state: "handed_back", reason: HANDED_BACK_RUNNING };
  if (active.timedOut) return { state: "timed_out", reason: active.timedOut };
  return { state: "cancelled", reason: active.cancelReason ?? "cancelled" };
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

function stepAttributes(request: StepRequest, id: string): Record<string, string> {
  const { change_id } = changeIdOf(request);
  return { "step.id": id, "step.action": request.action, ...(change_id ? { "change.id": change_id } : {}) };
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
