import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { parseBuildKitAddress } from "../../services/image-service/buildkit/address.js";
import { describeFailure } from "../../services/image-service/buildkit/client.js";
import { explainBuildFailure } from "../../services/image-service/core/build-errors.js";
import { toConnectError } from "../../services/image-service/api/image-service-adapter.js";

const DOCKERD = parseBuildKitAddress("docker-unix:///var/lib/steprunner/run/docker.sock");
const BUILDKITD = parseBuildKitAddress("unix:///run/buildkit/buildkitd.sock");

/** A daemon's failure as our BuildKit client hands it on: the daemon's address before the message, BuildKit's error as the cause. */
function failure(address: typeof DOCKERD, message: string, details: Record<string, unknown> = {}): ConnectError {
  const daemon = new ConnectError(message, Code.Unknown);
  daemon.details = Object.entries(details).map(([type, json]) => ({ type, value: Buffer.from(JSON.stringify(json)) }));
  return describeFailure(address, daemon);
}

/** The details v0.24 put on its frontend's errors (trimmed to what is read: the frontend, the Dockerfile lines). */
function frontendDetails(...lines: number[]): Record<string, unknown> {
  return {
    "errdefs.Frontend+json": { name: "dockerfile.v0" },
    "errdefs.Source+json": { info: { filename: "Dockerfile", language: "Dockerfile" }, ranges: lines.map((line) => ({ start: { line }, end: { line } })) },
  };
}

function explained(error: ConnectError, logTail = ""): string {
  const explanation = ConnectError.from(toConnectError(explainBuildFailure(error, logTail)));
  assert.equal(explanation.code, Code.FailedPrecondition, explanation.message);
  return explanation.rawMessage;
}

