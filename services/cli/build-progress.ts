import { timestampMs } from "@bufbuild/protobuf/wkt";
import { toJson } from "@bufbuild/protobuf";
import { type BuildProgress, BuildProgressSchema, LogStream, VertexState } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { PlainProgressRenderer, type ProgressEvent, type VertexState as State } from "../shared/build-progress.js";

const STATES: Partial<Record<VertexState, State>> = {
  [VertexState.STARTED]: "started",
  [VertexState.COMPLETED]: "completed",
  [VertexState.CACHED]: "cached",
  [VertexState.ERRORED]: "errored",
  [VertexState.CANCELED]: "canceled",
};

export type ProgressMode = "plain" | "json";

/** Prints build progress as it arrives: like `buildctl --progress=plain`, or one JSON object a line. */
export class BuildProgressPrinter {
  private readonly plain = new PlainProgressRenderer();
  private readonly numbers = new Map<string, number>();

  constructor(
    private readonly mode: ProgressMode,
    private readonly write: (text: string) => void,
  ) {}

  print(progress: BuildProgress): void {
    if (this.mode === "json") {
      this.write(`${JSON.stringify({ buildProgress: toJson(BuildProgressSchema, progress) })}\n`);
      return;
    }
    for (const event of this.events(progress)) this.write(this.plain.render(event));
  }

  private events(progress: BuildProgress): ProgressEvent[] {
    const events: ProgressEvent[] = [];
    for (const vertex of progress.vertexes) {
      this.numbers.set(vertex.digest, vertex.number);
      const state = STATES[vertex.state];
      if (!state) continue;
      events.push({
        kind: "vertex",
        digest: vertex.digest,
        number: vertex.number,
        name: vertex.name,
        state,
        startedAt: vertex.startedAt ? timestampMs(vertex.startedAt) : undefined,
        completedAt: vertex.completedAt ? timestampMs(vertex.completedAt) : undefined,
        error: vertex.error || undefined,
      });
    }
    for (const status of progress.statuses) {
      events.push({
        kind: "status",
        digest: status.vertexDigest,
        number: this.numbers.get(status.vertexDigest) ?? 0,
        id: status.id,
        current: status.current,
        total: status.total,
        completed: status.completed,
      });
    }
    for (const log of progress.logs) {
      const time = log.time ? timestampMs(log.time) : Date.now();
      events.push({
        kind: "log",
        digest: log.vertexDigest,
        number: this.numbers.get(log.vertexDigest) ?? 0,
        stream: log.stream === LogStream.STDERR ? "stderr" : "stdout",
        data: log.data,
        sinceStartMs: 0,
        time,
      });
    }
    return events;
  }
}
