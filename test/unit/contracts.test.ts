import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { describe, it } from "node:test";
import { ROOT, run } from "../support/stack.js";

const BUF = join(ROOT, "node_modules/.bin/buf");
// buf generate runs the protoc-gen-es plugin from the project's own dependencies.
const withPlugins = { env: { PATH: `${join(ROOT, "node_modules/.bin")}:${process.env.PATH}` } };

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

describe("protobuf contracts", () => {
  it("pass buf lint (STANDARD for steprunner.*; the wire module keeps upstream names)", async () => {
    const result = await run(BUF, ["lint"]);
    assert.equal(result.code, 0, result.stdout + result.stderr);
  });

  it("match the generated code in gen/ (run `npm run generate` after changing a .proto)", async () => {
    const out = await mkdtemp(join(tmpdir(), "steprunner-gen-"));
    try {
      const result = await run(BUF, ["generate", "--output", out], withPlugins);
      assert.equal(result.code, 0, result.stderr);
      const fresh = join(out, "gen");
      const committed = join(ROOT, "gen");
      const [freshFiles, committedFiles] = await Promise.all([listFiles(fresh), listFiles(committed)]);
      assert.deepEqual(committedFiles, freshFiles, "gen/ has other files than buf generate writes");
      for (const file of freshFiles) {
        const [a, b] = await Promise.all([readFile(join(fresh, file), "utf8"), readFile(join(committed, file), "utf8")]);
        assert.equal(b, a, `gen/${file} is stale`);
      }
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });

  it("have no breaking change against main", async (t) => {
    const main = await run("git", ["rev-parse", "--verify", "--quiet", "main:proto/steprunner"]);
    if (main.code !== 0) return t.skip("main has no steprunner protos yet");
    const result = await run(BUF, ["breaking", "--against", ".git#branch=main"]);
    assert.equal(result.code, 0, result.stdout + result.stderr);
  });
});
