import { randomUUID } from "node:crypto";
import type { Logger } from "../../shared/log.js";
import { ActionRuleError, parseAction } from "./action-arguments.js";
import { applyPatch, findConflict, PatchError } from "./json-patch.js";
import type { PropertySet, StepRequest } from "./ports.js";
import type { StepRecord, StepState } from "./records.js";
import type { StepResultData } from "./result.js";
import { SecretMasker } from "./secrets.js";
import { type StepEvent, StepRunnerDrainingError } from "./step-runner.js";

/** What the change runner needs of the step runner (StepRunner). */
export interface StepSubmitter {
  submit(request: StepRequest, listener: (event: StepEvent) => void, signal: AbortSignal, caller?: string): StepRecord;
  cancel(id: string, reason?: string): StepRecord;
  get(id: string): StepRecord | undefined;
}

export interface ChangeRequest {
  /** Empty: one is picked. */
  changeId: string;
  /** The first step; its stepId is ignored (the change names its steps). */
  root: StepRequest;
  /** The whole tree's timeout. */
  timeoutMs: number;
}

/** A node of the tree; state "pending" until its step is accepted, "not_run" when the tree ended first. */
export interface ChangeNode {
  id: string;
  action: string;
  parentId: string;
  state: StepState | "pending" | "not_run";
  reason: string;
  childExecutionStrategy: "sequential" | "parallel";
  children: ChangeNode[];
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

  /** Starts a change; the listener sees "accepted" at once and "finished" last. Aborting `signal` cancels it. */
  start(request: ChangeRequest, listener: (event: ChangeEvent) => void, signal: AbortSignal, caller = "unknown caller"): ChangeView {
    const id = request.changeId || randomUUID();
    if (this.changes.has(id) || this.steps.get(`${id}.1`))
      throw new ChangeExistsError(`a change with id "${id}" exists already (its first step ${id}.1 is known); give another change_id`);
    const root: ChangeNode = {
      id: `${id}.1`,
      action: request.root.action,
      parentId: "",
      state: "pending",
      reason: "",
      childExecutionStrategy: "sequential",
      children: [],
    };
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
        Object.assign(view, { state: end ? end.state : "success", reason: end ? end.reason : "every step succeeded", finishedAt: Date.now() });
        this.changes.delete(id);
        // The secrets as the steps left them are masked too.
        const final = new SecretMasker(view.properties, request.root.secretPointers);
        listener({ type: "finished", change: { ...snapshot(change), properties: final.json(change.masker.json(structuredClone(view.properties))) } });
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
   * Runs a node's step and then its subtree against `properties` (changed in place, in order), and returns the
   * changes the subtree made, in the order they were applied, or the failure that ended it.
   */
  private async runNode(
    change: ActiveChange,
    request: ChangeRequest,
    node: ChangeNode,
    properties: PropertySet[],
    deadline: number,
  ): Promise<{ diffs: Diffs; failure?: Failure }> {
    if (change.controller.signal.aborted) return { diffs: [], failure: change.stopReason };
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
    if (!result || result.children.length === 0 || request.root.dryRun) return { diffs };
    // A declared child runs as its own step: its action must pass the rule a request's action does.
    for (const child of result.children) {
      try {
        parseAction(child.action);
      } catch (error) {
        if (!(error instanceof ActionRuleError)) throw error;
        const reason = `step ${node.id} (${node.action}) declares a child step ${JSON.stringify(child.action)} that cannot run: ${error.message}`;
        this.setNode(change, node, "error", reason);
        return { diffs, failure: { state: "error", reason } };
      }
    }
    node.childExecutionStrategy = result.childExecutionStrategy;
    for (const child of result.children) {
      node.children.push({
        id: `${change.view.id}.${++change.sequence}`,
        action: child.action,
        parentId: node.id,
        state: "pending",
        reason: "",
        childExecutionStrategy: "sequential",
        children: [],
      });
    }
    change.listener({ type: "tree", change: snapshot(change) });
    const collected: Diffs = [...diffs];
    if (result.childExecutionStrategy === "sequential") {
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
    const stepRequest: StepRequest = {
      ...root,
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

function findNode(node: ChangeNode, id: string): ChangeNode | undefined {
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
