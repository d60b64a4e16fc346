import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { stack } from "../support/stack.js";

describe("BuildKit inside dockerd, through our TypeScript transport (POST /grpc upgraded to h2c)", () => {
  let buildkit: BuildKitClient;
  before(() => {
    buildkit = new BuildKitClient(stack.buildkitAddr);
  });
  after(() => buildkit.close());

  it("answers ListWorkers with the moby worker and its platforms", async () => {
    const workers = await buildkit.listWorkers(AbortSignal.timeout(15_000));
    assert.equal(workers.length, 1);
    assert.equal(workers[0]!.id, "moby");
    assert.ok(workers[0]!.platforms.includes("linux/amd64"), `platforms: ${workers[0]!.platforms}`);
  });

  it("answers DiskUsage with well-formed records", async () => {
    const records = await buildkit.diskUsage(AbortSignal.timeout(15_000));
    for (const record of records) {
      assert.ok(record.id.length > 0);
      assert.ok(record.sizeBytes >= 0n);
    }
  });

  it("detects that BuildKit v0.8 has no Info call instead of failing", async () => {
    assert.equal(await buildkit.version(AbortSignal.timeout(15_000)), undefined);
  });

  it("runs many calls over one upgraded connection at once", async () => {
    const answers = await Promise.all(Array.from({ length: 20 }, () => buildkit.listWorkers(AbortSignal.timeout(15_000))));
    assert.ok(answers.every((workers) => workers[0]?.id === "moby"));
  });

  it("cancels a call through its AbortSignal", async () => {
    const controller = new AbortController();
    controller.abort();
    const failure = await buildkit.listWorkers(controller.signal).catch((error) => ConnectError.from(error));
    assert.ok(failure instanceof ConnectError);
    assert.equal(failure.code, Code.Canceled);
  });

  it("says UNAVAILABLE and where, when nothing listens at the address", async () => {
    const missing = new BuildKitClient(`docker-unix://${stack.runDir}/no-such-docker.sock`);
    try {
      const failure = await missing.listWorkers(AbortSignal.timeout(15_000)).catch((error) => ConnectError.from(error));
      assert.ok(failure instanceof ConnectError);
      assert.equal(failure.code, Code.Unavailable);
      assert.match(failure.message, /no-such-docker\.sock/);
    } finally {
      missing.close();
    }
  });
});
