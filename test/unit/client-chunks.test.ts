import assert from "node:assert/strict";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { ContextFileKind, ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { releasedChunks } from "../../services/shared/client/chunks.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import { type RunningServer, startServer } from "../../services/shared/server/serve.js";

setFlagsFromString("--expose-gc");
const collectGarbage = runInNewContext("gc") as () => void;

const CHUNKS = 64;
const CHUNK_BYTES = 64 * 1024;

describe("streamed chunks read through our gRPC client", () => {
  let server: RunningServer;
  let transport: ReturnType<typeof serviceTransport>;
  /** Lets the server send its last chunk, so that the call is still open while the test looks. */
  let releaseLast: () => void = () => {};

  before(async () => {
    server = await startServer({
      address: { kind: "tcp", host: "127.0.0.1", port: 0 },
      services: [ContextService],
      routes: (router) =>
        router.service(ContextService, {
          async *readContextFile() {
            for (let i = 0; i < CHUNKS - 1; i++) yield { chunk: new Uint8Array(CHUNK_BYTES).fill(i) };
            await new Promise<void>((resolve) => (releaseLast = resolve));
            yield { chunk: new Uint8Array(CHUNK_BYTES) };
          },
        }),
      logger: createLogger("test", {}, { quiet: true }),
      security: {},
      limits: { maxRequestBytes: 4 * 1024 * 1024, maxConcurrentStreams: 100 },
    });
    transport = serviceTransport(`127.0.0.1:${server.port}`, {});
  });
  after(async () => {
    transport.close();
    await server.close(1000);
  });

  it("lets go of each chunk once read, while the stream is still open", async () => {
    const client = createClient(ContextService, transport.transport);
    const read: Array<WeakRef<Uint8Array>> = [];
    let received = 0;
    for await (const chunk of releasedChunks(client.readContextFile({ contextId: "any", kind: ContextFileKind.REPO_TAR }))) {
      assert.equal(chunk.length, CHUNK_BYTES);
      received++;
      if (received < CHUNKS) read.push(new WeakRef(chunk));
      if (received === CHUNKS - 1) {
        // WeakRefs are cleared only after the current job: collect, yield to the event loop, collect again.
        collectGarbage();
        await new Promise((resolve) => setTimeout(resolve, 10));
        collectGarbage();
        const alive = read.filter((ref) => ref.deref() !== undefined).length;
        assert.ok(alive <= 1, `${alive} of ${read.length} chunks already read are still held`);
        releaseLast();
      }
    }
    assert.equal(received, CHUNKS);
  });
});
