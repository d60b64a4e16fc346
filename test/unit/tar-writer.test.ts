import assert from "node:assert/strict";
import { PassThrough, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { describe, it } from "node:test";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tar from "tar-stream";
import { writeRepoTar } from "../../services/context-service/core/repo-tar.js";
import type { LayerDirectory } from "../../services/context-service/core/repository-layers.js";
import { FIXED_MTIME, RUNNER_OWNER, TarWriter } from "../../services/context-service/core/tar-writer.js";

/** A body as long as a file that is never read to its end. */
async function* endless(): AsyncIterable<Uint8Array> {
  for (;;) {
    yield Buffer.alloc(64 * 1024);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

async function entriesOf(bytes: PassThrough): Promise<{ header: tar.Header; body: string }[]> {
  const extract = tar.extract();
  const reading = pipeline(bytes, extract as unknown as NodeJS.WritableStream);
  const entries: { header: tar.Header; body: string }[] = [];
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    entries.push({ header: entry.header, body: Buffer.concat(chunks).toString("utf8") });
  }
  await reading;
  return entries;
}

describe("TarWriter", () => {
  it("writes directories, symlinks and files (from a buffer or a stream) with the fixed time and the runner's owner", async () => {
    const destination = new PassThrough();
    const reading = entriesOf(destination);
    const writer = new TarWriter(destination);
    await writer.directory("dir");
    await writer.symlink("dir/link", "../file");
    await writer.file("dir/small", false, 2, Buffer.from("hi"));
    await writer.file(
      "dir/run",
      true,
      6,
      (async function* () {
        yield Buffer.from("str");
        yield Buffer.from("eam");
      })(),
    );
    await writer.finish();
    const entries = await reading;
    assert.deepEqual(
      entries.map(({ header, body }) => [header.name, header.type, header.mode, body]),
      [
        ["dir/", "directory", 0o755, ""],
        ["dir/link", "symlink", 0o777, ""],
        ["dir/small", "file", 0o644, "hi"],
        ["dir/run", "file", 0o755, "stream"],
      ],
    );
    for (const { header } of entries) {
      assert.equal(header.mtime?.getTime(), FIXED_MTIME.getTime());
      assert.equal(header.uid, RUNNER_OWNER.uid);
      assert.equal(header.gid, RUNNER_OWNER.gid);
    }
  });

  it("a repo.tar cancelled in the middle of a file fails that write and nothing else", async () => {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-repo-tar-"));
    try {
      await writeFile(join(dir, "big.bin"), Buffer.alloc(8 * 1024 * 1024));
      const controller = new AbortController();
      // A slow reader: the cancel comes while the file is still being read.
      const destination = new Writable({
        highWaterMark: 1024,
        write(_chunk, _encoding, callback) {
          controller.abort(new Error("the step was cancelled"));
          setTimeout(callback, 5);
        },
      });
      const layers: LayerDirectory[] = [{ name: "tree" as LayerDirectory["name"], identity: "t", path: dir }];
      await assert.rejects(writeRepoTar(layers, destination, controller.signal), { name: "AbortError" });
      // An entry's error that nobody hears would surface here, as an uncaught exception after the test.
      await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("fails the file being written when its destination fails", async () => {
    const destination = new Writable({
      write(_chunk, _encoding, callback) {
        callback(new Error("the disk is full"));
      },
    });
    const writer = new TarWriter(destination);
    await assert.rejects(writer.file("big", false, 1024 * 1024 * 1024, endless()), /disk is full/);
    await assert.rejects(writer.done, /disk is full/);
    await new Promise((resolve) => setTimeout(resolve, 50));
  });
});
