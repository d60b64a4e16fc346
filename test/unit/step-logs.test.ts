import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { followLog, type LogLine, StepLog } from "../../services/step-service/steps/logs.js";

/** Every line followLog gives, or "still waiting" when it has not ended within the time. */
async function collect(lines: AsyncGenerator<LogLine>, withinMs: number): Promise<string[] | "still waiting"> {
  const texts: string[] = [];
  const ended = (async () => {
    for await (const line of lines) texts.push(line.text);
    return texts;
  })();
  const outcome = await Promise.race([ended, sleep(withinMs, "still waiting" as const)]);
  return outcome;
}

describe("following a step's log", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "step-logs-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("gives a live log's lines from an offset, then each new one, until the log ends", async () => {
    const log = new StepLog(join(dir, "live.log"), 1024);
    log.append("stdout", "one");
    log.append("stdout", "two");
    const following = collect(followLog(log.path, 1, log, new AbortController().signal), 5_000);
    await sleep(20);
    log.append("stderr", "three");
    log.end();
    assert.deepEqual(await following, ["two", "three"]);
  });

  it("stops at what the file holds when the caller's signal is aborted before it starts", async () => {
    const log = new StepLog(join(dir, "aborted.log"), 1024);
    log.append("stdout", "one");
    const controller = new AbortController();
    controller.abort();
    try {
      assert.deepEqual(await collect(followLog(log.path, 0, log, controller.signal), 2_000), ["one"]);
    } finally {
      log.end();
    }
  });

  it("stops when the caller's signal is aborted while it waits", async () => {
    const log = new StepLog(join(dir, "cancelled.log"), 1024);
    const controller = new AbortController();
    try {
      const following = collect(followLog(log.path, 0, log, controller.signal), 2_000);
      log.append("stdout", "one");
      await sleep(20);
      controller.abort();
      assert.deepEqual(await following, ["one"]);
    } finally {
      log.end();
    }
  });
});
