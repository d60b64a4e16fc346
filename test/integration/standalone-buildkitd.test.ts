import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError } from "@connectrpc/connect";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { type DockerfileBuild, buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { explainBuildFailure } from "../../services/image-service/core/build-errors.js";
import { toConnectError } from "../../services/image-service/api/image-service-adapter.js";
import { StandaloneBuildKitd, buildkitdUnavailable } from "../support/standalone-buildkitd.js";
import { samePassOnEither, stack } from "../support/stack.js";

// The image stays in the daemon's own store: nothing is pushed to the shared registry.
const IMAGE_EXPORTER = { type: "image", attrs: { name: "steprunner-test/standalone-buildkitd:latest" } };

describe("a standalone buildkitd v0.24, through the Control.Session tunnel", samePassOnEither("it starts a buildkitd of its own", buildkitdUnavailable), () => {
  let buildkitd: StandaloneBuildKitd;
  let work: string;
  const uncaught: unknown[] = [];
  const recordUncaught = (error: unknown) => uncaught.push(error);

  before(async () => {
    process.on("uncaughtException", recordUncaught);
    work = await mkdtemp(join(tmpdir(), "steprunner-standalone-test-"));
    await mkdir(join(work, "context"));
    await mkdir(join(work, "dockerfile"));
    buildkitd = await StandaloneBuildKitd.start({ allowNetworkHost: true });
  });
  after(async () => {
    process.off("uncaughtException", recordUncaught);
    await buildkitd?.stop();
    await rm(work, { recursive: true, force: true });
  });

  /** Builds a Dockerfile; returns the exporter's response and the build's output. */
  async function build(address: string, dockerfile: string, options: Partial<Pick<DockerfileBuild, "network" | "exporter">> = {}) {
    await writeFile(join(work, "dockerfile", "Dockerfile"), dockerfile);
    const client = new BuildKitClient(address);
    let output = "";
    try {
      const response = await buildDockerfile(
        client,
        {
          context: join(work, "context"),
          dockerfileDir: join(work, "dockerfile"),
          buildArgs: {},
          network: options.network ?? "none",
          noCache: false,
          exporter: options.exporter ?? IMAGE_EXPORTER,
          sessionName: "standalone buildkitd test",
          sharedKey: `standalone-buildkitd-test-${address}`,
        },
        (status) => status.logs.forEach((log) => (output += Buffer.from(log.msg).toString())),
        AbortSignal.timeout(120_000),
      );
      return { response, output };
    } catch (error) {
      throw Object.assign(ConnectError.from(error), { output });
    } finally {
      client.close();
    }
  }

  /** A build that must fail: BuildKit's error, and how the image-service explains it to the user. */
  async function failedBuild(...args: Parameters<typeof build>): Promise<{ error: ConnectError; explained: ConnectError }> {
    const error = await build(...args).then(
      () => assert.fail("the build succeeded"),
      (failure: ConnectError & { output: string }) => failure,
    );
    return { error, explained: ConnectError.from(toConnectError(explainBuildFailure(error, error.output))) };
  }

  it("lives through builds failing in the tunnel (a failing RUN, a refused entitlement, an unknown exporter), then builds", async () => {
    const nonce = randomBytes(4).toString("hex");
    const run = await failedBuild(buildkitd.address, `FROM ${stack.baseRunner}\nRUN echo boom-${nonce} && exit 3\n`);
    assert.equal(run.explained.code, Code.FailedPrecondition, run.explained.message);
    assert.equal(run.explained.rawMessage, `RUN /bin/sh -c echo boom-${nonce} && exit 3 failed (exit code: 3); its last output:\nboom-${nonce}`);

    const refusing = await StandaloneBuildKitd.start({ allowNetworkHost: false });
    try {
      const entitlement = await failedBuild(refusing.address, `FROM ${stack.baseRunner}\nRUN true\n`, { network: "host" });
      assert.match(entitlement.error.rawMessage, /granting entitlement network\.host is not allowed by build daemon configuration/);
      assert.equal(
        entitlement.explained.rawMessage,
        "this BuildKit does not grant the network.host entitlement the build needs: start buildkitd with --allow-insecure-entitlement network.host",
      );
    } finally {
      await refusing.stop();
    }

    const exporter = await failedBuild(buildkitd.address, `FROM ${stack.baseRunner}\nRUN true\n`, { exporter: { type: "moby", attrs: {} } });
    assert.match(exporter.error.rawMessage, /exporter "moby" could not be found/);

    // The unhandled 'error' of an aborted tunnel came a few ticks after the build had failed.
    await sleep(500);
    const good = await build(buildkitd.address, `FROM ${stack.baseRunner}\nRUN echo built-${nonce}\n`);
    assert.match(good.response["containerimage.digest"] ?? "", /^sha256:[0-9a-f]{64}$/);
    assert.deepEqual(uncaught, [], "no uncaught exception");
  });

  it("explains a Dockerfile parse error with its line, from v0.24's message or from its error details", async () => {
    const flag = await failedBuild(buildkitd.address, `FROM ${stack.baseRunner}\nRUN --bogus-flag=1 true\n`);
    assert.match(flag.error.rawMessage, /dockerfile parse error on line 2: unknown flag: --bogus-flag$/);
    assert.equal(flag.explained.code, Code.FailedPrecondition);
    assert.equal(flag.explained.rawMessage, "the Dockerfile has an error on line 2: unknown flag: --bogus-flag");
    const heredoc = await failedBuild(buildkitd.address, `FROM ${stack.baseRunner}\nRUN <<EOF\necho never closed\n`);
    assert.match(heredoc.error.rawMessage, /: unterminated heredoc$/);
    assert.equal(heredoc.explained.rawMessage, "the Dockerfile has an error on line 2: unterminated heredoc");
  });

  it("names a base image missing from the registry", async () => {
    const image = `${stack.registry}/steprunner/no-such-runner:1`;
    const missing = await failedBuild(buildkitd.address, `FROM ${image}\nRUN true\n`);
    assert.match(missing.error.rawMessage, /failed to resolve source metadata for \S+: \S+: not found$/);
    assert.equal(missing.explained.code, Code.FailedPrecondition);
    assert.equal(missing.explained.rawMessage, `the base image ${image} was not found: ${image}: not found`);
  });

  it("runs RUN on the host network when the build asks for it (the network.host entitlement)", async () => {
    const received: string[] = [];
    const server = net.createServer((socket) => socket.on("data", (data) => received.push(data.toString())).on("error", () => {}));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as net.AddressInfo;
      const nonce = randomBytes(4).toString("hex");
      await build(buildkitd.address, `FROM ${stack.baseRunner}\nRUN ruby -rsocket -e 'TCPSocket.new("127.0.0.1", ${port}).write("host-${nonce}")'\n`, {
        network: "host",
      });
      assert.deepEqual(received, [`host-${nonce}`], "RUN reached the test's port on the host's loopback");
    } finally {
      server.close();
    }
  });

  it("refuses at once the exporters that send the output back to the client, which v0.24 would wait for forever", async () => {
    for (const type of ["local", "tar"]) {
      const started = Date.now();
      const { error } = await failedBuild(buildkitd.address, `FROM ${stack.baseRunner}\nRUN true\n`, { exporter: { type, attrs: {} } });
      assert.equal(error.code, Code.InvalidArgument, error.message);
      assert.match(
        error.rawMessage,
        new RegExp(`^the "${type}" exporter sends the build's output back to the client, which this client cannot receive: export with "image"`),
      );
      assert.ok(Date.now() - started < 2_000, `refused in ${Date.now() - started} ms`);
    }
  });
});
