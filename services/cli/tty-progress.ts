import { timestampMs } from "@bufbuild/protobuf/wkt";
import { VertexState } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { type RunStepResponse, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";

/** Log lines kept and shown under the running step, and under each running build vertex (as buildctl does). */
const LOG_TAIL_LINES = 6;
/** The most often the live view is redrawn. */
export const REDRAW_INTERVAL_MS = 100;

interface VertexView {
  number: number;
  name: string;
  state: VertexState;
  startedAt?: number;
  completedAt?: number;
  error?: string;
  logTail: string[];
  /** A log line not yet ended by a newline. */
  partialLog: string;
}

interface PhaseView {
  state: StepState;
  startedAt: number;
}

/** What the live view shows, folded from a step's events in the order they came. */
export class StepView {
  stepId = "";
  readonly vertices = new Map<string, VertexView>();
  readonly phases: PhaseView[] = [];
  readonly logTail: string[] = [];
  readonly warnings: string[] = [];
  buildStartedAt?: number;
  buildEndedAt?: number;
  finished?: { state: StepState; reason: string; at: number };

  /** receivedAt stands in for events that carry no time of their own. */
  apply(response: RunStepResponse, receivedAt: number): void {
    const event = response.event;
    switch (event.case) {
      case "accepted":
        this.stepId = event.value.step?.id ?? "";
        break;
      case "phaseChanged": {
        const at = event.value.time ? timestampMs(event.value.time) : receivedAt;
        if (this.phases.at(-1)?.state === StepState.BUILDING) this.buildEndedAt = at;
        if (event.value.state === StepState.BUILDING) this.buildStartedAt = at;
        this.phases.push({ state: event.value.state, startedAt: at });
        break;
      }
      case "buildProgress":
        for (const vertex of event.value.vertexes) {
          const known = this.vertices.get(vertex.digest);
          this.vertices.set(vertex.digest, {
            number: vertex.number,
            name: vertex.name,
            state: vertex.state,
            startedAt: vertex.startedAt ? timestampMs(vertex.startedAt) : known?.startedAt,
            completedAt: vertex.completedAt ? timestampMs(vertex.completedAt) : known?.completedAt,
            error: vertex.error || undefined,
            logTail: known?.logTail ?? [],
            partialLog: known?.partialLog ?? "",
          });
        }
        for (const log of event.value.logs) {
          const vertex = this.vertices.get(log.vertexDigest);
          if (!vertex) continue;
          const lines = (vertex.partialLog + Buffer.from(log.data).toString("utf8")).split("\n");
          vertex.partialLog = lines.pop() ?? "";
          keepTail(vertex.logTail, lines);
        }
        break;
      case "logLine":
        keepTail(this.logTail, [event.value.text]);
        break;
      case "warning":
        this.warnings.push(event.value);
        break;
      case "finished": {
        const step = event.value.step;
        const last = this.phases.at(-1);
        if (last?.state === StepState.BUILDING) this.buildEndedAt = receivedAt;
        this.finished = { state: step?.state ?? StepState.UNSPECIFIED, reason: step?.reason ?? "", at: receivedAt };
        break;
      }
    }
  }
}

export function keepTail(tail: string[], lines: string[]): void {
  tail.push(...lines);
  tail.splice(0, Math.max(0, tail.length - LOG_TAIL_LINES));
}

const stateName = (state: StepState) => StepState[state]?.toLowerCase() ?? "unknown";
export const seconds = (ms: number) => `${(Math.max(0, ms) / 1000).toFixed(1)}s`;

/** "name ….. 1.2s": the timer right-aligned, the line cut to the terminal's width so that it never wraps. */
export function timed(text: string, timer: string, columns: number): string {
  const room = columns - 1 - timer.length - 1;
  const cut = text.length > room ? `${text.slice(0, Math.max(0, room - 1))}…` : text;
  return `${cut.padEnd(room)} ${timer}`;
}

export const cutTo = (text: string, columns: number) => (text.length > columns - 1 ? text.slice(0, columns - 1) : text);

const VERTEX_PREFIX: Partial<Record<VertexState, string>> = {
  [VertexState.CACHED]: "CACHED ",
  [VertexState.ERRORED]: "ERROR ",
  [VertexState.CANCELED]: "CANCELED ",
};

/**
 * The live view's text at a moment, like `buildctl --progress=tty`: the build's vertices with their timers
 * (the running ones with their last log lines), then the step's phases with theirs and the step's last log
 * lines. At most `rows - 1` lines, the newest kept, so that cursor movement can reach the frame's top.
 */
export function renderFrame(view: StepView, now: number, columns: number, rows: number): string {
  const end = view.finished?.at ?? now;
  const lines: string[] = [];
  if (view.vertices.size > 0) {
    const vertices = [...view.vertices.values()].sort((a, b) => a.number - b.number);
    const done = vertices.filter((vertex) => vertex.state !== VertexState.STARTED).length;
    const buildTime = view.buildStartedAt === undefined ? 0 : (view.buildEndedAt ?? end) - view.buildStartedAt;
    const finished = view.buildEndedAt !== undefined ? " FINISHED" : "";
    lines.push(cutTo(`[+] Building ${seconds(buildTime)} (${done}/${vertices.length})${finished}`, columns));
    for (const vertex of vertices) {
      const running = vertex.state === VertexState.STARTED;
      const elapsed = vertex.startedAt === undefined ? 0 : (vertex.completedAt ?? (running ? end : vertex.startedAt)) - vertex.startedAt;
      lines.push(timed(` => ${VERTEX_PREFIX[vertex.state] ?? ""}${vertex.name}`, seconds(elapsed), columns));
      if (running || vertex.state === VertexState.ERRORED) {
        for (const log of vertex.logTail) lines.push(cutTo(` => => # ${log}`, columns));
      }
      if (vertex.error) lines.push(cutTo(` => => ERROR: ${vertex.error}`, columns));
    }
  }
  const stepStatus = view.finished
    ? `${stateName(view.finished.state)}${view.finished.reason ? ` (${view.finished.reason})` : ""}`
    : stateName(view.phases.at(-1)?.state ?? StepState.QUEUED);
  const stepStart = view.phases[0]?.startedAt;
  lines.push(timed(`[+] Step ${view.stepId || "(not yet accepted)"}: ${stepStatus}`, seconds(stepStart === undefined ? 0 : end - stepStart), columns));
  view.phases.forEach((phase, index) => {
    const until = view.phases[index + 1]?.startedAt ?? end;
    lines.push(timed(` => ${stateName(phase.state)}`, seconds(until - phase.startedAt), columns));
  });
  for (const log of view.logTail) lines.push(cutTo(` => => # ${log}`, columns));
  for (const warning of view.warnings) lines.push(cutTo(`warning: ${warning}`, columns));
  return `${lines.slice(-Math.max(1, rows - 1)).join("\n")}\n`;
}

/** A terminal to draw on: what a TTY stream gives. */
export interface Terminal {
  write(text: string): void;
  columns: number;
  rows: number;
}

/**
 * Redraws a view in place: up to the previous frame's first line, the new frame over it, each line cleared
 * to its end and what is left below cleared; at most every REDRAW_INTERVAL_MS, and in between events too, so
 * that the timers run. `render` gives the frame at a moment for the terminal's size (renderFrame for a step,
 * renderChangeFrame for a change).
 */
export class LiveView {
  private drawnLines = 0;
  private readonly ticker: NodeJS.Timeout;

  constructor(
    private readonly terminal: Terminal,
    private readonly render: (now: number, columns: number, rows: number) => string,
    private readonly clock: () => number = Date.now,
  ) {
    this.ticker = setInterval(() => this.draw(), REDRAW_INTERVAL_MS);
  }

  /** Draws the final frame and leaves it on the screen. */
  end(): void {
    clearInterval(this.ticker);
    this.draw();
  }

  private draw(): void {
    // A pseudo-terminal nobody sized reports 0 × 0.
    const frame = this.render(this.clock(), this.terminal.columns || 80, this.terminal.rows || 24);
    const up = this.drawnLines > 0 ? `\x1b[${this.drawnLines}A\r` : "";
    this.terminal.write(`${up}${frame.replace(/\n/g, "\x1b[K\n")}\x1b[J`);
    this.drawnLines = frame.split("\n").length - 1;
  }
}
