import { once } from "node:events";
import { zlibSync } from "fflate";
import { spawnGit } from "./git.js";

/**
 * Objects up to this size are compressed at a fixed level by fflate (pinned in package.json), so the same
 * object always gives the same bytes, whichever git or zlib the machine has. Larger ones are stored in zlib's
 * uncompressed ("stored") blocks: pure-JS deflate runs at a few MB/s on binary data, big blobs are usually
 * compressed already, and a stored stream's size is known before it is written, so it streams straight into
 * the tar with no temp file and no buffering.
 */
export const COMPRESSED_OBJECT_LIMIT = 4 * 1024 * 1024;
const COMPRESSION_LEVEL = 6;
const STORED_BLOCK = 65535;
/**
 * Content whose bytes are this evenly spread (order-0 entropy, bits per byte, over its first
 * ENTROPY_SAMPLE_BYTES) is stored too: deflate cannot shrink it (it is compressed or random already) and
 * spends most of repo.tar's time failing to. A function of the content alone, so the bytes stay deterministic.
 */
const INCOMPRESSIBLE_BITS_PER_BYTE = 7.5;
const ENTROPY_SAMPLE_BYTES = 64 * 1024;

export interface LooseObject {
  oid: string;
  /** The size of zlib("<type> <size>\0<content>"), as git stores a loose object. */
  size: number;
  /** The loose object's bytes; a stream must be read to its end before the next object comes. */
  body: Buffer | AsyncIterable<Buffer>;
}

/** The ids of every object reachable from a commit (commits, trees, blobs), sorted. */
export async function reachableObjects(gitDir: string, sha: string, signal?: AbortSignal): Promise<string[]> {
  const { child, finished } = spawnGit(["rev-list", "--objects", "--no-object-names", sha, "--"], { gitDir, signal });
  child.stdin.end();
  const ids: string[] = [];
  let rest = "";
  for await (const chunk of child.stdout) {
    const lines = (rest + chunk.toString("latin1")).split("\n");
    rest = lines.pop()!;
    for (const line of lines) if (line) ids.push(line.slice(0, 40));
  }
  await finished;
  return ids.sort();
}

/**
 * Reads objects with one `git cat-file --batch` and hands each to onObject as a compressed loose object, in
 * the order asked. onObject is awaited before the next object is read, which carries backpressure to git.
 */
export async function readLooseObjects(
  gitDir: string,
  ids: string[],
  onObject: (object: LooseObject) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const { child, finished } = spawnGit(["cat-file", "--batch"], { gitDir, signal });
  child.stdin.on("error", () => undefined);
  // Feed the ids as git asks for them: stdin is a stream with its own backpressure.
  const feeding = (async () => {
    for (const id of ids) if (!child.stdin.write(`${id}\n`)) await once(child.stdin, "drain");
    child.stdin.end();
  })();
  feeding.catch(() => undefined);
  try {
    const reader = new BatchReader(child.stdout[Symbol.asyncIterator]());
    for (const expected of ids) {
      const header = (await reader.line()).split(" ");
      if (header[0] !== expected || header.length !== 3) throw new Error(`git cat-file answered "${header.join(" ")}" for ${expected}`);
      const [, type, sizeText] = header as [string, string, string];
      const size = Number(sizeText);
      const prefix = Buffer.from(`${type} ${size}\0`, "latin1");
      if (size <= COMPRESSED_OBJECT_LIMIT) {
        const content = await reader.bytes(size);
        if (looksIncompressible(content)) {
          await onObject({ oid: expected, size: storedZlibSize(prefix.length + size), body: storedZlib(prefix, [content]) });
        } else {
          const compressed = Buffer.from(zlibSync(Buffer.concat([prefix, content]), { level: COMPRESSION_LEVEL }));
          await onObject({ oid: expected, size: compressed.length, body: compressed });
        }
      } else {
        const total = prefix.length + size;
        await onObject({ oid: expected, size: storedZlibSize(total), body: storedZlib(prefix, reader.stream(size)) });
      }
      if ((await reader.bytes(1)).toString() !== "\n") throw new Error(`git cat-file: no newline after ${expected}`);
    }
    await feeding;
    await finished;
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  }
}

