import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ConnectError } from "@connectrpc/connect";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { DockerApi } from "../../services/image-service/docker/docker-api.js";
import { readRegistryCredentials } from "../../services/shared/registry/credentials.js";
import { baseRunnerInDockerd, needsDockerd, run, stack } from "../support/stack.js";

const AUTH_REGISTRY = "127.0.0.1:5011";

describe(
  "a registry that needs credentials",
  needsDockerd("it pushes the base image there with its X-Registry-Auth, and builds with its moby exporter"),
  () => {
    let work: string;
    let registry: ChildProcess;
    const password = randomBytes(12).toString("hex");
    const image = `${AUTH_REGISTRY}/steprunner/runner:auth-test`;

    before(async () => {
      await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
      work = await mkdtemp(join(stack.stateDir, "tmp", "registry-auth-test-"));
      const htpasswd = await run("htpasswd", ["-Bbn", "builder", password]);
      assert.equal(htpasswd.code, 0, htpasswd.stderr);
      await writeFile(join(work, "htpasswd"), htpasswd.stdout);
      await writeFile(
        join(work, "config.yml"),
        [
          "version: 0.1",
          "log: { level: error }",
          `storage: { filesystem: { rootdirectory: ${join(work, "storage")} } }`,
          `http: { addr: ${AUTH_REGISTRY} }`,
          `auth: { htpasswd: { realm: steprunner-test, path: ${join(work, "htpasswd")} } }`,
          "",
        ].join("\n"),
      );
      registry = spawn("docker-registry", ["serve", join(work, "config.yml")], { stdio: "ignore" });
      for (let i = 0; i < 100; i++) {
        const status = await fetch(`http://${AUTH_REGISTRY}/v2/`).then(
          (response) => response.status,
          () => 0,
        );
        if (status === 401) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await writeFile(
        join(work, "config.json"),
        JSON.stringify({ auths: { [AUTH_REGISTRY]: { auth: Buffer.from(`builder:${password}`).toString("base64") } } }),
      );
      // The base runner, pushed into the registry with the credentials.
      const docker = new DockerApi(`${stack.runDir}/docker.sock`, readRegistryCredentials(join(work, "config.json")));
      await baseRunnerInDockerd();
      await docker.tagImage(stack.baseRunner, `${AUTH_REGISTRY}/steprunner/runner`, "auth-test");
      await docker.pushImage(`${AUTH_REGISTRY}/steprunner/runner`, "auth-test");
      await docker.removeImage(image);
      await mkdir(join(work, "context"));
      await mkdir(join(work, "dockerfile"));
      await writeFile(join(work, "dockerfile/Dockerfile"), `FROM ${image}\nRUN echo pulled-with-credentials-${randomBytes(4).toString("hex")}\n`);
    });

    after(async () => {
      registry?.kill("SIGTERM");
      await new Promise((resolve) => registry?.once("exit", resolve));
      await rm(work, { recursive: true, force: true });
    });

    async function build(credentialsFile?: string): Promise<string> {
      const client = new BuildKitClient(stack.buildkitAddr);
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
            sessionName: "registry auth test",
            sharedKey: "registry-auth-test",
            registryCredentials: credentialsFile ? readRegistryCredentials(credentialsFile) : undefined,
          },
          () => {},
          AbortSignal.timeout(120_000),
        );
        return response["containerimage.digest"] ?? "";
      } finally {
        client.close();
      }
    }

    it("refuses an anonymous pull of the base image", async () => {
      const failure = await build().catch((error) => ConnectError.from(error));
      assert.ok(failure instanceof ConnectError, "the anonymous build failed");
      assert.match(failure.message, /401|unauthorized|authorization/i);
    });

    it("builds FROM it with the configured credentials, given to BuildKit by our session", async () => {
      assert.match(await build(join(work, "config.json")), /^sha256:[0-9a-f]{64}$/);
    });
  },
);
