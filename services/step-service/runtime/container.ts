import { execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, chownSync, lstatSync, mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { chown, cp, lstat, mkdir, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { constants } from "node:os";
import { StringDecoder } from "node:string_decoder";
import { setTimeout as delay } from "node:timers/promises";
import { promisify } from "node:util";
import type { Logger } from "../../shared/log.js";
import type { ImageRootfs } from "../images/images.js";
import { DEFAULT_CGROUP_ROOT, detectCgroups, type StepCgroups } from "./cgroups.js";
import { insideRoot } from "./paths.js";
import { buildSpec, type Limits, type ResolvedUser, resolveUser } from "./spec.js";
import { keepRecent } from "../../shared/recent-entries.js";
import { readBytes, readSmallFile, removeTree } from "../../shared/files/small-files.js";
import { FifoQueue } from "../../shared/fifo-queue.js";

const exec = promisify(execFile);
/**
 * runc's environment: it needs none of the service's (a step's comes from its spec), and copying a large one
 * into every spawn is measurable per step.
 */
const RUNC_ENV = { PATH: process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };
// SYNC_FILE_WORK: the per-step file work on a step's own few small files and directories (its spec, pid file,
// runc's log, its result, the directories of a known image's upper layer) is synchronous: on local disk each
// call takes microseconds, where a round trip through libuv's thread pool costs a tenth of a millisecond or more
// under load, and a step makes a few dozen of them on its path. What may be large (the upper directory a step
// filled, the repository copy) stays asynchronous.
/** Longest line kept whole; longer output is cut into lines of this size so memory stays bounded. */
const MAX_LINE_BYTES = 64 * 1024;

export interface RuntimeSettings {
  runcPath: string;
  /** runc's --root: the service's own, so that a restart can list and reap exactly its containers. */
  runcRoot: string;
  /** Where each step's bundle, upper and work directories live. */
  workDir: string;
  /** Distinguishes this service's cgroups and containers from any other's on the host. */
  instanceTag: string;
  killGraceMs: number;
  /** Largest step_result.json read back. */
  maxResultBytes: number;
  /** Where the cgroup hierarchy is mounted; /sys/fs/cgroup unless a test passes a recorded layout. */
  cgroupRoot?: string;
  /** Containers that may be starting at once (see startSlot); 0 or absent: no limit. */
  startingAtOnce?: number;
  /** How long a container counts as starting, from its runc's spawn (or until it exits, if sooner). */
  startWindowMs?: number;
}

export type OutputStream = "stdout" | "stderr";

export interface ContainerRun {
  stepId: string;
  image: ImageRootfs;
  /** The command (replaces the image's Cmd). */
  args: string[];
  env: Record<string, string>;
  limits: Limits;
  hostNetwork: boolean;
  /** Files mounted read-only at a path inside the container (e.g. the step context). */
  binds: { source: string; destination: string }[];
  /** Directories created owned by the image's user before the step starts (e.g. /opt/opschain/.mintpress). */
  userDirs: string[];
  /** A host directory whose content is copied to /opt/opschain, for images that do not carry the repository. */
  repositoryDir?: string;
  /** A file the step writes, read back from the upper directory after it exits. */
  resultPath: string;
  timeoutMs: number;
  onOutput(stream: OutputStream, text: string, time: Date): void;
  /** Called once runc has been started. */
  onStarted(): void;
  /** Told how long each part of the run took (see RUN_PARTS), as each ends. */
  onPart?(part: RunPart, durationMs: number): void;
  signal: AbortSignal;
}

/**
 * The parts of a container's run, in order: "rootfs" (the step's directories made and the overlay mounted),
 * "setup" (the image's user resolved, the repository folder made, the cgroup created, the spec written),
 * "start-wait" (waiting for a start slot while other containers start, see startSlot), "runc" (`runc run` from
 * its start to its exit and the output drained: the action's own time and runc's),
 * "result" (the OOM check and step_result.json read back), "cleanup" (runc state, mount, directories and
 * cgroup removed). "runc-spawn", inside "runc", is the start of the `runc` process alone (a fork of this one).
 */
export type RunPart = "rootfs" | "setup" | "start-wait" | "runc" | "result" | "cleanup" | "runc-spawn";

export interface ContainerExit {
  /** The process's exit code, or null when a signal ended it. */
  exitCode: number | null;
  signal: string | null;
  oomKilled: boolean;
  timedOut: boolean;
  cancelled: boolean;
  /** The result file's text; or why it could not be read; null when the step wrote none. */
  result: { text: string } | { problem: string } | null;
}

/** runc failed (not the step): the container could not be created or run. */
export class RuntimeError extends Error {}

/**
 * Runs steps in runc containers: overlayfs over the image's lower directories with a fresh upper directory,
 * a spec from the image config and the step, and a teardown that always runs.
 */
export class ContainerRuntime {
  private cgroups?: Promise<StepCgroups>;
  /** Whether overlayfs takes the volatile option here: unknown until the first mount. */
  private volatileOverlay?: boolean;
  /** What runs of each image learnt from its mounted rootfs (see PreparedImage), least recently stored first. */
  private readonly prepared = new Map<string, PreparedImage>();
  /** Holds the containers that are starting (see startSlot); undefined: no limit. */
  private readonly starting?: FifoQueue;

  constructor(
    private readonly settings: RuntimeSettings,
    private readonly logger: Logger,
  ) {
    if (settings.startingAtOnce) this.starting = new FifoQueue(settings.startingAtOnce);
  }

  /** v1 or v2, detected once. */
  stepCgroups(): Promise<StepCgroups> {
    this.cgroups ??= detectCgroups(this.settings.cgroupRoot ?? DEFAULT_CGROUP_ROOT);
    return this.cgroups;
  }

  containerId(stepId: string): string {
    return `steprunner-${this.settings.instanceTag}-${stepId}`;
  }

  async run(request: ContainerRun): Promise<ContainerExit> {
    const id = this.containerId(request.stepId);
    const dir = join(this.settings.workDir, request.stepId);
    const upper = join(dir, "upper");
    let partStart = performance.now();
    const partDone = (part: RunPart) => {
      const now = performance.now();
      request.onPart?.(part, now - partStart);
      partStart = now;
    };
    // An image run before needs no overlay on the host: its upper directory is made as that run's view showed,
    // and runc mounts the overlay in the container's mount namespace, where it ends with the container.
    const key = preparedKey(request);
    const known = request.repositoryDir ? undefined : this.prepared.get(key);
    try {
      const cgroups = await this.stepCgroups();
      if (known) {
        this.makeUpper(dir, known.dirs);
        partDone("rootfs");
        await this.writeSpec(id, dir, request, cgroups, known.user, this.overlayOptions(dir, request.image.lowerDirs));
        partDone("setup");
      } else {
        await this.mountRootfs(dir, request.image.lowerDirs);
        partDone("rootfs");
        const prepared = await this.writeBundle(id, dir, request, cgroups);
        if (prepared && !request.repositoryDir) this.remember(key, prepared);
        partDone("setup");
      }
      const releaseStart = await this.startSlot(request.signal);
      partDone("start-wait");
      const startWindow = setTimeout(releaseStart, this.settings.startWindowMs ?? 0);
      const exit = await this.runc(id, dir, request).finally(() => {
        clearTimeout(startWindow);
        releaseStart();
      });
      partDone("runc");
      const oomKilled = exit.signal === "SIGKILL" && (await cgroups.oomKilled(id));
      const result = await this.readResult(upper, request.resultPath);
      partDone("result");
      return { ...exit, oomKilled, result };
    } finally {
      await this.teardown(request.stepId);
      partDone("cleanup");
    }
  }

  /**
   * The step's directories, fresh, with the user's directories made in the upper directory as `dirs` say.
   * Synchronous, as the step's other small files are (SYNC_FILE_WORK).
   */
  private makeUpper(dir: string, dirs: PreparedDir[]): void {
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(join(dir, "rootfs"), { recursive: true });
    mkdirSync(join(dir, "work"));
    const upper = join(dir, "upper");
    mkdirSync(upper);
    for (const entry of dirs) {
      const path = join(upper, entry.path);
      mkdirSync(path);
      chmodSync(path, entry.mode);
      chownSync(path, entry.uid, entry.gid);
    }
  }

  private overlayOptions(dir: string, lowerDirs: string[]): string[] {
    const options = [`lowerdir=${overlayLowerDirs(lowerDirs)}`, `upperdir=${join(dir, "upper")}`, `workdir=${join(dir, "work")}`];
    return this.volatileOverlay ? [...options, "volatile"] : options;
  }

  private remember(key: string, prepared: PreparedImage): void {
    keepRecent(this.prepared, key, prepared, PREPARED_IMAGES);
  }

  /**
   * The step's directories, fresh, and the overlay of the image's layers with an empty upper directory. The
   * overlay is volatile (Linux 5.10 and later): the upper directory is thrown away after the step, so nothing
   * in it needs to reach the disk, and unmounting it does not wait for a sync of the whole host filesystem the
   * upper directory is on (tens of milliseconds on a busy host). A kernel without the option mounts it without.
   */
  private async mountRootfs(dir: string, lowerDirs: string[]): Promise<void> {
    await rm(dir, { recursive: true, force: true });
    await mkdir(join(dir, "rootfs"), { recursive: true });
    await mkdir(join(dir, "upper"));
    await mkdir(join(dir, "work"));
    const options = `lowerdir=${overlayLowerDirs(lowerDirs)},upperdir=${join(dir, "upper")},workdir=${join(dir, "work")}`;
    if (this.volatileOverlay !== false) {
      try {
        await exec("mount", ["-t", "overlay", "overlay", "-o", `${options},volatile`, join(dir, "rootfs")]);
        this.volatileOverlay = true;
        return;
      } catch (error) {
        if (this.volatileOverlay) throw error;
      }
    }
    await exec("mount", ["-t", "overlay", "overlay", "-o", options, join(dir, "rootfs")]);
    // Only now is it known that the option, not the mount, was refused.
    this.volatileOverlay ??= false;
  }

  /**
   * What runc needs besides the mounted rootfs: the user's directories, the repository if copied, the cgroup and
   * the spec. Returns what a later run of the same image needs to do without the mount (the user, and each
   * directory on the way to the user's directories as the overlay shows it), or undefined when that cannot be
   * told (a symlink on the way).
   */
  private async writeBundle(id: string, dir: string, request: ContainerRun, cgroups: StepCgroups): Promise<PreparedImage | undefined> {
    const rootfs = join(dir, "rootfs");
    const user = await resolveUser(rootfs, request.image.config.user);
    if (request.repositoryDir) {
      const target = insideRoot(rootfs, "/opt/opschain");
      await cp(request.repositoryDir, target, { recursive: true, filter: (source) => !source.endsWith("/.git") });
      await exec("chown", ["-R", "--no-dereference", `${user.uid}:${user.gid}`, target]);
    }
    for (const userDir of request.userDirs) {
      const target = insideRoot(rootfs, userDir);
      await mkdir(target, { recursive: true });
      await chown(target, user.uid, user.gid);
    }
    await this.writeSpec(id, dir, request, cgroups, user);
    const dirs: PreparedDir[] = [];
    for (const userDir of request.userDirs) {
      const parts = userDir.split("/").filter(Boolean);
      for (let depth = 1; depth <= parts.length; depth++) {
        const path = parts.slice(0, depth).join("/");
        if (dirs.some((entry) => entry.path === path)) continue;
        const info = await lstat(join(rootfs, path)).catch(() => undefined);
        if (!info?.isDirectory()) return undefined;
        dirs.push({ path, mode: info.mode & 0o7777, uid: info.uid, gid: info.gid });
      }
    }
    return { user, dirs };
  }

  /** The step's cgroup and its runc spec (config.json). */
  private async writeSpec(id: string, dir: string, request: ContainerRun, cgroups: StepCgroups, user: ResolvedUser, rootfsOverlay?: string[]): Promise<void> {
    await cgroups.create(id, request.limits.memoryBytes);
    const spec = buildSpec({
      rootfs: join(dir, "rootfs"),
      image: request.image.config,
      user,
      args: request.args,
      env: request.env,
      hostname: "step",
      limits: request.limits,
      hostNetwork: request.hostNetwork,
      cgroupsPath: `/${id}/container`,
      binds: request.binds,
      ...(rootfsOverlay ? { rootfsOverlay } : {}),
    });
    writeFileSync(join(dir, "config.json"), JSON.stringify(spec));
  }

  /** Removes everything a step's container left: runc state, cgroups, mounts and directories. Idempotent. */
  async teardown(stepId: string): Promise<void> {
    const id = this.containerId(stepId);
    const dir = join(this.settings.workDir, stepId);
    await killOrphanedRunc(join(dir, "runc.pid"), id);
    // `runc run` deletes its container when the process exits: only a container whose runc was killed (or a
    // crash) leaves state behind, and only then is runc started again to delete it.
    if (exists(join(this.settings.runcRoot, id))) {
      await exec(this.settings.runcPath, ["--root", this.settings.runcRoot, "delete", "--force", id]).catch(() => undefined);
    }
    // Only a rootfs this service mounted on the host: one that runc mounted went with the container.
    if (isMountPoint(join(dir, "rootfs"))) await exec("umount", [join(dir, "rootfs")]).catch(() => undefined);
    // The step's directories and its cgroups are apart: removed at the same time.
    const cgroups = await this.stepCgroups();
    await Promise.all([removeTree(dir), cgroups.remove(id, (path, error) => this.logger.warn("could not remove a cgroup", { path, error }))]);
  }

  /** Reaps what a crashed service left: containers under our runc root, our cgroups, mounts and step dirs. */
  async reap(): Promise<string[]> {
    const stepIds = new Set<string>();
    const prefix = `steprunner-${this.settings.instanceTag}-`;
    const listed = await exec(this.settings.runcPath, ["--root", this.settings.runcRoot, "list", "-q"]).catch(() => ({ stdout: "" }));
    for (const id of listed.stdout.split("\n")) if (id.startsWith(prefix)) stepIds.add(id.slice(prefix.length));
    for (const name of await readdir(this.settings.workDir).catch(() => [] as string[])) stepIds.add(name);
    for (const name of await (await this.stepCgroups()).names()) {
      if (name.startsWith(prefix)) stepIds.add(name.slice(prefix.length));
    }
    for (const stepId of stepIds) await this.teardown(stepId);
    if (stepIds.size > 0) this.logger.warn("reaped containers left by an earlier run", { steps: [...stepIds] });
    return [...stepIds];
  }

  private async runc(id: string, bundle: string, request: ContainerRun): Promise<Omit<ContainerExit, "oomKilled" | "result">> {
    const logFile = join(bundle, "runc.log");
    const spawnStart = performance.now();
    const child = spawn(this.settings.runcPath, ["--root", this.settings.runcRoot, "--log", logFile, "--log-format", "json", "run", "--bundle", bundle, id], {
      stdio: ["ignore", "pipe", "pipe"],
      env: RUNC_ENV,
    });
    // Starting a process forks this one: its cost grows with the service's memory.
    request.onPart?.("runc-spawn", performance.now() - spawnStart);
    // Recorded so that a restart after a crash can stop the `runc run` this process left behind.
    if (child.pid) writeFileSync(join(bundle, "runc.pid"), String(child.pid));
    request.onStarted();
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      child.once("error", (error) => reject(new RuntimeError(`runc could not be started: ${error.message}`)));
      child.once("close", (code, signal) => resolve({ code, signal }));
    });
    const drained = Promise.all([lines(child.stdout!, "stdout", request.onOutput), lines(child.stderr!, "stderr", request.onOutput)]);

    let timedOut = false;
    let cancelled = false;
    let stopping = false;
    let ended = false;
    void exited.finally(() => (ended = true)).catch(() => undefined);
    // TERM, then KILL after the grace period; repeated, because the container may not exist yet when asked.
    const stop = async (reason: "timeout" | "cancel") => {
      if (stopping) return;
      stopping = true;
      if (reason === "timeout") timedOut = true;
      else cancelled = true;
      const killAt = Date.now() + this.settings.killGraceMs;
      while (!ended) {
        await this.kill(id, Date.now() < killAt ? "TERM" : "KILL");
        await Promise.race([exited.catch(() => undefined), delay(200)]);
      }
    };
    const timer = setTimeout(() => void stop("timeout"), request.timeoutMs);
    const onAbort = () => void stop("cancel");
    if (request.signal.aborted) onAbort();
    else request.signal.addEventListener("abort", onAbort, { once: true });
    try {
      const { code, signal } = await exited;
      await drained;
      const failure = runcError(logFile);
      if (failure) throw new RuntimeError(`runc failed: ${failure}`);
      if (signal) throw new RuntimeError(`runc itself was killed by ${signal}`);
      // runc exits with 128+N when the process was killed by signal N.
      const signalName = code !== null && code > 128 && code <= 128 + 64 ? signalNameOf(code - 128) : null;
      return { exitCode: signalName ? null : code, signal: signalName, timedOut, cancelled };
    } finally {
      clearTimeout(timer);
      request.signal.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Waits until fewer than startingAtOnce containers are starting; resolves with the slot's release. A
   * container's start (runc, then the action's interpreter loading its libraries) is CPU-bound: more of them
   * at once than there are cores only share the cores, and each costs more CPU (caches, switches). A long step
   * gives its slot up after startWindowMs, so that steps that wait on the network still run side by side.
   */
  private async startSlot(signal: AbortSignal): Promise<() => void> {
    const starting = this.starting;
    if (!starting) return () => {};
    // A step cancelled on its way here starts nothing, whether or not a slot is free.
    signal.throwIfAborted();
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    await new Promise<void>((admitted, refused) => {
      starting.run(() => (admitted(), released), { signal }).catch(refused);
    });
    return release;
  }

  private async kill(id: string, signal: string): Promise<void> {
    await exec(this.settings.runcPath, ["--root", this.settings.runcRoot, "kill", "--all", id, signal]).catch(() => undefined);
  }

  private async readResult(upper: string, resultPath: string): Promise<ContainerExit["result"]> {
    let path: string;
    try {
      path = insideRoot(upper, resultPath);
    } catch (error) {
      return { problem: (error as Error).message };
    }
    const info = lstatSync(path, { throwIfNoEntry: false });
    if (!info) return null;
    if (!info.isFile()) return { problem: `/${resultPath} is not a regular file` };
    if (info.size > this.settings.maxResultBytes) {
      return { problem: `${resultPath} is ${info.size} bytes, more than the ${this.settings.maxResultBytes} bytes a result may have` };
    }
    // The usual small result is read at once (SYNC_FILE_WORK); a large one without holding up the other steps.
    const bytes = await readBytes(path, info.size);
    return bytes ? { text: bytes.toString("utf8") } : { problem: `/${resultPath} could not be read` };
  }
}

/** A directory with a filesystem mounted on it (another device than its parent's). */
function isMountPoint(path: string): boolean {
  const inner = statSync(path, { throwIfNoEntry: false });
  const outer = statSync(join(path, ".."), { throwIfNoEntry: false });
  return inner !== undefined && outer !== undefined && (inner.dev !== outer.dev || inner.ino === outer.ino);
}

/** A directory to make in a step's upper directory, with the owner and mode the image's overlay shows for it. */
interface PreparedDir {
  /** Relative to the rootfs, parents before children. */
  path: string;
  mode: number;
  uid: number;
  gid: number;
}

/** What a run of an image learnt from its mounted rootfs, so that later runs need no mount on the host. */
interface PreparedImage {
  user: ResolvedUser;
  dirs: PreparedDir[];
}

const PREPARED_IMAGES = 256;

function preparedKey(request: ContainerRun): string {
  return JSON.stringify([request.image.imageId, request.image.lowerDirs, request.image.config.user, request.userDirs]);
}

function exists(path: string): boolean {
  return lstatSync(path, { throwIfNoEntry: false }) !== undefined;
}

/** Kills a `runc run` left by a crashed service, if that pid is still the runc of this container. */
async function killOrphanedRunc(pidFile: string, id: string): Promise<void> {
  const pid = Number(readSmallFile(pidFile) || "0");
  if (!pid) return;
  const cmdline = readSmallFile(`/proc/${pid}/cmdline`) ?? "";
  if (!cmdline.split("\0").includes(id)) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    return; // it has just exited
  }
  for (let i = 0; i < 50 && (await stat(`/proc/${pid}`).catch(() => undefined)); i++) await delay(20);
}

