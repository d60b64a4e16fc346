/**
 * A build's progress as typed events, and their rendering like `buildctl --progress=plain`: made by the
 * image-service's BuildKit client (buildkit/progress.ts), rendered by the CLI from what BuildImage and RunStep
 * stream.
 */

export type VertexState = "started" | "completed" | "cached" | "errored" | "canceled";

export interface VertexEvent {
  kind: "vertex";
  digest: string;
  /** First-seen order, from 1: "#N" in plain progress. */
  number: number;
  name: string;
  state: VertexState;
  startedAt?: number;
  completedAt?: number;
  error?: string;
}

export interface VertexStatusEvent {
  kind: "status";
  digest: string;
  number: number;
  id: string;
  current: bigint;
  total: bigint;
  completed: boolean;
}

export interface VertexLogEvent {
  kind: "log";
  digest: string;
  number: number;
  stream: "stdout" | "stderr";
  data: Uint8Array;
  /** Milliseconds since the vertex started. */
  sinceStartMs: number;
  time: number;
}

export type ProgressEvent = VertexEvent | VertexStatusEvent | VertexLogEvent;

/** Renders events like `buildctl --progress=plain`. */
export class PlainProgressRenderer {
  private readonly names = new Map<number, string>();
  private readonly partialLines = new Map<number, string>();

  render(event: ProgressEvent): string {
    switch (event.kind) {
      case "vertex": {
        const header = this.names.has(event.number) ? "" : `#${event.number} ${event.name}\n`;
        this.names.set(event.number, event.name);
        switch (event.state) {
          case "started":
            return header;
          case "cached":
            return `${header}#${event.number} CACHED\n\n`;
          case "completed":
            return `${header}${this.flush(event.number)}#${event.number} DONE ${seconds(event)}\n\n`;
          case "errored":
            return `${header}${this.flush(event.number)}#${event.number} ERROR: ${event.error}\n\n`;
          case "canceled":
            return `${header}${this.flush(event.number)}#${event.number} CANCELED\n\n`;
        }
        return header;
      }
      case "status": {
        if (!event.completed) return "";
        const size = event.total > 0n ? `${formatBytes(event.current)} / ${formatBytes(event.total)}` : formatBytes(event.current);
        return `#${event.number} ${event.id} ${size} done\n`;
      }
      case "log": {
        const text = (this.partialLines.get(event.number) ?? "") + Buffer.from(event.data).toString("utf8");
        const lines = text.split("\n");
        this.partialLines.set(event.number, lines.pop()!);
        const prefix = `#${event.number} ${(event.sinceStartMs / 1000).toFixed(3)} `;
        return lines.map((line) => `${prefix}${line}\n`).join("");
      }
    }
  }

  private flush(number: number): string {
    const rest = this.partialLines.get(number);
    this.partialLines.delete(number);
    return rest ? `#${number} ${rest}\n` : "";
  }
}

function seconds(event: VertexEvent): string {
  if (event.startedAt === undefined || event.completedAt === undefined) return "0.0s";
  return `${((event.completedAt - event.startedAt) / 1000).toFixed(1)}s`;
}

/** Decimal units, as buildctl prints sizes ("2.10kB"). */
export function formatBytes(bytes: bigint): string {
  const value = Number(bytes);
  const units = ["B", "kB", "MB", "GB", "TB"];
  let scaled = value;
  let unit = 0;
  while (scaled >= 1000 && unit < units.length - 1) {
    scaled /= 1000;
    unit++;
  }
  return unit === 0 ? `${value}B` : `${scaled.toFixed(2)}${units[unit]}`;
}
