import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";

/**
 * The environment every git we start runs with: no prompts (a service has no terminal), no user or system
 * configuration (its results must not depend on the machine), and only the transports we support.
 */
export function gitEnvironment(): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: "/nonexistent",
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_CONFIG_GLOBAL: "/dev/null",
    GIT_TERMINAL_PROMPT: "0",
    GIT_ASKPASS: "/bin/false",
    GIT_SSH_COMMAND: "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
    GIT_ALLOW_PROTOCOL: "file:git:http:https:ssh",
    // Paths we pass (e.g. .mintpress/Dockerfile) are names, never patterns.
    GIT_LITERAL_PATHSPECS: "1",
    LC_ALL: "C",
    TZ: "UTC",
  };
}

export class GitFailure extends Error {
  constructor(
    readonly args: string[],
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(`git ${args.join(" ")} failed (${code === null ? "killed" : `exit ${code}`}): ${stderr.trim().split("\n").slice(-3).join(" / ")}`);
    this.name = "GitFailure";
  }
}

export interface GitOptions {
  /** The repository (GIT_DIR); absent for commands that need none, such as git init. */
  gitDir?: string;
  signal?: AbortSignal | undefined;
  /** Extra environment, e.g. GIT_ALTERNATE_OBJECT_DIRECTORIES. */
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

/** Starts git with its stdout as a stream; the caller reads it and awaits finished. */
export function spawnGit(args: string[], options: GitOptions = {}): { child: ChildProcessWithoutNullStreams; finished: Promise<void> } {
  const env = { ...gitEnvironment(), ...options.env, ...(options.gitDir ? { GIT_DIR: options.gitDir } : {}) };
  // git runs helpers of its own (git-remote-http holds a fetch's connection): it gets a process group, and a
  // cancel or timeout kills the whole group, or the helper would go on fetching after git itself is gone.
  const child = spawn("git", args, { env, detached: true });
  let stderr = "";
  // Listening first: a git that cannot start (out of file descriptors, say) emits 'error' on the next tick.
  const finished = new Promise<void>((resolve, reject) => {
    child.on("error", (error) => reject(options.signal?.aborted ? (options.signal.reason ?? error) : error));
    child.on("close", (code) => {
      if (options.signal?.aborted) reject(options.signal.reason ?? new Error("aborted"));
      else if (code === 0) resolve();
      else reject(new GitFailure(args, code, stderr));
    });
  });
  // The caller awaits finished; this keeps an early rejection from being reported as unhandled meanwhile.
  finished.catch(() => undefined);
  if (!child.stdin || !child.stdout || !child.stderr) throw new Error(`cannot start git ${args[0]}: no pipes could be made for it (out of file descriptors?)`);
  const killGroup = () => {
    try {
      if (child.pid) process.kill(-child.pid, "SIGKILL");
    } catch {
      // the group has ended already
    }
  };
  const timer = options.timeoutMs ? setTimeout(killGroup, options.timeoutMs) : undefined;
  if (options.signal?.aborted) killGroup();
  else options.signal?.addEventListener("abort", killGroup, { once: true });
  child.once("close", () => {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", killGroup);
  });
  // git's exit status tells whether it failed; a write to a git that is gone (EPIPE) must not end the process.
  child.stdin.on("error", () => undefined);
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (text: string) => {
    // Keep the end: that is where git says why it failed.
    stderr = (stderr + text).slice(-8192);
  });
  return { child: child as ChildProcessWithoutNullStreams, finished };
}

/** Runs git to its end and returns its stdout as bytes (for commands with small output). */
export async function gitBytes(args: string[], options: GitOptions = {}): Promise<Buffer> {
  const { child, finished } = spawnGit(args, options);
  const chunks: Buffer[] = [];
  child.stdout.on("data", (chunk: Buffer) => chunks.push(chunk));
  child.stdin.end();
  await finished;
  return Buffer.concat(chunks);
}

/** Runs git to its end and returns its stdout as text. */
export async function git(args: string[], options: GitOptions = {}): Promise<string> {
  return (await gitBytes(args, options)).toString("utf8");
}

/** Like git(), but answers undefined instead of throwing when git exits non-zero (e.g. "no such ref"). */
export async function gitMaybe(args: string[], options: GitOptions = {}): Promise<string | undefined> {
  try {
    return await git(args, options);
  } catch (error) {
    if (error instanceof GitFailure) return undefined;
    throw error;
  }
}

/**
 * Kills the git processes (and their helpers) that a crashed service left working in a directory of ours:
 * they carry GIT_DIR under it in their environment.
 */
export async function killOrphanedGit(root: string): Promise<number> {
  const prefix = `GIT_DIR=${root.replace(/\/$/, "")}/`;
  let killed = 0;
  for (const name of await readdir("/proc").catch(() => [] as string[])) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const environ = await readFile(`/proc/${name}/environ`, "utf8").catch(() => "");
    if (!environ.split("\0").some((entry) => entry.startsWith(prefix))) continue;
    try {
      process.kill(Number(name), "SIGKILL");
      killed++;
    } catch {
      // it has just exited
    }
  }
  return killed;
}
