import { randomUUID } from "node:crypto";
import type { Logger } from "../../shared/log.js";
import { ActionRuleError, checkNamedAction } from "./action-arguments.js";
import { INPUT_OWNER, type InputArgument, inputOperations, InputValueError, resolveInputs } from "./input-values.js";
import { applyPatch, findConflict, PatchError } from "./json-patch.js";
import type { PropertySet, StepRequest } from "./ports.js";
import type { ChangeRecord, StepRecord, StepState } from "./records.js";
import type { ChildDefinition, StepKind, StepResultData } from "./result.js";
import { SecretMasker } from "./secrets.js";
import { type StepEvent, StepRunnerDrainingError } from "./step-runner.js";

/** What the change runner needs of the step runner (StepRunner). */
export interface StepSubmitter {
  submit(request: StepRequest, listener: (event: StepEvent) => void, signal: AbortSignal, caller?: string): StepRecord;
  cancel(id: string, reason?: string): StepRecord;
  get(id: string): StepRecord | undefined;
  saveChange(record: ChangeRecord): void;
  storedChange(id: string): ChangeRecord | undefined;
  /** A keyed digest of a request's canonical JSON (what is kept of a finished change's request). */
  requestDigest(requestJson: string): string;
}

export interface ChangeRequest {
  /** Empty: one is picked. */
  changeId: string;
  /** The first step; its stepId is ignored (the change names its steps). */
  root: StepRequest;
  /** The whole tree's timeout. */
  timeoutMs: number;
  /** The whole request as canonical JSON: a retry under the same id must send the same one. */
  requestJson: string;
}

/**
 * A node of the tree; state "pending" until its step is accepted (or its built-in step starts), "waiting" while
 * a wait or input step waits, "not_run" when the tree (or the failure a parent ignores) ended first.
 */
export interface ChangeNode {
  id: string;
  action: string;
  parentId: string;
  state: StepState | "pending" | "waiting" | "not_run";
  reason: string;
  childExecutionStrategy: "sequential" | "parallel";
  children: ChangeNode[];
  stepName: string;
  kind: StepKind;
  ignoreFailure: boolean;
  waitSeconds: number;
  inputArguments: InputArgument[];
  /** The values an input step was continued with. */
  inputValues?: Record<string, unknown>;
}

export interface ChangeView {
  id: string;
  state: StepState | "running";
  reason: string;
  root: ChangeNode;
  properties: PropertySet[];
  createdAt: number;
  finishedAt: number | null;
}

export type ChangeEvent =
  | { type: "accepted"; change: ChangeView }
  | { type: "step"; stepId: string; event: StepEvent }
  | { type: "tree"; change: ChangeView }
  | { type: "warning"; message: string }
  | { type: "finished"; change: ChangeView };

export class ChangeExistsError extends Error {}
export class ChangeNotFoundError extends Error {}
/** The change or step named is not in a state that allows the call (finished, not waiting). */
export class ChangeStateError extends Error {}
/** Input values that the input step does not accept; `argument` names the one at fault. */
export class ChangeInputError extends InputValueError {}

/** A step that did not succeed; it ends the tree. */
interface Failure {
  state: StepState;
  reason: string;
}

type Diffs = { owner: string; operations: Record<string, unknown>[] }[];

interface ActiveChange {
  view: ChangeView;
  controller: AbortController;
  listener: (event: ChangeEvent) => void;
  /** Steps of the change running now. */
  running: Set<string>;
  stopReason?: Failure;
  sequence: number;
  caller: string;
  /** Masks the request's secret values (and what they became) in every view of the change sent out. */
  masker: SecretMasker;
  /** Wait and input steps waiting now, by node id: continue() resumes one with its input values. */
  waiting: Map<string, { node: ChangeNode; resume: (values: Record<string, unknown>) => void }>;
  /** The failures an ignore_failure swallowed, for the change's reason. */
  ignored: string[];
}

/**
 * Runs a change: a step, then the child steps its step_result.json declares (and theirs), each as a fresh
 * step of the step runner. Sequential children run one after the other, each seeing the properties its
 * predecessors changed; parallel children start from the same properties, and their changes are applied in
 * the order they were declared once all have ended; changes of parallel steps that touch the same property
 * fail the step whose changes came later (compatibility.md). The first step that does not succeed ends the
 * tree: steps not yet started are not run, running ones are cancelled.
 */
export class ChangeRunner {
  private readonly changes = new Map<string, ActiveChange>();

