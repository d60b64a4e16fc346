import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { loadDefaultDockerfile } from "../../services/context-service/core/default-dockerfile.js";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { ContextCache } from "../../services/image-service/core/context-cache.js";
import { type DockerfileBuilder, ImageBuilder } from "../../services/image-service/core/image-builder.js";
import type { BuildRequest } from "../../services/image-service/core/model.js";
import { ReuseRecords } from "../../services/image-service/core/reuse-records.js";
import { DockerApi } from "../../services/image-service/docker/docker-api.js";
import { createLogger } from "../../services/shared/log.js";
import { RegistryClient, RegistryError } from "../../services/shared/registry/registry-client.js";
import { ImageMaterialiser } from "../../services/step-service/images/images.js";
import { LayerStore } from "../../services/step-service/images/layer-store.js";
import { LocalContextProvider } from "../support/contexts.js";
import { run, samePassOnEither, stack } from "../support/stack.js";
import { StandaloneBuildKitd, buildkitdUnavailable } from "../support/standalone-buildkitd.js";
import { leftovers, removeState, runtimeParts, testConfig } from "../support/step-service.js";
import { toConnectError } from "../../services/image-service/api/image-service-adapter.js";

const STEPS_REPOSITORY = "steprunner-test/buildkitd-steps";

