import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import * as tar from "tar-stream";
import { failedPrecondition } from "./errors.js";
import { git, spawnGit } from "./git.js";
import { buildIndex } from "./git-index.js";
import { reachableObjects, readLooseObjects } from "./git-objects.js";
import { TarWriter } from "./tar-writer.js";

export interface RepoTarOptions {
  /** Leave .git out (OpsChain's include_git_history=false). */
  excludeGitHistory: boolean;
  /** Leave out what .gitattributes marks export-ignore. */
  honorExportIgnore: boolean;
}

export interface TreeEntry {
  mode: number;
  oid: string;
  path: Buffer<ArrayBufferLike>;
}

const SUBMODULE_MODE = 0o160000;
const MAX_ATTRIBUTES_BYTES = 1024 * 1024;

/**
 * Writes repo.tar: the working tree at a commit (from `git archive`, re-headed) followed by a .git written
 * by us, so the bytes are a function of (commit, options) alone. git's own packs are never copied: their
 * bytes depend on delta reuse, threads and git's version.
 */
export class RepoTarWriter {
  constructor(private readonly stateDir: string) {}

  /**
   * `git archive` runs in one of two tiny repositories that borrow the mirror's objects and carry only
   * info/attributes, which outranks the commit's .gitattributes: export-subst is always off (its output can
   * depend on the mirror's refs), export-ignore is off unless asked for.
   */
  private attributesDir(honorExportIgnore: boolean): string {
    return join(this.stateDir, "archive-attributes", honorExportIgnore ? "export-ignore" : "complete");
  }

  async init(): Promise<void> {
    for (const honor of [false, true]) {
      const dir = this.attributesDir(honor);
      for (const sub of ["objects", "refs", "info"]) await mkdir(join(dir, sub), { recursive: true });
      await writeFile(join(dir, "HEAD"), "ref: refs/heads/none\n");
      await writeFile(join(dir, "info", "attributes"), honor ? "* -export-subst\n" : "* -export-subst -export-ignore\n");
    }
  }

  /** What the caller should tell the user about the commit (submodules, LFS), found without writing anything. */
  async inspect(mirror: string, sha: string, signal?: AbortSignal): Promise<{ tree: TreeEntry[]; warnings: string[] }> {
    const tree = await listTree(mirror, sha, signal);
    const warnings: string[] = [];
    const submodules = tree.filter((entry) => entry.mode === SUBMODULE_MODE).map((entry) => entry.path.toString());
    if (submodules.length > 0) {
      warnings.push(
        `submodules are not included: ${submodules.slice(0, 5).join(", ")}${submodules.length > 5 ? ", …" : ""} ` +
          "appear in repo.tar as empty directories (their commits are recorded in .git)",
      );
    }
    for (const entry of tree) {
      const path = entry.path.toString();
      if (path !== ".gitattributes" && !path.endsWith("/.gitattributes")) continue;
      const size = Number(await git(["cat-file", "-s", entry.oid], { gitDir: mirror, signal }));
      if (size > MAX_ATTRIBUTES_BYTES) continue;
      if (/filter=lfs/.test(await git(["cat-file", "blob", entry.oid], { gitDir: mirror, signal }))) {
        warnings.push(`${path} uses Git LFS: LFS files are in repo.tar as their pointer files; their content is not fetched`);
        break;
      }
    }
    return { tree, warnings };
  }

  async write(mirror: string, sha: string, tree: TreeEntry[], options: RepoTarOptions, destination: Writable, signal?: AbortSignal): Promise<void> {
    const out = new TarWriter(destination);
    try {
      const archived = await this.writeWorkingTree(out, mirror, sha, options.honorExportIgnore, signal);
      if (!options.excludeGitHistory) await this.writeGitDirectory(out, mirror, sha, tree, archived, signal);
      await out.finish();
    } catch (error) {
      out.abort(error as Error);
      throw error;
    }
  }

