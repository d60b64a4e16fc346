import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { BuildProgress } from "../../services/step-service/steps/ports.js";
import { BuildLogMasker, SecretMasker } from "../../services/step-service/steps/secrets.js";

const chunk = (vertexDigest: string, text: string): BuildProgress => ({
  vertexes: [],
  statuses: [],
  logs: [{ vertexDigest, stream: "stdout", data: Buffer.from(text) }],
});
const text = (progress: BuildProgress | undefined) => (progress?.logs ?? []).map((log) => Buffer.from(log.data).toString()).join("");

describe("the build log masker", () => {
  const masker = () => new BuildLogMasker(new SecretMasker([{ owner: "project", properties: { token: "hunter2" } }], ["/project/token"]));

  it("masks a secret split between two chunks of the same vertex, holding the unfinished line", () => {
    const logs = masker();
    assert.equal(text(logs.mask(chunk("v1", "line one\nthe token is hun"))), "line one\n");
    assert.equal(text(logs.mask(chunk("v2", "other vertex\n"))), "other vertex\n");
    assert.equal(text(logs.mask(chunk("v1", "ter2, done\nrest"))), "the token is ***, done\n");
    assert.equal(text(logs.flush()), "rest");
    assert.equal(logs.flush(), undefined);
  });

  it("lets a vertex's unfinished line out, masked, when the vertex completes", () => {
    const logs = masker();
    logs.mask(chunk("v1", "no newline hunter2"));
    const completed: BuildProgress = {
      vertexes: [{ digest: "v1", number: 1, name: "", state: "completed", completedAtMs: 1, error: "" }],
      statuses: [],
      logs: [],
    };
    assert.equal(text(logs.mask(completed)), "no newline ***");
    assert.equal(logs.flush(), undefined);
  });

  it("passes progress through untouched when the step has no secrets", () => {
    const progress = chunk("v1", "partial");
    assert.equal(new BuildLogMasker(new SecretMasker([], [])).mask(progress), progress);
  });
});
