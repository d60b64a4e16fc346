import { createHash } from "node:crypto";
import { open, mkdir, readdir, readFile, rm, stat, statfs, utimes, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { stableTime } from "../../shared/stable-time.js";
import { failedPrecondition } from "./errors.js";
import { GitFailure, git, spawnGit } from "./git.js";
import { buildIndex } from "./git-index.js";
import { type GitTrees, type TreeChange, type TreeEntry, diffTrees, refusedPath } from "./git-tree.js";
import { SingleFlight } from "../../shared/single-flight.js";
import { writeAtomically, writeFileAtomic } from "../../shared/files/atomic-write.js";

export interface RepositoryOptions {
  /** Leave .git out (OpsChain's include_git_history=false). */
  excludeGitHistory: boolean;
  /** Leave out what .gitattributes marks export-ignore. */
  honorExportIgnore: boolean;
}

export type LayerName = "history" | "base" | "changes";

/** One directory of the build context; copied in order, history, base then changes, they are the repository. */
export interface LayerDirectory {
  name: LayerName;
  /** Equal identities, equal content. */
  identity: string;
  path: string;
}

export interface LayerLimits {
  /** A pack of newer objects bigger than this share of the history pack (or 16 MB) starts a new history. */
  maxDeltaPackShare: number;
  /** More changed paths than this share of the base tree's entries (or 64) starts a new base tree. */
  maxChangedShare: number;
  /** Layer directories unused for this long are removed. */
  maxAgeMs: number;
}

export const DEFAULT_LAYER_LIMITS: LayerLimits = { maxDeltaPackShare: 0.25, maxChangedShare: 0.05, maxAgeMs: 24 * 3600_000 };
const MIN_DELTA_PACK_BYTES = 16 * 1024 * 1024;
const MIN_CHANGED_PATHS = 64;
/** How many recent bases of each kind are tried for a new commit. */
const CANDIDATES = 4;
const SWEEP_INTERVAL_MS = 10 * 60_000;
const GIT_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n";

interface PackInfo {
  sha: string;
  bytes: number;
}

interface TreeInfo {
  sha: string;
  entries: number;
}

/**
 * The repository at a commit as three directories that change at different rates, so that a new commit
 * costs what changed rather than what exists:
 * - history: one pack of the objects reachable from an ancestor commit (made by git, reusing the mirror's
 *   deltas); kept while the newer objects stay small beside it;
 * - base: the working tree of a recent commit; kept while the new commit only adds or modifies few files;
 * - changes: the files that differ from base, .git's own files (HEAD at the commit, config, index) and a pack
 *   of the objects reachable from the commit but not from history's commit.
 * Copied in that order they give exactly the commit's tree and exactly its reachable objects, whichever bases
 * were chosen. Each directory is written once under a temporary name and renamed into place; the file
 * "<dir>.identity" beside it says it is complete.
 */
export class RepositoryLayers {
  private readonly flights = new SingleFlight<void>();
  private lastSweep = 0;

  constructor(
    private readonly root: string,
    private readonly trees: GitTrees,
    private readonly limits: LayerLimits = DEFAULT_LAYER_LIMITS,
  ) {}

  async init(): Promise<void> {
    await mkdir(this.emptyDir, { recursive: true });
    // What a crash left half-written.
    for (const repository of await readdir(this.root)) {
      for (const kind of ["packs", "trees", "commits"]) {
        const dir = join(this.root, repository, kind);
        for (const name of await readdir(dir).catch(() => [] as string[]))
          if (name.includes(".partial-")) await rm(join(dir, name), { recursive: true, force: true });
      }
    }
  }

  private get emptyDir(): string {
    return join(this.root, "empty");
  }

  /** exportedPaths: the paths git archive keeps, asked for only when export-ignore is honoured and layers are made. */
  async prepare(
    mirror: string,
    sha: string,
    tree: TreeEntry[],
    exportedPaths: (() => Promise<Set<string>>) | undefined,
    options: RepositoryOptions,
    signal?: AbortSignal,
  ): Promise<LayerDirectory[]> {
    for (const entry of tree) {
      if (refusedPath(entry.path))
        throw failedPrecondition(`commit ${sha} has a path git refuses to check out ("${entry.path.toString()}"); the repository is refused`);
    }
    const repository = join(this.root, basename(mirror).replace(/\.git$/, ""));
    const variant = `${options.excludeGitHistory ? "no-git" : "git"}${exportedPaths ? "-export-ignore" : ""}`;
    // A commit seen before (a warm step) gets the layers chosen then, with no git work, while they are all kept.
    const chosen = join(repository, "commits", `${sha}-${variant}.layers.json`);
    const remembered = await this.remembered(chosen);
    if (remembered) return remembered;
    const exported = exportedPaths ? await exportedPaths() : undefined;
    // git packs the history while the tree is written: two processes for two cores. Both are waited for,
    // so that a failure of one is reported only once the other has cleaned up after itself.
    const [historySettled, baseSettled] = await Promise.allSettled([
      options.excludeGitHistory ? undefined : this.history(mirror, repository, sha, signal),
      this.base(mirror, repository, sha, tree, exported, signal),
    ]);
    if (baseSettled.status === "rejected") throw baseSettled.reason;
    if (historySettled.status === "rejected") throw historySettled.reason;
    const [history, base] = [historySettled.value, baseSettled.value];
    const identity = `changes:${sha}:${variant}:${base.info.sha}:${history?.info.sha ?? "-"}`;
    const name = `${sha}-${createHash("sha256").update(identity).digest("hex").slice(0, 16)}`;
    const changes = await this.once(join(repository, "commits", name), identity, signal, async (dir, workSignal) => {
      const changed = base.changes.filter((change) => !exported || exported.has(change.entry.path.toString()));
      await this.trees.checkOut(
        mirror,
        dir,
        sha,
        changed.map((change) => change.entry),
        workSignal,
      );
      if (history) await this.writeGitDirectory(mirror, dir, sha, tree, exported, history.info.sha, workSignal);
    });
    const layers: LayerDirectory[] = [
      { name: "history", identity: history ? `pack:${history.info.sha}` : "empty", path: history?.path ?? this.emptyDir },
      { name: "base", identity: base.identity, path: base.path },
      { name: "changes", identity, path: changes },
    ];
    await writeFileAtomic(chosen, JSON.stringify(layers));
    await this.sweep();
    return layers;
  }

  /** The layers remembered for a commit, if every one of them is still complete; marks them used. */
  private async remembered(chosen: string): Promise<LayerDirectory[] | undefined> {
    const text = await readFile(chosen, "utf8").catch(() => undefined);
    if (text === undefined) return undefined;
    let layers: LayerDirectory[];
    try {
      layers = JSON.parse(text) as LayerDirectory[];
    } catch {
      return undefined; // being written by another request: choose again
    }
    for (const layer of layers) {
      if (layer.identity !== "empty" && (await readFile(`${layer.path}.identity`, "utf8").catch(() => undefined)) !== layer.identity) return undefined;
    }
    for (const layer of layers) if (layer.identity !== "empty") await this.use(layer.path);
    const now = new Date();
    await utimes(chosen, now, now).catch(() => undefined);
    return layers;
  }

  /** The newest history pack of an ancestor whose newer objects stay small, or a new one at this commit. */
  private async history(mirror: string, repository: string, sha: string, signal?: AbortSignal): Promise<{ info: PackInfo; path: string }> {
    const packs = join(repository, "packs");
    for (const candidate of await this.recent<PackInfo>(packs)) {
      if (!(await isAncestor(mirror, candidate.sha, sha, signal))) continue;
      const newer = await countNewerObjectBytes(mirror, sha, candidate.sha, signal);
      if (newer > Math.max(MIN_DELTA_PACK_BYTES, candidate.bytes * this.limits.maxDeltaPackShare)) continue;
      return { info: candidate, path: await this.use(join(packs, candidate.sha)) };
    }
    let info!: PackInfo;
    const path = await this.once(
      join(packs, sha),
      `pack:${sha}`,
      signal,
      async (dir, workSignal) => {
        info = { sha, bytes: await writePack(mirror, join(dir, ".git", "objects", "pack"), [sha], workSignal) };
      },
      () => info,
    );
    return { info: info ?? (await this.info<PackInfo>(path)), path };
  }

  /**
   * The base tree that needs the fewest changed files and no deletions (a layer can add and replace files,
   * never remove them), or a new one at this commit. With export-ignore honoured the base is always the
   * commit's own filtered tree, since a change of .gitattributes can hide files that did not change.
   */
  private async base(
    mirror: string,
    repository: string,
    sha: string,
    tree: TreeEntry[],
    exported: Set<string> | undefined,
    signal?: AbortSignal,
  ): Promise<{ info: TreeInfo; identity: string; path: string; changes: TreeChange[] }> {
    const trees = join(repository, "trees");
    let best: { info: TreeInfo; changes: TreeChange[] } | undefined;
    if (!exported) {
      for (const candidate of await this.recent<TreeInfo>(trees)) {
        if (candidate.sha.includes("-")) continue;
        const changes = await diffTrees(mirror, candidate.sha, sha, signal);
        if (changes.some((change) => change.status !== "A" && change.status !== "M")) continue;
        if (changes.length > Math.max(MIN_CHANGED_PATHS, candidate.entries * this.limits.maxChangedShare)) continue;
        if (!best || changes.length < best.changes.length) best = { info: candidate, changes };
      }
    }
    if (best) return { ...best, identity: `tree:${best.info.sha}`, path: await this.use(join(trees, best.info.sha)) };
    const name = exported ? `${sha}-export-ignore` : sha;
    const identity = `tree:${name}`;
    let info!: TreeInfo;
    const path = await this.once(
      join(trees, name),
      identity,
      signal,
      async (dir, workSignal) => {
        const kept = tree.filter((entry) => !exported || exported.has(entry.path.toString()));
        await this.trees.checkOut(mirror, dir, sha, kept, workSignal);
        info = { sha: name, entries: kept.length };
      },
      () => info,
    );
    return { info: info ?? (await this.info<TreeInfo>(path)), identity, path, changes: [] };
  }

  /** .git's own files at the commit and the pack of objects newer than history's commit. */
  private async writeGitDirectory(
    mirror: string,
    dir: string,
    sha: string,
    tree: TreeEntry[],
    exported: Set<string> | undefined,
    historySha: string,
    signal: AbortSignal,
  ): Promise<void> {
    const git = join(dir, ".git");
    for (const sub of ["objects/pack", "objects/info", "refs/heads", "refs/tags"]) await mkdir(join(git, sub), { recursive: true });
    const index = buildIndex(tree.map((entry) => ({ ...entry, skipWorktree: exported !== undefined && !exported.has(entry.path.toString()) })));
    // Detached at the commit, with no refs: the repository says which commit, never which branches the mirror knows.
    for (const [name, content] of [
      ["HEAD", Buffer.from(`${sha}\n`)],
      ["config", Buffer.from(GIT_CONFIG)],
      ["index", index],
    ] as const) {
      await writeFile(join(git, name), content);
      const time = stableTime(createHash("sha256").update(content).digest("hex"));
      await utimes(join(git, name), time, time);
    }
    if (historySha !== sha) await writePack(mirror, join(git, "objects", "pack"), [sha, `^${historySha}`], signal);
  }

  /** Bases of one kind, most recently used first; only complete ones. */
  private async recent<T>(dir: string): Promise<T[]> {
    const found = [];
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.endsWith(".identity")) continue;
      const info = await stat(join(dir, name)).catch(() => undefined);
      if (info) found.push({ name: name.slice(0, -".identity".length), used: info.mtimeMs });
    }
    found.sort((a, b) => b.used - a.used);
    const infos: T[] = [];
    for (const { name } of found.slice(0, CANDIDATES)) {
      const info = await this.info<T>(join(dir, name)).catch(() => undefined);
      if (info) infos.push(info);
    }
    return infos;
  }

  private async info<T>(path: string): Promise<T> {
    return JSON.parse(await readFile(`${path}.json`, "utf8")) as T;
  }

  /** Marks a directory used now (its identity file's mtime), so that sweeps and choices see it. */
  private async use(path: string): Promise<string> {
    const now = new Date();
    await utimes(`${path}.identity`, now, now).catch(() => undefined);
    return path;
  }

  /**
   * Makes a directory once, however many requests ask for it at the same time: written under a temporary
   * name, renamed into place, then its info and identity files written (the identity last: it says the
   * directory is complete).
   */
  private async once(
    path: string,
    identity: string,
    signal: AbortSignal | undefined,
    write: (dir: string, signal: AbortSignal) => Promise<void>,
    info?: () => unknown,
  ): Promise<string> {
    if (await exists(`${path}.identity`)) return this.use(path);
    await this.flights.run(
      path,
      async (workSignal) => {
        if (await exists(`${path}.identity`)) return;
        await writeAtomically(path, async (partial) => {
          await mkdir(partial, { recursive: true });
          await write(partial, workSignal).catch(async (error: unknown) => {
            // git says "unable to write file" and not why: a full disk is told by the disk itself.
            if (await nearlyFull(partial))
              throw Object.assign(new Error(`no space left on device writing ${partial}: ${(error as Error).message}`), { code: "ENOSPC" });
            throw error;
          });
          // A directory left by an interrupted sweep (its identity gone) is replaced.
          await rm(path, { recursive: true, force: true });
        });
        if (info) await writeFile(`${path}.json`, JSON.stringify(info()));
        await writeFile(`${path}.identity`, identity);
      },
      signal,
    );
    return path;
  }

  /** Removes layer directories unused for longer than the limit (at most every few minutes). */
  private async sweep(): Promise<void> {
    if (Date.now() - this.lastSweep < SWEEP_INTERVAL_MS) return;
    this.lastSweep = Date.now();
    const oldest = Date.now() - this.limits.maxAgeMs;
    for (const repository of await readdir(this.root)) {
      for (const kind of ["packs", "trees", "commits"]) {
        const dir = join(this.root, repository, kind);
        for (const name of await readdir(dir).catch(() => [] as string[])) {
          const used = (await stat(join(dir, name)).catch(() => undefined))?.mtimeMs ?? Infinity;
          if (used >= oldest) continue;
          if (name.endsWith(".layers.json")) await rm(join(dir, name), { force: true });
          if (!name.endsWith(".identity")) continue;
          const path = join(dir, name.slice(0, -".identity".length));
          // The identity first: a half-removed directory is never taken for a complete one.
          await rm(`${path}.identity`, { force: true });
          await rm(`${path}.json`, { force: true });
          await rm(path, { recursive: true, force: true });
        }
      }
    }
  }
}

