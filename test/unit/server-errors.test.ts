import assert from "node:assert/strict";
import * as http2 from "node:http2";
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
    debug: () => {},
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
    await assert.rejects(
      images.getBuilderInfo({}),
      (error: ConnectError) => error.code === Code.Internal && error.rawMessage === "registry answered 502 for the manifest",
    );
    await assert.rejects(
      async () => {
        for await (const _ of images.buildImage({})) void _;
      },
      (error: ConnectError) => error.code === Code.Internal && error.rawMessage === "the layer list was empty",
    );
    assert.deepEqual(
      logged.map((line) => [line.message, line.method]),
      [
        ["unexpected error", "steprunner.image.v1.ImageService/GetBuilderInfo"],
        ["unexpected error", "steprunner.image.v1.ImageService/BuildImage"],
      ],
    );
    assert.match(
      String((logged[0]!.error as Error).stack),
      /TypeError: registry answered 502[\s\S]*at /,
      "the error itself, which the logger writes with its stack",
    );
  });

  it("leave a service's own ConnectErrors as they are, unlogged", async () => {
    logged.length = 0;
    await assert.rejects(createClient(ImageService, client.transport).getDiskUsage({}), (error: ConnectError) => error.code === Code.Unavailable);
    assert.deepEqual(logged, []);
  });
});

/** A message in a gRPC frame whose field 1 says 16 bytes follow while one does: no protobuf message decodes from it. */
const UNDECODABLE_FRAME = Buffer.from([0, 0, 0, 0, 3, 0x0a, 0x10, 0x01]);

/** One POST over h2c, with its answer's headers, body and trailers (a trailers-only answer has them in its headers). */
async function http2Post(
  port: number,
  path: string,
  contentType: string,
  body: Buffer,
): Promise<{ headers: http2.IncomingHttpHeaders; body: Buffer; trailers: http2.IncomingHttpHeaders }> {
  const session = http2.connect(`http://127.0.0.1:${port}`);
  try {
    return await new Promise((resolve, reject) => {
      const stream = session.request({ ":method": "POST", ":path": path, "content-type": contentType, te: "trailers" });
      let headers: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      stream.on("response", (received) => (headers = received));
      stream.on("trailers", (received) => (trailers = received));
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", () => resolve({ headers, body: Buffer.concat(chunks), trailers: { ...headers, ...trailers } }));
      stream.on("error", reject);
      stream.end(body);
    });
  } finally {
    session.close();
  }
}

describe("a request that cannot be decoded", () => {
  let server: RunningServer;
  const quiet: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {}, child: () => quiet };

  before(async () => {
    server = await startServer({
      address: parseListenAddress("127.0.0.1:0"),
      services: [ImageService],
      logger: quiet,
      routes: (router) =>
        router.service(ImageService, {
          getBuilderInfo: () => ({}),
          async *buildImage(request) {
            if (request.contextId === "undecodable-answer") throw new ConnectError("parse binary: premature EOF", Code.Internal);
            yield { event: { case: "progress", value: {} } };
          },
          pruneCache() {
            // What a client of another service throws when that service's answer cannot be decoded.
            throw new ConnectError("parse binary: premature EOF", Code.Internal);
          },
        }),
    });
  });
  after(() => server.close(100));

  const expectedMessage =
    /^the request could not be decoded: it is not a valid steprunner\.image\.v1\.\w+Request in protobuf's binary format \(premature EOF\)$/;

  it("is answered INVALID_ARGUMENT over gRPC, unary or streaming, saying it could not be decoded", async () => {
    for (const method of ["GetBuilderInfo", "BuildImage"]) {
      const answer = await http2Post(server.port!, `/steprunner.image.v1.ImageService/${method}`, "application/grpc+proto", UNDECODABLE_FRAME);
      assert.equal(answer.trailers["grpc-status"], String(Code.InvalidArgument), method);
      assert.match(decodeURIComponent(String(answer.trailers["grpc-message"])), expectedMessage, method);
    }
  });

  it("is answered INVALID_ARGUMENT over Connect with application/proto", async () => {
    const answer = await fetch(`http://127.0.0.1:${server.port}/steprunner.image.v1.ImageService/GetBuilderInfo`, {
      method: "POST",
      headers: { "content-type": "application/proto" },
      body: UNDECODABLE_FRAME.subarray(5),
    });
    const error = (await answer.json()) as { code: string; message: string };
    assert.equal(answer.status, 400);
    assert.equal(error.code, "invalid_argument");
    assert.match(error.message, expectedMessage);
  });

  it("is answered INVALID_ARGUMENT over gRPC-Web, in the trailer frame", async () => {
    const answer = await http2Post(server.port!, "/steprunner.image.v1.ImageService/GetBuilderInfo", "application/grpc-web+proto", UNDECODABLE_FRAME);
    const trailer = answer.body.subarray(5).toString("utf8");
    assert.equal(answer.body[0], 0x80);
    assert.match(trailer, /grpc-status: 3\r\n/);
  });

  it("is not confused with a service's own failure to decode what another service answered, which stays INTERNAL", async () => {
    const unary = await http2Post(server.port!, "/steprunner.image.v1.ImageService/PruneCache", "application/grpc+proto", Buffer.from([0, 0, 0, 0, 0]));
    assert.equal(unary.trailers["grpc-status"], String(Code.Internal));
    const contextId = Buffer.from("undecodable-answer");
    const request = Buffer.concat([Buffer.from([0, 0, 0, 0, contextId.length + 2, 0x0a, contextId.length]), contextId]);
    const stream = await http2Post(server.port!, "/steprunner.image.v1.ImageService/BuildImage", "application/grpc+proto", request);
    assert.equal(stream.trailers["grpc-status"], String(Code.Internal));
  });
});
