import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { gzipSync } from "node:zlib";
import tar from "tar-stream";
import { createLogger } from "../../services/shared/log.js";
import { type LayerBlob, LayerStore } from "../../services/step-service/images/layer-store.js";

interface Entry {
  name: string;
  type?: "file" | "directory" | "symlink";
  content?: string;
  linkname?: string;
  uid?: number;
  mode?: number;
}

async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const entry of entries) {
    const header = {
      name: entry.name,
      type: entry.type ?? "file",
      uid: entry.uid ?? 0,
      gid: entry.uid ?? 0,
      mode: entry.mode ?? 0o644,
      linkname: entry.linkname,
    };
    pack.entry(header, entry.content ?? "");
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack as unknown as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks);
}

function blobOf(tarBytes: Buffer, counter?: { opened: number }): LayerBlob {
  const gz = gzipSync(tarBytes);
  return {
    diffId: `sha256:${createHash("sha256").update(tarBytes).digest("hex")}`,
    compression: "gzip",
    async open() {
      if (counter) counter.opened++;
      return Readable.from([gz.subarray(0, 10), gz.subarray(10)]);
    },
  };
}

describe("LayerStore", () => {
  let root: string;
  let store: LayerStore;
  const signal = new AbortController().signal;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), "steprunner-layers-"));
    store = new LayerStore(root, 1024 * 1024, createLogger("test", {}, { quiet: true }));
    await store.init();
  });
  after(() => rm(root, { recursive: true, force: true }));

  it("unpacks files, owners and modes, and turns whiteouts and opaque directories into overlayfs form", async () => {
    const layer = await tarOf([
      { name: "etc/", type: "directory", mode: 0o755 },
      { name: "etc/app.conf", content: "x=1\n", uid: 10001, mode: 0o640 },
      { name: "etc/link", type: "symlink", linkname: "app.conf" },
      { name: "etc/.wh.removed", content: "" },
      { name: "var/cache/.wh..wh..opq", content: "" },
    ]);
    const [dir] = await store.acquire([blobOf(layer)], signal);
    const conf = await stat(join(dir!, "etc/app.conf"));
    assert.equal(conf.uid, 10001);
    assert.equal(conf.mode & 0o777, 0o640);
    assert.equal(await readFile(join(dir!, "etc/app.conf"), "utf8"), "x=1\n");
    const whiteout = await stat(join(dir!, "etc/removed"));
    assert.ok(whiteout.isCharacterDevice() && whiteout.rdev === 0, "a whiteout is a 0/0 character device");
    await assert.rejects(stat(join(dir!, "etc/.wh.removed")));
    assert.equal(execFileSync("getfattr", ["--only-values", "-n", "trusted.overlay.opaque", join(dir!, "var/cache")], { encoding: "utf8" }), "y");
  });

  it("unpacks a layer once, even when asked for it concurrently", async () => {
    const counter = { opened: 0 };
    const blob = blobOf(await tarOf([{ name: "shared.txt", content: "shared" }]), counter);
    const before = (await store.stats()).unpacked;
    const [a, b] = await Promise.all([store.acquire([blob], signal), store.acquire([blob], signal)]);
    assert.deepEqual(a, b);
    await store.acquire([blob], signal);
    assert.equal(counter.opened, 1);
    assert.equal((await store.stats()).unpacked, before + 1);
  });

  it("survives two unpacks of one layer racing to finish (a lookup that missed both)", async () => {
    const blob = blobOf(await tarOf([{ name: "raced.txt", content: "raced" }]));
    // A second store on the same root cannot see the first one's unpack in flight, as a request whose
    // lookup was still pending could not: both unpack, and the second rename finds the layer there.
    const other = new LayerStore(root, 1024 * 1024, createLogger("test", {}, { quiet: true }));
    const [a, b] = await Promise.all([store.acquire([blob], signal), other.acquire([blob], signal)]);
    assert.deepEqual(a, b);
    assert.equal(await readFile(join(a[0]!, "raced.txt"), "utf8"), "raced");
    assert.deepEqual(await readdir(join(root, "tmp")), [], "the loser's staging directory is gone");
  });

  it("refuses a layer whose tar does not match its diff_id, leaving nothing behind", async () => {
    const blob = { ...blobOf(await tarOf([{ name: "a", content: "a" }])), diffId: `sha256:${"0".repeat(64)}` };
    await assert.rejects(store.acquire([blob], signal), /unpacked to a tar with digest/);
    assert.deepEqual(await readdir(join(root, "tmp")), []);
  });

  it("fails the unpack, and nothing else, when the blob breaks off in the middle of a file", async () => {
    // Seen in CI: a registry stopped mid-pull took the step-service down with an unhandled error of the tar entry
    // being written. The break comes right after the entry's header, while the unpacker is still making its parents.
    const layer = await tarOf([{ name: "deep/er/big.bin", content: "x".repeat(64 * 1024) }]);
    const broken: LayerBlob = {
      diffId: `sha256:${createHash("sha256").update(layer).digest("hex")}`,
      compression: "none",
      async open() {
        return new Readable({
          read() {
            this.push(layer.subarray(0, 512 + 1024));
            setImmediate(() => this.destroy(new Error("blob broke off: terminated")));
          },
        });
      },
    };
    await assert.rejects(store.acquire([broken], signal), /broke off/);
    assert.deepEqual(await readdir(join(root, "tmp")), [], "the staging directory is gone");
  });

  it("keeps entries inside the layer: .. stops at its root, and no entry is written through a symlink", async () => {
    const [dir] = await store.acquire([blobOf(await tarOf([{ name: "../../climbed", content: "x" }]))], signal);
    assert.equal(await readFile(join(dir!, "climbed"), "utf8"), "x");
    const outside = await mkdtemp(join(tmpdir(), "steprunner-outside-"));
    try {
      const evil = await tarOf([
        { name: "evil", type: "symlink", linkname: outside },
        { name: "evil/planted", content: "x" },
      ]);
      await assert.rejects(store.acquire([blobOf(evil)], signal), /goes through a symlink/);
      assert.deepEqual(await readdir(outside), []);
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  it("collects unheld layers, least recently used first, down to its cap", async () => {
    const big = (name: string) => tarOf([{ name, content: "z".repeat(400 * 1024) }]);
    const held = blobOf(await big("held"));
    const old = blobOf(await big("old"));
    const recent = blobOf(await big("recent"));
    await store.acquire([held], signal);
    await store.acquire([old], signal);
    store.release([old.diffId]);
    await new Promise((resolve) => setTimeout(resolve, 5));
    await store.acquire([recent], signal);
    store.release([recent.diffId]);
    const removed = await store.collect();
    assert.ok(removed.includes(old.diffId), "the least recently used unheld layer went");
    assert.ok(!removed.includes(held.diffId), "a held layer stays");
    assert.ok((await store.stats()).totalBytes <= 1024 * 1024);
  });

  it("knows its layers after a restart from their metas, and reuses them without unpacking again", async () => {
    const blob = blobOf(await tarOf([{ name: "survives-restart", content: "r".repeat(1000) }]));
    await store.acquire([blob], signal);
    store.release([blob.diffId]);
    const before = await store.stats();
    const restarted = new LayerStore(root, 1024 * 1024, createLogger("test", {}, { quiet: true }));
    await restarted.init();
    assert.deepEqual({ ...(await restarted.stats()), unpacked: 0 }, { ...before, unpacked: 0 });
    const counter = { opened: 0 };
    await restarted.acquire([{ ...blob, open: blobOf(Buffer.alloc(0), counter).open }], signal);
    assert.equal(counter.opened, 0, "a layer on disk is not fetched again");
    restarted.release([blob.diffId]);
  });

  it("keeps a shared unpack going when the step that started it is cancelled, for the others waiting for it", async () => {
    const bytes = await tarOf([{ name: "shared-unpack", content: "s" }]);
    const gz = gzipSync(bytes);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const blob: LayerBlob = {
      diffId: `sha256:${createHash("sha256").update(bytes).digest("hex")}`,
      compression: "gzip",
      async open() {
        return Readable.from(
          (async function* () {
            yield gz.subarray(0, 10);
            await gate;
            yield gz.subarray(10);
          })(),
        );
      },
    };
    const first = new AbortController();
    const second = new AbortController();
    const cancelled = store.acquire([blob], first.signal);
    const waiting = store.acquire([blob], second.signal);
    await new Promise((resolve) => setTimeout(resolve, 20));
    first.abort(new Error("the first step was cancelled"));
    await assert.rejects(cancelled);
    release();
    const [dir] = await waiting;
    assert.equal(await readFile(join(dir!, "shared-unpack"), "utf8"), "s");
    store.release([blob.diffId]);
  });
});
