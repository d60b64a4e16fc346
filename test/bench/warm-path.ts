// The warm path's rows of the benchmark (issue 16): a step whose image exists against the floor, the same action
// alone in a bare runc container (the same image's layers, the same `opschain-action` entry and step-context
// mount, no services), measured interleaved in one run. Used by benchmark.ts, and alone with `--only warm-path`.
import { spawn } from "node:child_process";
import { chmod, chown, lstat, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { unzipSync } from "fflate";
import { detectCgroups, type StepCgroups } from "../../services/step-service/runtime/cgroups.js";
import { overlayLowerDirs } from "../../services/step-service/runtime/container.js";
import { buildSpec, type Limits, resolveUser } from "../../services/step-service/runtime/spec.js";
import { stack } from "../support/stack.js";

export interface Timed {
  /** Seconds (or steps per second for throughput). */
  value: number;
  runs: number;
}

export const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

/** Seconds a piece of work takes, by the monotonic clock. */
export async function seconds(work: () => Promise<unknown>): Promise<number> {
  const started = process.hrtime.bigint();
  await work();
  return Number(process.hrtime.bigint() - started) / 1e9;
}

/** Runs a program to its end and resolves with its exit code (output discarded unless it fails). */
export function runQuiet(file: string, argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ["ignore", "ignore", "pipe"], env });
    let stderr = "";
    child.stderr!.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    child.once("error", reject);
    child.once("close", (code) => (code === 0 ? resolve() : reject(new Error(`${file} ${argv.slice(0, 3).join(" ")} exited ${code}: ${stderr}`))));
  });
}

export interface StepImageLayers {
  /** overlayfs lowerdir option: top first. */
  lowerdir: string;
  env: string[];
  workingDir: string;
  user: string;
}

/** A step image's layer directories and run settings, from dockerd. */
export async function stepImageLayers(docker: string[], imageRef: string): Promise<StepImageLayers> {
  const { stdout } = await execText(docker[0]!, [...docker.slice(1), "image", "inspect", imageRef]);
  const inspect = JSON.parse(stdout)[0];
  const data = inspect.GraphDriver.Data;
  return {
    lowerdir: [data.UpperDir, ...(data.LowerDir ? String(data.LowerDir).split(":") : [])].join(":"),
    env: inspect.Config.Env ?? [],
    workingDir: inspect.Config.WorkingDir || "/",
    user: inspect.Config.User ?? "",
  };
}

function execText(file: string, argv: string[]): Promise<{ stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code) => (code === 0 ? resolve({ stdout }) : reject(new Error(`${file} ${argv.slice(0, 3).join(" ")} exited ${code}: ${stderr}`))));
  });
}

/**
 * One bare runc bundle over a step image: an overlay of its layers with a fresh upper directory (mounted once,
 * and kept from run to run unless fresh() makes a new one), the step's step_context.json bind-mounted read-only
 * where the step-service mounts it, the repository folder owned by the image's user, and `runc spec`'s defaults
 * otherwise (no seccomp profile, no resource limits, no services).
 */
export class BareBundle {
  private constructor(
    readonly dir: string,
    private readonly runcRoot: string,
    private readonly lowerdir: string,
  ) {}

  /** The mounted overlay the container runs on. */
  get rootfs(): string {
    return join(this.dir, "rootfs");
  }

  /** The repository folder, made in the overlay owned by the image's user. */
  private repository?: { path: string; uid: number; gid: number };

