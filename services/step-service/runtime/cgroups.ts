import { mkdirSync, readdirSync, rmdirSync, writeFileSync } from "node:fs";
import { access, readFile, readdir } from "node:fs/promises";
import { join } from "node:path";

export const DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup";

/**
 * A step's parent cgroup of our own, named by its container id: it holds the memory limit and outlives the
 * container's cgroup, which runc creates below it (cgroupsPath `/<name>/container`) and removes when the step
 * exits, so that an OOM kill can still be told afterwards. The pids and CPU limits are in the OCI spec: runc
 * writes them to the container's cgroup on either hierarchy.
 */
export interface StepCgroups {
  readonly version: 1 | 2;
  create(name: string, memoryBytes: number): Promise<void>;
  /** Whether the kernel's OOM killer ended a process of the step (asked after a SIGKILL). */
  oomKilled(name: string): Promise<boolean>;
  /** Removes the cgroup and what runc left below it; a cgroup that is gone is no error. */
  remove(name: string, onProblem: (path: string, error: unknown) => void): Promise<void>;
  /** The names of the cgroups there are, to find what a crashed service left. */
  names(): Promise<string[]>;
}

/**
 * cgroup v2 when the root is the unified hierarchy (it has cgroup.controllers) and no v1 memory controller is
 * mounted under it; otherwise v1, as on a hybrid host, where the v2 tree (…/unified) holds no controllers.
 * The root is a parameter so that tests can pass a recorded cgroupfs layout.
 */
export async function detectCgroups(root: string = DEFAULT_CGROUP_ROOT): Promise<StepCgroups> {
  const unified = await access(join(root, "cgroup.controllers")).then(
    () => true,
    () => false,
  );
  return unified && !(await v1MemoryMountedUnder(root)) ? new CgroupV2(root) : new CgroupV1(root);
}

async function v1MemoryMountedUnder(root: string): Promise<boolean> {
  const mounts = await readFile("/proc/self/mounts", "utf8").catch(() => "");
  return mounts.split("\n").some((line) => {
    const [, mountPoint = "", type, options = ""] = line.split(" ");
    return type === "cgroup" && (mountPoint === root || mountPoint.startsWith(`${root}/`)) && options.split(",").includes("memory");
  });
}

const readNumber = async (path: string): Promise<number> => Number((await readFile(path, "utf8").catch(() => "0")).trim());

/** One directory per controller (memory/, pids/, cpu/ …), each with its own tree. */
class CgroupV1 implements StepCgroups {
  readonly version = 1;
  constructor(private readonly root: string) {}

  // Synchronous, as the rest of a step's small file work (container.ts, SYNC_FILE_WORK).
  async create(name: string, memoryBytes: number): Promise<void> {
    const path = join(this.root, "memory", name);
    mkdirSync(path, { recursive: true });
    writeFileSync(join(path, "memory.limit_in_bytes"), String(memoryBytes));
    // Without swap accounting the file is absent and the limit holds for RAM alone.
    writeIfPresent(join(path, "memory.memsw.limit_in_bytes"), String(memoryBytes));
  }

  /**
   * Whether the memory cgroup's usage ever reached its limit: together with a SIGKILL, that is the OOM
   * killer's doing. (v1 counts oom_kill on the container's own cgroup, which runc removes when it exits, and
   * some kernels leave memory.failcnt at 0, so the high-water mark of our parent cgroup is what survives.)
   */
  async oomKilled(name: string): Promise<boolean> {
    const path = join(this.root, "memory", name);
    const limit = await readNumber(join(path, "memory.limit_in_bytes"));
    return (await readNumber(join(path, "memory.failcnt"))) > 0 || (limit > 0 && (await readNumber(join(path, "memory.max_usage_in_bytes"))) >= limit);
  }

