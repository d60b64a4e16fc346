import { createHash } from "node:crypto";
import { existsSync, readdirSync, renameSync, statSync, utimesSync } from "node:fs";
import { mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { failedPrecondition, invalidField, notFound, unavailable } from "./errors.js";
import { GitFailure, type GitOptions, git, gitMaybe, killOrphanedGit } from "./git.js";
import { isDirectory, readRef, refExists } from "./refs.js";
import { checkRepositoryUrl, checkRevision, localRepositoryPath } from "./repository-url.js";
import { SingleFlight } from "../../shared/single-flight.js";
import { writeAtomically } from "../../shared/files/atomic-write.js";

export interface ResolvedRevision {
  /** The bare mirror holding the commit and everything reachable from it. */
  mirror: string;
  gitSha: string;
  /** A branch or HEAD, which may resolve differently later; tags and SHAs are taken as fixed. */
  movingRef: boolean;
}

/** Where the remote's HEAD is kept in a mirror (git fetch does not update a bare repository's HEAD). */
const REMOTE_HEAD = "refs/steprunner/HEAD";
const REFSPECS = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", `+HEAD:${REMOTE_HEAD}`];

interface Lookup {
  sha: string;
  /** For a branch or HEAD, its name in the repository the mirror is fetched from; tags and SHAs have none. */
  movingRef?: string;
}

/** How often a mirror's use is written down, at most (its directory's mtime), and how often mirrors are swept. */
const MARK_USED_INTERVAL_MS = 60_000;
const SWEEP_INTERVAL_MS = 10 * 60_000;

/**
 * One bare mirror per repository under root/mirrors. A revision is fetched only when the mirror does not know
 * it, or it is a moving ref that has moved: where a moving ref points is learnt first with one cheap look
 * (git ls-remote, or reading a repository on this machine directly). Fetches of one repository are
 * single-flight: a request that arrives while a fetch runs waits for that fetch instead of starting another, so
 * the mirror is never fetched twice at once; looks at one ref are single-flight likewise.
 * (One service process owns a state directory; git's own ref locks guard the rest.)
 *
 * A mirror unused for maxAgeMs (0: kept for good) is removed by the sweep that follows a fetch (at most every
 * few minutes) or the service's start; a later request for its repository clones it again. Each request marks
 * its mirror used before anything else, and the sweep decides and moves a mirror out of the way in one
 * synchronous step, so a request either marked the mirror first (and it stays) or finds it gone and fetches it
 * anew. maxAgeMs is far above any request's run (the settings hold it above the fetch timeout).
 */
export class MirrorStore {
  private readonly fetches = new SingleFlight<void>();
  private readonly refLooks = new SingleFlight<string | undefined>();
  /** When each mirror's use was last written down. */
  private readonly markedAt = new Map<string, number>();
  private lastSweep = 0;

  constructor(
    private readonly root: string,
    private readonly fetchTimeoutMs: number,
    private readonly maxAgeMs: number = 0,
    private readonly now: () => number = Date.now,
  ) {}

  /** Stops the fetches a crash left running, removes the mirrors it left half-made, and sweeps. */
  async init(): Promise<void> {
    const dir = join(this.root, "mirrors");
    await mkdir(dir, { recursive: true });
    await killOrphanedGit(dir);
    for (const name of await readdir(dir)) if (name.includes(".partial-")) await rm(join(dir, name), { recursive: true, force: true });
    await this.sweep();
  }

  /**
   * Removes the mirrors unused for longer than maxAgeMs; returns their names. Each is renamed aside (a name that
   * init() removes after a crash) in the same synchronous pass that read its last use, then deleted.
   */
  async sweep(): Promise<string[]> {
    if (this.maxAgeMs <= 0) return [];
    this.lastSweep = this.now();
    const dir = join(this.root, "mirrors");
    const oldest = this.now() - this.maxAgeMs;
    const removed: string[] = [];
    const moved: string[] = [];
    for (const name of readdirSync(dir)) {
      if (!name.endsWith(".git")) continue;
      const usedAt = statSync(join(dir, name), { throwIfNoEntry: false })?.mtimeMs ?? Number.POSITIVE_INFINITY;
      if (usedAt >= oldest) continue;
      const aside = join(dir, `${name}.partial-unused-${process.pid}-${this.now()}`);
      renameSync(join(dir, name), aside);
      this.markedAt.delete(join(dir, name));
      removed.push(name);
      moved.push(aside);
    }
    for (const aside of moved) await rm(aside, { recursive: true, force: true });
    return removed;
  }

  /** Writes down that a mirror is used now (its directory's mtime), at most once a minute. */
  private markUsed(mirror: string): void {
    const now = this.now();
    if (now - (this.markedAt.get(mirror) ?? 0) < MARK_USED_INTERVAL_MS) return;
    try {
      utimesSync(mirror, new Date(now), new Date(now));
      this.markedAt.set(mirror, now);
    } catch {
      // gone (a sweep, or never fetched): the fetch that follows makes it anew, with a fresh mtime
    }
  }

  mirrorPath(url: string): string {
    return join(this.root, "mirrors", `${createHash("sha256").update(url).digest("hex").slice(0, 32)}.git`);
  }

  async resolve(repositoryUrl: string, gitRev: string, signal?: AbortSignal): Promise<ResolvedRevision> {
    const url = checkRepositoryUrl(repositoryUrl);
    const rev = checkRevision(gitRev);
    const mirror = this.mirrorPath(url);
    // First, before anything asynchronous: see the class comment.
    this.markUsed(mirror);
    const known = isDirectory(mirror) ? await lookup(mirror, rev, signal) : undefined;
    if (known && (!known.movingRef || (await this.currentSha(url, mirror, known.movingRef, signal)) === known.sha)) {
      return { mirror, gitSha: known.sha, movingRef: known.movingRef !== undefined };
    }
    await this.fetch(url, mirror, signal);
    // A mirror this fetch made was not there to be marked at the start; marked, it is safe from the sweep.
    this.markUsed(mirror);
    if (this.now() - this.lastSweep >= SWEEP_INTERVAL_MS) await this.sweep();
    const found = await lookup(mirror, rev, signal);
    if (!found) throw notFound(`git_rev: "${rev}" is not a branch, tag or commit of ${url}`);
    return { mirror, gitSha: found.sha, movingRef: found.movingRef !== undefined };
  }

  /**
   * The commit a ref (HEAD or refs/heads/…) names in the repository now, without fetching it; undefined when the
   * ref is not there (any more), which the fetch that follows then explains.
   */
  private currentSha(url: string, mirror: string, ref: string, signal?: AbortSignal): Promise<string | undefined> {
    return this.refLooks.run(`${mirror}\0${ref}`, (lookSignal) => this.currentShaNow(url, ref, lookSignal), signal);
  }

  private async currentShaNow(url: string, ref: string, signal: AbortSignal): Promise<string | undefined> {
    const options = { signal, timeoutMs: this.fetchTimeoutMs };
    const path = localRepositoryPath(url);
    if (path !== undefined) {
      // Read on this machine: a working tree keeps its repository in .git (a directory, or a file naming it),
      // from git's files when they say it plainly, else by git.
      const gitDir = existsSync(join(path, ".git")) ? join(path, ".git") : path;
      const plain = isDirectory(gitDir) ? readRef(gitDir, ref) : undefined;
      return plain ?? ((await gitMaybe(["rev-parse", "--verify", "--quiet", `${ref}^{commit}`], { ...options, gitDir }))?.trim() || undefined);
    }
    const listing = await git(["ls-remote", url, ref], options).catch((error: unknown) => {
      throw fetchError(url, error);
    });
    // ls-remote matches the name's tail too (refs/heads/x/main for main): only the exact name counts.
    for (const line of listing.split("\n")) {
      const [sha, name] = line.split("\t");
      if (name === ref) return sha;
    }
    return undefined;
  }

  /** Joins the fetch in flight for this mirror or starts one. */
  private fetch(url: string, mirror: string, signal?: AbortSignal): Promise<void> {
    return this.fetches.run(mirror, (fetchSignal) => this.fetchNow(url, mirror, fetchSignal), signal);
  }

  private async fetchNow(url: string, mirror: string, signal: AbortSignal): Promise<void> {
    const options = { signal, timeoutMs: this.fetchTimeoutMs };
    const args = ["fetch", "--quiet", "--prune", "--force", "--no-write-fetch-head", url, ...REFSPECS];
    if (isDirectory(mirror)) {
      await git(args, { ...options, gitDir: mirror }).catch((error: unknown) => {
        throw fetchError(url, error);
      });
      return;
    }
    // A new mirror is made beside its final place and renamed in when complete, so a failed first fetch
    // leaves nothing behind.
    await mkdir(join(this.root, "mirrors"), { recursive: true });
    const settings: [string, string][] = [
      ["gc.auto", "0"], // a fetch must not repack while another request streams objects
      ["core.logAllRefUpdates", "false"],
      ["steprunner.url", url],
    ];
    await writeAtomically(mirror, async (partial) => {
      if (url.startsWith("/") && (await this.cloneLocal(url, partial, settings, options))) return;
      await git(["init", "--quiet", "--bare", partial], options);
      for (const [key, value] of settings) await git(["config", key, value], { ...options, gitDir: partial });
      await git(args, { ...options, gitDir: partial }).catch((error: unknown) => {
        throw fetchError(url, error);
      });
    });
  }

  /**
   * A repository on this machine is cloned with hard links to its objects where it can (what `git clone` of a
   * path does), instead of being sent through the pack protocol and indexed again. The clone already holds the
   * branches and tags as the fetch's refspecs name them, so only the remote's HEAD is left to record: three git
   * commands where the clone, a command per setting and a fetch took six (on rubocop's 234k objects, 92 ms
   * against 193 of a first step's fixed cost). False (the partial mirror emptied) when the repository's HEAD names
   * no commit: the fetch then says why, as for any other repository.
   */
  private async cloneLocal(url: string, partial: string, settings: [string, string][], options: GitOptions): Promise<boolean> {
    const config = settings.flatMap(([key, value]) => ["--config", `${key}=${value}`]);
    await git(["clone", "--quiet", "--bare", ...config, url, partial], options).catch((error: unknown) => {
      throw fetchError(url, error);
    });
    await git(["config", "--remove-section", "remote.origin"], { ...options, gitDir: partial }).catch(() => undefined);
    // HEAD as cloned: the remote's HEAD (a branch, or the commit of a detached one).
    const recorded = (await gitMaybe(["update-ref", REMOTE_HEAD, "HEAD"], { ...options, gitDir: partial })) !== undefined;
    if (!recorded) await rm(partial, { recursive: true, force: true });
    return recorded;
  }
}

async function lookup(mirror: string, rev: string, signal?: AbortSignal): Promise<Lookup | undefined> {
  const commitOf = async (name: string) => (await gitMaybe(["rev-parse", "--verify", "--quiet", `${name}^{commit}`], { gitDir: mirror, signal }))?.trim();
  // A branch or HEAD from the mirror's files, without git, when no tag has the same name.
  const branchRef = rev === "HEAD" ? REMOTE_HEAD : rev.startsWith("refs/heads/") ? rev : `refs/heads/${rev}`;
  if (
    !/^[0-9a-f]{4,40}$/.test(rev) &&
    !rev.startsWith("refs/tags/") &&
    !(rev !== "HEAD" && !rev.startsWith("refs/") && refExists(mirror, `refs/tags/${rev}`))
  ) {
    const sha = readRef(mirror, branchRef);
    if (sha) return { sha, movingRef: rev === "HEAD" ? "HEAD" : branchRef };
  }
  if (rev === "HEAD") {
    const sha = await commitOf(REMOTE_HEAD);
    return sha ? { sha, movingRef: "HEAD" } : undefined;
  }
  if (/^[0-9a-f]{40}$/.test(rev)) {
    const sha = await commitOf(rev);
    return sha ? { sha } : undefined;
  }
  if (rev.startsWith("refs/heads/") || rev.startsWith("refs/tags/")) {
    const sha = await commitOf(rev);
    if (!sha) return undefined;
    return rev.startsWith("refs/heads/") ? { sha, movingRef: rev } : { sha };
  }
  const [branch, tag] = await Promise.all([commitOf(`refs/heads/${rev}`), commitOf(`refs/tags/${rev}`)]);
  if (branch && tag && branch !== tag) {
    throw invalidField("git_rev", `must name one ref, and this one is ambiguous: both a branch and a tag; give refs/heads/${rev} or refs/tags/${rev}`, rev);
  }
  if (branch) return { sha: branch, movingRef: `refs/heads/${rev}` };
  if (tag) return { sha: tag };
  if (/^[0-9a-f]{4,39}$/.test(rev)) return lookupShortSha(mirror, rev, signal);
  return undefined;
}

async function lookupShortSha(mirror: string, prefix: string, signal?: AbortSignal): Promise<Lookup | undefined> {
  const candidates = ((await gitMaybe(["rev-parse", `--disambiguate=${prefix}`], { gitDir: mirror, signal })) ?? "").split("\n").filter(Boolean);
  const commits: string[] = [];
  for (const candidate of candidates) {
    if ((await gitMaybe(["cat-file", "-t", candidate], { gitDir: mirror, signal }))?.trim() === "commit") commits.push(candidate);
  }
  if (commits.length > 1) {
    throw invalidField(
      "git_rev",
      `must name one commit, and this prefix is ambiguous: it starts ${commits.length} commits (${commits.slice(0, 5).join(", ")}); give more digits`,
      prefix,
    );
  }
  return commits[0] ? { sha: commits[0] } : undefined;
}

/** Turns git's words into what the caller can act on. */
function fetchError(url: string, error: unknown): Error {
  if (!(error instanceof GitFailure)) return error as Error;
  const said = error.stderr;
  const why = said.trim().split("\n").filter(Boolean).slice(-2).join(" / ") || `exit ${error.code}`;
  if (error.code === null) return unavailable(`fetching ${url} did not finish in time or was stopped: ${why}`);
  // The adapter says a full disk in its own words: not the repository's fault.
  if (/No space left on device/i.test(said)) return error;
  if (/couldn't find remote ref HEAD/i.test(said)) return notFound(`repository ${url} has no commits`);
  if (/not found|does not appear to be a git repository|does not exist|no such file|not exported/i.test(said)) {
    return notFound(`repository ${url} was not found: ${why}`);
  }
  if (/authentication failed|could not read (username|password)|permission denied|terminal prompts disabled/i.test(said)) {
    return failedPrecondition(`repository ${url} needs credentials the context-service does not have: ${why}`);
  }
  return unavailable(`repository ${url} could not be fetched (retry when it is reachable): ${why}`);
}
