import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1Alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { ImageService, type NetworkMode } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import type { RunningServer } from "../../services/shared/server/serve.js";
import { startImageService } from "../support/fake-image-service.js";

async function* oneRequest<T>(request: T): AsyncIterable<T> {
  yield request;
}

describe("a service server (gRPC, gRPC-Web and Connect on one port)", () => {
  let server: RunningServer;
  let grpc: ReturnType<typeof serviceTransport>;
  let baseUrl: string;

  before(async () => {
    server = await startImageService({ kind: "tcp", host: "127.0.0.1", port: 0 });
    baseUrl = `http://127.0.0.1:${server.port}`;
    grpc = serviceTransport(`127.0.0.1:${server.port}`);
  });
  after(async () => {
    grpc.close();
    await server.close(1000);
  });

  const transports: Array<[string, () => Transport]> = [
    ["gRPC over h2c", () => grpc.transport],
    ["Connect over HTTP/1.1", () => createConnectTransport({ baseUrl, httpVersion: "1.1" })],
    ["gRPC-Web over HTTP/1.1", () => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" })],
  ];
  for (const [name, transport] of transports) {
    it(`answers ${name}`, async () => {
      const info = await createClient(ImageService, transport()).getBuilderInfo({});
      assert.equal(info.workers[0]?.id, "fake");
      assert.deepEqual(
        info.workers[0]?.cacheCollection.map((rule) => [rule.keepDuration?.seconds, rule.filters]),
        [[48n * 3600n, ["type==source.local"]]],
      );
      assert.equal(info.registryApiVersion, "registry/2.0");
      const usage = await createClient(ImageService, transport()).getDiskUsage({});
      assert.equal(usage.totalBytes, 150n);
    });
  }

  it("validates requests with INVALID_ARGUMENT and says which field", async () => {
    const image = createClient(ImageService, grpc.transport);
    const failure = await image.pruneCache({ keepBytes: -1n }).catch((error) => ConnectError.from(error));
    assert.ok(failure instanceof ConnectError);
    assert.equal(failure.code, Code.InvalidArgument);
    assert.match(failure.message, /keep_bytes/);
  });

  it("answers INVALID_ARGUMENT for enum values it does not know and for a negative age to prune", async () => {
    const image = createClient(ImageService, grpc.transport);
    const unknownEnum = await (async () => {
      for await (const _ of image.buildImage({ contextId: `sha256:${"a".repeat(64)}`, networkMode: 7 as NetworkMode })) void _;
    })().catch((error) => ConnectError.from(error));
    assert.ok(unknownEnum instanceof ConnectError);
    assert.equal(unknownEnum.code, Code.InvalidArgument);
    assert.match(unknownEnum.rawMessage, /^network_mode: must be NETWORK_MODE_NONE, NETWORK_MODE_HOST or unset, got 7$/);
    const negative = await image.pruneImages({ olderThan: { seconds: -1n, nanos: 0 } }).catch((error) => ConnectError.from(error));
    assert.ok(negative instanceof ConnectError);
    assert.equal(negative.code, Code.InvalidArgument);
    assert.match(negative.message, /older_than/);
  });

  it("refuses a build of something that is not a context id, before any work", async () => {
    const image = createClient(ImageService, grpc.transport);
    const failure = await (async () => {
      for await (const _ of image.buildImage({ contextId: "sha256:0" })) void _;
    })().catch((error) => ConnectError.from(error));
    assert.ok(failure instanceof ConnectError);
    assert.equal(failure.code, Code.InvalidArgument);
    assert.match(failure.message, /context_id/);
  });

  it("answers the gRPC health check for the server and each service", async () => {
    const health = createClient(Health, grpc.transport);
    assert.equal((await health.check({ service: "" })).status, ServingStatus.SERVING);
    assert.equal((await health.check({ service: "steprunner.image.v1.ImageService" })).status, ServingStatus.SERVING);
    const unknown = await health.check({ service: "no.such.Service" }).catch((error) => ConnectError.from(error));
    assert.ok(unknown instanceof ConnectError);
    assert.equal(unknown.code, Code.NotFound);
  });

  it("lists its services and serves their descriptors over reflection v1 and v1alpha", async () => {
    for (const api of [ReflectionV1, ReflectionV1Alpha] as const) {
      const reflection = createClient(api as typeof ReflectionV1, grpc.transport);
      const answers = [];
      for await (const answer of reflection.serverReflectionInfo(oneRequest({ messageRequest: { case: "listServices", value: "" } }))) {
        answers.push(answer);
      }
      assert.equal(answers[0]?.messageResponse.case, "listServicesResponse");
      const names = answers[0]!.messageResponse.case === "listServicesResponse" ? answers[0]!.messageResponse.value.service.map((s) => s.name) : [];
      assert.deepEqual(names.sort(), ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "steprunner.image.v1.ImageService"]);
    }
    const reflection = createClient(ReflectionV1, grpc.transport);
    const symbolRequests = oneRequest({ messageRequest: { case: "fileContainingSymbol" as const, value: "steprunner.image.v1.BuildImageRequest" } });
    for await (const answer of reflection.serverReflectionInfo(symbolRequests)) {
      assert.equal(answer.messageResponse.case, "fileDescriptorResponse");
      if (answer.messageResponse.case !== "fileDescriptorResponse") continue;
      const files = answer.messageResponse.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name);
      assert.equal(files[0], "steprunner/image/v1/image_service.proto");
      assert.ok(files.includes("google/protobuf/timestamp.proto"), `imports are served too: ${files.join(", ")}`);
    }
    for await (const answer of reflection.serverReflectionInfo(oneRequest({ messageRequest: { case: "fileContainingSymbol" as const, value: "no.Such" } }))) {
      assert.equal(answer.messageResponse.case, "errorResponse");
      if (answer.messageResponse.case === "errorResponse") assert.equal(answer.messageResponse.value.errorCode, Code.NotFound);
    }
  });

  it("answers plain HTTP requests for unknown paths with 404", async () => {
    const response = await fetch(`${baseUrl}/no/such/path`);
    assert.equal(response.status, 404);
  });
});

