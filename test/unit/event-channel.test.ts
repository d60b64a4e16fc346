import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { EventChannel } from "../../services/shared/event-channel.js";

async function collect<T>(channel: EventChannel<T>): Promise<T[]> {
  const seen: T[] = [];
  for await (const event of channel) seen.push(event);
  return seen;
}

describe("the event channel", () => {
  it("keeps events pushed before and while reading, in order, until closed", async () => {
    const channel = new EventChannel<number>();
    channel.push(1);
    const reading = collect(channel);
    channel.push(2);
    await new Promise((resolve) => setImmediate(resolve));
    channel.push(3);
    channel.close();
    channel.push(4);
    assert.deepEqual(await reading, [1, 2, 3]);
  });

  it("throws close's error after the buffered events", async () => {
    const channel = new EventChannel<number>();
    channel.push(1);
    channel.close(new Error("build failed"));
    const seen: number[] = [];
    await assert.rejects(async () => {
      for await (const event of channel) seen.push(event);
    }, /build failed/);
    assert.deepEqual(seen, [1]);
  });

  it("ends when its signal aborts (the caller went away), after what was buffered", async () => {
    const controller = new AbortController();
    const channel = new EventChannel<number>(controller.signal);
    const reading = collect(channel);
    channel.push(1);
    await new Promise((resolve) => setImmediate(resolve));
    channel.push(2);
    controller.abort();
    assert.deepEqual(await reading, [1, 2]);
  });
});
