import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import type { ClientSecurity, ServerSecurity } from "../../services/shared/security.js";
import { callerOf } from "../../services/shared/server/caller.js";
import { startServer } from "../../services/shared/server/serve.js";
import { makeCertificates, type Certificates } from "../support/certificates.js";
import { run } from "../support/stack.js";

/** A server whose GetRuntimeInfo answers with the caller it saw, in runc_version. */
async function callerSeen(security: ServerSecurity, client: ClientSecurity): Promise<{ grpc: string; port: number; close: () => Promise<void> }> {
  const server = await startServer({
    address: { kind: "tcp", host: "127.0.0.1", port: 0 },
    services: [StepService],
    routes: (router) => router.service(StepService, { getRuntimeInfo: (_request, context) => ({ runcVersion: callerOf(context) }) }),
    logger: createLogger("test", {}, { quiet: true }),
    security,
  });
  const transport = serviceTransport(`127.0.0.1:${server.port}`, client);
  try {
    const info = await createClient(StepService, transport.transport).getRuntimeInfo({});
    return { grpc: info.runcVersion, port: server.port!, close: () => server.close(100) };
  } finally {
    transport.close();
  }
}

describe("who the caller is, as a handler sees it over real sockets", () => {
  let dir: string;
  let certificates: Certificates;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-caller-"));
    certificates = await makeCertificates(join(dir, "certs"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("is the peer's address without credentials, over HTTP/2 and HTTP/1.1", async () => {
    const seen = await callerSeen({}, {});
    try {
      assert.equal(seen.grpc, "address 127.0.0.1");
      const curl = await run("curl", [
        "-sf",
        "--http1.1",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        `http://127.0.0.1:${seen.port}/steprunner.step.v1.StepService/GetRuntimeInfo`,
      ]);
      assert.equal(JSON.parse(curl.stdout).runcVersion, "address 127.0.0.1");
    } finally {
      await seen.close();
    }
  });

  it("is the token's name, never the token, or its place in the file when it has none", async () => {
    const security = { tokens: ["secret-one", "secret-two"], tokenNames: { "secret-one": "ci" } };
    for (const [token, expected] of [
      ["secret-one", "token ci"],
      ["secret-two", "token #2"],
    ]) {
      const seen = await callerSeen(security, { token });
      await seen.close();
      assert.equal(seen.grpc, expected);
    }
  });

  it("is the client certificate's subject with mutual TLS", async () => {
    const seen = await callerSeen(
      { tls: { cert: certificates.serverCert, key: certificates.serverKey, clientCa: certificates.ca }, tokens: ["secret-one"] },
      { ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey, token: "secret-one" },
    );
    await seen.close();
    assert.equal(seen.grpc, "certificate CN=steprunner test client");
  });
});
