import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ImageInputs } from "../../services/shared/image-inputs.js";
import { ImageSpeculation } from "../../services/step-service/steps/image-speculation.js";
import type { BuiltStepImage, ImageBuilder, ImageBuildOptions, StepRequest } from "../../services/step-service/steps/ports.js";
import { stepRequest } from "../support/step-request.js";

const request = (overrides: Partial<StepRequest> = {}): StepRequest =>
  stepRequest({
    stepId: "s1",
    repositoryUrl: "https://git.example/repo.git",
    properties: [{ owner: "project", properties: { a: 1 } }],
    repoFolder: "",
    ...overrides,
  });

/** An image builder that records each call and answers as told. */
function fakeImages(answer: (contextId: string) => Promise<BuiltStepImage>) {
  const calls: { contextId: string; options?: ImageBuildOptions; signal: AbortSignal }[] = [];
  const images: ImageBuilder = {
    build(contextId, _request, _onProgress, signal, onWarning, options) {
      calls.push({ contextId, options, signal });
      onWarning?.(`warning for ${contextId}`);
      return answer(contextId);
    },
  };
  return { images, calls };
}

const image = (contextId: string): BuiltStepImage => ({
  image: { kind: "registry", reference: `r/${contextId}` },
  imageId: `image-of-${contextId}`,
  reused: true,
});

/** Image inputs of a context of the default Dockerfile at one commit. */
const inputs = (overrides: Partial<ImageInputs> = {}): ImageInputs => ({
  gitRev: "main",
  gitSha: "a".repeat(40),
  repositoryOptions: { excludeGitHistory: false, honorExportIgnore: false },
  dockerfileDigest: "sha256:dockerfile",
  stepContextZipDigest: null,
  trustStoreDigest: null,
  ...overrides,
});

describe("ImageSpeculation", () => {
  it("guesses nothing for a request never seen, nor for a build without cache", () => {
    const { images, calls } = fakeImages(async (id) => image(id));
    const speculation = new ImageSpeculation(images);
    const signal = new AbortController().signal;
    assert.equal(speculation.guess(request(), signal), undefined);
    speculation.remember(request({ buildWithoutCache: true }), { contextId: "ctx-1" });
    assert.equal(speculation.guess(request({ buildWithoutCache: true }), signal), undefined);
    assert.equal(calls.length, 0);
  });

  it("asks, reuse only, for the image of the context a request alike in all but its id and action got last", async () => {
    const { images, calls } = fakeImages(async (id) => image(id));
    const speculation = new ImageSpeculation(images);
    speculation.remember(request(), { contextId: "ctx-1" });
    const guess = speculation.guess(request({ stepId: "s2", action: "other" }), new AbortController().signal);
    assert.equal(guess?.contextId, "ctx-1");
    assert.deepEqual(
      calls.map((call) => [call.contextId, call.options]),
      [["ctx-1", { reuseOnly: true }]],
    );
    assert.deepEqual(await guess!.take({ contextId: "ctx-1" }), { built: image("ctx-1"), warnings: ["warning for ctx-1"] });
  });

  it("abandons the guess when the step got another context, or no context", async () => {
    const { images, calls } = fakeImages(() => new Promise<never>(() => {}));
    const speculation = new ImageSpeculation(images);
    speculation.remember(request(), { contextId: "ctx-1" });
    const guess = speculation.guess(request(), new AbortController().signal)!;
    assert.equal(await guess.take({ contextId: "ctx-2" }), undefined);
    assert.ok(calls[0]!.signal.aborted, "the early request is cancelled");
    const another = speculation.guess(request(), new AbortController().signal)!;
    another.abandon();
    assert.ok(calls[1]!.signal.aborted);
  });

  it("answers undefined when the early request fails, and says why; a different request is not guessed", async () => {
    const failures: unknown[] = [];
    const { images } = fakeImages(async () => {
      throw new Error("not found");
    });
    const speculation = new ImageSpeculation(images, (error) => failures.push(error));
    speculation.remember(request(), { contextId: "ctx-1" });
    assert.equal(await speculation.guess(request(), new AbortController().signal)!.take({ contextId: "ctx-1" }), undefined);
    assert.deepEqual(
      failures.map((error) => (error as Error).message),
      ["not found"],
    );
    assert.equal(speculation.guess(request({ gitRev: "v2" }), new AbortController().signal), undefined);
  });

  it("guesses the context of the last request alike but for its properties, and takes its image for a context with the same image inputs", async () => {
    const { images, calls } = fakeImages(async (id) => image(id));
    const speculation = new ImageSpeculation(images);
    speculation.remember(request(), { contextId: "ctx-1", imageInputs: inputs() });
    const otherProperties = request({
      properties: [{ owner: "project", properties: { a: 2 } }],
      secretPointers: ["/project/a"],
      contextValues: { change: { id: "c2" } },
    });
    const guess = speculation.guess(otherProperties, new AbortController().signal);
    assert.equal(guess?.contextId, "ctx-1");
    assert.deepEqual(await guess!.take({ contextId: "ctx-2", imageInputs: inputs() }), { built: image("ctx-1"), warnings: ["warning for ctx-1"] });
    assert.equal(speculation.guess(request({ gitRev: "v2" }), new AbortController().signal), undefined, "another revision is not alike");
    assert.equal(calls.length, 1);
  });

  it("abandons the guess for a new context whose image inputs differ (a repository's own Dockerfile sees the properties), or are unknown", async () => {
    const { images, calls } = fakeImages(() => new Promise<never>(() => {}));
    const speculation = new ImageSpeculation(images);
    const custom = inputs({ stepContextZipDigest: "sha256:zip-1" });
    speculation.remember(request(), { contextId: "ctx-1", imageInputs: custom });
    const otherProperties = request({ properties: [{ owner: "project", properties: { a: 2 } }] });
    const guess = speculation.guess(otherProperties, new AbortController().signal)!;
    assert.equal(await guess.take({ contextId: "ctx-2", imageInputs: { ...custom, stepContextZipDigest: "sha256:zip-2" } }), undefined);
    assert.ok(calls[0]!.signal.aborted, "the early request is cancelled");
    const unknown = speculation.guess(otherProperties, new AbortController().signal)!;
    assert.equal(await unknown.take({ contextId: "ctx-3" }), undefined);
    assert.ok(calls[1]!.signal.aborted);
  });

  it("cancels the early request with the step", () => {
    const { images, calls } = fakeImages(() => new Promise<never>(() => {}));
    const speculation = new ImageSpeculation(images);
    speculation.remember(request(), { contextId: "ctx-1" });
    const step = new AbortController();
    speculation.guess(request(), step.signal);
    step.abort(new Error("cancelled"));
    assert.ok(calls[0]!.signal.aborted);
  });
});
