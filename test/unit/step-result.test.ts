import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseStepResult } from "../../services/step-service/steps/result.js";
import { SecretMasker } from "../../services/step-service/steps/secrets.js";

describe("parseStepResult", () => {
  it("reads compatibility.md's shape", () => {
    const result = parseStepResult(
      JSON.stringify({
        step: { properties: { a: 1 } },
        properties_diffs: { project: [{ op: "add", path: "/a", value: 1 }] },
        child_step_definitions: { children: [{ action: "ns:next" }], child_execution_strategy: "parallel" },
        expected_step_tree: null,
      }),
    );
    assert.deepEqual(result, {
      properties: { a: 1 },
      propertiesDiffs: [{ owner: "project", operations: [{ op: "add", path: "/a", value: 1 }] }],
      children: [{ action: "ns:next" }],
      childExecutionStrategy: "parallel",
    });
  });

  it("says what is wrong", () => {
    assert.throws(() => parseStepResult("{oops"), /not JSON/);
    assert.throws(() => parseStepResult("[]"), /must be a JSON object/);
    assert.throws(() => parseStepResult(JSON.stringify({ properties_diffs: { project: [{ op: "frob", path: "/a" }] } })), /properties_diffs\.project\[0\]\.op/);
    assert.throws(() => parseStepResult(JSON.stringify({ properties_diffs: { project: [{ op: "add", path: "/a" }] } })), /needs a value/);
    assert.throws(() => parseStepResult(JSON.stringify({ child_step_definitions: { children: [{}] } })), /children\[0\]/);
    assert.throws(() => parseStepResult(JSON.stringify({ child_step_definitions: { child_execution_strategy: "random" } })), /sequential/);
  });
});

describe("SecretMasker", () => {
  it("masks the values secret pointers name, in text and in JSON", () => {
    const masker = new SecretMasker(
      [{ owner: "project", properties: { opschain: { env: { TOKEN: "abc123", PORT: 8080 } }, db: { password: "pw-longer" } } }],
      ["/project/opschain/env/TOKEN", "/project/db", "/project/missing"],
    );
    assert.equal(masker.text("token abc123 and pw-longer"), "token *** and ***");
    assert.deepEqual(masker.json({ nested: ["xabc123x"] }), { nested: ["x***x"] });
    assert.throws(() => new SecretMasker([], ["no-slash"]), /must start with/);
  });
});
