import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { type BuiltImage, ImageHandoff, ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { CLI, ROOT, run, stack } from "../support/stack.js";

describe("BuildImage over gRPC, from a context the context-service prepared (the running services)", () => {
  let work: string;
  let repository: string;
  const contexts = serviceTransport(stack.contextAddr, {});
  const images = serviceTransport(stack.imageAddr, {});

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "build-service-test-"));
    repository = join(work, "sample");
    const made = await run(join(ROOT, "deploy/sample/make-sample-repo.sh"), [repository]);
    assert.equal(made.code, 0, made.stderr);
  });
  after(async () => {
    contexts.close();
    images.close();
    await rm(work, { recursive: true, force: true });
  });

  async function build(
    gitRev: string,
    properties: Record<string, unknown>,
    handoff = ImageHandoff.UNSPECIFIED,
  ): Promise<{ image: BuiltImage; progressEvents: number }> {
    const { context } = await createClient(ContextService, contexts.transport).prepareContext({
      repositoryUrl: repository,
      gitRev,
      properties: Object.entries(properties).map(([owner, values]) => ({ owner, properties: values as never })),
    });
    let progressEvents = 0;
    for await (const response of createClient(ImageService, images.transport).buildImage({ contextId: context!.contextId, handoff })) {
      if (response.event.case === "progress") progressEvents++;
      if (response.event.case === "image") return { image: response.event.value, progressEvents };
    }
    throw new Error("the build stream ended without an image");
  }

  it("builds the default Dockerfile's image, then reuses it, also when only the properties change", async () => {
    const first = await build("main", { project: { greeting: "one" } });
    assert.match(first.image.imageId, /^sha256:/);
    assert.equal(first.image.config?.user, "opschain");
    if (stack.buildkit === "dockerd") {
      assert.equal(first.image.handoff, ImageHandoff.LAYER_STORE);
      assert.ok(first.image.layerDirectories.length > 0);
    } else {
      // A standalone buildkitd pushes the image: the registry is where the step-service finds it.
      assert.equal(first.image.handoff, ImageHandoff.REGISTRY);
      assert.ok(first.image.reference.startsWith(`${stack.registry}/steprunner/steps@sha256:`), first.image.reference);
    }
    const again = await build("main", { project: { greeting: "two" } });
    assert.equal(again.image.reused, true);
    assert.equal(again.image.imageId, first.image.imageId);
    assert.equal(again.progressEvents, 0, "a reused image needs no build");
  });

  it("counts built and reused images in the image-service's Prometheus metrics", async () => {
    const text = await (await fetch(`http://${stack.imageAddr}/metrics`)).text();
    const count = (outcome: string) =>
      Number(new RegExp(`^steprunner_image_builds_seconds_count\\{[^}]*outcome="${outcome}"[^}]*\\} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
    // The two image requests of the test before, built or (on a machine that ran it before) reused.
    assert.ok(count("built") + count("reused") >= 2, `counted: ${count("built")} built, ${count("reused")} reused`);
    assert.ok(count("reused") >= 1, "the second request reused the image");
    assert.match(text, /^steprunner_image_build_queue_depth\{[^}]*\} 0$/m);
  });

  it("builds the custom .mintpress/Dockerfile of a branch, and hands it over through the registry", async () => {
    const { image } = await build("custom-dockerfile", {}, ImageHandoff.REGISTRY);
    assert.equal(image.handoff, ImageHandoff.REGISTRY);
    assert.ok(image.reference.startsWith(`${stack.registry}/steprunner/steps@sha256:`), image.reference);
    assert.ok(image.layers.length >= 3 && image.layers.every((layer) => layer.digest.startsWith("sha256:")));
  });

  it("puts the image in the registry again when the registry lost its manifest", async () => {
    const { image: pushed } = await build("custom-dockerfile", {}, ImageHandoff.REGISTRY);
    const [, repository, digest] = /^[^/]+\/(.+)@(sha256:[0-9a-f]{64})$/.exec(pushed.reference)!;
    const deleted = await fetch(`http://${stack.registry}/v2/${repository}/manifests/${digest}`, { method: "DELETE" });
    assert.equal(deleted.status, 202, "the registry deleted the manifest");
    const { image: again } = await build("custom-dockerfile", {}, ImageHandoff.REGISTRY);
    // dockerd still holds the image and pushes it again; for a standalone buildkitd the registry is the image
    // store, so the image is built again and pushed (its layers are BuildKit's cached ones only while BuildKit still
    // has them: a RUN run again writes new times).
    assert.equal(again.reused, stack.buildkit === "dockerd");
    if (stack.buildkit === "dockerd") assert.equal(again.imageId, pushed.imageId);
    const manifest = await fetch(`http://${stack.registry}/v2/${repository}/manifests/${again.manifestDigest}`, {
      method: "HEAD",
      headers: { accept: "application/vnd.docker.distribution.manifest.v2+json" },
    });
    assert.equal(manifest.status, 200, "the manifest is in the registry again");
  });

  it("steprunner build shows the progress and names the image", async () => {
    const result = await run("node", [
      CLI,
      "build",
      "--repo",
      repository,
      "--rev",
      "v1",
      "--no-cache",
      "--context-addr",
      stack.contextAddr,
      "--image-addr",
      stack.imageAddr,
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /^GIT_SHA [0-9a-f]{40}$/m);
    assert.match(result.stderr, /^#\d+ \[.*\] COPY --chown=10001:10001 changes\/ \/opt\/opschain\/$/m);
    assert.match(
      result.stdout,
      stack.buildkit === "dockerd" ? /^built sha256:[0-9a-f]{64}$/m : /^built sha256:[0-9a-f]{64} \(\S+\/steprunner\/steps@sha256:[0-9a-f]{64}\)$/m,
    );
  });
});
