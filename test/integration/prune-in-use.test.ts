import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { ContextCache } from "../../services/image-service/core/context-cache.js";
import { ImageBuilder } from "../../services/image-service/core/image-builder.js";
import { ReuseRecords } from "../../services/image-service/core/reuse-records.js";
import { DockerApi } from "../../services/image-service/docker/docker-api.js";
import { ProcMountedLayers } from "../../services/image-service/docker/overlay-mounts.js";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";
import { LocalContextProvider } from "../support/contexts.js";
import { needsDockerd, stack } from "../support/stack.js";
import { runtimeParts, testConfig } from "../support/step-service.js";

const STEPS_REPOSITORY = "steprunner-test/prune-in-use";

/**
 * Defect 3 of issue 15, on the real dockerd, BuildKit and runc: with the layer-store hand-off a running step's
 * overlayfs has dockerd's overlay2 directories as lower layers, so a prune must not remove its image then.
 * The hold after a hand-off is 0 here: the mount alone keeps the image.
 */
describe("pruning step images while a step runs on one (layer-store hand-off)", needsDockerd("the layer-store hand-off mounts its layer directories"), () => {
  let work: string;
  let client: BuildKitClient;
  let docker: DockerApi;
  let images: ImageBuilder;
  let provider: LocalContextProvider;

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "prune-in-use-"));
    await mkdir(join(work, "contexts"));
    client = new BuildKitClient(stack.buildkitAddr);
    docker = new DockerApi(`${stack.runDir}/docker.sock`);
    provider = new LocalContextProvider(join(work, "contexts"));
    images = new ImageBuilder({
      contexts: new ContextCache(provider, join(work, "cache")),
      buildkit: { build: (build, onStatus, signal) => buildDockerfile(client, build, onStatus, signal) },
      images: docker,
      registry: new RegistryClient(stack.registry),
      records: new ReuseRecords(join(work, "records")),
      settings: {
        defaultBaseRunner: stack.baseRunner,
        version: "0.1.0",
        stepsRepository: STEPS_REPOSITORY,
        defaultHandoff: "layer-store",
        reuseTtlMs: 3_600_000,
        maxConcurrentBuilds: 1,
        transportAttempts: 1,
        inUseHoldMs: 0,
      },
      mountedLayers: new ProcMountedLayers(),
    });
  });

  after(async () => {
    client.close();
    await rm(work, { recursive: true, force: true });
  });

  it("keeps the image while the step runs on its directories, and removes it once the step has ended", async () => {
    const marker = randomBytes(8).toString("hex");
    // A layer of its own (the marker), which dockerd deletes with the image: the top of the step's lower layers.
    const contextId = await provider.add({
      files: { "actions.rb": `task :hello do puts "hello" end\n` },
      properties: {},
      dockerfile: `ARG OPSCHAIN_BASE_RUNNER\nFROM \${OPSCHAIN_BASE_RUNNER}\nRUN echo ${marker} > /tmp/marker\n`,
      defaultDockerfile: false,
    });
    const built = await images.build({ contextId, baseRunner: "", network: "none", buildWithoutCache: false, handoff: "layer-store" }, () => {});
    assert.ok(built.layerDirectories.length > 0);

    const config = await testConfig();
    const { materialiser, runtime } = await runtimeParts(config);
    const rootfs = await materialiser.materialise(
      { kind: "layer-directories", imageId: built.imageId, directories: built.layerDirectories, config: { ...built.config } },
      new AbortController().signal,
    );
    const output: string[] = [];
    let started!: () => void;
    const running = new Promise<void>((resolve) => (started = resolve));
    let step: ReturnType<typeof runtime.run> | undefined;
    try {
      step = runtime.run({
        stepId: `prune-in-use-${marker}`,
        image: rootfs,
        // Reads the image's files after the prune, through the overlay's lower layers.
        args: ["sh", "-c", "echo started; sleep 3; cat /tmp/marker"],
        env: {},
        limits: config.defaultLimits,
        hostNetwork: false,
        binds: [],
        userDirs: [],
        resultPath: "opt/opschain/none.json",
        timeoutMs: 60_000,
        onOutput: (_stream, text) => {
          output.push(text);
          if (text === "started") started();
        },
        onStarted: () => {},
        signal: new AbortController().signal,
      });
      await running;
      assert.deepEqual(await images.prune(0), [], "an image under a running step is not removed");
      assert.ok(await docker.inspectImage(built.imageId), "dockerd still has the image");
      const exit = await step;
      assert.equal(exit.exitCode, 0, output.join("\n"));
      assert.deepEqual(output, ["started", marker]);
    } finally {
      // A failed assertion must not leave the step running over the directories the test removes.
      await step?.catch(() => undefined);
      rootfs.release();
      await rm(config.stateDir, { recursive: true, force: true });
    }
    assert.deepEqual(await images.prune(0), [built.contentKey], "once the step has ended, the prune removes it");
    assert.equal(await docker.inspectImage(`${STEPS_REPOSITORY}:${built.contentKey.slice(7)}`), undefined);
  });
});