  constructor(
    private readonly steps: StepSubmitter,
    private readonly logger?: Logger,
  ) {}

  /** The active change with this id, or the one that has a step with this id. */
  changeOf(id: string): string | undefined {
    if (this.changes.has(id)) return id;
    for (const [changeId, change] of this.changes) if (change.running.has(id) || findNode(change.view.root, id)) return changeId;
    return undefined;
  }

  has(id: string): boolean {
    return this.changes.has(id);
  }

  /** An active change's live view, else a finished one as it was kept. */
  get(id: string): ChangeView | undefined {
    const active = this.changes.get(id);
    return active ? snapshot(active) : this.steps.storedChange(id)?.change;
  }

  /**
   * Starts a change; the listener sees "accepted" at once and "finished" last. Aborting `signal` cancels it.
   * A finished change asked for again with the same request is not run again: the listener gets it as it ended.
   */
  start(request: ChangeRequest, listener: (event: ChangeEvent) => void, signal: AbortSignal, caller = "unknown caller"): ChangeView {
    const id = request.changeId || randomUUID();
    if (this.changes.has(id)) throw new ChangeExistsError(`the change "${id}" is running; its stream belongs to the call that started it (GetChange shows it)`);
    const stored = this.steps.storedChange(id);
    const requestDigest = this.steps.requestDigest(request.requestJson);
    if (stored) {
      if (stored.requestDigest !== requestDigest) {
        throw new ChangeExistsError(
          `the change "${id}" has already run (it ended ${stored.change.state}) with a different request; a retry must send the very same request, or give another change_id`,
        );
      }
      listener({ type: "accepted", change: stored.change });
      listener({ type: "finished", change: stored.change });
      return stored.change;
    }
    if (this.steps.get(`${id}.1`))
      throw new ChangeExistsError(`a change with id "${id}" exists already (its first step ${id}.1 is known, but not its end); give another change_id`);
    const root = newNode(`${id}.1`, "", { action: request.root.action, kind: "action" });
    const view: ChangeView = {
      id,
      state: "running",
      reason: "",
      root,
      properties: structuredClone(request.root.properties),
      createdAt: Date.now(),
      finishedAt: null,
    };
    const change: ActiveChange = {
      view,
      controller: new AbortController(),
      listener,
      running: new Set(),
      sequence: 1,
      caller,
      masker: new SecretMasker(request.root.properties, request.root.secretPointers),
      waiting: new Map(),
      ignored: [],
    };
    this.changes.set(id, change);
    listener({ type: "accepted", change: snapshot(change) });
    const onCallerGone = () => this.cancel(id, "the caller of RunChange went away");
    signal.addEventListener("abort", onCallerGone, { once: true });
    const timer = setTimeout(
      () => this.stop(change, { state: "timed_out", reason: `the change timed out after ${request.timeoutMs / 1000} s` }),
      request.timeoutMs,
    );
    const deadline = Date.now() + request.timeoutMs;
    void this.run(change, request, deadline)
      .catch((error: Error) => {
        this.logger?.error("change failed in the service", { change_id: id, error });
        return { state: "system_error", reason: `the change runner failed: ${error.message}` } as Failure;
      })
      .then((failure) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onCallerGone);
        markNotRun(view.root, change.stopReason?.reason ?? failure?.reason ?? "");
        const end = change.stopReason ?? failure;
        const success = change.ignored.length > 0 ? `every step succeeded or had its failure ignored (${change.ignored.join("; ")})` : "every step succeeded";
        Object.assign(view, { state: end ? end.state : "success", reason: end ? end.reason : success, finishedAt: Date.now() });
        // The secrets as the steps left them are masked too.
        const final = new SecretMasker(view.properties, request.root.secretPointers);
        const finished = { ...snapshot(change), properties: final.json(change.masker.json(structuredClone(view.properties))) };
        try {
          this.steps.saveChange({ requestDigest, change: finished });
        } catch (error) {
          this.logger?.error("a finished change could not be kept", { change_id: id, error });
        }
        this.changes.delete(id);
        listener({ type: "finished", change: finished });
      });
    return snapshot(change);
  }

  /** Cancels a whole change (by its id or any of its steps' ids); false when no active change has it. */
  cancel(id: string, reason = "cancelled by a CancelStep call"): boolean {
    const changeId = this.changeOf(id);
    if (!changeId) return false;
    this.stop(this.changes.get(changeId)!, { state: "cancelled", reason });
    return true;
  }

  /**
   * Continues a waiting wait or input step of an active change (stepId empty: its only waiting step), with an
   * input step's values, and returns the change just after. Throws ChangeNotFoundError, ChangeStateError or
   * ChangeInputError saying what is wrong; the step then keeps waiting.
   */
  continue(changeId: string, stepId: string, supplied: Record<string, unknown>): ChangeView {
    const change = this.changes.get(changeId);
    if (!change) {
      const stored = this.steps.storedChange(changeId);
      if (stored) throw new ChangeStateError(`the change "${changeId}" has finished (${stored.change.state}: ${stored.change.reason}); nothing of it waits`);
      throw new ChangeNotFoundError(`no change with id "${changeId}"`);
    }
    const waiting = [...change.waiting.values()];
    const entry = stepId ? change.waiting.get(stepId) : waiting.length === 1 ? waiting[0] : undefined;
    if (!entry) {
      const names = waiting.map(({ node }) => `${node.id} (${label(node)})`).join(", ");
      if (!stepId)
        throw new ChangeStateError(waiting.length === 0 ? `no step of the change "${changeId}" is waiting` : `several steps wait: ${names}; give step_id`);
      const node = findNode(change.view.root, stepId);
      if (!node) throw new ChangeNotFoundError(`the change "${changeId}" has no step "${stepId}"`);
      throw new ChangeStateError(
        `step ${stepId} (${label(node)}) is not waiting (${node.state}${node.reason ? `: ${node.reason}` : ""})${names ? `; waiting: ${names}` : ""}`,
      );
    }
    const { node } = entry;
    if (node.kind === "wait") {
      if (Object.keys(supplied).length > 0)
        throw new ChangeInputError(Object.keys(supplied)[0]!, `step ${node.id} (${label(node)}) is a wait step and takes no input values`);
      entry.resume({});
    } else {
      try {
        const values = resolveInputs(node.inputArguments, supplied);
        // Checked now, so that a value the properties cannot hold is refused while the step still waits.
        inputOperations(node.inputArguments, values, change.view.properties);
        node.inputValues = values;
        entry.resume(values);
      } catch (error) {
        if (error instanceof InputValueError) throw new ChangeInputError(error.argument, error.message);
        throw error;
      }
    }
    return snapshot(change);
  }

  /** At a shutdown: changes waiting at a wait or input step end handed back (their running steps are the step runner's). */
  drain(): void {
    for (const change of this.changes.values()) {
      const waiting = [...change.waiting.values()].map(({ node }) => node.id);
      if (waiting.length > 0)
        this.stop(change, { state: "handed_back", reason: `the step-service shut down while ${waiting.join(", ")} waited; run the change again` });
    }
  }

  private stop(change: ActiveChange, why: Failure): void {
    if (change.stopReason) return;
    change.stopReason = why;
    change.controller.abort(new Error(why.reason));
    for (const stepId of change.running) this.steps.cancel(stepId, `${why.reason} (the whole change stops)`);
  }

  private async run(change: ActiveChange, request: ChangeRequest, deadline: number): Promise<Failure | undefined> {
    const outcome = await this.runNode(change, request, change.view.root, change.view.properties, deadline);
    if (outcome.failure) return outcome.failure;
    return undefined;
  }

  /**
   * Runs a node (its step, or a built-in step: a group, a wait, an input) and then its subtree against
   * `properties` (changed in place, in order), and returns the changes the subtree made, in the order they were
   * applied, or the failure that ended it; a failure under a node with ignore_failure ends only that subtree.
   */
  private async runNode(
    change: ActiveChange,
    request: ChangeRequest,
    node: ChangeNode,
    properties: PropertySet[],
    deadline: number,
  ): Promise<{ diffs: Diffs; failure?: Failure }> {
    const outcome = await this.runNodeAndChildren(change, request, node, properties, deadline);
    if (!outcome.failure || !node.ignoreFailure || change.stopReason || outcome.failure.state === "handed_back") {
      if (outcome.failure && node.kind !== "action" && node.state !== "not_run") this.setNode(change, node, outcome.failure.state, outcome.failure.reason);
      return outcome;
    }
    const why = `${outcome.failure.reason} (ignored: ${label(node)} has ignore_failure)`;
    change.ignored.push(outcome.failure.reason);
    markNotRun(node, why);
    if (node.kind !== "action") this.setNode(change, node, "success", `a failure under it was ignored: ${outcome.failure.reason}`);
    else change.listener({ type: "tree", change: snapshot(change) });
    return { diffs: outcome.diffs };
  }

  private async runNodeAndChildren(
    change: ActiveChange,
    request: ChangeRequest,
    node: ChangeNode,
    properties: PropertySet[],
    deadline: number,
  ): Promise<{ diffs: Diffs; failure?: Failure }> {
    if (change.controller.signal.aborted) return { diffs: [], failure: change.stopReason };
    const diffs: Diffs = [];
    if (node.kind === "action") {
      const ran = await this.runActionNode(change, request, node, properties, deadline);
      if (ran.failure || ran.done) return ran;
      diffs.push(...ran.diffs);
    } else if (node.kind === "group") {
      this.setNode(change, node, "running", "");
    } else {
      const resumed = await this.waitFor(change, node);
      if ("failure" in resumed) return { diffs: [], failure: resumed.failure };
      if (node.kind === "input") {
        let written: ReturnType<typeof inputOperations>;
        try {
          written = inputOperations(node.inputArguments, resumed.values, properties);
        } catch (error) {
          if (!(error instanceof InputValueError)) throw error;
          return { diffs: [], failure: { state: "error", reason: `step ${node.id} (${label(node)}): ${error.message}` } };
        }
        const { operations, kept } = written;
        if (kept.length > 0)
          change.listener({
            type: "warning",
            message: `step ${node.id} (${label(node)}): the properties already hold ${kept.join(", ")}, kept (no overwrite)`,
          });
        const inputDiffs: Diffs = operations.length > 0 ? [{ owner: INPUT_OWNER, operations }] : [];
        applyDiffs(properties, inputDiffs);
        diffs.push(...inputDiffs);
      }
      this.setNode(change, node, "running", "");
    }
    const children = await this.runChildren(change, request, node, properties, deadline);
    if (!children.failure && node.kind !== "action") this.setNode(change, node, "success", "");
    return { diffs: [...diffs, ...children.diffs], ...(children.failure ? { failure: children.failure } : {}) };
  }

  /** An action's own step; then the children its step_result.json declares join the tree under it. */
  private async runActionNode(
    change: ActiveChange,
    request: ChangeRequest,
    node: ChangeNode,
    properties: PropertySet[],
    deadline: number,
  ): Promise<{ diffs: Diffs; failure?: Failure; done?: boolean }> {
    let ran: { record: StepRecord; result?: StepResultData };
    try {
      ran = await this.runStep(change, request, node, properties, deadline);
    } catch (error) {
      const reason = `step ${node.id} (${node.action}) could not start: ${(error as Error).message}`;
      this.setNode(change, node, "not_run", reason);
      // A service shutting down hands the change back, as it does its running steps: run it again.
      return { diffs: [], failure: { state: error instanceof StepRunnerDrainingError ? "handed_back" : "system_error", reason } };
    }
    const { record, result } = ran;
    if (record.state !== "success") return { diffs: [], failure: { state: record.state, reason: `step ${node.id} (${node.action}): ${record.reason}` } };
    const diffs: Diffs = result?.propertiesDiffs ?? [];
    try {
      applyDiffs(properties, diffs);
    } catch (error) {
      if (!(error instanceof PatchError)) throw error;
      const reason = `step ${node.id} (${node.action}): its properties_diffs do not apply: ${error.message}`;
      this.setNode(change, node, "error", reason);
      return { diffs: [], failure: { state: "error", reason } };
    }
    if (!result || result.children.length === 0 || request.root.dryRun) return { diffs, done: true };
    // A declared child action runs as its own step: it must pass the rule RunStep's actions do.
    const refused = firstRefusedAction(result.children);
    if (refused) {
      const reason = `step ${node.id} (${node.action}) declares a child step ${JSON.stringify(refused.action)} that cannot run: ${refused.message}`;
      this.setNode(change, node, "error", reason);
      return { diffs, failure: { state: "error", reason } };
    }
    node.childExecutionStrategy = result.childExecutionStrategy;
    for (const child of result.children) node.children.push(this.declare(change, node.id, child));
    change.listener({ type: "tree", change: snapshot(change) });
    return { diffs };
  }

  /** A declared child and the built-in steps' children under it, numbered in the order they are written. */
  private declare(change: ActiveChange, parentId: string, definition: ChildDefinition): ChangeNode {
    const node = newNode(`${change.view.id}.${++change.sequence}`, parentId, definition);
    for (const child of definition.children) node.children.push(this.declare(change, node.id, child));
    return node;
  }

  /** A node's children, in sequence or in parallel as declared. */
  private async runChildren(
    change: ActiveChange,
    request: ChangeRequest,
    node: ChangeNode,
    properties: PropertySet[],
    deadline: number,
  ): Promise<{ diffs: Diffs; failure?: Failure }> {
    const collected: Diffs = [];
    if (node.childExecutionStrategy === "sequential") {
      for (const child of node.children) {
        const outcome = await this.runNode(change, request, child, properties, deadline);
        collected.push(...outcome.diffs);
        if (outcome.failure) return { diffs: collected, failure: outcome.failure };
      }
      return { diffs: collected };
    }
    // Parallel: every child starts from the same properties; their changes are merged when all have ended.
    const branches = await Promise.all(node.children.map((child) => this.runNode(change, request, child, structuredClone(properties), deadline)));
    const failed = branches.find((branch) => branch.failure);
    if (failed) return { diffs: collected, failure: failed.failure };
    for (const [index, branch] of branches.entries()) {
      for (let earlier = 0; earlier < index; earlier++) {
        const conflict = conflictBetween(branches[earlier]!.diffs, branch.diffs);
        if (conflict) {
          const [first, second] = [node.children[earlier]!, node.children[index]!];
          const reason = `step ${second.id} (${second.action}) changed ${conflict.owner} property ${conflict.path || "(the whole object)"}, which parallel step ${first.id} (${first.action}) also changed (${conflict.otherPath || "the whole object"}); parallel steps may not change the same properties`;
          this.setNode(change, second, "error", reason);
          return { diffs: collected, failure: { state: "error", reason } };
        }
      }
    }
    for (const branch of branches) {
      try {
        applyDiffs(properties, branch.diffs);
      } catch (error) {
        if (!(error instanceof PatchError)) throw error;
        const reason = `the changes of the parallel children of step ${node.id} do not apply together: ${error.message}`;
        return { diffs: collected, failure: { state: "error", reason } };
      }
      collected.push(...branch.diffs);
    }
    return { diffs: collected };
  }

  /**
   * A wait or input step: waits until continue() resumes it (with an input step's values), or a timed wait's
   * time is up; the change stopping (cancel, timeout, shutdown) ends the wait with its failure.
   */
  private waitFor(change: ActiveChange, node: ChangeNode): Promise<{ values: Record<string, unknown> } | { failure: Failure }> {
    return new Promise((resolve) => {
      const signal = change.controller.signal;
      let timer: NodeJS.Timeout | undefined;
      const done = (outcome: { values: Record<string, unknown> } | { failure: Failure }) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onStop);
        change.waiting.delete(node.id);
        resolve(outcome);
      };
      const onStop = () => done({ failure: change.stopReason ?? { state: "cancelled", reason: "the change stopped" } });
      if (signal.aborted) return onStop();
      signal.addEventListener("abort", onStop, { once: true });
      if (node.waitSeconds > 0) timer = setTimeout(() => done({ values: {} }), node.waitSeconds * 1000);
      change.waiting.set(node.id, { node, resume: (values) => done({ values }) });
      const how =
        node.kind === "input"
          ? `waiting for input (${node.inputArguments.map((argument) => argument.name).join(", ")}): ContinueChange with input_values`
          : node.waitSeconds > 0
            ? `waiting ${node.waitSeconds} s, or until continued (ContinueChange)`
            : "waiting to be continued (ContinueChange)";
      this.setNode(change, node, "waiting", how);
    });
  }

  /** Runs one step of the change with the properties as they are now, and waits for its end. */
  private runStep(
    change: ActiveChange,
    request: ChangeRequest,
    node: ChangeNode,
    properties: PropertySet[],
    deadline: number,
  ): Promise<{ record: StepRecord; result?: StepResultData }> {
    const root = request.root;
    const contextValues = structuredClone(root.contextValues) as Record<string, Record<string, unknown>>;
    contextValues.change = {
      ...(contextValues.change ?? {}),
      id: (contextValues.change?.id as string) || change.view.id,
      action: (contextValues.change?.action as string) || root.action,
    };
    contextValues.step = { ...(contextValues.step ?? {}), action: node.action, fullPath: node.action };
    // The first step runs as requested; a declared child is one action, whatever spaces its name holds.
    const isRoot = node.parentId === "";
    const { actions: _rootActions, ...rest } = root;
    const stepRequest: StepRequest = {
      ...rest,
      ...(isRoot && root.actions ? { actions: root.actions } : {}),
      ...(isRoot ? {} : { actions: [node.action] }),
      stepId: node.id,
      action: node.action,
      properties: structuredClone(properties),
      contextValues,
      runtimeContext: { step: { id: node.id, ...(node.parentId ? { parent_step_id: node.parentId } : {}) } },
      timeoutMs: Math.max(1, Math.min(root.timeoutMs, deadline - Date.now())),
    };
    return new Promise((resolve, reject) => {
      let result: StepResultData | undefined;
      const never = new AbortController().signal;
      try {
        this.steps.submit(
          stepRequest,
          (event) => {
            if (event.type === "result") {
              result = event.result;
              return;
            }
            change.listener({ type: "step", stepId: node.id, event });
            if (event.type === "accepted") {
              change.running.add(node.id);
              this.setNode(change, node, event.step.state, event.step.reason);
              // Stopped while it was being accepted: it stops too.
              if (change.stopReason) this.steps.cancel(node.id, `${change.stopReason.reason} (the whole change stops)`);
            } else if (event.type === "phase") {
              this.setNode(change, node, event.state, "");
            } else if (event.type === "finished") {
              change.running.delete(node.id);
              this.setNode(change, node, event.step.state, event.step.reason);
              resolve({ record: event.step, ...(result ? { result } : {}) });
            }
          },
          never,
          change.caller,
        );
      } catch (error) {
        reject(error);
      }
    });
  }

  private setNode(change: ActiveChange, node: ChangeNode, state: ChangeNode["state"], reason: string): void {
    if (node.state === state && node.reason === reason) return;
    node.state = state;
    node.reason = reason;
    change.listener({ type: "tree", change: snapshot(change) });
  }
}

