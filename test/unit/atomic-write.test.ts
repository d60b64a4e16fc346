import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { writeAtomically, writeFileAtomic, writeSmallFileAtomic } from "../../services/shared/files/atomic-write.js";

describe("atomic writes", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-atomic-"));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it("replaces a file whole, with the mode asked for, and leaves no partial beside it", async () => {
    const path = join(dir, "record.json");
    await writeFileAtomic(path, "old");
    await writeFileAtomic(path, "new", { mode: 0o600 });
    assert.equal(await readFile(path, "utf8"), "new");
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.deepEqual(await readdir(dir), ["record.json"]);
  });

  it("replaces a small file whole before it returns, with its mode, and leaves no partial; a failed write leaves the old content", async () => {
    const path = join(dir, "manifest.json");
    writeSmallFileAtomic(path, "old");
    writeSmallFileAtomic(path, "new", { mode: 0o600 });
    assert.equal(await readFile(path, "utf8"), "new");
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.throws(() => writeSmallFileAtomic(join(dir, "missing-directory", "x.json"), "x"), /ENOENT/);
    assert.throws(() => writeSmallFileAtomic(join(dir, "manifest.json", "under-a-file"), "x"), /ENOTDIR/);
    assert.equal(await readFile(path, "utf8"), "new");
    assert.deepEqual(
      (await readdir(dir)).filter((name) => name.startsWith("manifest.json.partial")),
      [],
    );
  });

  it("keeps the old content and removes the partial (file or directory) when filling it fails", async () => {
    const path = join(dir, "kept");
    await writeFileAtomic(path, "old");
    await assert.rejects(
      writeAtomically(path, async (partial) => {
        await writeFileAtomic(partial, "half");
        throw new Error("disk full");
      }),
      /disk full/,
    );
    assert.equal(await readFile(path, "utf8"), "old");
    assert.deepEqual(
      (await readdir(dir)).filter((name) => name.startsWith("kept")),
      ["kept"],
    );
  });

  it("gives two concurrent writers of one path different partials", async () => {
    const path = join(dir, "raced");
    await Promise.all([writeFileAtomic(path, "a".repeat(100_000)), writeFileAtomic(path, "b".repeat(100_000))]);
    assert.match(await readFile(path, "utf8"), /^(a{100000}|b{100000})$/);
  });
});
