import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { inflateSync } from "node:zlib";
import { describe, it } from "node:test";
import { storedZlib, storedZlibSize } from "../../services/context-service/core/git-objects.js";

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
