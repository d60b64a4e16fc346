import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { closeSync, constants, openSync } from "node:fs";
import { Socket } from "node:net";
import { join } from "node:path";
import type { Readable } from "node:stream";

/** A program started by the Launcher, its output read from two FIFOs as it is written. */
export interface Launched {
  pid: number;
  stdout: Readable;
  stderr: Readable;
  /** The exit status as the shell's `wait` gives it: the program's code, or 128 + N when signal N ended it. */
  exited: Promise<number>;
}

/** The launcher could not start the program (not found, no FIFOs, the shell gone). */
export class LaunchError extends Error {}

/**
 * bash reads requests from its stdin, fields ended by NUL: token, verb, directory, argument count, arguments.
 * "fifos" makes the directory's stdout and stderr FIFOs; "start" opens their write ends (the service holds the
 * read ends open by then, so neither open waits), starts the program with them as its output and reports its
 * pid, then its exit status. Each request is served in a subshell, so that one never waits for another.
 */
const SCRIPT = `
while IFS= read -r -d '' t && IFS= read -r -d '' verb && IFS= read -r -d '' dir && IFS= read -r -d '' n; do
  args=()
  for ((i = 0; i < n; i++)); do IFS= read -r -d '' arg; args+=("$arg"); done
  if [[ $verb == fifos ]]; then
    ( mkfifo -m 600 -- "$dir/stdout" "$dir/stderr"; echo "fifos $t $?" ) &
  else
    (
      if ! command -v -- "\${args[0]}" >/dev/null; then echo "missing $t"; exit; fi
      exec 3>"$dir/stdout" 4>"$dir/stderr"
      "\${args[@]}" </dev/null >&3 2>&4 3>&- 4>&- &
      pid=$!
      exec 3>&- 4>&-
      echo "started $t $pid"
      wait "$pid"
      echo "exited $t $?"
    ) &
  fi
done
`;

interface Pending {
  fifos?: (status: number) => void;
  started?: (pid: number) => void;
  exited?: (status: number) => void;
  failed(error: Error): void;
  /** Started: only its subshell's report of the exit is still to come. */
  running?: boolean;
}

/**
 * Starts programs (runc) for the service from a small long-lived bash rather than by forking the service itself.
 * A fork copies the page tables of the whole Node process, and each page it writes afterwards faults once more:
 * measured at 20 steps at once, about 470 page faults and 20 ms of the step-service's CPU a step on a
 * paravirtualised host (docs/benchmarks.md, session 13), where a fork of bash costs little. The shell starts at
 * the first launch and again after it ended; programs it started go on, and their exits are still reported.
 */
export class Launcher {
  private shell?: { child: ChildProcessWithoutNullStreams; pending: Map<string, Pending> };
  private nextToken = 0;

  constructor(
    private readonly env: NodeJS.ProcessEnv,
    private readonly bash = "/bin/bash",
  ) {}

  /**
   * Starts `file` with `args`, its stdout and stderr on FIFOs made in `dir` (an existing directory of the
   * caller's, which the caller removes). Resolves once the program runs; rejects with LaunchError otherwise.
   */
  async launch(file: string, args: string[], dir: string): Promise<Launched> {
    const { request, pending } = this.session();
    const token = String(++this.nextToken);
    const entry: Pending = { failed: () => {} };
    pending.set(token, entry);
    this.refWhilePending();
    let readEnds: number[] = [];
    try {
      const made = await this.answer<number>(entry, "fifos", () => request(token, "fifos", dir, []));
      if (made !== 0) throw new LaunchError(`could not make the output FIFOs in ${dir}`);
      // Opened before the writer, without waiting for it: reads begin only once the program has its output.
      readEnds = ["stdout", "stderr"].map((name) => openSync(join(dir, name), constants.O_RDONLY | constants.O_NONBLOCK));
      const exited = new Promise<number>((resolve, reject) => {
        entry.exited = resolve;
        entry.failed = reject;
      });
      // Nobody waits on it when the start fails below.
      exited.catch(() => {});
      const pid = await this.answer<number>(entry, "started", () => request(token, "start", dir, [file, ...args]));
      entry.running = true;
      const [stdout, stderr] = readEnds.map((fd) => new Socket({ fd, readable: true, writable: false }));
      readEnds = [];
      return { pid, stdout: stdout!, stderr: stderr!, exited };
    } catch (error) {
      pending.delete(token);
      for (const fd of readEnds) closeSync(fd);
      throw error;
    } finally {
      this.refWhilePending();
    }
  }

