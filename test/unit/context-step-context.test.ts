import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, it } from "node:test";
import { unzipSync } from "fflate";
import {
  REDACTED,
  type StepContextInput,
  canonicalJson,
  checkStepContextInput,
  redactSecrets,
  stepContextDocument,
  zipStepContext,
} from "../../services/context-service/core/step-context.js";
import { ContextError } from "../../services/context-service/core/errors.js";

const input: StepContextInput = {
  gitRev: "main",
  gitSha: "a".repeat(40),
  properties: [
    { owner: "project", properties: { opschain: { env: { API_TOKEN: "secret", PLAIN: "x" } }, "a/b": { "c~d": 1 } } },
    { owner: "environment", properties: { zeta: 1, alpha: [1, { y: 2, x: 1 }] } },
  ],
  values: { change: { id: "c1" }, step: { id: "s1" }, user: { name: "ann" } },
};

describe("step_context.json", () => {
  it("has context (with git_rev, commit_sha and parent_order) and properties by owner", () => {
    const document = stepContextDocument(input) as any;
    assert.deepEqual(document.context.change, { id: "c1", git_rev: "main", commit_sha: "a".repeat(40) });
    assert.deepEqual(document.context.parent_order, ["project", "environment"]);
    assert.equal(document.properties.project.opschain.env.PLAIN, "x");
  });

  it("is written with every object's keys sorted", () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [{ z: 1, y: 2 }], c: null } }), '{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}');
  });

  it("redacts what the JSON pointers name (with ~0 and ~1 escapes) and reports pointers that name nothing", () => {
    const document = stepContextDocument(input);
    const { redacted, unmatched } = redactSecrets(document, ["/project/opschain/env/API_TOKEN", "/project/a~1b/c~0d", "/project/opschain/env/NOPE"]);
    const properties = (redacted as any).properties;
    assert.equal(properties.project.opschain.env.API_TOKEN, REDACTED);
    assert.equal(properties.project["a/b"]["c~d"], REDACTED);
    assert.equal(properties.project.opschain.env.PLAIN, "x");
    assert.deepEqual(unmatched, ["/project/opschain/env/NOPE"]);
    assert.equal((document as any).properties.project.opschain.env.API_TOKEN, "secret", "the full document is untouched");
  });

  it("zips to the same bytes every time and in every time zone", async () => {
    const document = stepContextDocument(input);
    const here = zipStepContext(document);
    assert.deepEqual(zipStepContext(structuredClone(document)), here);
    assert.deepEqual(JSON.parse(Buffer.from(unzipSync(here)["step_context.json"]!).toString()), JSON.parse(canonicalJson(document)));
    const module = fileURLToPath(new URL("../../services/context-service/core/step-context.js", import.meta.url));
    const script = `import(${JSON.stringify(module)}).then((m) => process.stdout.write(m.zipStepContext(${JSON.stringify(document)}).toString("hex")))`;
    for (const tz of ["Pacific/Kiritimati", "America/Los_Angeles"]) {
      const { stdout } = await promisify(execFile)(process.execPath, ["-e", script], { env: { ...process.env, TZ: tz } });
      assert.equal(stdout, here.toString("hex"), tz);
    }
  });

  it("refuses bad owners, oversized properties, bad env vars and malformed pointers", () => {
    const limits = { maxPropertiesBytes: 100 };
    const refuse = (properties: any, pointers: string[] = [], pattern: RegExp) =>
      assert.throws(
        () => checkStepContextInput({ ...input, properties }, pointers, limits),
        (error: unknown) => error instanceof ContextError && error.kind === "invalid-argument" && pattern.test(error.message),
      );
    refuse([{ owner: "Project", properties: {} }], [], /^properties\[0\]\.owner: must be .*, got "Project"$/);
    refuse(
      [
        { owner: "p", properties: {} },
        { owner: "p", properties: {} },
      ],
      [],
      /^properties\[1\]\.owner: must differ from the owners before it, got "p"$/,
    );
    refuse([{ owner: "p", properties: { x: "y".repeat(200) } }], [], /^properties: must be at most 100 bytes/);
    refuse([{ owner: "p", properties: { opschain: { env: ["A"] } } }], [], /^properties\[0\]\.properties\.opschain\.env: must be an object/);
    refuse(
      [{ owner: "p", properties: { opschain: { env: { "1BAD": "x" } } } }],
      [],
      /^properties\[0\]\.properties\.opschain\.env: must have environment variable names .*, got "1BAD"$/,
    );
    refuse([], ["no-slash"], /^secret_pointers\[0\]: must be a JSON pointer/);
    refuse([], ["/bad~2escape"], /^secret_pointers\[0\]: must be a JSON pointer/);
    checkStepContextInput(
      { ...input, properties: [{ owner: "p", properties: { opschain: { env: { A: "1", B: 2, C: true } } } }] },
      ["/p/opschain/env/A"],
      limits,
    );
  });
});
