import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync } from "node:fs";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { readBytes, removeTree, writeTextFile } from "../../services/shared/files/small-files.js";

describe("removeTree", () => {
  let work: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), "steprunner-remove-tree-"));
  });
  after(() => rm(work, { recursive: true, force: true }));

  /** A step's directory as runc leaves it: a few directories and files. */
  async function stepLike(dir: string): Promise<void> {
    await mkdir(join(dir, "upper/opt/opschain/.mintpress"), { recursive: true });
    await mkdir(join(dir, "work/work"), { recursive: true });
    await mkdir(join(dir, "rootfs"));
    for (const file of ["config.json", "runc.log", "upper/opt/opschain/.mintpress/step_result.json"]) await writeFile(join(dir, file), "{}");
  }

  it("removes a small tree before it returns to the event loop", async () => {
    const dir = join(work, "small");
    await stepLike(dir);
    const removed = removeTree(dir);
    assert.equal(existsSync(dir), false, "gone synchronously");
    await removed;
  });

  it("removes a larger tree too, asynchronously beyond its first entries", async () => {
    const dir = join(work, "large");
    await stepLike(dir);
    await mkdir(join(dir, "upper/many"));
    await Promise.all(Array.from({ length: 300 }, (_, i) => writeFile(join(dir, "upper/many", `f${i}`), "x")));
    const removed = removeTree(dir);
    assert.equal(existsSync(dir), true, "not all of it at once");
    await removed;
    assert.equal(existsSync(dir), false);
  });

  it("takes a missing tree as removed, and removes a symlink, not what it points to", async () => {
    await removeTree(join(work, "missing"));
    const outside = join(work, "outside");
    await mkdir(outside);
    await writeFile(join(outside, "keep"), "x");
    const dir = join(work, "linked");
    await mkdir(dir);
    await symlink(outside, join(dir, "link"));
    await removeTree(dir);
    assert.equal(existsSync(dir), false);
    assert.equal(existsSync(join(outside, "keep")), true);
  });
});

describe("writeTextFile", () => {
  let work: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), "steprunner-write-text-"));
  });
  after(() => rm(work, { recursive: true, force: true }));

  it("writes a small file before it returns to the event loop, and a large one too, each with its mode", async () => {
    const small = join(work, "small.json");
    const written = writeTextFile(small, '{"a":1}', 0o640);
    assert.equal(readFileSync(small, "utf8"), '{"a":1}', "written synchronously");
    await written;
    const large = join(work, "large.json");
    const text = "x".repeat(2 * 1024 * 1024);
    await writeTextFile(large, text, 0o600);
    assert.equal(readFileSync(large, "utf8"), text);
    assert.deepEqual([statSync(small).mode & 0o777, statSync(large).mode & 0o777], [0o640, 0o600]);
  });
});

describe("readBytes", () => {
  let work: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), "steprunner-read-bytes-"));
  });
  after(() => rm(work, { recursive: true, force: true }));

  it("reads a small file, a large one, and says undefined for one that is not there", async () => {
    const small = join(work, "small.zip");
    await writeFile(small, "zip");
    const large = join(work, "large.zip");
    const text = "y".repeat(2 * 1024 * 1024);
    await writeFile(large, text);
    assert.equal((await readBytes(small, 3))?.toString("utf8"), "zip");
    assert.equal((await readBytes(large, text.length))?.toString("utf8"), text);
    assert.equal(await readBytes(join(work, "missing"), 3), undefined);
    assert.equal(await readBytes(join(work, "missing"), text.length), undefined);
  });
});
