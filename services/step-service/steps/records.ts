import { createHmac, randomBytes } from "node:crypto";
import Database from "better-sqlite3";
import { join } from "node:path";
import type { ChangeView } from "./change-runner.js";
import type { ChildDefinition, StepResultData } from "./result.js";

export type StepState = "queued" | "preparing" | "building" | "running" | "success" | "error" | "timed_out" | "cancelled" | "system_error" | "handed_back";
export type PhaseName = "queue" | "context" | "build" | "pull" | "run" | "teardown";

export const FINAL_STATES: ReadonlySet<StepState> = new Set(["success", "error", "timed_out", "cancelled", "system_error", "handed_back"]);
/**
 * The final states as an SQL list of literals: SQLite uses a partial index only for a query whose WHERE it can
 * prove implies the index's, which it cannot for bound parameters.
 */
const FINAL_STATES_SQL = `(${[...FINAL_STATES].map((state) => `'${state}'`).join(", ")})`;

export interface PhaseTiming {
  phase: PhaseName;
  startedAt: number;
  durationMs: number;
}

/** A measured part of a phase (see PhasePart in the API); durations in milliseconds, to the microsecond. */
export interface PartTiming {
  phase: PhaseName;
  name: string;
  durationMs: number;
}

/** A step's durable record. Times are epoch milliseconds. */
export interface StepRecord {
  id: string;
  state: StepState;
  reason: string;
  repositoryUrl: string;
  gitRev: string;
  gitSha: string;
  action: string;
  imageId: string;
  imageReused: boolean;
  createdAt: number;
  finishedAt: number | null;
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  phases: PhaseTiming[];
  /** Parts of the phases; absent in records written before parts were measured. */
  phaseParts?: PartTiming[];
  result: StepResultData | null;
  logLines: number;
  logTruncated: boolean;
}

/** A finished change as kept: RunChange with its id and the same request returns it instead of running again. */
export interface ChangeRecord {
  requestDigest: string;
  change: ChangeView;
}

/** Step (and finished change) records in SQLite (better-sqlite3: synchronous, so a record is on disk when a call returns). */
export class StepRecords {
  private readonly db: Database.Database;
  /** The statements every step runs, compiled once. */
  private readonly statements: { insert: Database.Statement; save: Database.Statement; get: Database.Statement };
  /** This state directory's own key for request digests: a kept digest tells nothing of the secrets in a request. */
  private readonly requestDigestKey: Buffer;

  constructor(stateDir: string) {
    this.db = new Database(join(stateDir, "steps.db"));
    this.db.pragma("journal_mode = WAL");
    this.db.exec(`CREATE TABLE IF NOT EXISTS steps (
      id TEXT PRIMARY KEY,
      state TEXT NOT NULL,
      created_at INTEGER NOT NULL,
      record TEXT NOT NULL
    ); CREATE INDEX IF NOT EXISTS steps_created ON steps (created_at DESC, id DESC);
    CREATE INDEX IF NOT EXISTS steps_unfinished ON steps (state) WHERE state NOT IN ${FINAL_STATES_SQL};
    CREATE TABLE IF NOT EXISTS changes (
      id TEXT PRIMARY KEY,
      request_digest TEXT NOT NULL,
      record TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, value BLOB NOT NULL);`);
    this.db.prepare("INSERT OR IGNORE INTO keys (name, value) VALUES ('request-digest', ?)").run(randomBytes(32));
    this.requestDigestKey = (this.db.prepare("SELECT value FROM keys WHERE name = 'request-digest'").get() as { value: Buffer }).value;
    this.statements = {
      insert: this.db.prepare(
        `INSERT INTO steps (id, state, created_at, record) VALUES (?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, created_at = excluded.created_at, record = excluded.record
         WHERE steps.state = 'handed_back'`,
      ),
      save: this.db.prepare("UPDATE steps SET state = ?, record = ? WHERE id = ?"),
      get: this.db.prepare("SELECT record FROM steps WHERE id = ?"),
    };
  }

  /** A digest of a request (its canonical JSON), keyed: the same request gives the same digest in this state directory. */
  requestDigest(requestJson: string): string {
    return createHmac("sha256", this.requestDigestKey).update(requestJson).digest("hex");
  }

  /** Keeps a finished change (its final view, secrets masked) and the digest of the request that ran it. */
  saveChange(record: ChangeRecord): void {
    this.db
      .prepare("INSERT OR REPLACE INTO changes (id, request_digest, record) VALUES (?, ?, ?)")
      .run(record.change.id, record.requestDigest, JSON.stringify(record.change));
  }

  getChange(id: string): ChangeRecord | undefined {
    const row = this.db.prepare("SELECT request_digest, record FROM changes WHERE id = ?").get(id) as { request_digest: string; record: string } | undefined;
    return row ? { requestDigest: row.request_digest, change: JSON.parse(row.record) as ChangeView } : undefined;
  }

  /** False when a step with this id exists already; a step that was handed back is replaced by its new run. */
  insert(record: StepRecord): boolean {
    const result = this.statements.insert.run(record.id, record.state, record.createdAt, JSON.stringify(record));
    return result.changes === 1;
  }

  save(record: StepRecord): void {
    this.statements.save.run(record.state, JSON.stringify(record), record.id);
  }

  get(id: string): StepRecord | undefined {
    const row = this.statements.get.get(id) as { record: string } | undefined;
    return row ? storedRecord(row.record) : undefined;
  }

  /** Newest first; `after` is the (created_at, id) of the last record of the previous page. */
  list(limit: number, states: StepState[], after?: { createdAt: number; id: string }): StepRecord[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (states.length > 0) {
      where.push(`state IN (${states.map(() => "?").join(", ")})`);
      params.push(...states);
    }
    if (after) {
      where.push("(created_at < ? OR (created_at = ? AND id < ?))");
      params.push(after.createdAt, after.createdAt, after.id);
    }
    const sql = `SELECT record FROM steps ${where.length ? `WHERE ${where.join(" AND ")}` : ""} ORDER BY created_at DESC, id DESC LIMIT ?`;
    return (this.db.prepare(sql).all(...params, limit) as { record: string }[]).map((row) => storedRecord(row.record));
  }

  /** The records not final (a restart finds those a crash interrupted), found by their partial index, not a scan. */
  unfinished(): StepRecord[] {
    return (this.db.prepare(`SELECT record FROM steps WHERE state NOT IN ${FINAL_STATES_SQL}`).all() as { record: string }[]).map((row) =>
      storedRecord(row.record),
    );
  }

  close(): void {
    this.db.close();
  }
}

/**
 * A record as kept, in today's shape: records written by an earlier version lack the fields added since (a
 * child step's kind, name, children, wait and input arguments), which get the values they had then.
 */
function storedRecord(text: string): StepRecord {
  const record = JSON.parse(text) as StepRecord;
  if (record.result) record.result.children = record.result.children.map(storedChild);
  return record;
}

function storedChild(child: Partial<ChildDefinition> & { action: string }): ChildDefinition {
  return {
    stepName: child.action,
    kind: "action",
    ignoreFailure: false,
    childExecutionStrategy: "sequential",
    waitSeconds: 0,
    ...child,
    children: (child.children ?? []).map(storedChild),
    inputArguments: child.inputArguments ?? [],
  };
}