function runcError(logFile: string): string | undefined {
  const text = readSmallFile(logFile) ?? "";
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const entry = JSON.parse(line) as { level?: string; msg?: string };
      if (entry.level === "error" || entry.level === "fatal") return entry.msg;
    } catch {
      // runc writes only JSON lines with --log-format json; anything else is not an error report
    }
  }
  return undefined;
}

function signalNameOf(number: number): string | null {
  const entry = Object.entries(constants.signals).find(([, value]) => value === number);
  return entry ? entry[0] : `signal ${number}`;
}

/** Splits a stream into lines (cut at MAX_LINE_BYTES), each timestamped as it arrives. */
async function lines(stream: Readable, name: OutputStream, onOutput: ContainerRun["onOutput"]): Promise<void> {
  let pending = "";
  const decoder = new StringDecoder("utf8");
  for await (const chunk of stream) {
    pending += decoder.write(chunk as Buffer);
    let newline: number;
    while ((newline = pending.indexOf("\n")) >= 0 || pending.length >= MAX_LINE_BYTES) {
      const end = newline >= 0 ? Math.min(newline, MAX_LINE_BYTES) : MAX_LINE_BYTES;
      onOutput(name, pending.slice(0, end), new Date());
      pending = pending.slice(newline >= 0 && newline <= MAX_LINE_BYTES ? end + 1 : end);
    }
  }
  if (pending) onOutput(name, pending, new Date());
}

/**
 * A short tag of a state directory, so that two services on one host never reap each other's containers. The
 * directory's identity (device and inode) goes in with its path: a service in a container sees its own state
 * volume at the same path as the host's service sees another directory.
 */
export function instanceTagOf(stateDir: string): string {
  mkdirSync(stateDir, { recursive: true });
  const { dev, ino } = statSync(stateDir);
  return createHash("sha256").update(`${stateDir}\0${dev}:${ino}`).digest("hex").slice(0, 8);
}

/**
 * The lowerdir option for an image's layer directories (bottom first): top first, as overlayfs lists them, and
 * each directory once. An image may hold one layer twice (two empty COPY layers share a digest), and overlayfs
 * refuses a directory listed twice; dropping the lower copy changes nothing, since the upper one hides exactly
 * what it would.
 */
export function overlayLowerDirs(bottomFirst: string[]): string {
  const topFirst = [...bottomFirst].reverse();
  return topFirst.filter((dir, index) => topFirst.indexOf(dir) === index).join(":");
}
