import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import type { SessionTransport } from "../../services/image-service/buildkit/session/session.js";
import { startBuildKitProxy } from "../support/buildkit-socket-proxy.js";
import { type Certificates, makeCertificates } from "../support/certificates.js";
import type { BuildKitTls } from "../../services/image-service/buildkit/address.js";
import { needsDockerd, stack } from "../support/stack.js";

describe("BuildKit inside dockerd, through our TypeScript transport (POST /grpc upgraded to h2c)", needsDockerd("its BuildKit"), () => {
  let buildkit: BuildKitClient;
  before(() => {
    buildkit = new BuildKitClient(stack.buildkitAddr);
  });
  after(() => buildkit.close());

  it("answers ListWorkers with the moby worker and its platforms", async () => {
    const workers = await buildkit.listWorkers(AbortSignal.timeout(15_000));
    assert.equal(workers.length, 1);
    assert.equal(workers[0]!.id, "moby");
    assert.ok(workers[0]!.platforms.includes("linux/amd64"), `platforms: ${workers[0]!.platforms}`);
  });

  it("answers DiskUsage with well-formed records", async () => {
    const records = await buildkit.diskUsage(AbortSignal.timeout(15_000));
    for (const record of records) {
      assert.ok(record.id.length > 0);
      assert.ok(record.sizeBytes >= 0n);
    }
  });

  it("detects that BuildKit v0.8 has no Info call instead of failing", async () => {
    assert.equal(await buildkit.version(AbortSignal.timeout(15_000)), undefined);
  });

  it("runs many calls over one upgraded connection at once", async () => {
    const answers = await Promise.all(Array.from({ length: 20 }, () => buildkit.listWorkers(AbortSignal.timeout(15_000))));
    assert.ok(answers.every((workers) => workers[0]?.id === "moby"));
  });

  it("cancels a call through its AbortSignal", async () => {
    const controller = new AbortController();
    controller.abort();
    const failure = await buildkit.listWorkers(controller.signal).catch((error) => ConnectError.from(error));
    assert.ok(failure instanceof ConnectError);
    assert.equal(failure.code, Code.Canceled);
  });

  it("says UNAVAILABLE and where, when nothing listens at the address", async () => {
    const missing = new BuildKitClient(`docker-unix://${stack.runDir}/no-such-docker.sock`);
    try {
      const failure = await missing.listWorkers(AbortSignal.timeout(15_000)).catch((error) => ConnectError.from(error));
      assert.ok(failure instanceof ConnectError);
      assert.equal(failure.code, Code.Unavailable, failure.message);
      assert.match(failure.message, /no-such-docker\.sock/);
    } finally {
      missing.close();
    }
  });
});

describe("builds through each way of reaching BuildKit", needsDockerd("the transports are checked against its BuildKit"), () => {
  let work: string;
  const nonce = randomBytes(6).toString("hex");
  let directImageId: string | undefined;
  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "buildkit-test-"));
    await mkdir(join(work, "context"));
    await mkdir(join(work, "dockerfile"));
    await writeFile(join(work, "context", "greeting.txt"), `hello ${nonce}\n`);
    await writeFile(join(work, "context", "ignored.txt"), "never sent\n");
    await writeFile(join(work, "context", ".dockerignore"), "ignored.txt\n");
    await writeFile(
      join(work, "dockerfile", "Dockerfile"),
      `FROM ${stack.baseRunner}\nCOPY . /tmp/context/\nRUN cat /tmp/context/greeting.txt && ls /tmp/context\n`,
    );
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
    await new BuildKitClient(stack.buildkitAddr).close();
  });

  async function build(address: string, via: SessionTransport | undefined, tls?: BuildKitTls) {
    const client = new BuildKitClient(address, { tls });
    const sent: string[] = [];
    let output = "";
    try {
      const response = await buildDockerfile(
        client,
        {
          context: join(work, "context"),
          dockerfileDir: join(work, "dockerfile"),
          buildArgs: {},
          network: "none",
          noCache: false,
          exporter: { type: "moby", attrs: {} },
          sessionName: "transport test",
          sharedKey: `transport-test-${address}-${via}`,
          sessionTransport: via,
          observer: { fileSent: (dirName, path) => sent.push(`${dirName}/${path}`) },
        },
        (status) => status.logs.forEach((log) => (output += Buffer.from(log.msg).toString())),
        AbortSignal.timeout(120_000),
      );
      return { imageId: response["containerimage.digest"], sent: sent.sort(), output };
    } finally {
      client.close();
    }
  }

  it("docker-unix:// with dockerd's session endpoint and with the Control.Session tunnel give the same image", async () => {
    const direct = await build(stack.buildkitAddr, "docker-session-endpoint");
    assert.match(direct.imageId ?? "", /^sha256:/);
    assert.match(direct.output, new RegExp(`hello ${nonce}`));
    assert.doesNotMatch(direct.output, /ignored\.txt/, ".dockerignore is honoured by what the session sends");
    assert.deepEqual([...new Set(direct.sent)], ["context/.dockerignore", "context/greeting.txt", "dockerfile/Dockerfile"]);
    const tunnelled = await build(stack.buildkitAddr, "control-tunnel");
    assert.equal(tunnelled.imageId, direct.imageId);
    directImageId = direct.imageId;
  });

  for (const kind of ["unix", "tcp"] as const) {
    it(`${kind}:// (plain gRPC, as to a standalone buildkitd) answers ListWorkers and builds through the tunnel`, async () => {
      const proxy = await startBuildKitProxy(
        `${stack.runDir}/docker.sock`,
        kind === "unix" ? { path: join(work, "buildkitd.sock") } : { port: 0, host: "127.0.0.1" },
      );
      try {
        const client = new BuildKitClient(proxy.address);
        assert.equal((await client.listWorkers(AbortSignal.timeout(15_000)))[0]?.id, "moby");
        client.close();
        const result = await build(proxy.address, undefined);
        assert.equal(result.imageId, directImageId, "the same build, from BuildKit's cache");
      } finally {
        await proxy.close();
      }
    });
  }
});

describe("BuildKit over tcp:// with mutual TLS", needsDockerd("a TLS proxy in front of its BuildKit"), () => {
  let work: string;
  let certificates: Certificates;
  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "buildkit-tls-test-"));
    certificates = await makeCertificates(join(work, "certs"));
  });
  after(() => rm(work, { recursive: true, force: true }));

  it("answers with our client certificate and refuses a connection without it", async () => {
    const proxy = await startBuildKitProxy(
      `${stack.runDir}/docker.sock`,
      { port: 0, host: "127.0.0.1" },
      {
        cert: certificates.serverCert,
        key: certificates.serverKey,
        ca: certificates.ca,
        requestCert: true,
        rejectUnauthorized: true,
      },
    );
    try {
      const trusted = new BuildKitClient(proxy.address, { tls: { ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey } });
      assert.equal((await trusted.listWorkers(AbortSignal.timeout(15_000)))[0]?.id, "moby");
      trusted.close();
      const anonymous = new BuildKitClient(proxy.address, { tls: { ca: certificates.ca } });
      const failure = await anonymous.listWorkers(AbortSignal.timeout(15_000)).catch((error) => ConnectError.from(error));
      anonymous.close();
      assert.ok(failure instanceof ConnectError, "a client without a certificate is refused");
      assert.equal(failure.code, Code.Unavailable, failure.message);
    } finally {
      await proxy.close();
    }
  });
});
