import assert from "node:assert/strict";
import { createServer } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";

describe("a registry that goes away in the middle of a blob", () => {
  it("fails the blob's stream instead of raising an unhandled error", async () => {
    const server = createServer((_request, response) => {
      response.writeHead(200, { "content-length": String(1024 * 1024) });
      response.write(Buffer.alloc(64 * 1024));
      setTimeout(() => response.socket?.destroy(), 50);
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    try {
      const client = new RegistryClient(`127.0.0.1:${(server.address() as AddressInfo).port}`);
      const stream = await client.blob("steps", `sha256:${"0".repeat(64)}`);
      await assert.rejects(
        (async () => {
          for await (const chunk of stream) void chunk;
        })(),
        /broke off/,
      );
    } finally {
      server.close();
    }
  });
});