describe("a service server on a unix socket", () => {
  it("serves gRPC there and removes the socket when it stops", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-test-"));
    try {
      const path = join(dir, "image.sock");
      const server = await startImageService({ kind: "unix", path });
      const client = serviceTransport(`unix:${path}`);
      const info = await createClient(ImageService, client.transport).getBuilderInfo({});
      assert.equal(info.defaultBaseRunner, "registry.test:5000/runner:1");
      client.close();
      await server.close(1000);
      await assert.rejects(
        import("node:fs/promises").then((fs) => fs.stat(path)),
        /ENOENT/,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("draining", () => {
  it("tells health watchers NOT_SERVING, then refuses new connections", async () => {
    const server = await startImageService({ kind: "tcp", host: "127.0.0.1", port: 0 });
    const client = serviceTransport(`127.0.0.1:${server.port}`);
    const seen: ServingStatus[] = [];
    const controller = new AbortController();
    const watching = (async () => {
      for await (const answer of createClient(Health, client.transport).watch({ service: "" }, { signal: controller.signal })) {
        seen.push(answer.status);
        if (answer.status === ServingStatus.SERVING) void server.close(200);
        if (answer.status === ServingStatus.NOT_SERVING) controller.abort();
      }
    })().catch(() => {});
    await watching;
    assert.deepEqual(seen, [ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
    client.close();
    await assert.rejects(fetch(`http://127.0.0.1:${server.port}/`), /fetch failed/);
  });
});

describe("metrics", () => {
  it("serves Prometheus metrics at /metrics, counting each RPC by method and code", async () => {
    const server = await startImageService({ kind: "tcp", host: "127.0.0.1", port: 0 });
    const client = serviceTransport(`127.0.0.1:${server.port}`);
    try {
      const image = createClient(ImageService, client.transport);
      await image.getBuilderInfo({});
      await image.getBuilderInfo({});
      await image.pruneCache({ keepBytes: -1n }).catch(() => {});
      const response = await fetch(`http://127.0.0.1:${server.port}/metrics`);
      assert.equal(response.status, 200);
      assert.match(response.headers.get("content-type") ?? "", /^text\/plain/);
      const text = await response.text();
      const sample = (method: string, code: string) =>
        Number(
          new RegExp(`^steprunner_rpc_requests_total\\{method="steprunner.image.v1.ImageService/${method}",code="${code}"[^}]*\\} (\\d+)$`, "m").exec(
            text,
          )?.[1],
        );
      assert.equal(sample("GetBuilderInfo", "OK"), 2);
      assert.equal(sample("PruneCache", "InvalidArgument"), 1);
      assert.match(text, /^steprunner_rpc_duration_seconds_bucket\{/m);
      assert.match(text, /^steprunner_process_resident_memory_bytes/m);
    } finally {
      client.close();
      await server.close(100);
    }
  });
});
