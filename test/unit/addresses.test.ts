import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseBuildKitAddress } from "../../services/image-service/buildkit/address.js";
import { parseImageReference } from "../../services/shared/registry/image-reference.js";
import { formatListenAddress, parseListenAddress } from "../../services/shared/server/listen-address.js";

describe("listen addresses", () => {
  it("parses loopback ports, IPv6 and unix sockets", () => {
    assert.deepEqual(parseListenAddress("127.0.0.1:7701"), { kind: "tcp", host: "127.0.0.1", port: 7701 });
    assert.deepEqual(parseListenAddress("[::1]:0"), { kind: "tcp", host: "::1", port: 0 });
    assert.deepEqual(parseListenAddress("unix:/run/steprunner/step.sock"), { kind: "unix", path: "/run/steprunner/step.sock" });
    assert.equal(formatListenAddress(parseListenAddress("[::1]:7703")), "[::1]:7703");
  });

  it("rejects what is not an address, saying what is expected", () => {
    assert.throws(() => parseListenAddress("7701"), /HOST:PORT or unix:\/path/);
    assert.throws(() => parseListenAddress("127.0.0.1:99999"), /HOST:PORT/);
    assert.throws(() => parseListenAddress("unix:relative.sock"), /absolute path/);
  });
});

describe("BuildKit addresses", () => {
  it("knows dockerd's BuildKit, a unix socket and TCP", () => {
    assert.deepEqual(parseBuildKitAddress("docker-unix:///var/run/docker.sock"), { kind: "docker-unix", socketPath: "/var/run/docker.sock" });
    assert.deepEqual(parseBuildKitAddress("unix:///run/buildkit/buildkitd.sock"), { kind: "unix", socketPath: "/run/buildkit/buildkitd.sock" });
    assert.deepEqual(parseBuildKitAddress("tcp://127.0.0.1:1234"), { kind: "tcp", host: "127.0.0.1", port: 1234 });
  });

  it("rejects unknown schemes and malformed addresses", () => {
    assert.throws(() => parseBuildKitAddress("/var/run/docker.sock"), /needs a scheme/);
    assert.throws(() => parseBuildKitAddress("ssh://host"), /unsupported BuildKit address/);
    assert.throws(() => parseBuildKitAddress("tcp://host"), /HOST:PORT/);
    assert.throws(() => parseBuildKitAddress("unix://relative.sock"), /absolute socket path/);
  });
});

describe("image references", () => {
  it("splits registry, repository and tag or digest", () => {
    assert.deepEqual(parseImageReference("127.0.0.1:5000/steprunner/runner:0.1.0"), {
      registry: "127.0.0.1:5000",
      repository: "steprunner/runner",
      reference: "0.1.0",
    });
    const digest = `sha256:${"a".repeat(64)}`;
    assert.equal(parseImageReference(`localhost/runner@${digest}`).reference, digest);
    assert.equal(parseImageReference("registry.example:5000/runner").reference, "latest");
  });

  it("never falls back to Docker Hub and rejects bad names", () => {
    assert.throws(() => parseImageReference("ubuntu:22.04"), /must start with a registry host/);
    assert.throws(() => parseImageReference("127.0.0.1:5000/Runner:1"), /invalid repository name/);
    assert.throws(() => parseImageReference("127.0.0.1:5000/runner@sha256:xyz"), /invalid digest/);
  });
});
