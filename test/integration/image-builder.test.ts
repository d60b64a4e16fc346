import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { loadDefaultDockerfile } from "../../services/context-service/core/default-dockerfile.js";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import type { VertexEvent } from "../../services/image-service/buildkit/progress.js";
import { ContextCache } from "../../services/image-service/core/context-cache.js";
import { type DockerfileBuilder, ImageBuilder, type ImageBuilderSettings } from "../../services/image-service/core/image-builder.js";
import type { BuildEvent, BuildRequest, Handoff } from "../../services/image-service/core/model.js";
import { ReuseRecords } from "../../services/image-service/core/reuse-records.js";
import { DockerApi } from "../../services/image-service/docker/docker-api.js";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";
import { type ContextInput, LocalContextProvider } from "../support/contexts.js";
import { baseRunnerInDockerd, needsDockerd, run, stack } from "../support/stack.js";
import { toConnectError } from "../../services/image-service/api/image-service-adapter.js";

const STEPS_REPOSITORY = "steprunner-test/steps";

/** Counts solves and the bytes each build's session sent, per local source and file. */
class CountingBuilder implements DockerfileBuilder {
  solves = 0;
  sent: Array<{ dirName: string; path: string; bytes: number }> = [];
  constructor(private readonly client: BuildKitClient) {}
  build: DockerfileBuilder["build"] = (build, onStatus, signal) => {
    this.solves++;
    return buildDockerfile(
      this.client,
      { ...build, observer: { fileSent: (dirName, path, bytes) => this.sent.push({ dirName, path, bytes }) } },
      onStatus,
      signal,
    );
  };
}