  /** Returns the paths written, so that the index can mark the export-ignored ones skip-worktree. */
  private async writeWorkingTree(out: TarWriter, mirror: string, sha: string, honorExportIgnore: boolean, signal?: AbortSignal): Promise<Set<string>> {
    const archive = spawnGit(["archive", "--format=tar", sha], {
      gitDir: this.attributesDir(honorExportIgnore),
      env: { GIT_ALTERNATE_OBJECT_DIRECTORIES: join(mirror, "objects") },
      signal,
    });
    archive.child.stdin.end();
    const extract = tar.extract();
    const reading = pipeline(archive.child.stdout, extract as unknown as Writable);
    reading.catch(() => undefined);
    const written = new Set<string>();
    for await (const entry of extract) {
      const { name, type, mode = 0, size = 0, linkname } = entry.header;
      const path = name.replace(/\/$/, "");
      const parts = path.split("/");
      if (name.startsWith("/") || parts.includes("..") || parts.includes(".git")) {
        throw failedPrecondition(`commit ${sha} has a path git refuses to check out ("${name}"); the repository is refused`);
      }
      written.add(path);
      if (type === "directory") await out.directory(name);
      else if (type === "symlink") await out.symlink(name, linkname ?? "");
      else if (type === "file") await out.file(name, (mode & 0o100) !== 0, size, entry as AsyncIterable<Uint8Array>);
      else throw new Error(`git archive wrote an entry of type ${type} (${name})`);
      entry.resume();
    }
    await reading;
    await archive.finished.catch((error: Error) => {
      // git archive stops at a tree entry it would never check out (a "..", ".git" or ".GIT" component).
      const invalid = /invalid path '([^']*)'/.exec(error.message);
      if (invalid) throw failedPrecondition(`commit ${sha} has a path git refuses to check out ("${invalid[1]}"); the repository is refused`);
      throw error;
    });
    return written;
  }

  private async writeGitDirectory(
    out: TarWriter,
    mirror: string,
    sha: string,
    tree: TreeEntry[],
    archived: Set<string>,
    signal?: AbortSignal,
  ): Promise<void> {
    const index = buildIndex(tree.map((entry) => ({ ...entry, skipWorktree: !archived.has(entry.path.toString()) })));
    const config = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n";
    await out.directory(".git");
    // Detached at the commit, with no refs: the tar says which commit, never which branches the mirror knows.
    await out.file(".git/HEAD", false, 41, Buffer.from(`${sha}\n`));
    await out.file(".git/config", false, Buffer.byteLength(config), Buffer.from(config));
    await out.file(".git/index", false, index.length, index);
    await out.directory(".git/objects");
    const ids = await reachableObjects(mirror, sha, signal);
    let directory = "";
    await readLooseObjects(
      mirror,
      ids,
      async (object) => {
        if (object.oid.slice(0, 2) !== directory) {
          directory = object.oid.slice(0, 2);
          await out.directory(`.git/objects/${directory}`);
        }
        await out.file(`.git/objects/${directory}/${object.oid.slice(2)}`, false, object.size, object.body);
      },
      signal,
    );
    for (const name of [".git/objects/info", ".git/objects/pack", ".git/refs", ".git/refs/heads", ".git/refs/tags"]) await out.directory(name);
  }
}

async function listTree(mirror: string, sha: string, signal?: AbortSignal): Promise<TreeEntry[]> {
  const { child, finished } = spawnGit(["ls-tree", "-r", "-z", "--full-tree", sha], { gitDir: mirror, signal });
  child.stdin.end();
  const entries: TreeEntry[] = [];
  let rest: Buffer<ArrayBufferLike> = Buffer.alloc(0);
  for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
    rest = rest.length ? Buffer.concat([rest, chunk]) : chunk;
    let end: number;
    while ((end = rest.indexOf(0)) >= 0) {
      const record = rest.subarray(0, end);
      rest = rest.subarray(end + 1);
      // "<mode> <type> <oid>\t<path>"
      const tab = record.indexOf(9);
      const [mode, , oid] = record.subarray(0, tab).toString("latin1").split(" ");
      entries.push({ mode: parseInt(mode!, 8), oid: oid!, path: Buffer.from(record.subarray(tab + 1)) });
    }
  }
  await finished;
  return entries;
}
