import assert from "node:assert/strict";
import { describe, it } from "node:test";
import * as net from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import type { DockerfileBuild } from "../../services/image-service/buildkit/dockerfile-build.js";
import { parseBuildKitAddress } from "../../services/image-service/buildkit/address.js";
import { BuildKitClient, describeFailure } from "../../services/image-service/buildkit/client.js";
import { type BuildKitShard, ShardedBuilder } from "../../services/image-service/buildkit/sharded-builder.js";
import { isTransient } from "../../services/image-service/core/build-errors.js";

const shard = (address: string): BuildKitShard => ({ address, build: async () => ({ address }) });
const options = { isTransient };

/** A shard that fails its builds with `failure` while `failing` says so, and counts its builds. */
function fakeShard(address: string, failure: () => unknown) {
  const state = { failing: false, builds: 0 };
  const built: BuildKitShard = {
    address,
    build: async () => {
      state.builds++;
      if (state.failing) throw failure();
      return { address };
    },
  };
  return { shard: built, state };
}

const build = (sharedKey: string) => ({ sharedKey }) as DockerfileBuild;
const LOST = () =>
  describeFailure(parseBuildKitAddress("unix:///run/a.sock"), new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled));

describe("builds spread over BuildKit daemons", () => {
  const keys = Array.from({ length: 2000 }, (_, index) => `scope-${index}`);

  it("sends one key always to the same daemon, and spreads keys evenly", () => {
    const sharded = new ShardedBuilder(["a", "b", "c", "d"].map(shard), options);
    const counts = new Map<string, number>();
    for (const key of keys) {
      const chosen = sharded.shardFor(key).address;
      assert.equal(sharded.shardFor(key).address, chosen);
      counts.set(chosen, (counts.get(chosen) ?? 0) + 1);
    }
    for (const count of counts.values()) assert.ok(count > 400 && count < 600, `uneven: ${[...counts]}`);
  });

  it("moves only the keys of a daemon that is removed", () => {
    const four = new ShardedBuilder(["a", "b", "c", "d"].map(shard), options);
    const three = new ShardedBuilder(["a", "b", "c"].map(shard), options);
    for (const key of keys) {
      const before = four.shardFor(key).address;
      if (before !== "d") assert.equal(three.shardFor(key).address, before);
    }
  });

  it("orders every key's daemons so that the second is where the key goes without the first", () => {
    const four = new ShardedBuilder(["a", "b", "c", "d"].map(shard), options);
    for (const key of keys.slice(0, 200)) {
      const [first, second] = four.shardsFor(key).map((s) => s.address);
      const without = new ShardedBuilder(["a", "b", "c", "d"].filter((a) => a !== first).map(shard), options);
      assert.equal(without.shardFor(key).address, second);
    }
  });
});

