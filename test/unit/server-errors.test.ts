import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import type { Fields, Logger } from "../../services/shared/log.js";
import { parseListenAddress } from "../../services/shared/server/listen-address.js";
import { type RunningServer, startServer } from "../../services/shared/server/serve.js";

describe("a service's unexpected errors", () => {
  let server: RunningServer;
  let client: ReturnType<typeof serviceTransport>;
  const logged: Array<{ message: string } & Fields> = [];
  const logger: Logger = {
    info: () => {},
    warn: () => {},
    error: (message, fields) => logged.push({ message, ...fields }),
    child: () => logger,
  };

  before(async () => {
    server = await startServer({
      address: parseListenAddress("127.0.0.1:0"),
      services: [ImageService],
      logger,
      routes: (router) =>
        router.service(ImageService, {
          getBuilderInfo() {
            throw new TypeError("registry answered 502 for the manifest");
          },
          async *buildImage() {
            yield { event: { case: "progress", value: {} } };
            throw new Error("the layer list was empty");
          },
          getDiskUsage() {
            throw new ConnectError("BuildKit is restarting", Code.Unavailable);
          },
        }),
    });
    client = serviceTransport(`127.0.0.1:${server.port}`, {});
  });
  after(async () => {
    client.close();
    await server.close(100);
  });

  it("reach the caller as INTERNAL with their message, and the log with their stack", async () => {
    const images = createClient(ImageService, client.transport);
    await assert.rejects(images.getBuilderInfo({}), (error: ConnectError) => error.code === Code.Internal && error.rawMessage === "registry answered 502 for the manifest");
    await assert.rejects(async () => {
      for await (const _ of images.buildImage({})) void _;
    }, (error: ConnectError) => error.code === Code.Internal && error.rawMessage === "the layer list was empty");
    assert.deepEqual(logged.map((line) => [line.message, line.method]), [
      ["unexpected error", "steprunner.image.v1.ImageService/GetBuilderInfo"],
      ["unexpected error", "steprunner.image.v1.ImageService/BuildImage"],
    ]);
    assert.match(String(logged[0]!.error), /TypeError: registry answered 502[^]*at /);
  });

  it("leave a service's own ConnectErrors as they are, unlogged", async () => {
    logged.length = 0;
    await assert.rejects(createClient(ImageService, client.transport).getDiskUsage({}), (error: ConnectError) => error.code === Code.Unavailable);
    assert.deepEqual(logged, []);
  });
});
