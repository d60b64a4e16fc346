import { lstat, readFile } from "node:fs/promises";
import type { ImageRunConfig } from "../images/images.js";
import { insideRoot } from "./paths.js";
import { seccompProfile } from "./seccomp.js";

export interface ResolvedUser {
  uid: number;
  gid: number;
  additionalGids: number[];
  home: string;
}

/** Resolves an image's USER ("name", "uid", "name:group", "uid:gid", or "" for root) against the rootfs. */
export async function resolveUser(rootfs: string, user: string): Promise<ResolvedUser> {
  const [userPart = "", groupPart] = user.split(":");
  const passwd = parseColonFile(await readEtc(rootfs, "passwd"));
  const groups = parseColonFile(await readEtc(rootfs, "group"));
  const name = userPart === "" ? "root" : userPart;
  const entry = passwd.find((fields) => fields[0] === name || (/^\d+$/.test(name) && fields[2] === name));
  if (!entry && !/^\d+$/.test(name)) throw new Error(`the image's user "${name}" is not in its /etc/passwd`);
  const uid = entry ? Number(entry[2]) : Number(name);
  let gid = entry ? Number(entry[3]) : 0;
  if (groupPart !== undefined && groupPart !== "") {
    const group = groups.find((fields) => fields[0] === groupPart || fields[2] === groupPart);
    if (!group && !/^\d+$/.test(groupPart)) throw new Error(`the image's group "${groupPart}" is not in its /etc/group`);
    gid = group ? Number(group[2]) : Number(groupPart);
  }
  const userName = entry?.[0];
  const additionalGids = userName
    ? groups
        .filter((fields) => (fields[3] ?? "").split(",").includes(userName))
        .map((fields) => Number(fields[2]))
        .filter((id) => id !== gid)
    : [];
  return { uid, gid, additionalGids, home: entry?.[5] || "/" };
}

/** Reads /etc/NAME of the rootfs, refusing symlinks, which would resolve on the host. */
async function readEtc(rootfs: string, name: string): Promise<string> {
  const path = insideRoot(rootfs, `/etc/${name}`);
  const info = await lstat(path).catch(() => undefined);
  if (!info) return "";
  if (!info.isFile()) throw new Error(`/etc/${name} of the image is not a regular file`);
  return readFile(path, "utf8");
}

function parseColonFile(text: string): string[][] {
  return text
    .split("\n")
    .filter((line) => line && !line.startsWith("#"))
    .map((line) => line.split(":"));
}

export interface Limits {
  memoryBytes: number;
  /** Thousandths of a core. */
  cpuMillis: number;
  pids: number;
}

export interface SpecInput {
  rootfs: string;
  image: ImageRunConfig;
  user: ResolvedUser;
  /** Replaces the image's Cmd (the Entrypoint stays). */
  args: string[];
  /** Added to (and overriding) the image's Env. */
  env: Record<string, string>;
  hostname: string;
  limits: Limits;
  hostNetwork: boolean;
  cgroupsPath: string;
  /** Read-only bind mounts of single files or directories. */
  binds: { source: string; destination: string }[];
  /**
   * When set, runc mounts the image's overlay itself, at / in the container's own mount namespace (so it goes
   * with the container, and nothing is mounted on the host): overlayfs options, lowerdir, upperdir and workdir.
   */
  rootfsOverlay?: string[];
}

// runc's default capability set (`runc spec`); ambient capabilities are left out: with a non-root user and
// no inheritable set they could not be raised anyway.
const CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
const MASKED_PATHS = [
  "/proc/acpi",
  "/proc/asound",
  "/proc/kcore",
  "/proc/keys",
  "/proc/latency_stats",
  "/proc/timer_list",
  "/proc/timer_stats",
  "/proc/sched_debug",
  "/sys/firmware",
  "/proc/scsi",
];
const READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];
const CPU_PERIOD_US = 100_000;

/**
 * The OCI runtime spec of a step's container. The memory limit is not in it: the runtime puts it on a parent
 * cgroup of its own, which outlives runc, so that an OOM kill can still be seen after the container is gone.
 */
export function buildSpec(input: SpecInput): object {
  const env = new Map<string, string>();
  for (const entry of input.image.env) {
    const eq = entry.indexOf("=");
    if (eq > 0) env.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  if (!env.has("PATH")) env.set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  env.set("HOME", input.user.home);
  for (const [name, value] of Object.entries(input.env)) env.set(name, value);
  const args = [...input.image.entrypoint, ...(input.args.length > 0 ? input.args : input.image.cmd)];
  if (args.length === 0) throw new Error("the image has no Entrypoint or Cmd and the step gives no command");

  const namespaces = [{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }];
  if (!input.hostNetwork) namespaces.push({ type: "network" });
  return {
    ociVersion: "1.0.2-dev",
    process: {
      terminal: false,
      user: { uid: input.user.uid, gid: input.user.gid, additionalGids: input.user.additionalGids },
      args,
      env: [...env].map(([name, value]) => `${name}=${value}`),
      cwd: input.image.workingDir || "/",
      capabilities: { bounding: CAPABILITIES, effective: CAPABILITIES, permitted: CAPABILITIES },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: input.rootfs, readonly: false },
    hostname: input.hostname,
    mounts: [
      // First: every other mount goes on top of it.
      ...(input.rootfsOverlay ? [{ destination: "/", type: "overlay", source: "overlay", options: input.rootfsOverlay }] : []),
      { destination: "/proc", type: "proc", source: "proc" },
      { destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"] },
      { destination: "/dev/pts", type: "devpts", source: "devpts", options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
      { destination: "/dev/shm", type: "tmpfs", source: "shm", options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
      { destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"] },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
      { destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup", options: ["nosuid", "noexec", "nodev", "relatime", "ro"] },
      ...input.binds.map((bind) => ({ destination: bind.destination, type: "bind", source: bind.source, options: ["rbind", "ro", "nosuid", "nodev"] })),
      // With the host's network the host's resolver settings are what the step needs.
      ...(input.hostNetwork ? [{ destination: "/etc/resolv.conf", type: "bind", source: "/etc/resolv.conf", options: ["rbind", "ro"] }] : []),
    ],
    linux: {
      cgroupsPath: input.cgroupsPath,
      namespaces,
      resources: {
        devices: [{ allow: false, access: "rwm" }],
        cpu: { quota: Math.round((input.limits.cpuMillis * CPU_PERIOD_US) / 1000), period: CPU_PERIOD_US },
        pids: { limit: input.limits.pids },
      },
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
      seccomp: seccompProfile(),
    },
  };
}