describe("BuildKit's failures explained, in v0.8's words (dockerd 20.10) and v0.24's (buildkitd)", () => {
  it("a failing RUN: its command, exit code and last output", () => {
    const v08 = failure(DOCKERD, "executor failed running [/bin/sh -c cat /host/etc/shadow]: exit code: 1");
    const v024 = failure(BUILDKITD, 'process "/bin/sh -c cat /host/etc/shadow" did not complete successfully: exit code: 1');
    const expected = "RUN /bin/sh -c cat /host/etc/shadow failed (exit code: 1); its last output:\ncat: /host/etc/shadow: No such file or directory";
    for (const error of [v08, v024]) assert.equal(explained(error, "cat: /host/etc/shadow: No such file or directory\n"), expected);
  });

  it("a failing RUN whose command v0.24 quoted Go's way is shown as written", () => {
    const error = failure(
      BUILDKITD,
      String.raw`process "/bin/sh -c echo \"quoted\" 'single' \\ tab\there && exit 7" did not complete successfully: exit code: 7`,
    );
    assert.equal(explained(error), `RUN /bin/sh -c echo "quoted" 'single' \\ tab\there && exit 7 failed (exit code: 7)`);
  });

  it("a Dockerfile parse error: its line and the problem", () => {
    const v08 = failure(
      DOCKERD,
      "failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 3: Unknown flag: security",
    );
    assert.equal(explained(v08), "the Dockerfile has an error on line 3: Unknown flag: security");
    const v024 = failure(BUILDKITD, "dockerfile parse error on line 2: unknown flag: --security", frontendDetails(2));
    assert.equal(explained(v024), "the Dockerfile has an error on line 2: unknown flag: --security");
    const instruction = failure(BUILDKITD, "dockerfile parse error on line 2: unknown instruction: FOO (did you mean FROM?)", frontendDetails(2));
    assert.equal(explained(instruction), "the Dockerfile has an error on line 2: unknown instruction: FOO (did you mean FROM?)");
  });

  it("a Dockerfile error whose line v0.24 gives only in the error's details", () => {
    assert.equal(explained(failure(BUILDKITD, "unterminated heredoc", frontendDetails(2, 3))), "the Dockerfile has an error on line 2: unterminated heredoc");
    assert.equal(
      explained(failure(BUILDKITD, "file with no instructions", frontendDetails(1))),
      "the Dockerfile has an error on line 1: file with no instructions",
    );
    const empty = failure(BUILDKITD, "the Dockerfile cannot be empty", { "errdefs.Frontend+json": { name: "dockerfile.v0" } });
    assert.equal(explained(empty), "the Dockerfile cannot be built: the Dockerfile cannot be empty");
  });

  it("a missing base image, named", () => {
    const image = "127.0.0.1:5000/steprunner/no-such-runner:1";
    const v08 = failure(DOCKERD, `failed to solve with frontend dockerfile.v0: failed to create LLB definition: ${image}: not found`);
    const v024 = failure(BUILDKITD, `${image}: failed to resolve source metadata for ${image}: ${image}: not found`, frontendDetails(1));
    for (const error of [v08, v024]) assert.equal(explained(error), `the base image ${image} was not found: ${image}: not found`);
  });

  it("a base image that cannot be pulled is not called missing", () => {
    const image = "127.0.0.1:5000/steprunner/runner:0.1.0";
    const error = failure(
      BUILDKITD,
      `${image}: failed to resolve source metadata for ${image}: failed to do request: Head "http://127.0.0.1:5000/v2/steprunner/runner/manifests/0.1.0": dial tcp 127.0.0.1:5000: connect: connection refused`,
      frontendDetails(1),
    );
    assert.match(
      explained(error),
      /^the base image 127\.0\.0\.1:5000\/steprunner\/runner:0\.1\.0 cannot be pulled: failed to do request: .*connection refused$/,
    );
  });

  it("v0.8's other LLB failures, e.g. a manifest without our platform, are not taken for a missing image", () => {
    const error = failure(
      DOCKERD,
      "failed to solve with frontend dockerfile.v0: failed to create LLB definition: no match for platform in manifest sha256:228824aa581f3b31bf79411f8448b798291c667a37155bdea61cfa128b2833f2: not found",
    );
    assert.equal(
      explained(error),
      "the Dockerfile cannot be built: no match for platform in manifest sha256:228824aa581f3b31bf79411f8448b798291c667a37155bdea61cfa128b2833f2: not found",
    );
  });

  it("an entitlement the daemon does not grant says how to start buildkitd", () => {
    const error = failure(BUILDKITD, "granting entitlement network.host is not allowed by build daemon configuration");
    assert.equal(
      explained(error),
      "this BuildKit does not grant the network.host entitlement the build needs: start buildkitd with --allow-insecure-entitlement network.host",
    );
  });

  it("a COPY or ADD of a path outside the build context says so, without BuildKit's temporary paths or refs", () => {
    const v08 = explained(
      failure(
        DOCKERD,
        "failed to compute cache key: failed to walk /var/lib/docker/tmp/buildkit-mount3115858562/etc: lstat /var/lib/docker/tmp/buildkit-mount3115858562/etc: no such file or directory",
      ),
    );
    assert.match(v08, /^a COPY or ADD source is not in the build context \("etc" is missing\): .*commit the file to the repository/);
    assert.doesNotMatch(v08, /buildkit-mount/);
    const v024 = explained(
      failure(
        BUILDKITD,
        'failed to compute cache key: failed to calculate checksum of ref nsg9uzyzi1ymcjliscvru8ips::kwpikuvao9uo8kiaoopxhy8cl: "/etc/passwd": not found',
      ),
    );
    assert.match(v024, /^a COPY or ADD source is not in the build context \("etc\/passwd" is missing\): /);
    assert.doesNotMatch(v024, /nsg9uzyzi1ymcjliscvru8ips/);
  });

  it("BuildKit's details (its stack traces, its command line) are not passed on", () => {
    const error = failure(BUILDKITD, 'exporter "moby" could not be found', { "stack.Stack+json": { cmdline: ["buildkitd"], pid: 1 } });
    assert.deepEqual(error.details, []);
    assert.deepEqual(ConnectError.from(toConnectError(explainBuildFailure(error, ""))).details, []);
  });

  it("anything else keeps BuildKit's message and where the daemon is", () => {
    assert.equal(
      explained(failure(BUILDKITD, 'exporter "moby" could not be found')),
      'the build failed: BuildKit (unix /run/buildkit/buildkitd.sock): exporter "moby" could not be found',
    );
    const unavailable = new ConnectError("connection refused", Code.Unavailable);
    assert.equal(explainBuildFailure(unavailable, ""), unavailable, "a failure to reach BuildKit is not a build failure");
  });
});
