import { once } from "node:events";
import { createWriteStream } from "node:fs";
import { lutimes, mkdir, symlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import * as tar from "tar-stream";
import { stableTime } from "../../shared/stable-time.js";
import { failedPrecondition } from "./errors.js";
import { git, spawnGit } from "./git.js";

export interface TreeEntry {
  mode: number;
  oid: string;
  path: Buffer<ArrayBufferLike>;
}

export const SUBMODULE_MODE = 0o160000;
export const SYMLINK_MODE = 0o120000;
const MAX_ATTRIBUTES_BYTES = 1024 * 1024;
/** Blobs up to this size are read whole; larger ones are streamed to their file. */
const BUFFERED_BLOB_BYTES = 1024 * 1024;

/** Every entry of a commit's tree (blobs, symlinks, submodules), recursively, in git's order. */
export async function listTree(gitDir: string, sha: string, signal?: AbortSignal): Promise<TreeEntry[]> {
  const { child, finished } = spawnGit(["ls-tree", "-r", "-z", "--full-tree", sha], { gitDir, signal });
  child.stdin.end();
  const entries: TreeEntry[] = [];
  for await (const record of nulRecords(child.stdout)) {
    // "<mode> <type> <oid>\t<path>"
    const tab = record.indexOf(9);
    const [mode, , oid] = record.subarray(0, tab).toString("latin1").split(" ");
    entries.push({ mode: parseInt(mode!, 8), oid: oid!, path: Buffer.from(record.subarray(tab + 1)) });
  }
  await finished;
  return entries;
}

/** One path that differs between two trees, as `git diff-tree --raw` says it. */
export interface TreeChange {
  /** A (added), M (modified), D (deleted), T (type changed). */
  status: string;
  entry: TreeEntry;
}

/** What changed from one commit's tree to another's, file by file (no rename detection). */
export async function diffTrees(gitDir: string, from: string, to: string, signal?: AbortSignal): Promise<TreeChange[]> {
  const { child, finished } = spawnGit(["diff-tree", "-r", "-z", "--raw", "--no-renames", "--full-index", from, to], { gitDir, signal });
  child.stdin.end();
  const changes: TreeChange[] = [];
  let header: string | undefined;
  for await (const record of nulRecords(child.stdout)) {
    if (header === undefined) {
      header = record.toString("latin1");
      continue;
    }
    // ":<old mode> <new mode> <old oid> <new oid> <status>"
    const [, newMode, , newOid, status] = header.slice(1).split(" ");
    changes.push({ status: status!, entry: { mode: parseInt(newMode!, 8), oid: newOid!, path: Buffer.from(record) } });
    header = undefined;
  }
  await finished;
  return changes;
}

/**
 * Writes tree entries into a directory with one `git cat-file --batch`: files with their mode, symlinks,
 * and submodules as empty directories. Every file's mtime is derived from its object id, so equal content at
 * a path always has equal metadata (BuildKit sends a file again only when its metadata changed).
 */
export async function checkOut(gitDir: string, dir: string, entries: TreeEntry[], signal?: AbortSignal): Promise<void> {
  const made = new Set<string>();
  const parentOf = async (path: Buffer): Promise<Buffer> => {
    const full = Buffer.concat([Buffer.from(`${dir}/`), path]);
    const slash = full.lastIndexOf(47);
    const parent = full.subarray(0, slash);
    const key = parent.toString("latin1");
    if (!made.has(key)) {
      await mkdir(parent, { recursive: true });
      made.add(key);
    }
    return full;
  };
  const blobs = entries.filter((entry) => entry.mode !== SUBMODULE_MODE);
  for (const entry of entries) if (entry.mode === SUBMODULE_MODE) await mkdir(await parentOf(Buffer.concat([entry.path, Buffer.from("/.")])), { recursive: true });
  if (blobs.length === 0) return;
  const { child, finished } = spawnGit(["cat-file", "--batch"], { gitDir, signal });
  child.stdin.on("error", () => undefined);
  const feeding = (async () => {
    for (const entry of blobs) if (!child.stdin.write(`${entry.oid}\n`)) await once(child.stdin, "drain");
    child.stdin.end();
  })();
  feeding.catch(() => undefined);
  try {
    const reader = new BatchReader(child.stdout[Symbol.asyncIterator]());
    for (const entry of blobs) {
      const header = (await reader.line()).split(" ");
      if (header[0] !== entry.oid || header[1] !== "blob") throw new Error(`git cat-file answered "${header.join(" ")}" for blob ${entry.oid}`);
      const size = Number(header[2]);
      const path = await parentOf(entry.path);
      const time = stableTime(entry.oid);
      if (entry.mode === SYMLINK_MODE) {
        await symlink(await reader.bytes(size), path);
        await lutimes(path, time, time);
      } else {
        const mode = entry.mode & 0o111 ? 0o755 : 0o644;
        if (size <= BUFFERED_BLOB_BYTES) await writeFile(path, await reader.bytes(size), { mode });
        else await pipeline(reader.stream(size), createWriteStream(path, { mode }));
        await utimes(path, time, time);
      }
      if ((await reader.bytes(1))[0] !== 10) throw new Error(`git cat-file: no newline after ${entry.oid}`);
    }
    await feeding;
    await finished;
  } catch (error) {
    child.kill("SIGKILL");
    throw error;
  }
}

/**
 * What a commit holds that the user should know, and what `git archive` leaves out of the working tree:
 * the commit's .gitattributes decide which paths are export-ignore (only asked for when honoured).
 */
export class GitTrees {
  constructor(private readonly stateDir: string) {}

  /**
   * `git archive` runs in a tiny repository that borrows the mirror's objects and carries only
   * info/attributes, which outranks the commit's .gitattributes: export-subst is off (its output can depend
   * on the mirror's refs), export-ignore on.
   */
  private get attributesDir(): string {
    return join(this.stateDir, "archive-attributes", "export-ignore");
  }

  async init(): Promise<void> {
    const dir = this.attributesDir;
    for (const sub of ["objects", "refs", "info"]) await mkdir(join(dir, sub), { recursive: true });
    await writeFile(join(dir, "HEAD"), "ref: refs/heads/none\n");
    await writeFile(join(dir, "info", "attributes"), "* -export-subst\n");
  }

  /** Warnings about submodules and LFS, found without writing anything. */
  async inspect(mirror: string, sha: string, signal?: AbortSignal): Promise<{ tree: TreeEntry[]; warnings: string[] }> {
    const tree = await listTree(mirror, sha, signal);
    const warnings: string[] = [];
    const submodules = tree.filter((entry) => entry.mode === SUBMODULE_MODE).map((entry) => entry.path.toString());
    if (submodules.length > 0) {
      warnings.push(
        `submodules are not included: ${submodules.slice(0, 5).join(", ")}${submodules.length > 5 ? ", …" : ""} ` +
          "appear in the repository as empty directories (their commits are recorded in .git)",
      );
    }
    for (const entry of tree) {
      const path = entry.path.toString();
      if (path !== ".gitattributes" && !path.endsWith("/.gitattributes")) continue;
      const size = Number(await git(["cat-file", "-s", entry.oid], { gitDir: mirror, signal }));
      if (size > MAX_ATTRIBUTES_BYTES) continue;
      if (/filter=lfs/.test(await git(["cat-file", "blob", entry.oid], { gitDir: mirror, signal }))) {
        warnings.push(`${path} uses Git LFS: LFS files are in the repository as their pointer files; their content is not fetched`);
        break;
      }
    }
    return { tree, warnings };
  }

  /** The paths `git archive` keeps when export-ignore is honoured (a read of the archive's headers only). */
  async exportedPaths(mirror: string, sha: string, signal?: AbortSignal): Promise<Set<string>> {
    const archive = spawnGit(["archive", "--format=tar", sha], {
      gitDir: this.attributesDir,
      env: { GIT_ALTERNATE_OBJECT_DIRECTORIES: join(mirror, "objects") },
      signal,
    });
    archive.child.stdin.end();
    const extract = tar.extract();
    const reading = pipeline(archive.child.stdout, extract as unknown as NodeJS.WritableStream);
    reading.catch(() => undefined);
    const kept = new Set<string>();
    for await (const entry of extract) {
      kept.add(entry.header.name.replace(/\/$/, ""));
      entry.resume();
    }
    await reading;
    await archive.finished.catch((error: Error) => {
      // git archive stops at a tree entry it would never check out (a "..", ".git" or ".GIT" component).
      const invalid = /invalid path '([^']*)'/.exec(error.message);
      if (invalid) throw failedPrecondition(`commit ${sha} has a path git refuses to check out ("${invalid[1]}"); the repository is refused`);
      throw error;
    });
    return kept;
  }
}

/** A path git would refuse to check out: absolute, or with a "..", "." or ".git" component (any case). */
export function refusedPath(path: Buffer): boolean {
  const parts = path.toString("latin1").split("/");
  return path[0] === 47 || parts.some((part) => part === ".." || part === "." || part === "" || part.toLowerCase() === ".git");
}

async function* nulRecords(stream: AsyncIterable<Buffer>): AsyncIterable<Buffer> {
  let rest: Buffer<ArrayBufferLike> = Buffer.alloc(0);
  for await (const chunk of stream) {
    rest = rest.length ? Buffer.concat([rest, chunk]) : chunk;
    let end: number;
    while ((end = rest.indexOf(0)) >= 0) {
      yield rest.subarray(0, end);
      rest = rest.subarray(end + 1);
    }
  }
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
