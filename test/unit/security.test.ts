import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import type { ClientSecurity } from "../../services/shared/security.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import type { RunningServer } from "../../services/shared/server/serve.js";
import { type Certificates, makeCertificates } from "../support/certificates.js";
import { startImageService } from "../support/fake-image-service.js";
import { run } from "../support/stack.js";

async function call(address: string, security: ClientSecurity): Promise<ConnectError | "ok"> {
  const client = serviceTransport(address, security);
  try {
    await createClient(ImageService, client.transport).getBuilderInfo({}, { timeoutMs: 10_000 });
    return "ok";
  } catch (error) {
    return ConnectError.from(error);
  } finally {
    client.close();
  }
}

function code(result: ConnectError | "ok"): Code | "ok" {
  return result === "ok" ? result : result.code;
}

describe("service security, with real clients over real sockets", () => {
  let dir: string;
  let certificates: Certificates;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-security-"));
    certificates = await makeCertificates(join(dir, "certs"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  describe("TLS", () => {
    let server: RunningServer;
    let address: string;
    before(async () => {
      server = await startImageService(
        { kind: "tcp", host: "127.0.0.1", port: 0 },
        { security: { tls: { cert: certificates.serverCert, key: certificates.serverKey } } },
      );
      address = `127.0.0.1:${server.port}`;
    });
    after(() => server.close(100));

    it("serves gRPC to a client that trusts its CA, and nothing in plaintext", async () => {
      assert.equal(await call(address, { ca: certificates.ca }), "ok");
      assert.notEqual(await call(address, {}), "ok", "a plaintext client gets nowhere");
    });

    it("serves Connect over HTTP/1.1 with TLS to curl", async () => {
      const result = await run("curl", [
        "-sf",
        "--cacert",
        join(dir, "certs/ca.pem"),
        "--http1.1",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        `https://${address}/steprunner.image.v1.ImageService/GetBuilderInfo`,
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(JSON.parse(result.stdout).registryApiVersion, "registry/2.0");
    });
  });

  describe("mutual TLS", () => {
    let server: RunningServer;
    let address: string;
    before(async () => {
      server = await startImageService(
        { kind: "tcp", host: "127.0.0.1", port: 0 },
        {
          security: { tls: { cert: certificates.serverCert, key: certificates.serverKey, clientCa: certificates.ca } },
        },
      );
      address = `127.0.0.1:${server.port}`;
    });
    after(() => server.close(100));

    it("serves a client with a certificate the CA signed and refuses one without", async () => {
      assert.equal(await call(address, { ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey }), "ok");
      assert.equal(code(await call(address, { ca: certificates.ca })), Code.Unavailable);
      const curl = await run("curl", [
        "-s",
        "--cacert",
        join(dir, "certs/ca.pem"),
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        `https://${address}/steprunner.image.v1.ImageService/GetBuilderInfo`,
      ]);
      assert.notEqual(curl.code, 0, "curl without a client certificate is refused at the handshake");
    });
  });

  describe("bearer tokens", () => {
    let server: RunningServer;
    let address: string;
    before(async () => {
      server = await startImageService(
        { kind: "tcp", host: "127.0.0.1", port: 0 },
        {
          security: { tokens: ["token-one", "token-two"] },
          httpRoutes: { "/hello": (_req, res) => res.end("hello") },
        },
      );
      address = `127.0.0.1:${server.port}`;
    });
    after(() => server.close(100));

    it("answers UNAUTHENTICATED without a token or with a wrong one, and serves a valid one", async () => {
      const missing = await call(address, {});
      assert.equal(code(missing), Code.Unauthenticated);
      assert.match((missing as ConnectError).message, /bearer token/);
      assert.equal(code(await call(address, { token: "wrong" })), Code.Unauthenticated);
      assert.equal(await call(address, { token: "token-two" }), "ok");
    });

    it("keeps the health check open for probes", async () => {
      const client = serviceTransport(address, {});
      try {
        assert.equal((await createClient(Health, client.transport).check({ service: "" })).status, ServingStatus.SERVING);
      } finally {
        client.close();
      }
    });

    it("guards plain HTTP routes too", async () => {
      assert.equal((await fetch(`http://${address}/hello`)).status, 401);
      const allowed = await fetch(`http://${address}/hello`, { headers: { authorization: "Bearer token-one" } });
      assert.equal(allowed.status, 200);
      assert.equal(await allowed.text(), "hello");
    });
  });

  describe("limits", () => {
    it("refuses a request larger than the limit with RESOURCE_EXHAUSTED", async () => {
      const server = await startImageService({ kind: "tcp", host: "127.0.0.1", port: 0 }, { limits: { maxRequestBytes: 1024, maxConcurrentStreams: 10 } });
      const client = serviceTransport(`127.0.0.1:${server.port}`, {});
      try {
        const big = await createClient(ImageService, client.transport)
          .buildImage({ contextId: "x".repeat(4096) })
          [Symbol.asyncIterator]()
          .next()
          .then(
            () => "ok" as const,
            (error) => ConnectError.from(error),
          );
        assert.ok(big instanceof ConnectError);
        assert.equal(big.code, Code.ResourceExhausted);
      } finally {
        client.close();
        await server.close(100);
      }
    });
  });

  it("reads its settings from files, never from values in the environment", async () => {
    const tokenFile = join(dir, "tokens");
    await writeFile(tokenFile, "\nfirst-token\nsecond-token\n");
    const { serverSecurityFromSettings, clientSecurityFromSettings } = await import("../../services/shared/config/common.js");
    process.env.STEPRUNNER_AUTH_TOKEN_FILE = tokenFile;
    try {
      assert.deepEqual(serverSecurityFromSettings().tokens, ["first-token", "second-token"]);
      assert.equal(clientSecurityFromSettings().token, "first-token");
    } finally {
      delete process.env.STEPRUNNER_AUTH_TOKEN_FILE;
    }
  });
});

describe("token files", () => {
  it("take a token a line, or a name and a token, and refuse more", async () => {
    const { parseTokenFile } = await import("../../services/shared/security.js");
    assert.deepEqual(parseTokenFile("\nci  first-token\nsecond-token\n"), [
      { name: "ci", token: "first-token" },
      { name: "#2", token: "second-token" },
    ]);
    assert.throws(() => parseTokenFile("a b c\n"), /line 1 of the token file has 3 fields/);
  });
});
