import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import * as http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { DockerApi } from "../../services/image-service/docker/docker-api.js";

/** A stand-in for dockerd's socket that records the X-Registry-Auth of each push and answers it as pushed. */
async function fakeDockerd(socketPath: string): Promise<{ registryAuths: string[]; close: () => Promise<void> }> {
  const registryAuths: string[] = [];
  const server = http.createServer((request, response) => {
    registryAuths.push(String(request.headers["x-registry-auth"]));
    response.end(`${JSON.stringify({ aux: { Digest: "sha256:0123", Size: 42 } })}\n`);
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return { registryAuths, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

describe("DockerApi's push credentials", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-docker-api-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("sends X-Registry-Auth in base64url, the alphabet dockerd decodes, even when standard base64 would hold + or /", async () => {
    const socketPath = join(dir, "docker.sock");
    const dockerd = await fakeDockerd(socketPath);
    try {
      const host = "registry.test:5000";
      // Chosen so that the standard encoding of the JSON holds both '+' and '/', and ends in padding.
      const credential = { username: "builder", password: "s?cr>t~~x" };
      const expected = { username: credential.username, password: credential.password, serveraddress: host };
      const standard = Buffer.from(JSON.stringify(expected)).toString("base64");
      assert.ok(standard.includes("+") && standard.includes("/") && standard.endsWith("="), standard);

      await new DockerApi(socketPath, new Map([[host, credential]])).pushImage(`${host}/steps/app`, "v1");

      const [header] = dockerd.registryAuths;
      assert.ok(header);
      assert.doesNotMatch(header, /[+/]/);
      // Padded like the Docker CLI's (Go's base64.URLEncoding), which dockerd's decoder expects.
      assert.equal(header.length % 4, 0);
      assert.deepEqual(JSON.parse(Buffer.from(header, "base64url").toString("utf8")), expected);
    } finally {
      await dockerd.close();
    }
  });
});

describe("DockerApi's tag", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-docker-api-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("fails naming the image when dockerd does not have it, rather than leaving the push after it to fail", async () => {
    const socketPath = join(dir, "docker.sock");
    // dockerd's answer to a tag of an image it does not have.
    const server = http.createServer((_request, response) => {
      response.writeHead(404, { "content-type": "application/json" });
      response.end(JSON.stringify({ message: "No such image: registry.test:5000/runner:1" }));
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      const failure = await new DockerApi(socketPath).tagImage("registry.test:5000/runner:1", "registry.test:5000/steps", "t").then(
        () => assert.fail("tagging a missing image succeeded"),
        (error: unknown) => ConnectError.from(error),
      );
      assert.equal(failure.code, Code.FailedPrecondition);
      assert.match(failure.message, /answered 404: No such image: registry\.test:5000\/runner:1/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
