import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, existsSync, openSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { ROOT, run, stack } from "./stack.js";

/** Upstream buildkitd v0.24, xz-compressed, in the shared/ folder beside the repository. */
const SHARED_BUILDKITD_XZ = resolve(ROOT, "../shared/buildkit/buildkitd-v0.24.0-linux-amd64.xz");
const READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 10_000;
/** Where runc keeps containers' state when not told otherwise (buildkitd v0.24's OCI worker does not tell it). */
const RUNC_DEFAULT_ROOT = "/run/runc";

/** Why tests of a standalone buildkitd cannot run here, or undefined when they can. */
export const buildkitdUnavailable: string | undefined =
  process.env.STEPRUNNER_BUILDKITD_BIN || existsSync(SHARED_BUILDKITD_XZ)
    ? undefined
    : `no standalone buildkitd: set STEPRUNNER_BUILDKITD_BIN to a buildkitd binary, or provide ${SHARED_BUILDKITD_XZ}`;

/**
 * A buildkitd of its own for a test, in a temporary folder (root, socket, config, log, and the binary when
 * it comes from the shared .xz): OCI worker, host network for RUN, our registry reached over plain HTTP.
 */
export class StandaloneBuildKitd {
  readonly address: string;
  /** Why the binary could not be run at all (a wrong STEPRUNNER_BUILDKITD_BIN). */
  private spawnError: Error | undefined;

  private constructor(
    private readonly dir: string,
    private readonly daemon: ChildProcess,
  ) {
    this.address = `unix://${join(dir, "buildkitd.sock")}`;
    daemon.on("error", (error) => (this.spawnError = error));
  }

