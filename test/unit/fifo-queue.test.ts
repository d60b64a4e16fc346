import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FifoQueue, QueueLeftError } from "../../services/shared/fifo-queue.js";

describe("the FIFO queue", () => {
  it("runs at most the limit at once and starts the rest in arrival order, telling each its place", async () => {
    const queue = new FifoQueue(2);
    const started: number[] = [];
    const positions = new Map<number, number[]>();
    const releases: Array<() => void> = [];
    const builds = [0, 1, 2, 3, 4].map((n) =>
      queue.run(
        () =>
          new Promise<void>((resolve) => {
            started.push(n);
            releases[n] = resolve;
          }),
        { onPosition: (position) => positions.set(n, [...(positions.get(n) ?? []), position]) },
      ),
    );
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(started, [0, 1]);
    assert.equal(queue.depth, 3);
    releases[1]!();
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(started, [0, 1, 2]);
    releases[0]!();
    releases[2]!();
    await new Promise((resolve) => setImmediate(resolve));
    releases[3]!();
    releases[4]!();
    await Promise.all(builds);
    assert.deepEqual(started, [0, 1, 2, 3, 4]);
    assert.deepEqual(positions.get(4), [3, 2, 1], "the last one moved up as the others started");
  });

  it("lets a waiting build leave when it is cancelled", async () => {
    const queue = new FifoQueue(1);
    let release!: () => void;
    const first = queue.run(() => new Promise<void>((resolve) => (release = resolve)));
    const controller = new AbortController();
    const second = queue.run(async () => assert.fail("a cancelled build must not start"), { signal: controller.signal });
    controller.abort(new Error("cancelled"));
    await assert.rejects(second, /cancelled/);
    assert.equal(queue.depth, 0);
    release();
    await first;
  });

  it("takes waiting runs out by key, telling those behind their new place, and starts work at once when a slot is free", async () => {
    const queue = new FifoQueue(1);
    let started = false;
    let release!: () => void;
    const first = queue.run(() => {
      started = true;
      return new Promise<void>((resolve) => (release = resolve));
    });
    assert.equal(started, true, "work starts before run returns when a slot is free");
    const positions: number[] = [];
    const a = queue.run(async () => assert.fail("removed"), { key: "a" });
    const b = queue.run(async () => assert.fail("removed"), { key: "b", onPosition: (position) => positions.push(position) });
    const c = queue.run(async () => "c", { key: "c" });
    assert.equal(queue.remove("a"), true);
    assert.equal(queue.remove("a"), false);
    await assert.rejects(a, QueueLeftError);
    assert.deepEqual(positions, [2, 1]);
    assert.equal(queue.remove("b"), true);
    await assert.rejects(b, QueueLeftError);
    assert.equal(queue.depth, 1);
    assert.equal(queue.running, 1);
    release();
    assert.equal(await c, "c");
    await first;
    assert.equal(queue.running, 0);
  });

  it("empties the queue on removeAll, returning the keys", async () => {
    const queue = new FifoQueue(1);
    let release!: () => void;
    const first = queue.run(() => new Promise<void>((resolve) => (release = resolve)));
    const waiting = ["x", "y"].map((key) => queue.run(async () => assert.fail("removed"), { key }));
    assert.deepEqual(queue.removeAll(), ["x", "y"]);
    for (const run of waiting) await assert.rejects(run, QueueLeftError);
    release();
    await first;
    assert.equal(queue.depth, 0);
  });
});
