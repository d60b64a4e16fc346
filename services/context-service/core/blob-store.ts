import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream, renameSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Transform, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { notFound } from "./errors.js";
import { writeFileAtomic } from "../../shared/files/atomic-write.js";
import { SMALL_FILE_BYTES } from "../../shared/files/small-files.js";

export interface BlobInfo {
  /** "sha256:<hex>" of the bytes. */
  digest: string;
  size: number;
}

/**
 * Content-addressed files under root/blobs (mode 0600 in a 0700 directory: secret zips live here too), with
 * named keys pointing at them (e.g. a repo.tar's (commit, options)). Total size is capped: the least recently
 * used blobs are evicted first, except those a request in flight has pinned.
 */
export class BlobStore {
  private readonly pinned = new Map<string, number>();
  /** The blobs' total size as of the last listing plus what was added since; unknown until the first eviction. */
  private total?: number;
  /** Bytes of new blobs added since the store was opened. */
  private added = 0;

  constructor(
    private readonly root: string,
    private readonly maxBytes: number,
  ) {}

  /** Creates the directories; what a crash left half-written in tmp/ is removed. */
  async init(): Promise<void> {
    await rm(join(this.root, "tmp"), { recursive: true, force: true });
    await mkdir(join(this.root, "blobs"), { recursive: true, mode: 0o700 });
    await mkdir(join(this.root, "keys"), { recursive: true, mode: 0o700 });
    await mkdir(join(this.root, "tmp"), { recursive: true, mode: 0o700 });
  }

  path(digest: string): string {
    return join(this.root, "blobs", digest.replace(":", "-"));
  }

  /** Streams what produce writes into a new blob, hashing on the way; nothing is kept in memory. */
  async put(produce: (destination: Writable) => Promise<void>): Promise<BlobInfo> {
    const partial = join(this.root, "tmp", `${Date.now()}-${randomBytes(6).toString("hex")}`);
    const hash = createHash("sha256");
    let size = 0;
    const hashing = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        hash.update(chunk);
        size += chunk.length;
        done(null, chunk);
      },
    });
    try {
      const writing = pipeline(hashing, createWriteStream(partial, { mode: 0o600 }));
      writing.catch(() => undefined);
      try {
        await produce(hashing);
      } catch (error) {
        // Unended, the file's stream would stay open for good: end it, and let it close before the file goes.
        hashing.destroy(error as Error);
        await writing.catch(() => undefined);
        throw error;
      }
      await writing;
      const info = { digest: `sha256:${hash.digest("hex")}`, size };
      const known = await stat(this.path(info.digest)).then(
        () => true,
        () => false,
      );
      await rename(partial, this.path(info.digest));
      if (!known) {
        this.added += size;
        if (this.total !== undefined) this.total += size;
      }
      return info;
    } finally {
      await rm(partial, { force: true });
    }
  }

  /**
   * A small blob from memory (a step context's zips, a Dockerfile): named by its digest first, so that bytes
   * kept already are only marked used, not written again.
   */
  async putBuffer(bytes: Buffer): Promise<BlobInfo> {
    const info = { digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}`, size: bytes.length };
    if (this.touch(info.digest)) return info;
    const partial = join(this.root, "tmp", `${Date.now()}-${randomBytes(6).toString("hex")}`);
    try {
      // The usual few kilobytes are written at once: the thread pool's round trips (open, write, close, rename)
      // cost a tenth of a millisecond or more each on a busy host. A large blob holds up no other request.
      if (bytes.length <= SMALL_FILE_BYTES) {
        writeFileSync(partial, bytes, { mode: 0o600 });
        renameSync(partial, this.path(info.digest));
      } else {
        await writeFile(partial, bytes, { mode: 0o600 });
        await rename(partial, this.path(info.digest));
      }
      this.added += info.size;
      if (this.total !== undefined) this.total += info.size;
      return info;
    } finally {
      rmSync(partial, { force: true });
    }
  }

  /** Whether a blob is still here; marks it used. */
  has(digest: string): boolean {
    return this.touch(digest);
  }

  /** The blob a key names, if both are still there; marks it used. */
  async lookup(key: string): Promise<BlobInfo | undefined> {
    const text = await readFile(this.keyPath(key), "utf8").catch(() => undefined);
    if (text === undefined) return undefined;
    const info = JSON.parse(text) as BlobInfo;
    return this.touch(info.digest) ? info : undefined;
  }

  async remember(key: string, info: BlobInfo): Promise<void> {
    await writeFileAtomic(this.keyPath(key), JSON.stringify(info), { mode: 0o600 });
  }

  /** Opens a blob from an offset; NOT_FOUND when it was evicted. */
  async open(digest: string, offset: number, chunkBytes: number): Promise<NodeJS.ReadableStream> {
    if (!(await this.touch(digest))) throw notFound(`${digest} is no longer cached (evicted or never prepared); call PrepareContext again`);
    return createReadStream(this.path(digest), { start: offset, highWaterMark: chunkBytes });
  }

  /** Keeps blobs from eviction while a request uses them; call the returned function when done. */
  pin(digests: string[]): () => void {
    for (const digest of digests) this.pinned.set(digest, (this.pinned.get(digest) ?? 0) + 1);
    return () => {
      for (const digest of digests) {
        const count = (this.pinned.get(digest) ?? 1) - 1;
        if (count === 0) this.pinned.delete(digest);
        else this.pinned.set(digest, count);
      }
    };
  }

  /**
   * Evicts the least recently used blobs until the total is within the cap; returns what was removed. The total
   * is kept as blobs are added, so the directory is listed only when it may be over the cap (a step that
   * added no new blob looks at nothing).
   */
  async evict(): Promise<string[]> {
    if (this.total !== undefined && this.total <= this.maxBytes) return [];
    const addedBefore = this.added;
    const dir = join(this.root, "blobs");
    const blobs = [];
    for (const name of await readdir(dir)) {
      const info = await stat(join(dir, name)).catch(() => undefined);
      if (info) blobs.push({ name, size: info.size, used: info.mtimeMs });
    }
    let total = blobs.reduce((sum, blob) => sum + blob.size, 0);
    const removed: string[] = [];
    for (const blob of blobs.sort((a, b) => a.used - b.used)) {
      if (total <= this.maxBytes) break;
      const digest = blob.name.replace("-", ":");
      if (this.pinned.has(digest)) continue;
      await rm(join(dir, blob.name), { force: true });
      total -= blob.size;
      removed.push(digest);
    }
    // Blobs added while the directory was listed may have been missed by it.
    this.total = total + (this.added - addedBefore);
    return removed;
  }

  private keyPath(key: string): string {
    return join(this.root, "keys", createHash("sha256").update(key).digest("hex"));
  }

  /** Marks a blob used; false when it is gone. Synchronous: a utimes takes microseconds (see putBuffer). */
  private touch(digest: string): boolean {
    const now = new Date();
    try {
      utimesSync(this.path(digest), now, now);
      return true;
    } catch {
      return false;
    }
  }
}