  /** Without allowNetworkHost, the daemon refuses builds that ask for the network.host entitlement. */
  static async start(options: { allowNetworkHost: boolean }): Promise<StandaloneBuildKitd> {
    const dir = await mkdtemp(join(tmpdir(), "steprunner-buildkitd-"));
    try {
      const binary = process.env.STEPRUNNER_BUILDKITD_BIN || (await extract(SHARED_BUILDKITD_XZ, join(dir, "buildkitd")));
      await writeFile(join(dir, "buildkitd.toml"), `[registry."${stack.registry}"]\n  http = true\n`);
      // Its temporary mounts (a snapshot it reads users from) in its own folder, where kill() and leftovers() see them.
      await mkdir(join(dir, "tmp"));
      const log = openSync(join(dir, "buildkitd.log"), "a");
      const daemon = spawn(
        binary,
        [
          "--root",
          join(dir, "root"),
          "--addr",
          `unix://${join(dir, "buildkitd.sock")}`,
          "--config",
          join(dir, "buildkitd.toml"),
          "--containerd-worker=false",
          "--oci-worker=true",
          "--oci-worker-net=host",
          ...(options.allowNetworkHost ? ["--allow-insecure-entitlement", "network.host"] : []),
        ],
        { stdio: ["ignore", log, log], env: { ...process.env, TMPDIR: join(dir, "tmp") } },
      );
      closeSync(log);
      const buildkitd = new StandaloneBuildKitd(dir, daemon);
      await buildkitd.waitUntilReady().catch(async (error) => {
        await buildkitd.stop();
        throw error;
      });
      return buildkitd;
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
  }

  /** The daemon's --root folder: processes whose command line names it are this daemon's (its runc shims and RUNs). */
  get rootDir(): string {
    return join(this.dir, "root");
  }

  /** The daemon's process id. */
  get pid(): number | undefined {
    return this.daemon.pid;
  }

  /**
   * Kills the daemon at once (SIGKILL), as a lost node or an OOM-killed pod would, and with it what it ran. A
   * buildkitd in a container is PID 1 of its PID namespace, so the kernel kills its RUN containers with it, and
   * its mounts go with the container's mount namespace; here it runs on the host, where its runc containers
   * (whose state is in runc's default root, /run/runc) outlive it: they are killed and deleted, and its mounts
   * unmounted, to leave what the pod's death would. Its folder stays (its log) until stop().
   */
  async kill(): Promise<void> {
    if (!this.exited) {
      this.daemon.kill("SIGKILL");
      await this.exitWithin(STOP_GRACE_MS);
    }
    await this.reapContainers();
    await this.unmount();
  }

  /** What the daemon has on the host besides itself: processes naming its folder, runc containers of its root, mounts under its folder. */
  async leftovers(): Promise<{ processes: string[]; containers: string[]; mounts: string[] }> {
    const processes: string[] = [];
    for (const pid of await readdir("/proc").catch(() => [] as string[])) {
      if (!/^\d+$/.test(pid) || Number(pid) === this.daemon.pid) continue;
      const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
      if (cmdline.includes(this.dir)) processes.push(`${pid} ${cmdline.replace(/\0/g, " ").trim()}`);
    }
    return { processes, containers: await this.containers(), mounts: await mountsUnder(this.dir) };
  }

  /** Ids of the runc containers (runc's default root, where buildkitd's OCI worker keeps them) whose bundle is under the daemon's folder. */
  private async containers(): Promise<string[]> {
    const ids: string[] = [];
    for (const id of await readdir(RUNC_DEFAULT_ROOT).catch(() => [] as string[])) {
      const state = await readFile(join(RUNC_DEFAULT_ROOT, id, "state.json"), "utf8").catch(() => "");
      if (state.includes(`${this.dir}/`)) ids.push(id);
    }
    return ids;
  }

  private async reapContainers(): Promise<void> {
    for (const id of await this.containers()) await run("runc", ["--root", RUNC_DEFAULT_ROOT, "delete", "--force", id]);
  }

  private async unmount(): Promise<void> {
    for (const mountPoint of await mountsUnder(this.dir)) {
      if ((await run("umount", [mountPoint])).code !== 0) await run("umount", ["-l", mountPoint]);
    }
  }

  /** Stops the daemon (SIGTERM, then SIGKILL), unmounts what it left mounted and removes its folder. */
  async stop(): Promise<void> {
    if (!this.exited) {
      this.daemon.kill("SIGTERM");
      if (!(await this.exitWithin(STOP_GRACE_MS))) {
        this.daemon.kill("SIGKILL");
        await this.exitWithin(STOP_GRACE_MS);
      }
    }
    await this.reapContainers();
    await this.unmount();
    await rm(this.dir, { recursive: true, force: true });
  }

  private get exited(): boolean {
    return this.spawnError !== undefined || this.daemon.exitCode !== null || this.daemon.signalCode !== null;
  }

  private async exitWithin(ms: number): Promise<boolean> {
    if (this.exited) return true;
    const timeout = AbortSignal.timeout(ms);
    return once(this.daemon, "exit", { signal: timeout }).then(
      () => true,
      () => this.exited,
    );
  }

  private async waitUntilReady(): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (this.spawnError) throw new Error(`cannot run buildkitd: ${this.spawnError.message}`);
      if (this.exited) throw new Error(`buildkitd exited at start: ${await this.logTail()}`);
      const client = new BuildKitClient(this.address);
      try {
        if ((await client.listWorkers(AbortSignal.timeout(2_000))).length > 0) return;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`buildkitd did not answer within ${READY_TIMEOUT_MS} ms (${String(error)}): ${await this.logTail()}`);
      } finally {
        client.close();
      }
      await sleep(200);
    }
  }

  private async logTail(): Promise<string> {
    return (await readFile(join(this.dir, "buildkitd.log"), "utf8").catch(() => "")).slice(-2_000);
  }
}

async function extract(compressed: string, binary: string): Promise<string> {
  const result = await run("sh", ["-c", 'xz -dc "$1" > "$2"', "extract", compressed, binary]);
  if (result.code !== 0) throw new Error(`cannot extract ${compressed} (is xz installed?): ${result.stderr}`);
  await chmod(binary, 0o755);
  return binary;
}

/** Every mount point this process sees (mountinfo's fifth field, octal escapes undone). */
export async function mountPoints(): Promise<string[]> {
  return (await readFile("/proc/self/mountinfo", "utf8"))
    .split("\n")
    .map((line) => line.split(" ")[4]?.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))))
    .filter((mountPoint): mountPoint is string => mountPoint !== undefined);
}

/** Mount points at or below a folder, deepest first. */
async function mountsUnder(dir: string): Promise<string[]> {
  return (await mountPoints()).filter((mountPoint) => mountPoint === dir || mountPoint.startsWith(`${dir}/`)).sort((a, b) => b.length - a.length);
}
