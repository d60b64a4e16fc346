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
      children: [
        {
          action: "ns:next",
          stepName: "",
          kind: "action",
          ignoreFailure: false,
          children: [],
          childExecutionStrategy: "sequential",
          waitSeconds: 0,
          inputArguments: [],
        },
      ],
      childExecutionStrategy: "parallel",
    });
  });

  it("reads built-in child steps (groups, wait and input steps) with their own children", () => {
    const result = parseStepResult(
      JSON.stringify({
        child_step_definitions: {
          children: [
            {
              action: "opschain_steps_1",
              type: "group",
              step_name: "Deploy apps",
              ignore_failure: true,
              child_execution_strategy: "parallel",
              children: [{ action: "opschain_wait_step_1", type: "wait", wait_seconds: 5, children: [{ action: "Hello world action" }] }],
            },
            { action: "opschain_input_step_1", type: "input", input_arguments: [{ name: "n", type: "integer", default_value: "10", valid_values: [1, "10"] }] },
          ],
        },
      }),
    );
    const [group, input] = result.children;
    assert.deepEqual([group?.kind, group?.stepName, group?.ignoreFailure, group?.childExecutionStrategy], ["group", "Deploy apps", true, "parallel"]);
    assert.deepEqual([group?.children[0]?.kind, group?.children[0]?.waitSeconds, group?.children[0]?.children[0]?.action], ["wait", 5, "Hello world action"]);
    assert.deepEqual(input?.inputArguments, [
      { name: "n", path: "/", guiName: "n", description: "", required: true, type: "integer", defaultValue: "10", validValues: [1, "10"], overwrite: false },
    ]);
  });

  it("says what is wrong", () => {
    assert.throws(() => parseStepResult("{oops"), /not JSON/);
    assert.throws(() => parseStepResult("[]"), /must be a JSON object/);
    assert.throws(() => parseStepResult(JSON.stringify({ properties_diffs: { project: [{ op: "frob", path: "/a" }] } })), /properties_diffs\.project\[0\]\.op/);
    assert.throws(() => parseStepResult(JSON.stringify({ properties_diffs: { project: [{ op: "add", path: "/a" }] } })), /needs a value/);
    assert.throws(() => parseStepResult(JSON.stringify({ child_step_definitions: { children: [{}] } })), /children\[0\]/);
    assert.throws(() => parseStepResult(JSON.stringify({ child_step_definitions: { child_execution_strategy: "random" } })), /sequential/);
    const child = (definition: object) => JSON.stringify({ child_step_definitions: { children: [definition] } });
    assert.throws(() => parseStepResult(child({ action: "x", type: "loop" })), /children\[0\]\.type must be one of action, group, wait, input/);
    assert.throws(() => parseStepResult(child({ action: "x", children: [{ action: "y" }] })), /only built-in steps .* declare children here/);
    assert.throws(() => parseStepResult(child({ action: "x", type: "group", wait_seconds: 3 })), /wait_seconds must be .* on a wait step only/);
    assert.throws(() => parseStepResult(child({ action: "x", type: "input", input_arguments: [] })), /input_arguments must be a non-empty array/);
    assert.throws(
      () => parseStepResult(child({ action: "x", type: "input", input_arguments: [{ name: "n", type: "integer", default_value: 1.5 }] })),
      /input argument n: default_value 1.5 is not a integer/,
    );
    let deep: object = { action: "leaf" };
    for (let depth = 0; depth < 40; depth++) deep = { action: `g${depth}`, type: "group", children: [deep] };
    assert.throws(() => parseStepResult(child(deep)), /may nest at most 32 deep/);
    const many = Array.from({ length: 1001 }, (_, index) => ({ action: `a${index}` }));
    assert.throws(() => parseStepResult(JSON.stringify({ child_step_definitions: { children: many } })), /at most 1000 child steps/);
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
