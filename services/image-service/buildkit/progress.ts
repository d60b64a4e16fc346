import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { StatusResponse } from "../../../gen/moby/buildkit/v1/control_pb.js";

import type { ProgressEvent, VertexState } from "../../shared/build-progress.js";

// The events and their plain renderer are shared with the CLI; the BuildKit client's users find them here too.
export { formatBytes, PlainProgressRenderer } from "../../shared/build-progress.js";
export type { ProgressEvent, VertexEvent, VertexLogEvent, VertexState, VertexStatusEvent } from "../../shared/build-progress.js";

/**
 * Turns BuildKit's Status stream into typed events: vertices merged by digest and numbered in first-seen
 * order; an event only when a vertex's state changes (BuildKit repeats unchanged vertices).
 */
export class ProgressTracker {
  private readonly vertices = new Map<string, { number: number; state?: VertexState; startedAt?: number }>();

  update(status: StatusResponse): ProgressEvent[] {
    const events: ProgressEvent[] = [];
    for (const vertex of status.vertexes) {
      const known = this.known(vertex.digest);
      const startedAt = vertex.started ? timestampMs(vertex.started) : undefined;
      const completedAt = vertex.completed ? timestampMs(vertex.completed) : undefined;
      const state: VertexState | undefined = vertex.error
        ? vertex.error.includes("context canceled")
          ? "canceled"
          : "errored"
        : vertex.cached
          ? "cached"
          : completedAt !== undefined
            ? "completed"
            : startedAt !== undefined
              ? "started"
              : undefined;
      if (startedAt !== undefined) known.startedAt = startedAt;
      if (!state || state === known.state) continue;
      known.state = state;
      events.push({
        kind: "vertex",
        digest: vertex.digest,
        number: known.number,
        name: vertex.name,
        state,
        startedAt,
        completedAt,
        error: vertex.error || undefined,
      });
    }
    for (const item of status.statuses) {
      events.push({
        kind: "status",
        digest: item.vertex,
        number: this.known(item.vertex).number,
        id: item.ID,
        current: item.current,
        total: item.total,
        completed: item.completed !== undefined,
      });
    }
    for (const log of status.logs) {
      const known = this.known(log.vertex);
      const time = log.timestamp ? timestampMs(log.timestamp) : Date.now();
      events.push({
        kind: "log",
        digest: log.vertex,
        number: known.number,
        stream: log.stream === 2n ? "stderr" : "stdout",
        data: log.msg,
        sinceStartMs: known.startedAt !== undefined ? Math.max(0, time - known.startedAt) : 0,
        time,
      });
    }
    return events;
  }

  private known(digest: string) {
    let known = this.vertices.get(digest);
    if (!known) {
      known = { number: this.vertices.size + 1 };
      this.vertices.set(digest, known);
    }
    return known;
  }
}