  /** The overlay, mounted on the bundle's rootfs with an empty upper directory. */
  private async mount(): Promise<void> {
    await mkdir(join(this.dir, "upper"));
    await mkdir(join(this.dir, "work"));
    await runQuiet("mount", [
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${this.lowerdir},upperdir=${join(this.dir, "upper")},workdir=${join(this.dir, "work")}`,
      join(this.dir, "rootfs"),
    ]);
  }

  static async create(
    work: string,
    name: string,
    image: StepImageLayers,
    stepContext: string,
    env: Record<string, string>,
    repoFolder = ".mintpress",
  ): Promise<BareBundle> {
    const dir = join(work, name);
    const rootfs = join(dir, "rootfs");
    await mkdir(rootfs, { recursive: true });
    const bundle = new BareBundle(dir, join(work, "runc"), image.lowerdir);
    await bundle.mount();
    try {
      const user = await resolveUser(rootfs, image.user);
      const repoDir = `/opt/opschain/${repoFolder}`;
      bundle.repository = { path: join(rootfs, repoDir), uid: user.uid, gid: user.gid };
      await bundle.makeRepositoryFolder();
      await writeFile(join(dir, "step_context.json"), stepContext, { mode: 0o644 });
      await runQuiet("runc", ["spec", "--bundle", dir]);
      const spec = JSON.parse(await readFile(join(dir, "config.json"), "utf8"));
      const variables = new Map(image.env.map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)] as const));
      variables.set("HOME", user.home);
      for (const [key, value] of Object.entries({ ...env, OPSCHAIN_REPO_FOLDER: repoFolder })) variables.set(key, value);
      spec.process = {
        ...spec.process,
        terminal: false,
        user: { uid: user.uid, gid: user.gid, additionalGids: user.additionalGids },
        cwd: image.workingDir,
        args: ["opschain-action", "hello"],
        env: [...variables].map(([key, value]) => `${key}=${value}`),
      };
      spec.root = { path: "rootfs", readonly: false };
      spec.hostname = "step";
      spec.mounts.push({
        destination: `${repoDir}/step_context.json`,
        type: "bind",
        source: join(dir, "step_context.json"),
        options: ["rbind", "ro", "nosuid", "nodev"],
      });
      await writeFile(join(dir, "config.json"), JSON.stringify(spec));
      return bundle;
    } catch (error) {
      await bundle.close();
      throw error;
    }
  }

  /** Sets the command the container runs (untimed, before run): the action by default. */
  async setArgs(args: string[]): Promise<void> {
    const spec = JSON.parse(await readFile(join(this.dir, "config.json"), "utf8"));
    spec.process.args = args;
    await writeFile(join(this.dir, "config.json"), JSON.stringify(spec));
  }

  /**
   * A new overlay with an empty upper directory (untimed, before run), as every step gets, in place of the one
   * earlier runs used, whose caches they warmed. The repository folder is made again as create() made it.
   */
  async fresh(): Promise<void> {
    await runQuiet("umount", [join(this.dir, "rootfs")]);
    await rm(join(this.dir, "upper"), { recursive: true, force: true });
    await rm(join(this.dir, "work"), { recursive: true, force: true });
    await this.mount();
    await this.makeRepositoryFolder();
  }

  private async makeRepositoryFolder(): Promise<void> {
    if (!this.repository) return;
    await mkdir(this.repository.path, { recursive: true });
    await chown(this.repository.path, this.repository.uid, this.repository.gid);
  }

  /** Runs the container to its end (`runc run`, which deletes it on exit). */
  async run(id: string): Promise<void> {
    await runcRun(this.runcRoot, this.dir, id);
  }

  async close(): Promise<void> {
    await runQuiet("umount", [join(this.dir, "rootfs")]).catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * The step's own container in bare runc: the spec the step-service writes (`buildSpec`: its seccomp profile, the
 * CPU and pids limits, a cgroup below a parent of ours that holds the memory limit, the image's overlay mounted by
 * runc with a new upper directory each run), run by this process with no service around it. Beside the floor it
 * tells how much of a warm step's `runc` part is the container's spec and how much the services' work beside it.
 * prepare() and cleanup() are untimed, as the step-service's `setup` and `cleanup` parts are outside its `runc`.
 */
export class StepSpecBundle {
  private constructor(
    private readonly dir: string,
    private readonly runcRoot: string,
    private readonly spec: Record<string, unknown>,
    private readonly lowerdir: string,
    /** The upper directory's folders on the way to the repository folder: path, mode and owner. */
    private readonly folders: { path: string; mode: number; uid: number; gid: number }[],
    private readonly cgroups: StepCgroups,
    private readonly memoryBytes: number,
  ) {}

  /**
   * `floorRootfs` is a mounted rootfs of the same image (the floor's), read for the image's user and the
   * folders on the way to the repository folder; `withSeccomp` false leaves the profile out, to tell its cost.
   */
  static async create(
    work: string,
    name: string,
    image: StepImageLayers,
    floorRootfs: string,
    stepContext: string,
    env: Record<string, string>,
    limits: Limits,
    withSeccomp: boolean,
    repoFolder = ".mintpress",
  ): Promise<StepSpecBundle> {
    const dir = join(work, name);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "step_context.json"), stepContext, { mode: 0o644 });
    const user = await resolveUser(floorRootfs, image.user);
    const repoDir = `/opt/opschain/${repoFolder}`;
    const folders = [];
    const parts = repoDir.split("/").filter(Boolean);
    for (let depth = 1; depth <= parts.length; depth++) {
      const path = parts.slice(0, depth).join("/");
      const info = await lstat(join(floorRootfs, path));
      folders.push({ path, mode: info.mode & 0o7777, uid: info.uid, gid: info.gid });
    }
    const spec = buildSpec({
      rootfs: join(dir, "rootfs"),
      image: { env: image.env, entrypoint: [], cmd: [], workingDir: image.workingDir, user: image.user },
      user,
      args: ["opschain-action", "hello"],
      env: { ...env, OPSCHAIN_REPO_FOLDER: repoFolder },
      hostname: "step",
      limits,
      hostNetwork: false,
      cgroupsPath: "/",
      binds: [{ source: join(dir, "step_context.json"), destination: `${repoDir}/step_context.json` }],
      rootfsOverlay: [],
    }) as Record<string, unknown> & { linux: Record<string, unknown> };
    if (!withSeccomp) delete spec.linux.seccomp;
    // The image's layers bottom first, as the step-service holds them.
    const lowerdir = overlayLowerDirs(image.lowerdir.split(":").reverse());
    return new StepSpecBundle(dir, join(work, "runc"), spec, lowerdir, folders, await detectCgroups(), limits.memoryBytes);
  }

  /** A new upper directory and the step's parent cgroup, and the spec naming them, for the container `id`. */
  async prepare(id: string): Promise<void> {
    await rm(join(this.dir, "upper"), { recursive: true, force: true });
    await rm(join(this.dir, "work"), { recursive: true, force: true });
    for (const folder of ["rootfs", "upper", "work"]) await mkdir(join(this.dir, folder), { recursive: true });
    for (const folder of this.folders) {
      const path = join(this.dir, "upper", folder.path);
      await mkdir(path);
      await chmod(path, folder.mode);
      await chown(path, folder.uid, folder.gid);
    }
    await this.cgroups.create(id, this.memoryBytes);
    const spec = structuredClone(this.spec) as { mounts: { options?: string[] }[]; linux: { cgroupsPath: string } };
    spec.mounts[0]!.options = [`lowerdir=${this.lowerdir}`, `upperdir=${join(this.dir, "upper")}`, `workdir=${join(this.dir, "work")}`, "volatile"];
    spec.linux.cgroupsPath = `/${id}/container`;
    await writeFile(join(this.dir, "config.json"), JSON.stringify(spec));
  }

  /** Runs the container to its end (`runc run`, which deletes it on exit). */
  async run(id: string): Promise<void> {
    await runcRun(this.runcRoot, this.dir, id);
  }

  /** Removes the step's parent cgroup (runc removed the container's own). */
  async cleanup(id: string): Promise<void> {
    await this.cgroups.remove(id, (path, error) => {
      throw new Error(`could not remove the cgroup ${path}: ${(error as Error).message}`);
    });
  }

  async close(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** `runc run` of a bundle to its end (runc deletes the container as it exits). */
function runcRun(runcRoot: string, bundle: string, id: string): Promise<void> {
  return runQuiet("runc", ["--root", runcRoot, "run", "--bundle", bundle, id]);
}

/** step_context.json of a step, as the step-service mounts it: from the CLI's prepared context (no secrets here). */
export async function stepContextOf(zipPath: string): Promise<string> {
  const files = unzipSync(new Uint8Array(await readFile(zipPath)));
  const json = files["step_context.json"];
  if (!json) throw new Error(`${zipPath} holds no step_context.json`);
  return Buffer.from(json).toString("utf8");
}

/** The env var properties of a properties document (opschain.env of each owner, later owners winning). */
export function envOf(props: Record<string, unknown>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const values of Object.values(props)) {
    const set = ((values as { opschain?: { env?: Record<string, unknown> } }).opschain?.env ?? {}) as Record<string, unknown>;
    for (const [name, value] of Object.entries(set)) env[name] = typeof value === "string" ? value : JSON.stringify(value);
  }
  return env;
}

/** Runs `total` containers, `width` at a time, each worker on its own bundle; returns containers per second. */
export async function bareThroughput(bundles: BareBundle[], total: number, prefix: string): Promise<number> {
  let next = 0;
  const elapsed = await seconds(() =>
    Promise.all(
      bundles.map(async (bundle, worker) => {
        for (let i = next++; i < total; i = next++) await bundle.run(`${prefix}-${worker}-${i}`);
      }),
    ),
  );
  return total / elapsed;
}

/** The docker CLI of the local stack's dockerd. */
export const DOCKER = ["/usr/bin/docker", "--host", `unix://${stack.runDir}/docker.sock`];

/** CPU time of a process in ms: its own, and that of the children it has waited for (user + system). */
export async function processCpu(pid: number | "self"): Promise<{ own: number; children: number }> {
  const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1]!.split(" ");
  const ms = (index: number) => (Number(fields[index]) * 1000) / CLOCK_TICKS;
  return { own: ms(11) + ms(12), children: ms(13) + ms(14) };
}

/** Linux's USER_HZ, which /proc/<pid>/stat counts in. */
const CLOCK_TICKS = 100;

/**
 * CPU per step of each process while work runs, in ms: the services (their own, and the step-service's
 * children, which are runc and the containers), and this process's waited children (bare runc).
 */
export async function cpuPerStep(pids: Record<string, number>, steps: number, work: () => Promise<unknown>): Promise<Record<string, number>> {
  const watched: Record<string, number | "self"> = { ...pids, bench: "self" };
  const before = Object.fromEntries(await Promise.all(Object.entries(watched).map(async ([name, pid]) => [name, await processCpu(pid)] as const)));
  await work();
  const perStep: Record<string, number> = {};
  for (const [name, pid] of Object.entries(watched)) {
    const after = await processCpu(pid);
    perStep[name] = (after.own - before[name]!.own) / steps;
    perStep[`${name} children`] = (after.children - before[name]!.children) / steps;
  }
  return perStep;
}
