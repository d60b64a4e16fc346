import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import type { ServerSecurity } from "../../services/shared/security.js";
import { parseListenAddress } from "../../services/shared/server/listen-address.js";
import { type RunningServer, startServer } from "../../services/shared/server/serve.js";
import { stepServiceAdapter } from "../../services/step-service/api/step-service-adapter.js";
import { ImageMaterialiser } from "../../services/step-service/images/images.js";
import { LayerStore } from "../../services/step-service/images/layer-store.js";
import { ContainerRuntime, instanceTagOf } from "../../services/step-service/runtime/container.js";
import { createStepRunner, type StepServiceConfig } from "../../services/step-service/service.js";
import type { StepRunner } from "../../services/step-service/steps/step-runner.js";
import { testRunnerImage } from "./runner-image.js";
import { stack } from "./stack.js";

const MiB = 1024 * 1024;

/** A step-service configuration under a fresh state directory of the test's own. */
export async function testConfig(overrides: Partial<StepServiceConfig> = {}): Promise<StepServiceConfig> {
  await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
  const stateDir = await mkdtemp(join(stack.stateDir, "tmp", "step-test-"));
  return {
    stateDir,
    runcPath: "runc",
    runcRoot: join(stateDir, "runc"),
    maxConcurrentSteps: 4,
    maxStepsPerCaller: 0,
    defaultLimits: { memoryBytes: 512 * MiB, cpuMillis: 1000, pids: 256 },
    defaultTimeoutMs: 60_000,
    maxTimeoutMs: 3_600_000,
    defaultRepoFolder: ".mintpress",
    layerCacheBytes: 10_000 * MiB,
    logCapBytes: 4 * MiB,
    killGraceMs: 1000,
    maxResultBytes: 64 * MiB,
    startingAtOnce: availableParallelism(),
    startWindowMs: 500,
    stepImage: await testRunnerImage(),
    ...overrides,
  };
}

/** The step-service's run-time parts on a test configuration, without its services: a layer store, an image materialiser and the runc runtime. */
export async function runtimeParts(config: StepServiceConfig): Promise<{ layers: LayerStore; materialiser: ImageMaterialiser; runtime: ContainerRuntime }> {
  const logger = createLogger("test", {}, { quiet: true });
  const layers = new LayerStore(join(config.stateDir, "layers"), config.layerCacheBytes, logger);
  await layers.init();
  const runtime = new ContainerRuntime(
    {
      runcPath: "runc",
      runcRoot: config.runcRoot,
      workDir: join(config.stateDir, "work"),
      instanceTag: instanceTagOf(config.stateDir),
      killGraceMs: 1000,
      maxResultBytes: 1024,
    },
    logger,
  );
  return { layers, materialiser: new ImageMaterialiser(layers), runtime };
}

export interface TestStepService {
  config: StepServiceConfig;
  runner: StepRunner;
  layers: LayerStore;
  server: RunningServer;
  client: Client<typeof StepService>;
  /** A client of its own that sends this bearer token; closed by stop(). */
  clientWithToken(token: string): Client<typeof StepService>;
  stop(): Promise<void>;
}

/**
 * Runs a real step-service in this process on 127.0.0.1, port 0; with security, client sends the token
 * given (and clientWithToken others).
 */
export async function startStepService(config: StepServiceConfig, options: { security?: ServerSecurity; token?: string } = {}): Promise<TestStepService> {
  const logger = createLogger("step-service", {}, { quiet: true });
  const { runner, layers } = createStepRunner(config, logger);
  await runner.recover();
  const server = await startServer({
    address: parseListenAddress("127.0.0.1:0"),
    services: [StepService],
    routes: (router) => router.service(StepService, stepServiceAdapter(config, runner)),
    logger,
    ...(options.security ? { security: options.security } : {}),
  });
  const address = `127.0.0.1:${server.port}`;
  const transport = serviceTransport(address, ...(options.token ? [{ token: options.token }] : []));
  const others: ReturnType<typeof serviceTransport>[] = [];
  return {
    config,
    runner,
    layers,
    server,
    client: createClient(StepService, transport.transport),
    clientWithToken(token) {
      const other = serviceTransport(address, { token });
      others.push(other);
      return createClient(StepService, other.transport);
    },
    async stop() {
      transport.close();
      for (const other of others) other.close();
      await server.close(1000);
      await runner.close();
    },
  };
}

/** What a step-service under stateDir has left on the host: containers, mounts, cgroups, step directories. */
export async function leftovers(config: StepServiceConfig): Promise<{ containers: string[]; mounts: string[]; cgroups: string[]; dirs: string[] }> {
  const tag = instanceTagOf(config.stateDir);
  let containers: string[] = [];
  try {
    containers = execFileSync("runc", ["--root", config.runcRoot, "list", "-q"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] })
      .split("\n")
      .filter(Boolean);
  } catch {
    containers = [];
  }
  const mounts = execFileSync("cat", ["/proc/self/mountinfo"], { encoding: "utf8" })
    .split("\n")
    .map((line) => line.split(" ")[4] ?? "")
    .filter((point) => point.startsWith(config.stateDir));
  const cgroups: string[] = [];
  for (const controller of await readdir("/sys/fs/cgroup")) {
    for (const name of await readdir(join("/sys/fs/cgroup", controller)).catch(() => [] as string[])) {
      if (name.includes(`steprunner-${tag}-`)) cgroups.push(join(controller, name));
    }
  }
  const dirs = await readdir(join(config.stateDir, "work")).catch(() => [] as string[]);
  return { containers, mounts, cgroups, dirs };
}

/** A repository directory with an actions.rb. */
export async function repository(config: StepServiceConfig, actions: string): Promise<string> {
  const dir = join(config.stateDir, "repo");
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "actions.rb"), actions);
  return dir;
}

export async function removeState(config: StepServiceConfig): Promise<void> {
  await rm(config.stateDir, { recursive: true, force: true });
}
