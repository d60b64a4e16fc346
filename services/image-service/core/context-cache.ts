import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, statSync } from "node:fs";
import { mkdir, readFile, readdir, rename, rm, stat, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { spawn } from "node:child_process";
import { SingleFlight } from "../../shared/single-flight.js";
import { stableTime } from "../../shared/stable-time.js";
import { ImageError, invalidField } from "./errors.js";
import type { ContextDescription, ContextFileInfo, ContextSource, LocalContext, RepositoryOptions } from "./model.js";
import { keepRecent } from "../../shared/recent-entries.js";
import { readSmallFile } from "../../shared/files/small-files.js";

export type ContextFileKind = "repo-tar" | "step-context-zip" | "dockerfile" | "secret-step-context-zip" | "trust-store-tar";

type OptionalFile = "repo-tar" | "trust-store-tar";

/** One directory of the build context as the context-service describes it (ContextDirectory). */
export interface RemoteDirectory {
  name: string;
  identity: string;
  hostPath: string;
}

export interface RemoteContext {
  contextId: string;
  gitRev: string;
  gitSha: string;
  defaultDockerfile: boolean;
  repositoryId: string;
  repositoryOptions: RepositoryOptions;
  /** repo.tar and opschain-trust-store.tar are listed only when the Dockerfile refers to them. */
  files: Omit<Record<ContextFileKind, ContextFileInfo>, OptionalFile> & Partial<Record<OptionalFile, ContextFileInfo>>;
  directories: RemoteDirectory[];
}

/** Where contexts are prepared (the context-service over gRPC in production). */
export interface ContextProvider {
  describe(contextId: string, signal?: AbortSignal): Promise<RemoteContext>;
  read(contextId: string, kind: ContextFileKind, signal?: AbortSignal): AsyncIterable<Uint8Array>;
}

const CONTEXT_ID = /^sha256:[0-9a-f]{64}$/;
const SWEEP_INTERVAL_MS = 10 * 60_000;
const RECENT_CONTEXTS = 256;
/** How long a description's file locations are trusted for making its context local. */
const DESCRIPTION_FRESH_MS = 10_000;

/**
 * Makes prepared contexts local. The repository's directories (and repo.tar) are read where the context-service
 * wrote them when this service shares its filesystem (checked by each directory's identity file), so a new
 * commit copies nothing here; otherwise repo.tar is downloaded once and unpacked. The small files are copied
 * to local disk, verified against their digests, each with an mtime derived from its digest: BuildKit
 * re-sends a file only when its size, mtime or mode change.
 */
export class ContextCache implements ContextSource {
  private readonly downloads = new SingleFlight<LocalContext>();
  private lastSweep = Date.now();
  /** Contexts made local lately, least recently used first. */
  private readonly recent = new Map<string, RecentContext>();
  /**
   * Contexts described lately, least recently used first, with the context-service's answer and when it came: a
   * context's id names its content, so its description never changes; where its files lie may (see fetch).
   */
  private readonly descriptions = new Map<string, { description: ContextDescription; remote: RemoteContext; at: number }>();
  /** The directories a context just fetched reads in place, until materialize() remembers them with it. */
  private readonly inPlace = new Map<string, RemoteDirectory[]>();

  /** maxAgeMs: a context unused this long is removed (no build takes that long). */
  constructor(
    private readonly provider: ContextProvider,
    private readonly dir: string,
    private readonly maxAgeMs = 24 * 3600_000,
  ) {}

  /**
   * A context's description: from the context made local, else from the context-service (GetContext), kept. A
   * step whose properties alone changed gets a new context whose image exists: this tells so with one round
   * trip and no file copied.
   */
  async describe(contextId: string, signal?: AbortSignal): Promise<ContextDescription> {
    checkContextId(contextId);
    const known = this.recent.get(contextId)?.context ?? this.descriptions.get(contextId)?.description;
    if (known) return known;
    const remote = await this.provider.describe(contextId, signal);
    const description = describedBy(remote);
    keepRecent(this.descriptions, contextId, { description, remote, at: Date.now() }, RECENT_CONTEXTS);
    return description;
  }

  async materialize(contextId: string, signal?: AbortSignal): Promise<LocalContext> {
    checkContextId(contextId);
    // A context is named by its content: one made local before is the same while its files and the directories
    // it reads in place are here, and needs no GetContext.
    const known = this.recent.get(contextId);
    const context =
      known && this.stillHere(known)
        ? known.context
        : // One download per context however many builds ask; it stops only when all of them have gone.
          await this.downloads.run(contextId, (workSignal) => this.fetch(contextId, workSignal), signal);
    // Callers that shared one fetch find the entry the first of them made.
    const current = this.recent.get(contextId);
    const entry = current?.context === context ? current : { context, inPlace: this.inPlace.get(contextId) ?? [] };
    this.inPlace.delete(contextId);
    keepRecent(this.recent, contextId, entry, RECENT_CONTEXTS);
    const now = new Date();
    await utimes(join(this.dir, contextId.slice(7)), now, now).catch(() => undefined);
    if (Date.now() - this.lastSweep > Math.min(this.maxAgeMs, SWEEP_INTERVAL_MS)) await this.sweep();
    return context;
  }

  /**
   * Whether a context made local before is still whole: its files, and the directories it reads in place (by
   * their identity files). Synchronous: a warm step's dozen stats and small reads take microseconds each this
   * way, where each round trip through libuv's thread pool costs a tenth of a millisecond or more.
   */
  private stillHere({ context, inPlace }: RecentContext): boolean {
    const present = (path: string) => statSync(path, { throwIfNoEntry: false }) !== undefined;
    return present(join(this.dir, context.contextId.slice(7))) && Object.values(context.contextSources).every(present) && sharedDirectoriesHere(inPlace);
  }

  /** Removes the contexts unused for longer than maxAgeMs (and staging a crash left); returns the ids removed. */
  async sweep(): Promise<string[]> {
    this.lastSweep = Date.now();
    const removed: string[] = [];
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      const used = (await stat(join(this.dir, name)).catch(() => undefined))?.mtimeMs;
      if (used === undefined || Date.now() - used <= this.maxAgeMs) continue;
      await rm(join(this.dir, name), { recursive: true, force: true });
      if (/^[0-9a-f]{64}$/.test(name)) removed.push(`sha256:${name}`);
      this.recent.delete(`sha256:${name}`);
    }
    return removed;
  }

  private async fetch(contextId: string, signal: AbortSignal): Promise<LocalContext> {
    // The answer describe() just had (a build right after its reuse check) saves a second GetContext; an older
    // one is asked again, for where the context-service keeps the files now.
    const described = this.descriptions.get(contextId);
    const remote = described && Date.now() - described.at < DESCRIPTION_FRESH_MS ? described.remote : await this.provider.describe(contextId, signal);
    const root = join(this.dir, contextId.slice(7));
    const saved = await readFile(join(root, "sources.json"), "utf8").then(
      (text) => JSON.parse(text) as Record<string, string>,
      () => undefined,
    );
    // The saved context is whole when its directories were copied here, or were read in place where the
    // context-service keeps them now and are still there (it drops unused ones, and may make them again
    // elsewhere); otherwise the context is made local again.
    const savedDirectories = remote.directories.map((directory) => saved?.[directory.name]);
    const copied = savedDirectories.every((path) => path?.startsWith(`${root}/`));
    const readInPlace =
      remote.directories.every((directory, index) => savedDirectories[index] === directory.hostPath) && sharedDirectoriesHere(remote.directories);
    if (saved !== undefined && (copied || readInPlace)) {
      this.inPlace.set(contextId, copied ? [] : remote.directories);
      return { ...layout(root, remote), contextSources: saved };
    }
    const staging = `${root}.${process.pid}.${Date.now()}.tmp`;
    try {
      const staged = layout(staging, remote);
      const final = layout(root, remote);
      const targets: Array<["step-context-zip" | "dockerfile" | "secret-step-context-zip", string]> = [
        ["step-context-zip", join(staging, "step_context.json.zip")],
        ["dockerfile", join(staged.dockerfileDir, "Dockerfile")],
        ["secret-step-context-zip", staged.secretZipPath],
      ];
      for (const [kind, path] of targets) {
        await mkdir(join(path, ".."), { recursive: true, mode: kind === "secret-step-context-zip" ? 0o700 : 0o755 });
        await this.download(contextId, kind, remote.files[kind], path, signal);
      }
      const sources: Record<string, string> = { "step_context.json.zip": join(root, "step_context.json.zip") };
      const trustStore = remote.files["trust-store-tar"];
      if (trustStore) {
        await this.download(contextId, "trust-store-tar", trustStore, join(staging, "opschain-trust-store.tar"), signal);
        sources["opschain-trust-store.tar"] = join(root, "opschain-trust-store.tar");
      }
      const repoTar = remote.files["repo-tar"];
      if (repoTar) {
        if (await sharedFile(repoTar)) sources["repo.tar"] = repoTar.hostPath!;
        else {
          await this.download(contextId, "repo-tar", repoTar, join(staging, "repo.tar"), signal);
          sources["repo.tar"] = join(root, "repo.tar");
        }
      }
      if (remote.directories.length > 0) {
        if (sharedDirectoriesHere(remote.directories)) {
          for (const directory of remote.directories) sources[directory.name] = directory.hostPath;
          this.inPlace.set(contextId, remote.directories);
        } else {
          // The whole repository in the last directory, the others empty: the same tree once copied in order.
          await this.unpackRepoTar(contextId, join(staging, "repository"), signal);
          await mkdir(join(staging, "empty"));
          for (const directory of remote.directories) sources[directory.name] = join(root, "empty");
          sources[remote.directories[remote.directories.length - 1]!.name] = join(root, "repository");
        }
      }
      await writeFile(join(staging, "sources.json"), JSON.stringify(sources));
      await rm(root, { recursive: true, force: true });
      await rename(staging, root);
      return { ...final, contextSources: sources };
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }

  /**
   * A context file, verified against its digest: copied from where the context-service keeps it when this
   * service shares its filesystem (no round trip), else read over ReadContextFile.
   */
  private async download(contextId: string, kind: ContextFileKind, expected: ContextFileInfo, path: string, signal?: AbortSignal): Promise<void> {
    const hash = createHash("sha256");
    let size = 0n;
    const provider = this.provider;
    const local = (await sharedFile(expected)) ? expected.hostPath! : undefined;
    await pipeline(
      async function* () {
        const chunks = local ? createReadStream(local) : provider.read(contextId, kind, signal);
        for await (const chunk of chunks as AsyncIterable<Uint8Array>) {
          hash.update(chunk);
          size += BigInt(chunk.length);
          yield chunk;
        }
      },
      createWriteStream(path, { mode: kind === "secret-step-context-zip" ? 0o600 : 0o644 }),
      { signal },
    );
    const digest = `sha256:${hash.digest("hex")}`;
    if (digest !== expected.digest || size !== expected.size) {
      throw new ImageError(
        "data-loss",
        `context ${contextId}: ${kind} arrived as ${digest} (${size} bytes), expected ${expected.digest} (${expected.size} bytes)`,
      );
    }
    const mtime = stableTime(digest);
    await utimes(path, mtime, mtime);
  }

  /** Streams repo.tar into tar, which unpacks it with every file's time set to now, so all of it is sent. */
  private async unpackRepoTar(contextId: string, dir: string, signal: AbortSignal): Promise<void> {
    await mkdir(dir, { recursive: true });
    const child = spawn("tar", ["-x", "-m", "-C", dir], { stdio: ["pipe", "ignore", "pipe"], signal });
    // Listening first: a tar that cannot start (out of file descriptors, say) emits 'error' on the next tick.
    const exited = new Promise<number | null>((resolve, reject) => {
      child.once("error", reject);
      child.once("close", resolve);
    });
    exited.catch(() => undefined);
    if (!child.stdin || !child.stderr)
      throw new ImageError("unavailable", "cannot start tar to unpack repo.tar: no pipes could be made for it (out of file descriptors?)");
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    // tar may exit once it has read the archive's end blocks, before our stream has ended: its exit status,
    // not the closed pipe, says whether the archive was whole.
    await pipeline(this.provider.read(contextId, "repo-tar", signal), child.stdin, { signal }).catch((error: NodeJS.ErrnoException) => {
      if (signal.aborted || (error.code !== "ERR_STREAM_PREMATURE_CLOSE" && error.code !== "EPIPE")) throw error;
    });
    const code = await exited;
    if (code !== 0) throw new ImageError("internal", `context ${contextId}: unpacking repo.tar failed: ${stderr.trim()}`);
  }
}

interface RecentContext {
  context: LocalContext;
  /** The context-service's directories it reads in place, checked by their identity files before reuse. */
  inPlace: RemoteDirectory[];
}

function checkContextId(contextId: string): void {
  if (!CONTEXT_ID.test(contextId)) throw invalidField("context_id", 'must be a prepared context\'s id: "sha256:" and 64 hex digits', contextId);
}

function describedBy(remote: RemoteContext): ContextDescription {
  return {
    contextId: remote.contextId,
    gitRev: remote.gitRev,
    gitSha: remote.gitSha,
    defaultDockerfile: remote.defaultDockerfile,
    repositoryId: remote.repositoryId,
    repositoryOptions: remote.repositoryOptions,
    stepContextZip: remote.files["step-context-zip"],
    dockerfile: remote.files.dockerfile,
    ...(remote.files["trust-store-tar"] ? { trustStoreTar: remote.files["trust-store-tar"] } : {}),
  };
}

function layout(root: string, remote: RemoteContext): Omit<LocalContext, "contextSources"> {
  return {
    ...describedBy(remote),
    dockerfileDir: join(root, "dockerfile"),
    secretZipPath: join(root, "secret", "step_context.json.zip"),
  };
}

/** Whether the context-service's blob is on this filesystem: it is named by its digest, so its size confirms it. */
async function sharedFile(file: ContextFileInfo): Promise<boolean> {
  if (!file.hostPath) return false;
  const info = await stat(file.hostPath).catch(() => undefined);
  return info !== undefined && BigInt(info.size) === file.size;
}

/** Whether every directory is on this filesystem, complete: its identity file beside it says what it holds. */
function sharedDirectoriesHere(directories: RemoteDirectory[]): boolean {
  return directories.every((directory) => {
    if (directory.identity === "empty") return statSync(directory.hostPath, { throwIfNoEntry: false })?.isDirectory() === true;
    return readSmallFile(`${directory.hostPath}.identity`) === directory.identity;
  });
}
