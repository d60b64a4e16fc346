import type { BuildLog, BuildProgress, PropertySet } from "./ports.js";
import { resolveJsonPointer } from "../../shared/json-pointer.js";

const MASK = "***";

/**
 * Masks secret property values wherever they appear: log lines, reasons, results. The secrets are the values
 * the request's JSON pointers name inside step_context.json's "properties" object ("/<owner>/a/b").
 */
export class SecretMasker {
  private readonly secrets: string[];

  constructor(properties: PropertySet[], pointers: string[]) {
    const root = Object.fromEntries(properties.map((set) => [set.owner, set.properties]));
    const values = new Set<string>();
    for (const pointer of pointers) {
      // "" would name every property: a secret pointer names one owner's property at least.
      if (!pointer.startsWith("/")) throw new Error(`secret pointer "${pointer}" must start with "/"`);
      collect(resolveJsonPointer(root, pointer), values);
    }
    // Longest first, so that a secret containing another is masked whole.
    this.secrets = [...values].filter((value) => value.length > 0).sort((a, b) => b.length - a.length);
  }

  get empty(): boolean {
    return this.secrets.length === 0;
  }

  text(value: string): string {
    let masked = value;
    for (const secret of this.secrets) masked = masked.split(secret).join(MASK);
    return masked;
  }

  /** A deep copy with every string masked. */
  json<T>(value: T): T {
    if (this.secrets.length === 0) return value;
    return JSON.parse(JSON.stringify(value), (_key, item: unknown) => (typeof item === "string" ? this.text(item) : item)) as T;
  }
}

const NEWLINE = 0x0a;

/**
 * Masks a build's log as it streams. BuildKit cuts a command's output into chunks anywhere, so a secret may
 * be split between two: each vertex's stream is let out up to its last line end, and the unfinished line
 * waits for the next chunk, the vertex's end, or flush() at the build's end.
 */
export class BuildLogMasker {
  private readonly pending = new Map<string, { log: BuildLog; bytes: Buffer }>();

  constructor(private readonly masker: SecretMasker) {}

  mask(progress: BuildProgress): BuildProgress {
    if (this.masker.empty) return progress;
    const logs: BuildLog[] = [];
    for (const log of progress.logs) {
      const key = `${log.vertexDigest} ${log.stream}`;
      const bytes = Buffer.concat([this.pending.get(key)?.bytes ?? Buffer.alloc(0), log.data]);
      const cut = bytes.lastIndexOf(NEWLINE) + 1;
      if (cut > 0) logs.push(this.masked(log, bytes.subarray(0, cut)));
      if (cut < bytes.length) this.pending.set(key, { log, bytes: bytes.subarray(cut) });
      else this.pending.delete(key);
    }
    for (const vertex of progress.vertexes) if (vertex.completedAtMs !== undefined) logs.push(...this.release((key) => key.startsWith(`${vertex.digest} `)));
    return { ...progress, logs };
  }

  /** The unfinished lines still held, as one last progress event (undefined when there are none). */
  flush(): BuildProgress | undefined {
    const logs = this.release(() => true);
    return logs.length > 0 ? { vertexes: [], statuses: [], logs } : undefined;
  }

  private release(matches: (key: string) => boolean): BuildLog[] {
    const released: BuildLog[] = [];
    for (const [key, { log, bytes }] of this.pending) {
      if (!matches(key)) continue;
      released.push(this.masked(log, bytes));
      this.pending.delete(key);
    }
    return released;
  }

  private masked(log: BuildLog, bytes: Buffer): BuildLog {
    return { ...log, data: Buffer.from(this.masker.text(bytes.toString("utf8"))) };
  }
}

// Only strings: masking a number such as 1 everywhere would garble every log.
function collect(value: unknown, into: Set<string>): void {
  if (value === undefined || value === null) return;
  if (typeof value === "string") into.add(value);
  else if (Array.isArray(value)) value.forEach((item) => collect(item, into));
  else if (typeof value === "object") Object.values(value).forEach((item) => collect(item, into));
}
