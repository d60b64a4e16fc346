import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { createClient, type Client } from "@connectrpc/connect";
import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport, type ServiceTransport } from "../../services/shared/client/transport.js";
import { ROOT } from "../support/stack.js";
import { clientSecurityFromSettings } from "../../services/shared/config/common.js";

const exec = promisify(execFile);
const env = (name: string, fallback: string) => process.env[name] || fallback;
const SERVICES = ["context-service", "image-service", "step-service"] as const;

/** A local stack as deploy/local/env.sh describes it, with the same defaults, and the means to hurt it. */
export class FaultStack {
  readonly stateDir = env("STEPRUNNER_STATE_DIR", "/var/lib/steprunner");
  readonly runDir = env("STEPRUNNER_RUN_DIR", join(this.stateDir, "run"));
  readonly stepStateDir = env("STEPRUNNER_STEP_STATE_DIR", join(this.stateDir, "step"));
  readonly runcRoot = env("STEPRUNNER_STEP_RUNC_ROOT", join(this.stepStateDir, "runc"));
  readonly contextStateDir = env("STEPRUNNER_CONTEXT_STATE_DIR", join(this.stateDir, "context"));
  readonly imageStateDir = env("STEPRUNNER_IMAGE_STATE_DIR", join(this.stateDir, "image"));
  /** Which BuildKit the stack runs (deploy/local/env.sh's STEPRUNNER_BUILDKIT): dockerd's or a standalone buildkitd. */
  readonly buildkit = env("STEPRUNNER_BUILDKIT", "dockerd") as "dockerd" | "buildkitd";
  /** Where that BuildKit keeps the bundles of the RUNs in progress (and its runc the state of their containers). */
  readonly buildkitExecutor =
    this.buildkit === "buildkitd" ? join(this.stateDir, "buildkitd", "runc-overlayfs", "executor") : join(this.stateDir, "docker", "buildkit", "executor");
  readonly registry = env("STEPRUNNER_REGISTRY_ADDR", "127.0.0.1:5000");
  readonly stepAddr = env("STEPRUNNER_STEP_ADDR", "127.0.0.1:7703");
  private transport: ServiceTransport | undefined;
  private stepClient: Client<typeof StepService> | undefined;

  /** A StepService client; a new one after a restart of the step-service. */
  get steps(): Client<typeof StepService> {
    if (!this.stepClient) {
      this.transport = serviceTransport(this.stepAddr, clientSecurityFromSettings());
      this.stepClient = createClient(StepService, this.transport.transport);
    }
    return this.stepClient;
  }

  resetClients(): void {
    this.transport?.close();
    this.transport = undefined;
    this.stepClient = undefined;
  }

  /** The pid a deploy/local script recorded for a daemon (dockerd or buildkitd, registry, context-service, …). */
  async pidOf(daemon: string): Promise<number | undefined> {
    const text = await readFile(join(this.runDir, `${daemon}.pid`), "utf8").catch(() => "");
    return Number(text.trim()) || undefined;
  }

  async daemonPids(): Promise<number[]> {
    const names = [this.buildkit, "registry", ...SERVICES];
    return (await Promise.all(names.map((name) => this.pidOf(name)))).filter((pid): pid is number => pid !== undefined);
  }

  /** Runs one of deploy/local's scripts with this stack's settings (and any extra ones). */
  async script(name: string, args: string[], extraEnv: Record<string, string> = {}): Promise<void> {
    await exec(join(ROOT, "deploy/local", name), args, { env: { ...process.env, ...extraEnv }, timeout: 180_000, maxBuffer: 16 * 1024 * 1024 });
  }

  /** SIGKILLs a service (by its recorded pid) and waits until it is gone. */
  async kill(service: string): Promise<void> {
    const pid = await this.pidOf(service);
    if (!pid) throw new Error(`${service} has no pid file in ${this.runDir}`);
    process.kill(pid, "SIGKILL");
    await waitUntil(`${service} (pid ${pid}) to exit`, 20_000, async () => !(await alive(pid)));
    if (service === "step-service") this.resetClients();
  }

  /**
   * The services whose recorded process is gone though nobody stopped it (a crash), each with the end of its
   * log, where the crash's stack is.
   */
  async exitedServices(): Promise<{ service: string; report: string }[]> {
    const exited: { service: string; report: string }[] = [];
    for (const service of SERVICES) {
      const pid = await this.pidOf(service);
      if (!pid || (await alive(pid))) continue;
      const log = join(this.stateDir, "logs", `${service}.log`);
      const tail = (await readFile(log, "utf8").catch(() => "")).split("\n").slice(-25).join("\n  ");
      exited.push({ service, report: `${service} (pid ${pid}) exited; the end of ${log}:\n  ${tail}` });
    }
    return exited;
  }

  /** Starts the services that are not serving (after a kill), with extra settings for the ones started now. */
  async startServices(extraEnv: Record<string, string> = {}): Promise<void> {
    await this.script("services.sh", ["start"], extraEnv);
  }

  /** Stops one service gracefully (TERM) and starts it again with extra settings. */
  async restartService(service: string, extraEnv: Record<string, string>): Promise<void> {
    const pid = await this.pidOf(service);
    if (pid && (await alive(pid))) {
      process.kill(pid, "SIGTERM");
      await waitUntil(`${service} to stop`, 30_000, async () => !(await alive(pid)));
    }
    if (service === "step-service") this.resetClients();
    await this.startServices(extraEnv);
  }

  /** Stops the BuildKit daemon and starts it again (each in-flight build loses its daemon). */
  async restartBuildKit(): Promise<void> {
    await this.script(`${this.buildkit}.sh`, ["stop"]);
    await this.script(`${this.buildkit}.sh`, ["start"]);
  }

  close(): void {
    this.resetClients();
  }
}

async function alive(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    return !/^\d+ \(.*\) Z/.test(stat); // a zombie has exited
  } catch {
    return false;
  }
}

export async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>, intervalMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