describe("failover between BuildKit daemons", () => {
  it("builds on the next daemon in rendezvous order when the key's daemon is lost, and tells of it", async () => {
    const a = fakeShard("unix:///run/a.sock", LOST);
    const b = fakeShard("unix:///run/b.sock", LOST);
    const c = fakeShard("unix:///run/c.sock", LOST);
    const sharded = new ShardedBuilder([a.shard, b.shard, c.shard], options);
    const key = Array.from({ length: 100 }, (_, i) => `k${i}`).find((k) => sharded.shardFor(k) === a.shard)!;
    const second = sharded.shardsFor(key)[1]!.address;
    a.state.failing = true;
    const retries: string[] = [];
    const response = await sharded.build(
      build(key),
      () => {},
      undefined,
      (message) => retries.push(message),
    );
    assert.equal(response.address, second);
    assert.equal(a.state.builds, 1);
    assert.equal(retries.length, 1);
    assert.match(retries[0]!, /BuildKit at unix:\/\/\/run\/a.sock failed \(BuildKit \(unix \/run\/a.sock\): the connection to the daemon was lost/);
    assert.match(retries[0]!, new RegExp(`building on ${second.replace(/\//g, "\\/")} instead`));
  });

  it("keeps lineage affinity while all are healthy; avoids a failed daemon for the cooldown, then tries it again", async () => {
    let now = 1_000_000;
    const a = fakeShard("a", LOST);
    const b = fakeShard("b", LOST);
    const sharded = new ShardedBuilder([a.shard, b.shard], { isTransient, cooldownMs: 30_000, now: () => now });
    const keys = Array.from({ length: 200 }, (_, i) => `lineage-${i}`);
    const onA = keys.filter((k) => sharded.shardFor(k) === a.shard);
    assert.ok(onA.length > 50 && onA.length < 150);
    for (const key of keys) assert.equal((await sharded.build(build(key), () => {})).address, sharded.shardFor(key).address);
    assert.equal(a.state.builds, onA.length, "every build on its lineage's daemon");

    a.state.failing = true;
    assert.equal((await sharded.build(build(onA[0]!), () => {})).address, "b");
    assert.deepEqual(sharded.cooling, ["a"]);
    a.state.builds = 0;
    for (const key of onA) assert.equal((await sharded.build(build(key), () => {})).address, "b");
    assert.equal(a.state.builds, 0, "a cooling daemon is not tried while another is healthy");

    now += 30_001;
    a.state.failing = false;
    assert.deepEqual(sharded.cooling, []);
    assert.equal((await sharded.build(build(onA[1]!), () => {})).address, "a", "after the cooldown the lineage is back on its daemon");
    assert.equal(a.state.builds, 1);
  });

  it("still tries a cooling daemon when the others fail too, and throws the last failure when all do", async () => {
    const a = fakeShard("a", LOST);
    const b = fakeShard("b", () => new ConnectError("cannot reach BuildKit: connect ECONNREFUSED", Code.Unavailable));
    const sharded = new ShardedBuilder([a.shard, b.shard], options);
    a.state.failing = true;
    const key = "some-lineage";
    await sharded.build(build(key), () => {}); // one of them cools down if a was first
    b.state.failing = true;
    await assert.rejects(
      sharded.build(build(key), () => {}),
      (error: ConnectError) => error.code === Code.Unavailable,
    );
    assert.deepEqual(sharded.cooling.sort(), ["a", "b"]);
    a.state.failing = false;
    assert.equal((await sharded.build(build(key), () => {})).address, "a", "with all cooling, they are still tried");
  });

  it("does not retry a failing build, nor a cancelled one", async () => {
    const failing = fakeShard("a", () =>
      describeFailure(
        parseBuildKitAddress("unix:///run/a.sock"),
        new ConnectError('process "/bin/sh -c exit 3" did not complete successfully: exit code: 3', Code.Unknown),
      ),
    );
    const other = fakeShard("b", LOST);
    failing.state.failing = true;
    const sharded = new ShardedBuilder([failing.shard, other.shard], options);
    const key = Array.from({ length: 100 }, (_, i) => `k${i}`).find((k) => sharded.shardFor(k) === failing.shard)!;
    await assert.rejects(
      sharded.build(build(key), () => {}),
      (error: ConnectError) => error.code === Code.Unknown,
    );
    assert.equal(other.state.builds, 0);
    assert.deepEqual(sharded.cooling, []);

    const controller = new AbortController();
    const cancelled = fakeShard("a", () => {
      controller.abort();
      return describeFailure(
        parseBuildKitAddress("unix:///run/a.sock"),
        new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled),
        controller.signal,
      );
    });
    cancelled.state.failing = true;
    const sharded2 = new ShardedBuilder([cancelled.shard, other.shard], options);
    const key2 = Array.from({ length: 100 }, (_, i) => `k${i}`).find((k) => sharded2.shardFor(k) === cancelled.shard)!;
    await assert.rejects(
      sharded2.build(build(key2), () => {}, controller.signal),
      (error: ConnectError) => error.code === Code.Canceled,
    );
    assert.equal(other.state.builds, 0);
  });
});

