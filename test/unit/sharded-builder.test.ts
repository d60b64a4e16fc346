import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type BuildKitShard, ShardedBuilder } from "../../services/image-service/buildkit/sharded-builder.js";

const shard = (address: string): BuildKitShard => ({ address, build: async () => ({ address }) });

describe("builds spread over BuildKit daemons", () => {
  const keys = Array.from({ length: 2000 }, (_, index) => `scope-${index}`);

  it("sends one key always to the same daemon, and spreads keys evenly", () => {
    const sharded = new ShardedBuilder(["a", "b", "c", "d"].map(shard));
    const counts = new Map<string, number>();
    for (const key of keys) {
      const chosen = sharded.shardFor(key).address;
      assert.equal(sharded.shardFor(key).address, chosen);
      counts.set(chosen, (counts.get(chosen) ?? 0) + 1);
    }
    for (const count of counts.values()) assert.ok(count > 400 && count < 600, `uneven: ${[...counts]}`);
  });

  it("moves only the keys of a daemon that is removed", () => {
    const four = new ShardedBuilder(["a", "b", "c", "d"].map(shard));
    const three = new ShardedBuilder(["a", "b", "c"].map(shard));
    for (const key of keys) {
      const before = four.shardFor(key).address;
      if (before !== "d") assert.equal(three.shardFor(key).address, before);
    }
  });
});