  /** Each controller's tree: a dozen hierarchies, each one rmdir as a rule. */
  async remove(name: string, onProblem: (path: string, error: unknown) => void): Promise<void> {
    let controllers: string[];
    try {
      controllers = readdirSync(this.root);
    } catch (error) {
      return onProblem(this.root, error);
    }
    for (const controller of controllers) removeCgroup(join(this.root, controller, name), onProblem);
  }

  async names(): Promise<string[]> {
    const names = new Set<string>();
    for (const controller of await readdir(this.root).catch(() => [] as string[])) {
      for (const name of await readdir(join(this.root, controller)).catch(() => [] as string[])) names.add(name);
    }
    return [...names];
  }
}

/** One tree, with the controllers a cgroup passes to its children named in its cgroup.subtree_control. */
class CgroupV2 implements StepCgroups {
  readonly version = 2;
  constructor(private readonly root: string) {}

  // Synchronous, as the rest of a step's small file work (container.ts, SYNC_FILE_WORK).
  async create(name: string, memoryBytes: number): Promise<void> {
    const controllers = await this.wantedControllers();
    // Already enabled on most hosts; a root that refuses (a delegated one with processes in it) is left as it is.
    writeIfPresent(join(this.root, "cgroup.subtree_control"), controllers);
    const path = join(this.root, name);
    mkdirSync(path, { recursive: true });
    writeFileSync(join(path, "memory.max"), String(memoryBytes));
    // The v1 limit counts memory and swap together; here swap has its own, absent without swap accounting.
    writeIfPresent(join(path, "memory.swap.max"), "0");
    // So that runc can set pids.max and cpu.max on the container's cgroup below this one.
    writeFileSync(join(path, "cgroup.subtree_control"), controllers);
  }

  /**
   * memory.events counts the OOM kills of the cgroup and its descendants (unless the hierarchy is mounted
   * with memory_localevents), so the parent's counter still holds after runc removed the container's cgroup,
   * and a step that sent itself SIGKILL leaves it at 0.
   */
  async oomKilled(name: string): Promise<boolean> {
    const events = await readFile(join(this.root, name, "memory.events"), "utf8").catch(() => "");
    const oomKills = /^oom_kill (\d+)$/m.exec(events)?.[1];
    return Number(oomKills ?? 0) > 0;
  }

  async remove(name: string, onProblem: (path: string, error: unknown) => void): Promise<void> {
    removeCgroup(join(this.root, name), onProblem);
  }

  async names(): Promise<string[]> {
    return readdir(this.root).catch(() => [] as string[]);
  }

  /** "+memory +pids +cpu", less those the root does not offer. */
  private async wantedControllers(): Promise<string> {
    const available = (await readFile(join(this.root, "cgroup.controllers"), "utf8")).trim().split(/\s+/);
    return ["memory", "pids", "cpu"]
      .filter((controller) => available.includes(controller))
      .map((controller) => `+${controller}`)
      .join(" ");
  }
}

/** Writes a cgroup file that may be absent or refused; such a write changes nothing. */
function writeIfPresent(path: string, value: string): void {
  try {
    writeFileSync(path, value);
  } catch {
    // absent (no swap accounting) or refused (a delegated root): the setting stays as it is
  }
}

/**
 * A cgroup directory is removed with rmdir (its files are the kernel's), its child cgroups first. Usually runc
 * has removed the container's own cgroup already, and one rmdir does: the children are listed only when not.
 * Synchronous, as the rest of a step's small file work (container.ts, SYNC_FILE_WORK).
 */
function removeCgroup(path: string, onProblem: (path: string, error: unknown) => void): void {
  try {
    rmdirSync(path);
    return;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
  }
  try {
    for (const child of readdirSync(path, { withFileTypes: true })) {
      if (!child.isDirectory()) continue;
      try {
        rmdirSync(join(path, child.name));
      } catch {
        // what is left makes the parent's rmdir below fail, and that is reported
      }
    }
    rmdirSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") onProblem(path, error);
  }
}
