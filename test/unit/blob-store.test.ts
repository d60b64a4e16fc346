import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readdirSync, readlinkSync } from "node:fs";
import { after, describe, it } from "node:test";
import { BlobStore } from "../../services/context-service/core/blob-store.js";

describe("BlobStore.putBuffer", () => {
  const dirs: string[] = [];
  after(() => Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true }))));

  it("writes bytes it does not keep yet under their digest, and only marks used the bytes it keeps", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-blobs-"));
    dirs.push(dir);
    const blobs = new BlobStore(join(dir, "cache"), 1 << 20);
    await blobs.init();
    const bytes = Buffer.from("FROM runner\n");
    const first = await blobs.putBuffer(bytes);
    assert.deepEqual(first, { digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}`, size: bytes.length });
    const written = await stat(blobs.path(first.digest));
    await new Promise((resolve) => setTimeout(resolve, 20));
    const again = await blobs.putBuffer(Buffer.from(bytes));
    const kept = await stat(blobs.path(again.digest));
    assert.deepEqual(again, first);
    assert.equal(kept.ino, written.ino, "the blob was not written again");
    assert.ok(kept.mtimeMs > written.mtimeMs, "the blob was marked used");
    assert.deepEqual(await readFile(blobs.path(first.digest)), bytes);
    assert.deepEqual(await readdir(join(dir, "cache", "tmp")), [], "no partial file is left");
  });
});

/** The files this process holds open under a directory. */
function openFilesUnder(dir: string): string[] {
  const paths: string[] = [];
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      const path = readlinkSync(`/proc/self/fd/${fd}`);
      if (path.startsWith(dir)) paths.push(path);
    } catch {
      // the descriptor that listed the directory
    }
  }
  return paths;
}

describe("BlobStore.put", () => {
  it("a producer that fails before it wrote anything leaves no file, and no file open", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-blobs-"));
    try {
      const blobs = new BlobStore(join(dir, "cache"), 1 << 20);
      await blobs.init();
      for (let i = 0; i < 3; i++) {
        await assert.rejects(
          blobs.put(async () => {
            throw new Error("a layer directory is gone");
          }),
          /directory is gone/,
        );
      }
      assert.deepEqual(openFilesUnder(dir), []);
      assert.deepEqual(await readdir(join(dir, "cache", "tmp")), [], "no partial file is left");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
