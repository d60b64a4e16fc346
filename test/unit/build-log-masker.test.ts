import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type BuildProgress, BuildProgressSchema, LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { BuildLogMasker, SecretMasker } from "../../services/step-service/steps/secrets.js";

const chunk = (vertexDigest: string, text: string) => create(BuildProgressSchema, { logs: [{ vertexDigest, stream: LogStream.STDOUT, data: Buffer.from(text) }] });
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
    const completed = create(BuildProgressSchema, { vertexes: [{ digest: "v1", completedAt: timestampFromMs(1) }] });
    assert.equal(text(logs.mask(completed)), "no newline ***");
    assert.equal(logs.flush(), undefined);
  });

  it("passes progress through untouched when the step has no secrets", () => {
    const progress = chunk("v1", "partial");
    assert.equal(new BuildLogMasker(new SecretMasker([], [])).mask(progress), progress);
  });
});
