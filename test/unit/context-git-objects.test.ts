import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { inflateSync } from "node:zlib";
import { describe, it } from "node:test";
import { type LooseObject, looksIncompressible, readLooseObjects, storedZlib, storedZlibSize } from "../../services/context-service/core/git-objects.js";

async function collect(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part);
  return Buffer.concat(parts);
}

async function* chunks(data: Buffer, size: number): AsyncIterable<Buffer> {
  for (let offset = 0; offset < data.length; offset += size) yield data.subarray(offset, offset + size);
}

describe("stored zlib streams for big git objects", () => {
  const prefix = Buffer.from("blob 123\0");
  for (const length of [0, 1, 65535 - 9, 65535 - 8, 65535, 3 * 65535 - 9, 200_000]) {
    it(`inflates back, has the announced size and the same bytes however the input is split (${length} bytes)`, async () => {
      const content = randomBytes(length);
      const whole = await collect(storedZlib(prefix, chunks(content, Math.max(1, length))));
      assert.equal(whole.length, storedZlibSize(prefix.length + length));
      assert.deepEqual(inflateSync(whole), Buffer.concat([prefix, content]));
      for (const split of [1000, 65536, 7]) {
        if (length > 20_000 && split < 100) continue;
        assert.deepEqual(await collect(storedZlib(prefix, chunks(content, split))), whole, `split ${split}`);
      }
    });
  }
});

describe("loose objects of content deflate cannot shrink", () => {
  const text = Buffer.from("a line of a config file, with words that repeat: name = value\n".repeat(400));

  it("tells random or compressed bytes from text, base64 and tiny files", () => {
    assert.equal(looksIncompressible(randomBytes(16 * 1024)), true);
    assert.equal(looksIncompressible(Buffer.from(randomBytes(2000).toString("base64"))), false);
    assert.equal(looksIncompressible(text), false);
    assert.equal(looksIncompressible(randomBytes(300)), false);
  });

  it("stores random blobs and compresses text ones, both inflating to what git holds", async () => {
    const repo = await mkdtemp(join(tmpdir(), "git-objects-"));
    try {
      execFileSync("git", ["init", "-q", "--bare", repo]);
      const random = randomBytes(40_000);
      const ids: Record<string, Buffer> = {};
      for (const content of [random, text]) {
        const file = join(repo, "input");
        await writeFile(file, content);
        ids[execFileSync("git", ["--git-dir", repo, "hash-object", "-w", file], { encoding: "utf8" }).trim()] = content;
      }
      const objects: Array<{ object: LooseObject; bytes: Buffer }> = [];
      await readLooseObjects(repo, Object.keys(ids).sort(), async (object) => {
        objects.push({ object, bytes: Buffer.isBuffer(object.body) ? object.body : await collect(object.body) });
      });
      for (const { object, bytes } of objects) {
        const content = ids[object.oid]!;
        assert.equal(bytes.length, object.size);
        assert.deepEqual(inflateSync(bytes), Buffer.concat([Buffer.from(`blob ${content.length}\0`), content]));
        const stored = object.size === storedZlibSize(`blob ${content.length}\0`.length + content.length);
        assert.equal(stored, content === random, `${content === random ? "random" : "text"} blob ${stored ? "stored" : "compressed"}`);
      }
    } finally {
      await rm(repo, { recursive: true, force: true });
    }
  });
});
