import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";

const BLOB = Buffer.alloc(256 * 1024, "layer bytes ");
const DIGEST = `sha256:${createHash("sha256").update(BLOB).digest("hex")}`;

describe("RegistryClient.blob", () => {
  let server: Server;
  let client: RegistryClient;
  before(async () => {
    server = createServer((request, response) => {
      if (request.url === `/v2/steps/blobs/${DIGEST}`) response.end(BLOB);
      else response.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    client = new RegistryClient(`127.0.0.1:${(server.address() as AddressInfo).port}`);
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it("streams the blob, verified, and an abort of its signal afterwards goes unnoticed", async () => {
    const uncaught: unknown[] = [];
    const record = (error: unknown) => uncaught.push(error);
    process.on("uncaughtException", record);
    try {
      const controller = new AbortController();
      const chunks: Buffer[] = [];
      // Read only part of it, as a consumer that stops early (a tar reader at its end-of-archive) does.
      for await (const chunk of await client.blob("steps", DIGEST, controller.signal)) {
        chunks.push(chunk as Buffer);
        break;
      }
      assert.ok(chunks.length > 0);
      controller.abort(new Error("the caller went away"));
      await sleep(50);
      const whole: Buffer[] = [];
      for await (const chunk of await client.blob("steps", DIGEST)) whole.push(chunk as Buffer);
      assert.ok(Buffer.concat(whole).equals(BLOB));
    } finally {
      process.off("uncaughtException", record);
    }
    assert.deepEqual(uncaught, []);
  });
});