/** Whether the content's first bytes are spread so evenly that deflate would not shrink it. */
export function looksIncompressible(content: Buffer): boolean {
  const sample = content.subarray(0, ENTROPY_SAMPLE_BYTES);
  // Below a few hundred bytes the estimate says little, and compressing them costs nothing.
  if (sample.length < 512) return false;
  const counts = new Uint32Array(256);
  for (let i = 0; i < sample.length; i++) counts[sample[i]!]!++;
  let bits = 0;
  for (const count of counts) {
    if (count > 0) {
      const p = count / sample.length;
      bits -= p * Math.log2(p);
    }
  }
  return bits > INCOMPRESSIBLE_BITS_PER_BYTE;
}

/** The size of a zlib stream of stored blocks holding length bytes: header, 5 bytes a block, Adler-32. */
export function storedZlibSize(length: number): number {
  return 2 + Math.max(1, Math.ceil(length / STORED_BLOCK)) * 5 + length + 4;
}

/** A zlib stream of stored blocks of exactly 65535 bytes (the last shorter), whatever chunks come in. */
export async function* storedZlib(prefix: Buffer, content: AsyncIterable<Buffer> | Iterable<Buffer>): AsyncIterable<Buffer> {
  yield Buffer.from([0x78, 0x01]);
  let a = 1;
  let b = 0;
  let block = Buffer.alloc(STORED_BLOCK);
  let filled = 0;
  const blockOut = (final: boolean) => {
    const head = Buffer.alloc(5);
    head[0] = final ? 1 : 0;
    head.writeUInt16LE(filled, 1);
    head.writeUInt16LE(~filled & 0xffff, 3);
    const out = Buffer.concat([head, block.subarray(0, filled)]);
    block = Buffer.alloc(STORED_BLOCK);
    filled = 0;
    return out;
  };
  const take = function* (data: Buffer) {
    for (let i = 0; i < data.length; i++) {
      a += data[i]!;
      b += a;
      // Reduce well before the sums could lose precision (zlib's NMAX is 5552 for 32-bit sums).
      if ((i & 4095) === 4095) {
        a %= 65521;
        b %= 65521;
      }
    }
    a %= 65521;
    b %= 65521;
    let rest = data;
    while (rest.length > 0) {
      // A full block is written only once more data follows, so that the last block carries the final bit.
      if (filled === STORED_BLOCK) yield blockOut(false);
      const taken = rest.copy(block, filled);
      filled += taken;
      rest = rest.subarray(taken);
    }
  };
  yield* take(prefix);
  for await (const data of content) yield* take(data);
  yield blockOut(true);
  const trailer = Buffer.alloc(4);
  trailer.writeUInt32BE(((b << 16) | a) >>> 0);
  yield trailer;
}

/** Reads lines and exact byte counts from a stream of chunks without holding more than one chunk ahead. */
class BatchReader {
  private buffered: Buffer<ArrayBufferLike> = Buffer.alloc(0);

  constructor(private readonly chunks: AsyncIterator<Buffer>) {}

  private async more(): Promise<void> {
    const next = await this.chunks.next();
    if (next.done) throw new Error("git cat-file ended early");
    this.buffered = this.buffered.length ? Buffer.concat([this.buffered, next.value]) : next.value;
  }

  async line(): Promise<string> {
    let end: number;
    while ((end = this.buffered.indexOf(10)) < 0) await this.more();
    const text = this.buffered.subarray(0, end).toString("latin1");
    this.buffered = this.buffered.subarray(end + 1);
    return text;
  }

  async bytes(count: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const part of this.stream(count)) parts.push(part);
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  async *stream(count: number): AsyncIterable<Buffer> {
    let left = count;
    while (left > 0) {
      if (this.buffered.length === 0) await this.more();
      const part = this.buffered.subarray(0, left);
      this.buffered = this.buffered.subarray(part.length);
      left -= part.length;
      yield part;
    }
  }
}
