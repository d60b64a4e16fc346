import assert from "node:assert/strict";
import * as http from "node:http";
import { setTimeout as delay } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import { parseListenAddress } from "../../services/shared/server/listen-address.js";
import { type RunningServer, startServer } from "../../services/shared/server/serve.js";

describe("one port for gRPC over HTTP/2 and Connect over HTTP/1.1", () => {
  let server: RunningServer;
  let streamed = 0;

  before(async () => {
    server = await startServer({
      address: parseListenAddress("127.0.0.1:0"),
      services: [ImageService],
      logger: createLogger("test", {}, { quiet: true }),
      routes: (router) =>
        router.service(ImageService, {
          async *buildImage(_request, context) {
            while (!context.signal.aborted) {
              streamed++;
              yield { event: { case: "progress", value: {} } };
              await delay(1);
            }
          },
        }),
    });
  });
  after(() => server.close(100));

  const healthOverHttp1 = () =>
    new Promise<string>((resolve, reject) => {
      const request = http.request(
        { host: "127.0.0.1", port: server.port, method: "POST", path: "/grpc.health.v1.Health/Check", headers: { "content-type": "application/json" } },
        (response) => {
          let body = "";
          response.on("data", (chunk: Buffer) => (body += chunk.toString()));
          response.on("end", () => resolve(body));
        },
      );
      request.on("error", reject);
      request.end("{}");
    });

  it("answers HTTP/1.1 and HTTP/2 on the same port", async () => {
    assert.match(await healthOverHttp1(), /"SERVING"/);
    const transport = serviceTransport(`127.0.0.1:${server.port}`, {});
    try {
      for await (const response of createClient(ImageService, transport.transport).buildImage({})) {
        assert.equal(response.event.case, "progress");
        break;
      }
    } finally {
      transport.close();
    }
  });

  it("keeps serving when a client's connection breaks while its stream is being written", async () => {
    const transport = serviceTransport(`127.0.0.1:${server.port}`, {});
    const reading = (async () => {
      for await (const _ of createClient(ImageService, transport.transport).buildImage({})) void _;
    })().catch(() => undefined);
    const before = streamed;
    while (streamed < before + 20) await delay(5);
    // The connection goes at once, with frames still being written to it.
    transport.close();
    await reading;
    await delay(50);
    assert.match(await healthOverHttp1(), /"SERVING"/);
  });
});
