import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import type { BuiltStepImage, ImageBuilder, StepRequest } from "../../services/step-service/steps/ports.js";
import { ReusableImages } from "../../services/step-service/steps/reusable-images.js";
import { stepRequest } from "../support/step-request.js";

const request = (overrides: Partial<StepRequest> = {}): StepRequest => stepRequest({ stepId: "s1", ...overrides });

/** An image-service stand-in: counts calls, says one warning, and answers reusable until `until` (or not at all). */
function fakeImages(until: number | undefined, image: BuiltStepImage["image"] = { kind: "registry", reference: "r/ctx" }) {
  const calls: string[] = [];
  const images: ImageBuilder = {
    async build(contextId, _request, _onProgress, _signal, onWarning) {
      calls.push(contextId);
      onWarning?.(`warning for ${contextId}`);
      return { image, imageId: `image-of-${contextId}`, reused: calls.length > 1, ...(until === undefined ? {} : { reusableUntilMs: until }) };
    },
  };
  return { images, calls };
}

const signal = new AbortController().signal;
const noProgress = () => {};

describe("ReusableImages", () => {
  it("gives an answer again without a call while the image-service says it holds, with its warnings, as reused", async () => {
    let now = 1_000;
    const { images, calls } = fakeImages(6_000);
    const reusable = new ReusableImages(images, () => now);
    const first = await reusable.build("ctx-1", request(), noProgress, signal);
    assert.equal(first.answerKept, undefined);
    now = 5_999;
    const warnings: string[] = [];
    const again = await reusable.build("ctx-1", request({ stepId: "s2", action: "other" }), noProgress, signal, (message) => warnings.push(message));
    assert.deepEqual(calls, ["ctx-1"]);
    assert.equal(again.answerKept, true);
    assert.equal(again.reused, true);
    assert.equal(again.imageId, "image-of-ctx-1");
    assert.deepEqual(warnings, ["warning for ctx-1"]);
  });

  it("asks again once the time is up, for another context or network mode, and for a build without cache", async () => {
    let now = 1_000;
    const { images, calls } = fakeImages(6_000);
    const reusable = new ReusableImages(images, () => now);
    await reusable.build("ctx-1", request(), noProgress, signal);
    await reusable.build("ctx-2", request(), noProgress, signal);
    await reusable.build("ctx-1", request({ hostNetwork: true }), noProgress, signal);
    await reusable.build("ctx-1", request({ buildWithoutCache: true }), noProgress, signal);
    now = 6_000;
    await reusable.build("ctx-1", request(), noProgress, signal);
    assert.deepEqual(calls, ["ctx-1", "ctx-2", "ctx-1", "ctx-1", "ctx-1"]);
  });

  it("keeps nothing the image-service does not say it holds", async () => {
    const { images, calls } = fakeImages(undefined);
    const reusable = new ReusableImages(images, () => 1_000);
    await reusable.build("ctx-1", request(), noProgress, signal);
    await reusable.build("ctx-1", request(), noProgress, signal);
    const past = fakeImages(999);
    const reusablePast = new ReusableImages(past.images, () => 1_000);
    await reusablePast.build("ctx-1", request(), noProgress, signal);
    await reusablePast.build("ctx-1", request(), noProgress, signal);
    assert.equal(calls.length, 2);
    assert.equal(past.calls.length, 2);
  });

  it("asks again when the answer's layer directories have gone", async () => {
    const dir = mkdtempSync(join(tmpdir(), "reusable-images-"));
    try {
      const layer = join(dir, "layer");
      mkdirSync(layer);
      const { images, calls } = fakeImages(6_000, {
        kind: "layer-directories",
        imageId: "sha256:x",
        directories: [layer],
        config: { env: [], entrypoint: [], cmd: [], workingDir: "", user: "" },
      });
      const reusable = new ReusableImages(images, () => 1_000);
      await reusable.build("ctx-1", request(), noProgress, signal);
      assert.equal((await reusable.build("ctx-1", request(), noProgress, signal)).answerKept, true);
      rmSync(layer, { recursive: true });
      assert.equal((await reusable.build("ctx-1", request(), noProgress, signal)).answerKept, undefined);
      assert.equal(calls.length, 2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("gives a kept answer to no step that was cancelled", async () => {
    const { images } = fakeImages(6_000);
    const reusable = new ReusableImages(images, () => 1_000);
    await reusable.build("ctx-1", request(), noProgress, signal);
    const controller = new AbortController();
    controller.abort(new Error("cancelled"));
    await assert.rejects(reusable.build("ctx-1", request(), noProgress, controller.signal), /cancelled/);
  });
});
