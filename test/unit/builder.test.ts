import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import type { CacheUsageRecord, PruneOptions } from "../../services/image-service/buildkit/client.js";
import { type BuildKitApi, Builder } from "../../services/image-service/core/builder.js";

const record = (id: string, sizeBytes: bigint): CacheUsageRecord => ({
  id,
  description: `record ${id}`,
  sizeBytes,
  inUse: false,
  shared: false,
  recordType: "regular",
  lastUsedAt: undefined,
  usageCount: 1n,
});

/** A daemon with its own cache records, or one whose every call fails as an unreachable daemon's does. */
function fakeDaemon(name: string, records: CacheUsageRecord[] | "unreachable") {
  const pruned: PruneOptions[] = [];
  const unreachable = () => new ConnectError(`BuildKit (tcp ${name}:1234): connect ECONNREFUSED`, Code.Unavailable);
  const api: BuildKitApi = {
    listWorkers: async () => {
      if (records === "unreachable") throw unreachable();
      return [{ id: `${name}-worker`, platforms: ["linux/amd64"], labels: {}, cacheCollection: [] }];
    },
    version: async () => {
      if (records === "unreachable") throw unreachable();
      return "v0.24.0";
    },
    diskUsage: async () => {
      if (records === "unreachable") throw unreachable();
      return records;
    },
    prune: async (options) => {
      if (records === "unreachable") throw unreachable();
      // Answers late, so that a failure of another daemon arrives first.
      await new Promise((resolve) => setTimeout(resolve, 20));
      pruned.push(options);
      return records;
    },
  };
  return { address: `tcp://${name}:1234`, api, pruned };
}

const registry = { address: "registry.test:5000", apiVersion: async () => "registry/2.0" };
const settings = { defaultBaseRunner: "registry.test:5000/runner:1" };

describe("the image-service's builders (several BuildKit daemons)", () => {
  it("reports every daemon, and why one did not answer", async () => {
    const first = fakeDaemon("buildkitd-0", []);
    const second = fakeDaemon("buildkitd-1", "unreachable");
    const info = await new Builder([first, second], registry, settings).info();
    assert.deepEqual(
      info.buildkits.map((daemon) => [daemon.address, daemon.version, daemon.workers.map((worker) => worker.id), daemon.problem]),
      [
        ["tcp://buildkitd-0:1234", "v0.24.0", ["buildkitd-0-worker"], undefined],
        ["tcp://buildkitd-1:1234", undefined, [], "[unavailable] BuildKit (tcp buildkitd-1:1234): connect ECONNREFUSED"],
      ],
    );
    assert.equal(info.registryApiVersion, "registry/2.0");
  });

  it("fails with the first daemon's error when no daemon answers", async () => {
    const builder = new Builder([fakeDaemon("buildkitd-0", "unreachable"), fakeDaemon("buildkitd-1", "unreachable")], registry, settings);
    const failure = await builder.info().catch((error: unknown) => ConnectError.from(error));
    assert.ok(failure instanceof ConnectError);
    assert.equal(failure.code, Code.Unavailable);
    assert.match(failure.message, /buildkitd-0:1234/);
  });

  it("lists the cache records of every daemon, each with its daemon", async () => {
    const builder = new Builder(
      [fakeDaemon("buildkitd-0", [record("a", 100n)]), fakeDaemon("buildkitd-1", [record("b", 50n), record("c", 5n)])],
      registry,
      settings,
    );
    const records = await builder.diskUsage();
    assert.deepEqual(
      records.map((entry) => [entry.buildkitAddress, entry.id, entry.sizeBytes]),
      [
        ["tcp://buildkitd-0:1234", "a", 100n],
        ["tcp://buildkitd-1:1234", "b", 50n],
        ["tcp://buildkitd-1:1234", "c", 5n],
      ],
    );
  });

  it("prunes every daemon with the same options", async () => {
    const first = fakeDaemon("buildkitd-0", [record("a", 100n)]);
    const second = fakeDaemon("buildkitd-1", [record("b", 50n)]);
    const removed = await new Builder([first, second], registry, settings).prune({ all: true, keepBytes: 10n });
    assert.deepEqual(
      removed.map((entry) => [entry.buildkitAddress, entry.id]),
      [
        ["tcp://buildkitd-0:1234", "a"],
        ["tcp://buildkitd-1:1234", "b"],
      ],
    );
    assert.deepEqual([first.pruned, second.pruned], [[{ all: true, keepBytes: 10n }], [{ all: true, keepBytes: 10n }]]);
  });

  it("fails a prune naming the daemon that did not answer, after the others pruned", async () => {
    const reachable = fakeDaemon("buildkitd-1", [record("b", 50n)]);
    const builder = new Builder([fakeDaemon("buildkitd-0", "unreachable"), reachable], registry, settings);
    const failure = await builder.prune({ all: true }).catch((error: unknown) => ConnectError.from(error));
    assert.ok(failure instanceof ConnectError);
    assert.equal(failure.code, Code.Unavailable);
    assert.match(failure.message, /buildkitd-0:1234/);
    assert.equal(reachable.pruned.length, 1, "the reachable daemon's prune ran to its end before the call failed");
  });

  it("fails a disk usage naming the daemon that did not answer", async () => {
    const builder = new Builder([fakeDaemon("buildkitd-0", [record("a", 1n)]), fakeDaemon("buildkitd-1", "unreachable")], registry, settings);
    await assert.rejects(builder.diskUsage(), /buildkitd-1:1234/);
  });
});