function applyDiffs(properties: PropertySet[], diffs: Diffs): void {
  for (const diff of diffs) {
    let set = properties.find((candidate) => candidate.owner === diff.owner);
    if (!set) properties.push((set = { owner: diff.owner, properties: {} }));
    const patched = applyPatch(set.properties, diff.operations);
    if (typeof patched !== "object" || patched === null || Array.isArray(patched)) throw new PatchError(`the ${diff.owner} properties must stay a JSON object`);
    set.properties = patched as Record<string, unknown>;
  }
}

function conflictBetween(left: Diffs, right: Diffs): { owner: string; path: string; otherPath: string } | undefined {
  for (const a of left) {
    for (const b of right) {
      if (a.owner !== b.owner) continue;
      const conflict = findConflict(b.operations, a.operations);
      if (conflict) return { owner: a.owner, path: conflict.path, otherPath: conflict.otherPath };
    }
  }
  return undefined;
}

function newNode(id: string, parentId: string, definition: Partial<ChildDefinition> & { action: string; kind: StepKind }): ChangeNode {
  return {
    id,
    action: definition.action,
    parentId,
    state: "pending",
    reason: "",
    childExecutionStrategy: definition.kind === "action" ? "sequential" : (definition.childExecutionStrategy ?? "sequential"),
    children: [],
    stepName: definition.stepName ?? "",
    kind: definition.kind,
    ignoreFailure: definition.ignoreFailure ?? false,
    waitSeconds: definition.waitSeconds ?? 0,
    inputArguments: definition.inputArguments ?? [],
  };
}

