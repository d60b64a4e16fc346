import { createReadStream, createWriteStream } from "node:fs";
import { mkdtemp, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { once } from "node:events";
import { Zlib, zlibSync } from "fflate";
import { spawnGit } from "./git.js";

/**
 * A fixed zlib level, with fflate pinned in package.json: the same object always compresses to the same
 * bytes, whichever git or zlib the machine has.
 */
const COMPRESSION_LEVEL = 6;
/** Objects above this are compressed through a temp file, so memory stays flat for big files. */
export const IN_MEMORY_OBJECT_LIMIT = 4 * 1024 * 1024;
/** Streamed compression is fed fixed-size chunks: its output then never depends on how the pipe split the data. */
const COMPRESSION_CHUNK = 1024 * 1024;

export interface LooseObject {
  oid: string;
  /** zlib("<type> <size>\0<content>"), as git stores a loose object. */
  size: number;
  body: Buffer | (() => NodeJS.ReadableStream);
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
  tmpRoot: string,
  onObject: (object: LooseObject) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const tmp = await mkdtemp(join(tmpRoot, "objects-"));
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
      if (size <= IN_MEMORY_OBJECT_LIMIT) {
        const compressed = Buffer.from(zlibSync(Buffer.concat([prefix, await reader.bytes(size)]), { level: COMPRESSION_LEVEL }));
        await onObject({ oid: expected, size: compressed.length, body: compressed });
      } else {
        const path = join(tmp, expected);
        await compressToFile(prefix, reader.stream(size), path);
        const { size: compressedSize } = await stat(path);
        await onObject({ oid: expected, size: compressedSize, body: () => createReadStream(path) });
        await rm(path, { force: true });
      }
      if ((await reader.bytes(1)).toString() !== "\n") throw new Error(`git cat-file: no newline after ${expected}`);
    }
    await feeding;
    await finished;
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

async function compressToFile(prefix: Buffer, content: AsyncIterable<Buffer>, path: string): Promise<void> {
  const file = createWriteStream(path, { mode: 0o600 });
  const failed = new Promise<never>((_, reject) => file.once("error", reject));
  failed.catch(() => undefined);
  let pending: Buffer[] = [];
  const zlib = new Zlib({ level: COMPRESSION_LEVEL }, (data) => {
    pending.push(Buffer.from(data));
  });
  const flush = async () => {
    for (const data of pending) if (!file.write(data)) await Promise.race([once(file, "drain"), failed]);
    pending = [];
  };
  let chunk = Buffer.alloc(COMPRESSION_CHUNK);
  let filled = prefix.copy(chunk);
  for await (let data of content) {
    while (data.length > 0) {
      const taken = data.copy(chunk, filled);
      filled += taken;
      data = data.subarray(taken);
      if (filled === COMPRESSION_CHUNK) {
        zlib.push(chunk);
        chunk = Buffer.alloc(COMPRESSION_CHUNK);
        filled = 0;
        await flush();
      }
    }
  }
  zlib.push(chunk.subarray(0, filled), true);
  await flush();
  file.end();
  await Promise.race([once(file, "finish"), failed]);
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