  /** Ends the shell (its stdin closed); programs it started go on to their end. */
  close(): void {
    this.shell?.child.stdin.end();
    this.shell = undefined;
  }

  /** Waits for one answer of the shell to a request, or its failure. */
  private answer<T extends number>(entry: Pending, kind: "fifos" | "started", send: () => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const failedBefore = entry.failed;
      entry[kind] = resolve as (value: number) => void;
      entry.failed = (error) => {
        failedBefore(error);
        reject(error);
      };
      send();
    });
  }

  private session() {
    if (!this.shell) {
      const child = spawn(this.bash, ["--norc", "--noprofile", "-c", SCRIPT], { stdio: ["pipe", "pipe", "pipe"], env: this.env });
      const pending = new Map<string, Pending>();
      const shell = { child, pending };
      this.shell = shell;
      let stderr = "";
      let buffered = "";
      child.stderr.setEncoding("utf8").on("data", (text: string) => (stderr = (stderr + text).slice(-2000)));
      child.stdout.setEncoding("utf8").on("data", (text: string) => {
        buffered += text;
        for (let newline = buffered.indexOf("\n"); newline >= 0; newline = buffered.indexOf("\n")) {
          const [kind = "", token = "", value = ""] = buffered.slice(0, newline).split(" ");
          buffered = buffered.slice(newline + 1);
          const entry = pending.get(token);
          if (kind === "missing") entry?.failed(new LaunchError("not found"));
          else entry?.[kind as "fifos" | "started" | "exited"]?.(Number(value));
          if (kind === "exited") {
            pending.delete(token);
            this.refWhilePending(shell);
          }
        }
      });
      // stdin refuses writes once the shell is gone; the launches waiting on it learn why below.
      child.stdin.on("error", () => {});
      child.once("error", (error) => this.ended(shell, `could not start ${this.bash}: ${error.message}`));
      // A shell that ended answers no request sent to it: the launches not started yet fail now, while those
      // started hear of their program's exit from its subshell still.
      child.once("exit", () => {
        if (this.shell === shell) this.shell = undefined;
        for (const [token, entry] of shell.pending) {
          if (entry.running) continue;
          shell.pending.delete(token);
          entry.failed(new LaunchError(`the launcher shell ended${stderr ? `: ${stderr.trim()}` : ""}`));
        }
      });
      // Its output ends when the shell and every subshell it left have ended: no answer can come after that.
      child.stdout.once("end", () => this.ended(shell, `the launcher shell ended${stderr ? `: ${stderr.trim()}` : ""}`));
      child.unref();
    }
    const { child, pending } = this.shell;
    const request = (token: string, verb: string, dir: string, args: string[]) => {
      child.stdin.write([token, verb, dir, String(args.length), ...args].map((field) => `${field}\0`).join(""));
    };
    return { request, pending };
  }

  private ended(shell: NonNullable<Launcher["shell"]>, why: string): void {
    if (this.shell === shell) this.shell = undefined;
    for (const entry of shell.pending.values()) entry.failed(new LaunchError(why));
    shell.pending.clear();
  }

  /** The shell's pipes keep this process alive only while a launch waits for an answer (its start or its exit). */
  private refWhilePending(shell = this.shell): void {
    if (!shell) return;
    for (const pipe of [shell.child.stdout, shell.child.stdin, shell.child.stderr] as unknown as Socket[]) {
      if (shell.pending.size > 0) pipe.ref();
      else pipe.unref();
    }
  }
}
