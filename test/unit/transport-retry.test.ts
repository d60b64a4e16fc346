import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import { parseListenAddress } from "../../services/shared/server/listen-address.js";
import { type RunningServer, startServer } from "../../services/shared/server/serve.js";

describe("our client transport's retries", () => {
  let server: RunningServer;
  let client: ReturnType<typeof serviceTransport>;
  const calls = { getBuilderInfo: 0, getDiskUsage: 0, buildImage: 0 };
  let unavailableFor = 0;

  before(async () => {
    server = await startServer({
      address: parseListenAddress("127.0.0.1:0"),
      services: [ImageService],
      logger: createLogger("image-service", {}, { quiet: true }),
      routes: (router) =>
        router.service(ImageService, {
          getBuilderInfo() {
            calls.getBuilderInfo++;
            if (calls.getBuilderInfo <= unavailableFor) throw new ConnectError("restarting", Code.Unavailable);
            return { registryApiVersion: "registry/2.0" };
          },
          getDiskUsage() {
            calls.getDiskUsage++;
            throw new ConnectError("broken", Code.Internal);
          },
          // biome-ignore lint/correctness/useYield: a stream that fails before its first message
          async *buildImage() {
            calls.buildImage++;
            throw new ConnectError("restarting", Code.Unavailable);
          },
        }),
    });
    client = serviceTransport(`127.0.0.1:${server.port}`, {});
  });
  after(async () => {
    client.close();
    await server.close(100);
  });

  it("tries an idempotent unary call again while the service is unavailable", async () => {
    unavailableFor = 2;
    calls.getBuilderInfo = 0;
    const info = await createClient(ImageService, client.transport).getBuilderInfo({});
    assert.equal(info.registryApiVersion, "registry/2.0");
    assert.equal(calls.getBuilderInfo, 3);
  });

  it("gives up after three attempts with the service's own error", async () => {
    unavailableFor = 10;
    calls.getBuilderInfo = 0;
    await assert.rejects(
      createClient(ImageService, client.transport).getBuilderInfo({}),
      (error: ConnectError) => error.code === Code.Unavailable && /restarting/.test(error.rawMessage),
    );
    assert.equal(calls.getBuilderInfo, 3);
  });

  it("does not retry other codes, nor streams", async () => {
    await assert.rejects(createClient(ImageService, client.transport).getDiskUsage({}), (error: ConnectError) => error.code === Code.Internal);
    assert.equal(calls.getDiskUsage, 1);
    await assert.rejects(
      async () => {
        for await (const _ of createClient(ImageService, client.transport).buildImage({})) void _;
      },
      (error: ConnectError) => error.code === Code.Unavailable,
    );
    assert.equal(calls.buildImage, 1);
  });

  it("stops waiting when the caller's deadline passes", async () => {
    unavailableFor = 10;
    calls.getBuilderInfo = 0;
    await assert.rejects(
      createClient(ImageService, client.transport).getBuilderInfo({}, { timeoutMs: 100 }),
      (error: ConnectError) => error.code === Code.DeadlineExceeded || error.code === Code.Unavailable,
    );
    assert.equal(calls.getBuilderInfo, 1, "the backoff outlasts the deadline: no second attempt");
  });
});
