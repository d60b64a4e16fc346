import { lutimes, mkdir, rm, utimes, writeFile } from "node:fs/promises";
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

  /** The same for checkouts: every file exactly its blob (no end-of-line, ident, filter or encoding conversion). */
  private get rawDir(): string {
    return join(this.stateDir, "archive-attributes", "raw");
  }

  async init(): Promise<void> {
    for (const [dir, attributes] of [
      [this.attributesDir, "* -export-subst\n"],
      [this.rawDir, "* -text -eol -ident -filter -working-tree-encoding -export-subst\n"],
    ] as const) {
      for (const sub of ["objects", "refs", "info"]) await mkdir(join(dir, sub), { recursive: true });
      await writeFile(join(dir, "HEAD"), "ref: refs/heads/none\n");
      await writeFile(join(dir, "info", "attributes"), attributes);
    }
  }

  /**
   * Writes some of a commit's entries into a directory with git's own checkout (the content never passes
   * through this process): files with their mode, symlinks, submodules as empty directories, each exactly its
   * blob. Every file's mtime is derived from its object id, so equal content at a path always has equal
   * metadata (BuildKit sends a file again only when its metadata changed).
   */
  async checkOut(mirror: string, dir: string, sha: string, entries: TreeEntry[], signal?: AbortSignal): Promise<void> {
    if (entries.length === 0) return;
    const index = `${dir}.index`;
    const options = {
      gitDir: this.rawDir,
      signal,
      env: { GIT_ALTERNATE_OBJECT_DIRECTORIES: join(mirror, "objects"), GIT_INDEX_FILE: index, GIT_WORK_TREE: dir },
    };
    try {
      await git(["read-tree", sha], options);
      const checkout = spawnGit(["checkout-index", "--force", "-z", "--stdin"], options);
      checkout.child.stdin.end(Buffer.concat(entries.flatMap((entry) => [entry.path, Buffer.from([0])])));
      await checkout.finished;
    } finally {
      await rm(index, { force: true });
    }
    for (const entry of entries) {
      const path = Buffer.concat([Buffer.from(`${dir}/`), entry.path]);
      if (entry.mode === SUBMODULE_MODE) {
        await mkdir(path, { recursive: true });
        continue;
      }
      const time = stableTime(entry.oid);
      if (entry.mode === SYMLINK_MODE) await lutimes(path, time, time);
      else await utimes(path, time, time);
    }
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