describe(
  "the image-builder on a standalone buildkitd v0.24: images pushed to the registry",
  samePassOnEither("it starts a buildkitd of its own", buildkitdUnavailable),
  () => {
    let work: string;
    let buildkitd: StandaloneBuildKitd;
    let client: BuildKitClient;
    let provider: LocalContextProvider;
    let images: ImageBuilder;
    const registry = new RegistryClient(stack.registry);
    let solves = 0;

    before(async () => {
      await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
      work = await mkdtemp(join(stack.stateDir, "tmp", "image-builder-buildkitd-"));
      await mkdir(join(work, "contexts"));
      buildkitd = await StandaloneBuildKitd.start({ allowNetworkHost: false });
      client = new BuildKitClient(buildkitd.address);
      provider = new LocalContextProvider(join(work, "contexts"));
      const builder: DockerfileBuilder = {
        build: (build, onStatus, signal) => {
          solves++;
          return buildDockerfile(client, build, onStatus, signal);
        },
      };
      // No dockerd here: the image store is never asked (an unreachable socket would fail the test if it were).
      images = new ImageBuilder({
        contexts: new ContextCache(provider, join(work, "cache")),
        buildkit: builder,
        images: new DockerApi(join(work, "no-dockerd.sock")),
        registry: registry,
        records: new ReuseRecords(join(work, "records")),
        settings: {
          imageOutput: "registry",
          defaultBaseRunner: stack.baseRunner,
          version: "0.1.0",
          stepsRepository: STEPS_REPOSITORY,
          defaultHandoff: "registry",
          reuseTtlMs: 3_600_000,
          maxConcurrentBuilds: 2,
          transportAttempts: 1,
        },
      });
    });

    after(async () => {
      client?.close();
      await buildkitd?.stop();
      await rm(work, { recursive: true, force: true });
    });

    const request = (contextId: string, extra: Partial<BuildRequest> = {}): BuildRequest => ({
      contextId,
      baseRunner: "",
      network: "none",
      buildWithoutCache: false,
      handoff: undefined,
      ...extra,
    });

    it("pushes the default Dockerfile's image, reuses it from the registry without a solve, and a step runs it", async () => {
      const contextId = await provider.add({
        files: { "actions.rb": `# ${Date.now()}\ntask :hello do puts "hello" end\n` },
        properties: {},
        dockerfile: loadDefaultDockerfile("0.1.0").text,
        defaultDockerfile: true,
      });
      const built = await images.build(request(contextId), () => {});
      assert.equal(built.reused, false);
      assert.equal(built.handoff, "registry");
      assert.ok(built.reference.startsWith(`${stack.registry}/${STEPS_REPOSITORY}@sha256:`), built.reference);
      assert.equal(built.config.user, "opschain");
      assert.ok(built.layers.length >= 2 && built.layers.every((layer) => layer.digest.startsWith("sha256:") && layer.diffId.startsWith("sha256:")));

      const again = await images.build(request(contextId), () => {});
      assert.equal(again.reused, true);
      assert.equal(again.reference, built.reference);
      assert.equal(solves, 1, "reused from the registry: no second solve");

      const layerHandoff = await images
        .build(request(contextId, { handoff: "layer-store" }), () => {})
        .catch((error) => ConnectError.from(toConnectError(error)));
      assert.ok(layerHandoff instanceof ConnectError && layerHandoff.code === Code.FailedPrecondition, String(layerHandoff));

      // The step-service takes it from the registry into its layer store and runs it.
      const config = await testConfig();
      try {
        const { materialiser, runtime } = await runtimeParts(config);
        const rootfs = await materialiser.materialise({ kind: "registry", reference: built.reference }, new AbortController().signal);
        const lines: string[] = [];
        const exit = await runtime.run({
          stepId: "buildkitd-image",
          image: rootfs,
          args: ["sh", "-c", "id -u; grep -c hello /opt/opschain/actions.rb"],
          env: {},
          limits: config.defaultLimits,
          hostNetwork: false,
          binds: [],
          userDirs: [],
          resultPath: "opt/opschain/none.json",
          timeoutMs: 30_000,
          onOutput: (_stream, text) => lines.push(text),
          onStarted: () => {},
          signal: new AbortController().signal,
        });
        rootfs.release();
        assert.equal(exit.exitCode, 0, lines.join("\n"));
        assert.deepEqual(lines, ["10001", "1"]);
        assert.deepEqual(await leftovers(config), { containers: [], mounts: [], cgroups: [], dirs: [] });
      } finally {
        await removeState(config);
      }

      // Pruning removes the manifest from the registry; the next build solves again.
      assert.deepEqual(await images.prune(0), [built.contentKey]);
      const [, repository, digest] = /^[^/]+\/(.+)@(sha256:[0-9a-f]{64})$/.exec(built.reference)!;
      await assert.rejects(registry.manifest(repository!, digest!), (error: unknown) => error instanceof RegistryError && error.status === 404);
    });

    /** The image's layers pulled into a layer store of the test's own, and a function to remove it. */
    async function unpacked(reference: string): Promise<{ dirs: string[]; remove(): Promise<void> }> {
      const config = await testConfig();
      const layers = new LayerStore(join(config.stateDir, "layers"), config.layerCacheBytes, createLogger("test", {}, { quiet: true }));
      await layers.init();
      const rootfs = await new ImageMaterialiser(layers).materialise({ kind: "registry", reference }, new AbortController().signal);
      return {
        dirs: rootfs.lowerDirs,
        remove: async () => {
          rootfs.release();
          await removeState(config);
        },
      };
    }

    it("gives secret properties to RUN only as the env_context_zip secret, never to a pushed layer or the config", async () => {
      const secret = `s3cret-${randomBytes(12).toString("hex")}`;
      const dockerfile = [
        "ARG OPSCHAIN_BASE_RUNNER",
        "FROM ${OPSCHAIN_BASE_RUNNER}",
        // The secret's random part is not in the Dockerfile: the RUN line's text is in the image's history.
        "RUN --mount=type=secret,id=env_context_zip,target=/tmp/ctx.zip,uid=10001 unzip -p /tmp/ctx.zip | grep -c s3cret- > /opt/opschain/secret-seen",
        "",
      ].join("\n");
      const image = await images.build(
        request(
          await provider.add({
            files: { "a.txt": "a" },
            properties: { project: { opschain: { env: { TOKEN: secret } } } },
            secrets: [secret],
            dockerfile,
            defaultDockerfile: false,
          }),
        ),
        () => {},
      );
      const layers = await unpacked(image.reference);
      try {
        const seen = await run("cat", [join(layers.dirs.at(-1)!, "opt/opschain/secret-seen")]);
        assert.equal(seen.stdout.trim(), "1", "the RUN line read the secret from the mount");
        const grep = await run("grep", ["-rlF", secret, ...layers.dirs]);
        assert.equal(grep.code, 1, `the secret is in no layer: ${grep.stdout}`);
        const [, repository] = /^[^/]+\/(.+)@/.exec(image.reference)!;
        const { manifest } = await registry.manifest(repository!, image.manifestDigest);
        assert.ok(!JSON.stringify(await registry.config(repository!, manifest.config)).includes(secret), "nor in the image config");
      } finally {
        await layers.remove();
      }
    });

    it("merges two identical builds in flight into one solve", async () => {
      const contextId = await provider.add({
        files: { "b.txt": randomBytes(8).toString("hex") },
        properties: {},
        dockerfile: loadDefaultDockerfile("0.1.0").text,
        defaultDockerfile: true,
      });
      const before = solves;
      const [a, b] = await Promise.all([images.build(request(contextId), () => {}), images.build(request(contextId), () => {})]);
      assert.equal(solves - before, 1);
      assert.equal(a.reference, b.reference);
    });

    it("stops a build when its caller cancels, and leaves no process of it in buildkitd", async () => {
      const marker = `steprunner-cancel-${randomBytes(6).toString("hex")}`;
      // A command after the sleep keeps the shell, whose command line names the marker, waiting for it.
      const dockerfile = `ARG OPSCHAIN_BASE_RUNNER\nFROM \${OPSCHAIN_BASE_RUNNER}\nRUN sleep 600; echo ${marker}\n`;
      const contextId = await provider.add({ files: { "c.txt": "c" }, properties: {}, dockerfile, defaultDockerfile: false });
      const controller = new AbortController();
      const building = images.build(request(contextId), () => {}, controller.signal).catch((error) => ConnectError.from(toConnectError(error)));
      const running = async () => (await run("pgrep", ["-f", marker])).code === 0;
      for (let waited = 0; !(await running()); waited += 100) {
        assert.ok(waited < 60_000, "the RUN line started");
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      controller.abort(new Error("the caller went away"));
      const error = await building;
      assert.ok(error instanceof ConnectError && error.code === Code.Canceled, String(error));
      for (let waited = 0; await running(); waited += 100) {
        assert.ok(waited < 15_000, "buildkitd stopped the RUN line's process");
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    });
  },
);