describe(
  "building step images on the real BuildKit",
  needsDockerd("its image store and moby exporter; image-builder-buildkitd.test.ts is the standalone buildkitd's"),
  () => {
    let work: string;
    let client: BuildKitClient;
    let docker: DockerApi;
    let provider: LocalContextProvider;
    let counting: CountingBuilder;
    let images: ImageBuilder;
    const defaultDockerfile = loadDefaultDockerfile("0.1.0").text;

    function newImageBuilderSettings(handoff: Handoff = "layer-store"): ImageBuilderSettings {
      return {
        defaultBaseRunner: stack.baseRunner,
        version: "0.1.0",
        stepsRepository: STEPS_REPOSITORY,
        defaultHandoff: handoff,
        reuseTtlMs: 3_600_000,
        maxConcurrentBuilds: 4,
        transportAttempts: 3,
      };
    }

    function newImageBuilder(recordsDir: string, cacheDir: string, handoff: Handoff = "layer-store"): ImageBuilder {
      return new ImageBuilder({
        contexts: new ContextCache(provider, cacheDir),
        buildkit: counting,
        images: docker,
        registry: new RegistryClient(stack.registry),
        records: new ReuseRecords(recordsDir),
        settings: newImageBuilderSettings(handoff),
      });
    }

    async function context(input: Partial<ContextInput> & { files?: Record<string, string> }): Promise<string> {
      return provider.add({
        files: input.files ?? { "actions.rb": `task :hello do puts "hello" end # ${randomBytes(8).toString("hex")}\n` },
        properties: input.properties ?? { project: { opschain: { env: { GREETING: "hi" } } } },
        secrets: input.secrets,
        dockerfile: input.dockerfile ?? defaultDockerfile,
        defaultDockerfile: input.defaultDockerfile ?? input.dockerfile === undefined,
        ...(input.trustStore !== undefined ? { trustStore: input.trustStore } : {}),
      });
    }

    function request(contextId: string, extra: Partial<BuildRequest> = {}): BuildRequest {
      return { contextId, baseRunner: "", network: "none", buildWithoutCache: false, handoff: undefined, ...extra };
    }

    function collect(): { events: BuildEvent[]; emit: (event: BuildEvent) => void; vertices: () => VertexEvent[] } {
      const events: BuildEvent[] = [];
      return {
        events,
        emit: (event) => events.push(event),
        vertices: () => events.flatMap((event) => (event.kind === "progress" ? event.events.filter((e): e is VertexEvent => e.kind === "vertex") : [])),
      };
    }

    before(async () => {
      await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
      work = await mkdtemp(join(stack.stateDir, "tmp", "image-test-"));
      await mkdir(join(work, "contexts"));
      client = new BuildKitClient(stack.buildkitAddr);
      docker = new DockerApi(`${stack.runDir}/docker.sock`);
      provider = new LocalContextProvider(join(work, "contexts"));
      counting = new CountingBuilder(client);
      images = newImageBuilder(join(work, "records"), join(work, "cache"));
    });

    after(async () => {
      client.close();
      const listed = await run("/usr/bin/docker", [
        "--host",
        `unix://${stack.runDir}/docker.sock`,
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        STEPS_REPOSITORY,
      ]);
      const pushed = await run("/usr/bin/docker", [
        "--host",
        `unix://${stack.runDir}/docker.sock`,
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        `${stack.registry}/${STEPS_REPOSITORY}`,
      ]);
      for (const name of [...listed.stdout.split("\n"), ...pushed.stdout.split("\n")].filter(Boolean)) await docker.removeImage(name).catch(() => {});
      await rm(work, { recursive: true, force: true });
    });

    it("builds the default Dockerfile and hands over dockerd's layer directories", async () => {
      const contextId = await context({});
      const progress = collect();
      const image = await images.build(request(contextId), progress.emit);
      assert.equal(image.handoff, "layer-store");
      assert.equal(image.reused, false);
      assert.match(image.imageId, /^sha256:[0-9a-f]{64}$/);
      assert.equal(image.config.user, "opschain");
      assert.equal(image.config.labels["org.steprunner.git-sha"], (await provider.describe(contextId)).gitSha);
      assert.equal(image.layerDirectories.length, image.layers.length);
      // The repository's base tree is the layer below the (here empty) changes.
      const actions = await stat(join(image.layerDirectories.at(-2)!, "opt/opschain/actions.rb"));
      assert.equal(actions.uid, 10001, "the repository is owned by the runner user");
      assert.ok(progress.vertices().some((vertex) => vertex.name.includes("COPY --chown=10001:10001 base/") && vertex.state === "completed"));
      assert.ok(!progress.vertices().some((vertex) => vertex.name.includes("repo.tar")), "the default Dockerfile never reads repo.tar");
    });

    it("reuses the image for the same inputs without a solve, and after a change of properties alone", async () => {
      const files = { "actions.rb": `# reuse ${randomBytes(8).toString("hex")}\n` };
      const first = await images.build(request(await context({ files })), () => {});
      const solves = counting.solves;
      const again = await images.build(request(await context({ files })), () => {});
      assert.equal(again.reused, true);
      assert.equal(again.imageId, first.imageId);
      const otherContext = await context({ files, properties: { project: { changed: true } } });
      const otherProperties = await images.build(request(otherContext), () => {});
      assert.equal(otherProperties.reused, true, "the default Dockerfile keeps properties out of the image");
      assert.equal(otherProperties.imageId, first.imageId);
      assert.equal(counting.solves, solves, "no solve");
      assert.ok(!(await readdir(join(work, "cache"))).includes(otherContext.slice(7)), "a reuse makes none of the new context's files local");
    });

    it("with reuse bypassed, builds the same commit again from BuildKit's cache without sending the repository again", async () => {
      const files = { "actions.rb": `# cache ${randomBytes(8).toString("hex")}\n`, "big.bin": randomBytes(2_000_000).toString("base64") };
      const contextId = await context({ files });
      await images.build(request(contextId), () => {});
      counting.sent = [];
      const fresh = newImageBuilder(join(work, "records-fresh"), join(work, "cache-fresh"));
      const progress = collect();
      const image = await fresh.build(request(contextId), progress.emit);
      assert.equal(image.reused, false);
      const steps = progress.vertices().filter((vertex) => /^\[.*\] /.test(vertex.name) && !vertex.name.startsWith("[internal]"));
      assert.ok(steps.length >= 3, `steps: ${steps.map((v) => v.name)}`);
      for (const vertex of steps.filter((v) => !v.name.includes(" FROM "))) assert.equal(vertex.state, "cached", `${vertex.name} is cached`);
      const repositoryBytes = counting.sent
        .filter((sent) => sent.dirName === "context" && sent.path.startsWith("base/"))
        .reduce((sum, sent) => sum + sent.bytes, 0);
      assert.equal(repositoryBytes, 0, "the repository's files were not sent again");
    });

    it("rebuilds a custom Dockerfile that copies step_context.json.zip only from that layer when properties change", async () => {
      const nonce = randomBytes(8).toString("hex");
      const dockerfile = [
        "ARG OPSCHAIN_BASE_RUNNER",
        "FROM ${OPSCHAIN_BASE_RUNNER}",
        `RUN echo ${nonce} > /tmp/nonce`,
        "COPY repo.tar /tmp/repo.tar",
        "COPY step_context.json.zip /tmp/step_context.json.zip",
        "RUN unzip -l /tmp/step_context.json.zip",
        "",
      ].join("\n");
      const files = { "actions.rb": `# custom ${nonce}\n` };
      await images.build(request(await context({ files, dockerfile })), () => {});
      const progress = collect();
      const image = await images.build(request(await context({ files, dockerfile, properties: { project: { changed: nonce } } })), progress.emit);
      assert.equal(image.reused, false);
      const state = (text: string) =>
        progress
          .vertices()
          .filter((vertex) => vertex.name.includes(text))
          .map((vertex) => vertex.state)
          .pop();
      assert.equal(state(`RUN echo ${nonce}`), "cached");
      assert.equal(state("COPY repo.tar"), "cached");
      assert.equal(state("COPY step_context.json.zip"), "completed");
      assert.equal(state("RUN unzip"), "completed");
    });

    it("builds a Dockerfile that copies the trust store again when the trust store changed, and reuses its image while it has not", async () => {
      const files = { "actions.rb": `# trust ${randomBytes(8).toString("hex")}\n` };
      const dockerfile = "ARG OPSCHAIN_BASE_RUNNER\nFROM ${OPSCHAIN_BASE_RUNNER}\nCOPY opschain-trust-store.tar /opt/opschain-trust-store.tar\n";
      const first = await images.build(request(await context({ files, dockerfile, trustStore: "CA one\n" })), () => {});
      const sameTrustStore = await images.build(request(await context({ files, dockerfile, trustStore: "CA one\n" })), () => {});
      const otherTrustStore = await images.build(request(await context({ files, dockerfile, trustStore: "CA two\n" })), () => {});
      assert.deepEqual([sameTrustStore.reused, sameTrustStore.imageId], [true, first.imageId]);
      assert.equal(otherTrustStore.reused, false, "a new trust store is a new image");
      assert.notEqual(otherTrustStore.imageId, first.imageId);
    });

    it("gives secret properties to RUN only as the env_context_zip secret, never to a layer or the config", async () => {
      const secret = `s3cret-${randomBytes(12).toString("hex")}`;
      const dockerfile = [
        "ARG OPSCHAIN_BASE_RUNNER",
        "FROM ${OPSCHAIN_BASE_RUNNER}",
        "COPY step_context.json.zip /opt/opschain/copied.zip",
        // Proves the secret was readable during the build, leaving only a count behind.
        `RUN --mount=type=secret,id=env_context_zip,target=/tmp/ctx.zip,uid=10001 unzip -p /tmp/ctx.zip | grep -c ${secret} > /opt/opschain/secret-seen`,
        "",
      ].join("\n");
      const image = await images.build(
        request(await context({ dockerfile, properties: { project: { opschain: { env: { TOKEN: secret } } } }, secrets: [secret] })),
        () => {},
      );
      const top = image.layerDirectories.at(-1)!;
      const seen = await run("cat", [join(top, "opt/opschain/secret-seen")]);
      assert.equal(seen.stdout.trim(), "1", "the RUN line read the secret from the mount");
      const grep = await run("grep", ["-rlF", secret, ...image.layerDirectories]);
      assert.equal(grep.code, 1, `the secret is in no layer: ${grep.stdout}`);
      const inspect = await run("/usr/bin/docker", ["--host", `unix://${stack.runDir}/docker.sock`, "image", "inspect", image.imageId]);
      assert.equal(inspect.code, 0);
      assert.ok(!inspect.stdout.includes(secret), "nor in the image config");
    });

    it("merges two identical builds in flight into one solve", async () => {
      const contextId = await context({});
      const solves = counting.solves;
      const [a, b] = await Promise.all([images.build(request(contextId), () => {}), images.build(request(contextId), () => {})]);
      assert.equal(counting.solves - solves, 1);
      assert.equal(a.imageId, b.imageId);
    });

    it("reads the base runner's digest from the registry once per recheck time, and builds on a tag pushed anew after it", async () => {
      const repository = "steprunner-test/moving-base";
      const tag = `t-${randomBytes(4).toString("hex")}`;
      const baseRunner = `${stack.registry}/${repository}:${tag}`;
      const registry = new RegistryClient(stack.registry);
      let baseAsked = 0;
      const counted: typeof registry = Object.assign(Object.create(registry), {
        manifest: (name: string, reference: string, signal?: AbortSignal) => {
          if (name === repository) baseAsked++;
          return registry.manifest(name, reference, signal);
        },
      });
      const recheckMs = 1500;
      const builder = new ImageBuilder({
        contexts: new ContextCache(provider, join(work, "cache")),
        buildkit: counting,
        images: docker,
        registry: counted,
        records: new ReuseRecords(join(work, "records-moving-base")),
        settings: { ...newImageBuilderSettings(), baseImageRecheckMs: recheckMs },
      });
      await baseRunnerInDockerd();
      await docker.tagImage(stack.baseRunner, `${stack.registry}/${repository}`, tag);
      const pushedFirst = await docker.pushImage(`${stack.registry}/${repository}`, tag);
      let pushedAgain: { digest: string } | undefined;
      try {
        const contextId = await context({});
        const built = await builder.build(request(contextId, { baseRunner }), () => {});
        const reused = await builder.build(request(contextId, { baseRunner, reuseOnly: true }), () => {});
        assert.deepEqual([reused.reused, reused.imageId, baseAsked], [true, built.imageId, 1], "one registry request for both builds");
        // The tag pushed anew, on another image (the one just built): a new base for the builds after the recheck time.
        await docker.tagImage(built.imageId, `${stack.registry}/${repository}`, tag);
        pushedAgain = await docker.pushImage(`${stack.registry}/${repository}`, tag);
        assert.notEqual(pushedAgain.digest, pushedFirst.digest);
        await new Promise((resolve) => setTimeout(resolve, recheckMs + 100));
        const afterRecheck = await builder
          .build(request(contextId, { baseRunner, reuseOnly: true }), () => {})
          .catch((error) => ConnectError.from(toConnectError(error)));
        assert.ok(afterRecheck instanceof ConnectError, "no image was built on the new base yet");
        assert.equal(afterRecheck.code, Code.NotFound);
        assert.equal(baseAsked, 2);
      } finally {
        await docker.removeImage(`${stack.registry}/${repository}:${tag}`).catch(() => {});
        for (const pushed of [pushedFirst, pushedAgain]) if (pushed) await registry.deleteManifest(repository, pushed.digest).catch(() => {});
      }
    });

    it("hands over through the registry: pushed, with the manifest's layers", async () => {
      const image = await images.build(request(await context({}), { handoff: "registry" }), () => {});
      assert.equal(image.handoff, "registry");
      assert.ok(image.reference.startsWith(`${stack.registry}/${STEPS_REPOSITORY}@sha256:`), image.reference);
      const { manifest } = await new RegistryClient(stack.registry).manifest(STEPS_REPOSITORY, image.manifestDigest);
      assert.deepEqual(
        image.layers.map((layer) => layer.digest),
        manifest.layers.map((layer) => layer.digest),
      );
      assert.ok(image.layers.every((layer) => /^sha256:/.test(layer.diffId)));
    });

    for (const [name, input, extra, expected] of [
      [
        "a Dockerfile syntax error, with its line",
        { dockerfile: "ARG OPSCHAIN_BASE_RUNNER\nFROM ${OPSCHAIN_BASE_RUNNER}\nNOTANINSTRUCTION x\n" },
        {},
        /line 3/,
      ],
      [
        "a failing RUN, with the command and the end of its output",
        { dockerfile: `ARG OPSCHAIN_BASE_RUNNER\nFROM \${OPSCHAIN_BASE_RUNNER}\nRUN echo boom-${randomBytes(4).toString("hex")} && exit 3\n` },
        {},
        /RUN .*exit 3.*failed[\s\S]*boom-/,
      ],
      ["a missing base image, naming it", {}, { baseRunner: `${stack.registry}/steprunner/no-such-runner:1` }, /steprunner\/no-such-runner:1/],
    ] as const) {
      it(`fails with FAILED_PRECONDITION for ${name}`, async () => {
        const failure = await images.build(request(await context(input), extra), () => {}).catch((error) => ConnectError.from(toConnectError(error)));
        assert.ok(failure instanceof ConnectError, "the build failed");
        assert.equal(failure.code, Code.FailedPrecondition, failure.message);
        assert.match(failure.message, expected);
      });
    }

    it("imports layers from the last pushed image when BuildKit has no local cache (inline cache)", async () => {
      const marker = randomBytes(8).toString("hex");
      const dockerfile = `ARG OPSCHAIN_BASE_RUNNER\nFROM \${OPSCHAIN_BASE_RUNNER}\nRUN echo ${marker} > /tmp/marker\nCOPY repo.tar /tmp/\n`;
      const pushed = await images.build(request(await context({ dockerfile }), { handoff: "registry" }), () => {});
      // Forget everything local: the images in dockerd and all of BuildKit's cache.
      await docker.removeImage(`${STEPS_REPOSITORY}:${pushed.contentKey.slice(7)}`);
      await docker.removeImage(`${stack.registry}/${STEPS_REPOSITORY}:${pushed.contentKey.slice(7)}`);
      await client.prune({ all: true });
      const progress = collect();
      const image = await images.build(request(await context({ dockerfile })), progress.emit);
      assert.equal(image.reused, false);
      const run = progress
        .vertices()
        .filter((vertex) => vertex.name.includes(`RUN echo ${marker}`))
        .pop();
      assert.equal(run?.state, "cached", "the RUN layer came from the registry's inline cache");
    });

    it("removes images past their TTL from dockerd and the registry, whose garbage collection frees their blobs", async () => {
      const marker = randomBytes(8).toString("hex");
      const contextId = await context({ dockerfile: `ARG OPSCHAIN_BASE_RUNNER\nFROM \${OPSCHAIN_BASE_RUNNER}\nRUN echo ${marker} > /tmp/marker\n` });
      const image = await images.build(request(contextId, { handoff: "registry" }), () => {});
      const registry = new RegistryClient(stack.registry);
      const topLayer = image.layers.at(-1)!.digest;
      const removed = await images.prune(0);
      assert.ok(removed.includes(image.contentKey));
      assert.equal(await docker.inspectImage(image.imageId), undefined, "gone from dockerd");
      await assert.rejects(registry.manifest(STEPS_REPOSITORY, image.manifestDigest), /404/);
      const gc = await run("deploy/local/registry.sh", ["gc"]);
      assert.equal(gc.code, 0, gc.stderr);
      const blob = await fetch(`http://${stack.registry}/v2/${STEPS_REPOSITORY}/blobs/${topLayer}`, { method: "HEAD" });
      assert.equal(blob.status, 404, "the layer's blob was collected");
      const rebuilt = await images.build(request(contextId), () => {});
      assert.equal(rebuilt.reused, false, "a pruned image is built again, not reused");
    });

    it("cancelled during a long RUN, leaves no process of the build running", async () => {
      const marker = `${1000 + Math.floor(Math.random() * 8000)}.${randomBytes(3).readUIntBE(0, 3)}`;
      const contextId = await context({ dockerfile: `ARG OPSCHAIN_BASE_RUNNER\nFROM \${OPSCHAIN_BASE_RUNNER}\nRUN sleep ${marker}\n` });
      const controller = new AbortController();
      const building = images.build(
        request(contextId),
        (event) => {
          if (event.kind === "progress" && event.events.some((e) => e.kind === "vertex" && e.name.includes("RUN sleep") && e.state === "started")) {
            setTimeout(() => controller.abort(), 500);
          }
        },
        controller.signal,
      );
      const failure = await building.catch((error) => ConnectError.from(toConnectError(error)));
      assert.ok(failure instanceof ConnectError);
      assert.equal(failure.code, Code.Canceled);
      let running = "";
      for (let i = 0; i < 50; i++) {
        running = (await run("pgrep", ["-af", `sleep ${marker}`])).stdout.trim();
        if (!running) break;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      assert.equal(running, "", "the RUN process was ended");
    });
  },
);