describe("what our BuildKit client raises when the daemon goes away", () => {
  const address = parseBuildKitAddress("unix:///run/buildkit/buildkitd.sock");

  it("a stream closed under a call (buildkitd SIGKILLed mid-Solve) is a lost connection: UNAVAILABLE, transient", () => {
    // What connect-node raises for the Solve call when buildkitd is killed mid-build (seen with v0.24).
    const error = describeFailure(address, new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled), new AbortController().signal);
    assert.equal(error.code, Code.Unavailable);
    assert.match(error.rawMessage, /^BuildKit \(unix \/run\/buildkit\/buildkitd.sock\): the connection to the daemon was lost \(http\/2 stream closed/);
    assert.ok(isTransient(error));
    const reset = describeFailure(address, new ConnectError("read ECONNRESET", Code.Aborted));
    assert.ok(isTransient(reset));
    const cutOff = describeFailure(
      address,
      new ConnectError("http/2 stream closed with error code NO_ERROR (0x0) before the response was received", Code.Internal),
    );
    assert.ok(isTransient(cutOff));
  });

  it("a call we cancelled stays CANCELED, and so does a build the daemon cancelled (its own error)", () => {
    const controller = new AbortController();
    controller.abort();
    const ours = describeFailure(address, new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled), controller.signal);
    assert.equal(ours.code, Code.Canceled);
    assert.ok(!isTransient(ours));
    const daemons = new ConnectError("context canceled", Code.Canceled);
    daemons.isWireError = true;
    assert.equal(describeFailure(address, daemons).code, Code.Canceled);
  });

  it("a build error is not transient, even with a wording about connections", () => {
    const wire = new ConnectError('process "/bin/sh -c curl x" did not complete successfully: exit code: 7 (connection reset)', Code.Unknown);
    wire.isWireError = true;
    assert.ok(!isTransient(describeFailure(address, wire)));
    const ours = new ConnectError(
      "cannot read the context",
      Code.Internal,
      undefined,
      undefined,
      Object.assign(new Error("ENOENT: no such file"), { code: "ENOENT", syscall: "open" }),
    );
    assert.ok(!isTransient(describeFailure(address, ours)), "ENOENT of a file is not a lost connection");
  });

  it("a daemon whose socket is gone or refuses is unavailable: transient", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sharded-builder-test-"));
    try {
      const gone = new BuildKitClient(`unix://${join(dir, "missing.sock")}`);
      await assert.rejects(
        gone.listWorkers(AbortSignal.timeout(5_000)),
        (error: ConnectError) => isTransient(error) || assert.fail(`${Code[error.code]} ${error.rawMessage}`),
      );
      gone.close();
      // A socket file left by a killed daemon: nothing listens on it.
      const server = net.createServer();
      const path = join(dir, "left.sock");
      await new Promise<void>((resolve) => server.listen(path, resolve));
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
      });
      const left = new BuildKitClient(`unix://${path}`);
      await assert.rejects(
        left.listWorkers(AbortSignal.timeout(5_000)),
        (error: ConnectError) => isTransient(error) || assert.fail(`${Code[error.code]} ${error.rawMessage}`),
      );
      left.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("a call of our BuildKit client that its caller aborts", () => {
  it("stays CANCELED for every call, not a lost connection", async () => {
    // A daemon that never answers: the caller's signal ends each call.
    const dir = await mkdtemp(join(tmpdir(), "sharded-builder-test-"));
    const path = join(dir, "silent.sock");
    const sockets: net.Socket[] = [];
    const server = net.createServer((socket) => sockets.push(socket));
    await new Promise<void>((resolve) => server.listen(path, resolve));
    const client = new BuildKitClient(`unix://${path}`);
    try {
      const calls = [
        (signal: AbortSignal) => client.listWorkers(signal),
        (signal: AbortSignal) => client.diskUsage(signal),
        (signal: AbortSignal) => client.prune({}, signal),
        (signal: AbortSignal) => client.solve({}, signal),
      ];
      for (const call of calls) {
        const controller = new AbortController();
        const done = call(controller.signal);
        setTimeout(() => controller.abort(), 50);
        await assert.rejects(done, (error: ConnectError) => error.code === Code.Canceled || assert.fail(`${Code[error.code]} ${error.rawMessage}`));
      }
    } finally {
      client.close();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(dir, { recursive: true, force: true });
    }
  });
});