/** A node as people know it: its step name when it has one. */
function label(node: ChangeNode): string {
  return node.stepName || node.action;
}

/** The first declared action (at any depth under built-in steps) that RunStep's rule refuses, and why. */
function firstRefusedAction(children: ChildDefinition[]): { action: string; message: string } | undefined {
  for (const child of children) {
    if (child.kind === "action") {
      try {
        checkNamedAction(child.action);
      } catch (error) {
        if (!(error instanceof ActionRuleError)) throw error;
        return { action: child.action, message: error.message };
      }
    }
    const nested = firstRefusedAction(child.children);
    if (nested) return nested;
  }
  return undefined;
}

/** The node of a tree with this id, if any. */
export function findNode(node: ChangeNode, id: string): ChangeNode | undefined {
  if (node.id === id) return node;
  for (const child of node.children) {
    const found = findNode(child, id);
    if (found) return found;
  }
  return undefined;
}

function markNotRun(node: ChangeNode, why: string): void {
  if (node.state === "pending") {
    node.state = "not_run";
    node.reason = why ? `not run: ${why}` : "not run";
  }
  node.children.forEach((child) => markNotRun(child, why));
}

/** A copy of the change's view to send out, secrets masked. */
function snapshot(change: ActiveChange): ChangeView {
  return change.masker.json(structuredClone(change.view));
}
