import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { type Change, type ChangeStep, type RunChangeResponse, StepKind, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { cutTo, keepTail, seconds, timed } from "./tty-progress.js";

/** Log lines shown under each step that has not ended. */
const STEP_LOG_LINES = 3;

interface StepTiming {
  startedAt?: number;
  endedAt?: number;
}

/** What the live view of a change shows, folded from RunChange's events: the tree, each step's timer and last log lines. */
export class ChangeTreeView {
  change?: Change;
  readonly timings = new Map<string, StepTiming>();
  readonly logTails = new Map<string, string[]>();
  readonly warnings: string[] = [];
  startedAt?: number;
  endedAt?: number;

  apply(response: RunChangeResponse, receivedAt: number): void {
    const event = response.event;
    switch (event.case) {
      case "accepted":
      case "treeChanged":
      case "finished":
        this.startedAt ??= receivedAt;
        if (event.value.change) this.setChange(event.value.change, receivedAt);
        if (event.case === "finished") this.endedAt = receivedAt;
        break;
      case "warning":
        this.warnings.push(event.value);
        break;
      case "stepEvent": {
        const inner = event.value.event?.event;
        if (inner?.case === "logLine") {
          const tail = this.logTails.get(event.value.stepId) ?? [];
          keepTail(tail, [inner.value.text]);
          this.logTails.set(event.value.stepId, tail.slice(-STEP_LOG_LINES));
        } else if (inner?.case === "warning") {
          this.warnings.push(`${event.value.stepId}: ${inner.value}`);
        }
        break;
      }
    }
  }

  private setChange(change: Change, at: number): void {
    this.change = change;
    const walk = (step: ChangeStep) => {
      const timing = this.timings.get(step.id) ?? {};
      const started = step.state !== StepState.QUEUED && step.state !== StepState.UNSPECIFIED;
      if (started) timing.startedAt ??= at;
      if (step.state >= StepState.SUCCESS && step.state !== StepState.WAITING) timing.endedAt ??= at;
      this.timings.set(step.id, timing);
      step.children.forEach(walk);
    };
    if (change.root) walk(change.root);
  }
}

const stateName = (state: StepState) => (state === StepState.UNSPECIFIED ? "not run" : (StepState[state]?.toLowerCase().replace("_", " ") ?? "unknown"));
export const isFinal = (state: StepState) => state >= StepState.SUCCESS && state !== StepState.WAITING;

/** What a step is, beside its id: its step name (and action when they differ) and its kind. */
export function stepLabel(step: ChangeStep): string {
  const name =
    step.stepName && step.stepName !== step.action ? (step.kind === StepKind.ACTION ? `${step.stepName} (${step.action})` : step.stepName) : step.action;
  const kind = step.kind === StepKind.WAIT ? " [wait]" : step.kind === StepKind.INPUT ? " [input]" : step.kind === StepKind.GROUP ? " [group]" : "";
  return `${name}${kind}`;
}

const strategyMark = (step: ChangeStep) =>
  step.children.length > 1 ? (step.childExecutionStrategy === ChildExecutionStrategy.PARALLEL ? " ⇉ parallel" : " → sequential") : "";

/**
 * The live view of a change at a moment: a header with the change's state and time, then its tree, one line a
 * step indented under its parent with its state and timer, the last log lines of steps that run, and for a
 * waiting step the command that continues it. At most `rows - 1` lines, the newest kept.
 */
export function renderChangeFrame(view: ChangeTreeView, now: number, columns: number, rows: number): string {
  const change = view.change;
  const end = view.endedAt ?? now;
  const lines: string[] = [];
  const status = change ? `${stateName(change.state)}${view.endedAt !== undefined && change.reason ? ` (${change.reason})` : ""}` : "starting";
  lines.push(timed(`[+] Change ${change?.id ?? ""}: ${status}`, seconds(view.startedAt === undefined ? 0 : end - view.startedAt), columns));
  const walk = (step: ChangeStep, depth: number) => {
    const indent = "  ".repeat(depth);
    const timing = view.timings.get(step.id);
    const elapsed = timing?.startedAt === undefined ? "" : seconds((timing.endedAt ?? end) - timing.startedAt);
    const line = ` => ${indent}${step.id} ${stepLabel(step)}${strategyMark(step)}: ${stateName(step.state)}`;
    lines.push(elapsed ? timed(line, elapsed, columns) : cutTo(line, columns));
    if (step.state === StepState.WAITING && change) {
      const inputs = step.inputArguments.map((argument) => ` --input ${argument.name}=…`).join("");
      lines.push(cutTo(` => ${indent}   waiting: steprunner continue ${change.id} ${step.id}${inputs}`, columns));
    } else if (!isFinal(step.state)) {
      for (const log of view.logTails.get(step.id) ?? []) lines.push(cutTo(` => ${indent}   # ${log}`, columns));
    } else if (step.state !== StepState.SUCCESS && step.reason) {
      lines.push(cutTo(` => ${indent}   ${step.reason}`, columns));
    }
    for (const child of step.children) walk(child, depth + 1);
  };
  if (change?.root) walk(change.root, 0);
  for (const warning of view.warnings) lines.push(cutTo(`warning: ${warning}`, columns));
  return `${lines.slice(-Math.max(1, rows - 1)).join("\n")}\n`;
}
