import { join } from "node:path";
import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { createLogger } from "../shared/log.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";
import { stepServiceAdapter } from "./api/step-service-adapter.js";
import { ImageMaterialiser } from "./images/images.js";
import { LayerStore } from "./images/layer-store.js";
import { ContainerRuntime, instanceTagOf } from "./runtime/container.js";
import { LocalDirectoryContextPreparer, PrebuiltImageBuilder } from "./steps/local.js";
import { StepRunner } from "./steps/step-runner.js";

const logger = createLogger("step-service");
const MiB = 1024 * 1024;

const stateDir = setting("STEPRUNNER_STEP_STATE_DIR", "/var/lib/steprunner/step");
const registry = setting("STEPRUNNER_REGISTRY_ADDR", "127.0.0.1:5000");
const settings = {
  runcPath: setting("STEPRUNNER_RUNC", "runc"),
  maxConcurrentSteps: numberSetting("STEPRUNNER_MAX_CONCURRENT_STEPS", 4),
  defaultLimits: {
    memoryBytes: numberSetting("STEPRUNNER_STEP_MEMORY_MB", 1024) * MiB,
    cpuMillis: numberSetting("STEPRUNNER_STEP_CPU_MILLIS", 2000),
    pids: numberSetting("STEPRUNNER_STEP_PIDS", 512),
  },
  defaultTimeoutMs: numberSetting("STEPRUNNER_STEP_TIMEOUT_S", 3600) * 1000,
  maxTimeoutMs: 24 * 3600 * 1000,
  defaultRepoFolder: setting("OPSCHAIN_REPO_FOLDER", ".mintpress"),
};
const layers = new LayerStore(join(stateDir, "layers"), numberSetting("STEPRUNNER_LAYER_CACHE_MB", 20_480) * MiB, logger);
const runner = new StepRunner(
  { stateDir, maxConcurrentSteps: settings.maxConcurrentSteps, logCapBytes: numberSetting("STEPRUNNER_STEP_LOG_CAP_MB", 16) * MiB },
  {
    // Until the context- and image-service clients are wired in: a local repository directory and a prebuilt image.
    contexts: new LocalDirectoryContextPreparer(),
    images: new PrebuiltImageBuilder(setting("STEPRUNNER_STEP_IMAGE", setting("OPSCHAIN_BASE_RUNNER", `${registry}/steprunner/runner:${STEPRUNNER_VERSION}`))),
    materialiser: new ImageMaterialiser(layers),
    layers,
    runtime: new ContainerRuntime(
      {
        runcPath: settings.runcPath,
        runcRoot: setting("STEPRUNNER_STEP_RUNC_ROOT", join(stateDir, "runc")),
        workDir: join(stateDir, "work"),
        instanceTag: instanceTagOf(stateDir),
        killGraceMs: numberSetting("STEPRUNNER_STEP_KILL_GRACE_S", 10) * 1000,
        maxResultBytes: numberSetting("STEPRUNNER_STEP_RESULT_MAX_MB", 64) * MiB,
      },
      logger,
    ),
    logger,
  },
);
await runner.recover();

const server = await startServer({
  address: parseListenAddress(setting("STEPRUNNER_STEP_ADDR", "127.0.0.1:7703")),
  services: [StepService],
  routes: (router) => router.service(StepService, stepServiceAdapter(settings, runner)),
  logger,
});
stopOnSignals(server, logger, numberSetting("STEPRUNNER_SHUTDOWN_GRACE_MS", 10_000));
