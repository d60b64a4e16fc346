import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Database from "better-sqlite3";
import { FINAL_STATES, type StepRecord, StepRecords } from "../../services/step-service/steps/records.js";

describe("StepRecords' request digests", () => {
  let dirs: string[];
  before(async () => {
    dirs = [await mkdtemp(join(tmpdir(), "steprunner-records-")), await mkdtemp(join(tmpdir(), "steprunner-records-"))];
  });
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it("are keyed by the state directory: stable across restarts, unlike a plain hash of the request's secrets", () => {
    const request = JSON.stringify({ properties: { password: "hunter2" } });
    const first = new StepRecords(dirs[0]!);
    const digest = first.requestDigest(request);
    first.close();
    const reopened = new StepRecords(dirs[0]!);
    const other = new StepRecords(dirs[1]!);
    try {
      assert.equal(reopened.requestDigest(request), digest, "the same request, the same digest after a restart");
      assert.notEqual(reopened.requestDigest(`${request} `), digest);
      assert.notEqual(other.requestDigest(request), digest, "another state directory has its own key");
      assert.notEqual(digest, createHash("sha256").update(request).digest("hex"), "not a hash anyone could recompute from a guess");
    } finally {
      reopened.close();
      other.close();
    }
  });
});

describe("StepRecords written by an earlier version", () => {
  it("read in today's shape: child steps without kind, name, children or arguments are plain actions", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-records-"));
    try {
      new StepRecords(dir).close();
      const old = {
        id: "old-step",
        state: "success",
        createdAt: 1,
        phases: [],
        result: { properties: {}, propertiesDiffs: [], children: [{ action: "verify" }], childExecutionStrategy: "parallel" },
      };
      const db = new Database(join(dir, "steps.db"));
      db.prepare("INSERT INTO steps (id, state, created_at, record) VALUES (?, ?, ?, ?)").run(old.id, old.state, old.createdAt, JSON.stringify(old));
      db.close();
      const records = new StepRecords(dir);
      try {
        const expected = [
          {
            action: "verify",
            stepName: "verify",
            kind: "action",
            ignoreFailure: false,
            childExecutionStrategy: "sequential",
            waitSeconds: 0,
            children: [],
            inputArguments: [],
          },
        ];
        assert.deepEqual(records.get("old-step")?.result?.children, expected);
        assert.deepEqual(records.list(10, [])[0]?.result?.children, expected);
        assert.equal((records.get("old-step") as StepRecord).result?.childExecutionStrategy, "parallel");
      } finally {
        records.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("StepRecords' unfinished records", () => {
  it("are the records not final, found through a partial index that holds only them (a restart reads no history)", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-records-"));
    try {
      // A database made before the index existed gets it when opened.
      const db = new Database(join(dir, "steps.db"));
      db.exec("CREATE TABLE steps (id TEXT PRIMARY KEY, state TEXT NOT NULL, created_at INTEGER NOT NULL, record TEXT NOT NULL)");
      const insert = db.prepare("INSERT INTO steps (id, state, created_at, record) VALUES (?, ?, ?, ?)");
      const states = [...FINAL_STATES, "queued", "running", "success", "building"];
      states.forEach((state, index) =>
        insert.run(`step-${index}`, state, index, JSON.stringify({ id: `step-${index}`, state, createdAt: index, phases: [], result: null })),
      );
      db.close();
      const records = new StepRecords(dir);
      try {
        assert.deepEqual(
          records
            .unfinished()
            .map((record) => record.state)
            .sort(),
          ["building", "queued", "running"],
        );
      } finally {
        records.close();
      }
      const reopened = new Database(join(dir, "steps.db"), { readonly: true });
      try {
        const finals = [...FINAL_STATES].map((state) => `'${state}'`).join(", ");
        const plan = reopened.prepare(`EXPLAIN QUERY PLAN SELECT record FROM steps WHERE state NOT IN (${finals})`).all() as { detail: string }[];
        assert.match(plan.map((step) => step.detail).join("; "), /USING INDEX steps_unfinished/);
      } finally {
        reopened.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