async function isAncestor(mirror: string, ancestor: string, sha: string, signal?: AbortSignal): Promise<boolean> {
  try {
    await git(["merge-base", "--is-ancestor", ancestor, sha], { gitDir: mirror, signal });
    return true;
  } catch (error) {
    if (error instanceof GitFailure && error.code === 1) return false;
    // An ancestor the mirror no longer has (a force push pruned it) is no candidate either.
    if (error instanceof GitFailure) return false;
    throw error;
  }
}

/** The on-disk size of the objects reachable from sha and not from base (what a pack of them would hold). */
async function countNewerObjectBytes(mirror: string, sha: string, base: string, signal?: AbortSignal): Promise<number> {
  const output = await git(["rev-list", "--objects", "--disk-usage", sha, `^${base}`], { gitDir: mirror, signal });
  return Number(output.trim()) || 0;
}

/** Packs the objects of a rev-list (e.g. [sha] or [sha, "^base"]) with git, reusing the mirror's deltas; returns the pack's size. */
async function writePack(mirror: string, dir: string, revisions: string[], signal: AbortSignal): Promise<number> {
  await mkdir(dir, { recursive: true });
  const { child, finished } = spawnGit(["pack-objects", "--revs", "--quiet", "--delta-base-offset", join(dir, "pack")], { gitDir: mirror, signal });
  child.stdin.end(revisions.map((revision) => `${revision}\n`).join(""));
  let name = "";
  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (text: string) => (name += text));
  await finished;
  const hash = name.trim();
  let bytes = 0;
  for (const suffix of ["pack", "idx"]) {
    const path = join(dir, `pack-${hash}.${suffix}`);
    const size = (await stat(path)).size;
    // A pack's name comes from its object ids, not its bytes; each file ends with a checksum of its bytes.
    const time = stableTime(
      createHash("sha256")
        .update(await trailer(path, size))
        .digest("hex"),
    );
    await utimes(path, time, time);
    bytes += size;
  }
  return bytes;
}

async function trailer(path: string, size: number): Promise<Buffer> {
  const handle = await open(path, "r");
  try {
    const { buffer } = await handle.read(Buffer.alloc(20), 0, 20, Math.max(0, size - 20));
    return buffer;
  } finally {
    await handle.close();
  }
}

async function exists(path: string): Promise<boolean> {
  return open(path, "r").then(
    async (handle) => (await handle.close(), true),
    () => false,
  );
}

/** Whether the filesystem holding path has less than a megabyte left for us. */
async function nearlyFull(path: string): Promise<boolean> {
  const info = await statfs(path).catch(() => undefined);
  return info !== undefined && info.bavail * info.bsize < 1024 * 1024;
}
