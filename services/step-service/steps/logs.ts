import { closeSync, createReadStream, openSync, writeSync } from "node:fs";
import { readFile, truncate } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { EventEmitter } from "node:events";

export type LogStreamName = "stdout" | "stderr" | "system";

export interface LogLine {
  offset: number;
  stream: LogStreamName;
  text: string;
  time: number;
}

/**
 * One step's log: a file of JSON lines, written synchronously so that a reader that finds a line count in
 * the record finds those lines in the file. Past the cap, one marker line is written and the rest dropped.
 */
export class StepLog extends EventEmitter<{ line: [LogLine]; end: [] }> {
  private fd: number;
  private bytes = 0;
  lines: number;
  truncated: boolean;

  constructor(
    readonly path: string,
    private readonly capBytes: number,
    start: { lines: number; truncated: boolean } = { lines: 0, truncated: false },
  ) {
    super();
    this.fd = openSync(path, "a");
    this.lines = start.lines;
    this.truncated = start.truncated;
  }

  /** Appends a line; past the cap only steprunner's own (few, short) system lines are still kept. */
  append(stream: LogStreamName, text: string, time = Date.now()): void {
    if (stream === "system") {
      this.write(stream, text, time);
      return;
    }
    if (this.truncated) return;
    const size = Buffer.byteLength(text);
    if (this.bytes + size > this.capBytes) {
      this.truncated = true;
      this.write("system", `[steprunner] log truncated: the step wrote more than ${this.capBytes} bytes; later output was dropped`, time);
      return;
    }
    this.bytes += size;
    this.write(stream, text, time);
  }

  private write(stream: LogStreamName, text: string, time: number): void {
    const line: LogLine = { offset: this.lines++, stream, text, time };
    writeSync(this.fd, `${JSON.stringify(line)}\n`);
    this.emit("line", line);
  }

  end(): void {
    closeSync(this.fd);
    this.emit("end");
  }
}

/**
 * The whole lines of a log a crashed service left, cutting a line it was writing when it died, and whether
 * the log had reached its cap.
 */
export async function recoverLog(path: string): Promise<{ lines: number; truncated: boolean }> {
  const text = await readFile(path, "utf8").catch(() => "");
  const end = text.lastIndexOf("\n") + 1;
  if (end < text.length) await truncate(path, Buffer.byteLength(text.slice(0, end)));
  const whole = text.slice(0, end);
  return { lines: whole.split("\n").length - 1, truncated: whole.includes('"text":"[steprunner] log truncated:') };
}

export function logPath(logDir: string, stepId: string): string {
  return join(logDir, `${stepId}.log`);
}

/** The lines of a log file from an offset, streamed from disk. */
export async function* readLog(path: string, from: number): AsyncGenerator<LogLine> {
  const input = createReadStream(path);
  const missing = new Promise<void>((resolve) => input.once("error", () => resolve()));
  const reader = createInterface({ input, crlfDelay: Infinity });
  try {
    const opened = await Promise.race([new Promise<boolean>((resolve) => input.once("open", () => resolve(true))), missing.then(() => false)]);
    if (!opened) return;
    let offset = 0;
    for await (const text of reader) {
      if (offset++ < from || !text) continue;
      yield JSON.parse(text) as LogLine;
    }
  } finally {
    reader.close();
    input.destroy();
  }
}

/**
 * Lines from an offset: what the file holds, then (when the log is live) every new line until it ends.
 * The listener is attached before the file is read, and offsets drop what both deliver.
 */
export async function* followLog(path: string, from: number, live: StepLog | undefined, signal: AbortSignal): AsyncGenerator<LogLine> {
  const controller = new AbortController();
  let wake: (() => void) | undefined;
  const stop = () => {
    controller.abort();
    wake?.();
  };
  // A signal aborted already fires no event: the reader then gets what the file holds and no more.
  if (signal.aborted) controller.abort();
  else signal.addEventListener("abort", stop, { once: true });
  live?.once("end", stop);
  const queue: LogLine[] = [];
  const onLine = (line: LogLine) => {
    queue.push(line);
    wake?.();
  };
  live?.on("line", onLine);
  try {
    let next = from;
    for await (const line of readLog(path, from)) {
      yield line;
      next = line.offset + 1;
    }
    if (!live) return;
    for (;;) {
      while (queue.length > 0) {
        const line = queue.shift()!;
        if (line.offset >= next) {
          yield line;
          next = line.offset + 1;
        }
      }
      if (controller.signal.aborted) return;
      await new Promise<void>((resolve) => (wake = resolve));
      wake = undefined;
    }
  } finally {
    live?.off("line", onLine);
    live?.off("end", stop);
    signal.removeEventListener("abort", stop);
  }
}
