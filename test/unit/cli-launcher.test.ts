import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFile, mkdir, mkdtemp, readdir, rm, stat, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

// The bundled CLI as the build made it (npm run build): the launcher and the program, copied with the layout they
// need (package.json three folders up gives the version) into a folder without a code cache.
const BUNDLE = fileURLToPath(new URL("../../services/cli-bundle/", import.meta.url));
const PACKAGE_JSON = fileURLToPath(new URL("../../../package.json", import.meta.url));

function cli(dir: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(dir, "steprunner.cjs"), ...args], (error, stdout, stderr) =>
      resolve({ code: error ? Number(error.code) : 0, stdout, stderr }),
    );
  });
}

const caches = async (dir: string) => (await readdir(join(dir, ".code-cache")).catch(() => [] as string[])).sort();

describe("the bundled CLI's launcher (a V8 code cache per command)", () => {
  let root: string;
  let dir: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "steprunner-launcher-"));
    dir = join(root, "dist/services/cli-bundle");
    await mkdir(dir, { recursive: true });
    await copyFile(PACKAGE_JSON, join(root, "package.json"));
    for (const file of ["steprunner.cjs", "steprunner-program.cjs"]) await copyFile(join(BUNDLE, file), join(dir, file));
  });
  after(() => rm(root, { recursive: true, force: true }));

  it("writes a command's cache on its first run and reads it, unchanged, on the next", async () => {
    const first = await cli(dir, ["--help"]);
    assert.equal(first.code, 0, first.stderr);
    const [cache, ...others] = await caches(dir);
    assert.match(cache ?? "", /^help-v\d+\.\d+\.\d+-\d+-\d+\.bin$/);
    assert.deepEqual(others, []);
    const written = await stat(join(dir, ".code-cache", cache!));
    assert.ok(written.size > 10_000, "a cache holds the compiled code");

    const second = await cli(dir, ["--help"]);
    assert.equal(second.stdout, first.stdout);
    // V8 accepted it: a rejected cache would have been written again
    assert.equal((await stat(join(dir, ".code-cache", cache!))).mtimeMs, written.mtimeMs);
  });

  it("replaces a cache V8 rejects, and the command runs as usual", async () => {
    const [cache] = await caches(dir);
    await writeFile(join(dir, ".code-cache", cache!), "not a code cache");
    const run = await cli(dir, ["--help"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /Usage: steprunner <command>/);
    assert.ok((await stat(join(dir, ".code-cache", cache!))).size > 10_000);
  });

  it("keeps no cache for an unknown command or a command's --help (which compile little of the command)", async () => {
    assert.equal((await cli(dir, ["nosuch"])).code, 2);
    assert.equal((await cli(dir, ["run", "--help"])).code, 0);
    assert.deepEqual(
      (await caches(dir)).map((name) => name.split("-")[0]),
      ["help"],
    );
  });

  it("does not use a cache made for an earlier build of the program, and drops it", async () => {
    const [before] = await caches(dir);
    const later = new Date(Date.now() + 5_000);
    await utimes(join(dir, "steprunner-program.cjs"), later, later);
    assert.equal((await cli(dir, ["--help"])).code, 0);
    const after = await caches(dir);
    assert.equal(after.length, 1);
    assert.notEqual(after[0], before);
  });
});
