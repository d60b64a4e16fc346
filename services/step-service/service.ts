import { availableParallelism, totalmem } from "node:os";
import { join } from "node:path";
import type { Logger } from "../shared/log.js";
import { type CommonSettings, readCommonSettings } from "../shared/config/common.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";
import type { StepServiceSettings } from "./api/step-service-adapter.js";
import { ImageMaterialiser } from "./images/images.js";
import { LayerStore } from "./images/layer-store.js";
import { ContainerRuntime, instanceTagOf } from "./runtime/container.js";
import { LocalDirectoryContextPreparer, PrebuiltImageBuilder } from "./steps/local.js";
import { ReusableImages } from "./steps/reusable-images.js";
import type { ContextPreparer, ImageBuilder } from "./steps/ports.js";
import { type StepObserver, StepRunner } from "./steps/step-runner.js";

const MiB = 1024 * 1024;

export interface StepServiceConfig extends StepServiceSettings {
  stateDir: string;
  /** Unfinished steps one caller may have; 0 for no limit. */
  maxStepsPerCaller: number;
  runcRoot: string;
  layerCacheBytes: number;
  logCapBytes: number;
  killGraceMs: number;
  maxResultBytes: number;
  /** Containers starting at once (STEPRUNNER_STARTING_CONTAINERS; 0: no limit), see ContainerRuntime. */
  startingAtOnce: number;
  startWindowMs: number;
  /** With STEPRUNNER_STEP_SOURCES=local: the prebuilt image a local directory runs in. */
  stepImage: string;
}

/** Everything the step-service's main reads from the environment, once (docs/settings.md). */
export interface StepServiceProcessConfig {
  common: CommonSettings;
  listenAddress: string;
  /**
   * Where contexts and images come from: the context- and image-service, or "local" (a local directory run
   * in the prebuilt stepImage, for trying the runtime alone).
   */
  sources: "services" | "local";
  contextAddress: string;
  imageAddress: string;
  service: StepServiceConfig;
}

export function readStepServiceProcessConfig(): StepServiceProcessConfig {
  const sources = setting("STEPRUNNER_STEP_SOURCES", "services");
  if (sources !== "services" && sources !== "local") throw new Error(`STEPRUNNER_STEP_SOURCES must be services or local, got "${sources}"`);
  return {
    common: readCommonSettings("step-service"),
    listenAddress: setting("STEPRUNNER_STEP_ADDR", "127.0.0.1:7703"),
    sources,
    contextAddress: setting("STEPRUNNER_CONTEXT_ADDR", "127.0.0.1:7701"),
    imageAddress: setting("STEPRUNNER_IMAGE_ADDR", "127.0.0.1:7702"),
    service: configFromEnv(),
  };
}

/**
 * Steps at once when STEPRUNNER_MAX_CONCURRENT_STEPS is not set: two a CPU, since a step waiting on the network
 * leaves its core to another (container starts, which are CPU-bound, are limited apart), and no more than the
 * host's memory holds at each step's memory limit.
 */
export function defaultMaxConcurrentSteps(cpus: number, hostMemoryBytes: number, stepMemoryBytes: number): number {
  return Math.max(1, Math.min(2 * cpus, Math.floor(hostMemoryBytes / stepMemoryBytes)));
}

/** The step-service's core settings (docs/settings.md), from the environment. */
export function configFromEnv(): StepServiceConfig {
  const stateDir = setting("STEPRUNNER_STEP_STATE_DIR", join(setting("STEPRUNNER_STATE_DIR", "/var/lib/steprunner"), "step"));
  const registry = setting("STEPRUNNER_REGISTRY_ADDR", "127.0.0.1:5000");
  const stepMemoryBytes = numberSetting("STEPRUNNER_STEP_MEMORY_MB", 1024) * MiB;
  return {
    stateDir,
    runcPath: setting("STEPRUNNER_RUNC", "runc"),
    runcRoot: setting("STEPRUNNER_STEP_RUNC_ROOT", join(stateDir, "runc")),
    maxConcurrentSteps: numberSetting("STEPRUNNER_MAX_CONCURRENT_STEPS", defaultMaxConcurrentSteps(availableParallelism(), totalmem(), stepMemoryBytes)),
    startingAtOnce: numberSetting("STEPRUNNER_STARTING_CONTAINERS", availableParallelism()),
    startWindowMs: numberSetting("STEPRUNNER_CONTAINER_START_MS", 500),
    maxStepsPerCaller: numberSetting("STEPRUNNER_MAX_STEPS_PER_CALLER", 0),
    defaultLimits: {
      memoryBytes: stepMemoryBytes,
      cpuMillis: numberSetting("STEPRUNNER_STEP_CPU_MILLIS", 2000),
      pids: numberSetting("STEPRUNNER_STEP_PIDS", 512),
    },
    defaultTimeoutMs: numberSetting("STEPRUNNER_STEP_TIMEOUT_S", 3600) * 1000,
    maxTimeoutMs: 24 * 3600 * 1000,
    defaultRepoFolder: setting("OPSCHAIN_REPO_FOLDER", ".mintpress"),
    layerCacheBytes: numberSetting("STEPRUNNER_LAYER_CACHE_MB", 20_480) * MiB,
    logCapBytes: numberSetting("STEPRUNNER_STEP_LOG_CAP_MB", 16) * MiB,
    killGraceMs: numberSetting("STEPRUNNER_STEP_KILL_GRACE_S", 10) * 1000,
    maxResultBytes: numberSetting("STEPRUNNER_STEP_RESULT_MAX_MB", 64) * MiB,
    stepImage: setting("STEPRUNNER_STEP_IMAGE", setting("OPSCHAIN_BASE_RUNNER", `${registry}/steprunner/runner:${STEPRUNNER_VERSION}`)),
  };
}

/** Wires the core from its parts; contexts and images default to a local directory and the prebuilt image. */
export function createStepRunner(
  config: StepServiceConfig,
  logger: Logger,
  ports: { contexts?: ContextPreparer; images?: ImageBuilder; observer?: StepObserver } = {},
): { runner: StepRunner; layers: LayerStore; runtime: ContainerRuntime } {
  const layers = new LayerStore(join(config.stateDir, "layers"), config.layerCacheBytes, logger);
  const runtime = new ContainerRuntime(
    {
      runcPath: config.runcPath,
      runcRoot: config.runcRoot,
      workDir: join(config.stateDir, "work"),
      instanceTag: instanceTagOf(config.stateDir),
      killGraceMs: config.killGraceMs,
      maxResultBytes: config.maxResultBytes,
      startingAtOnce: config.startingAtOnce,
      startWindowMs: config.startWindowMs,
    },
    logger,
  );
  const runner = new StepRunner(
    { stateDir: config.stateDir, maxConcurrentSteps: config.maxConcurrentSteps, maxStepsPerCaller: config.maxStepsPerCaller, logCapBytes: config.logCapBytes },
    {
      contexts: ports.contexts ?? new LocalDirectoryContextPreparer(),
      images: ports.images ? new ReusableImages(ports.images) : new PrebuiltImageBuilder(config.stepImage),
      materialiser: new ImageMaterialiser(layers),
      layers,
      runtime,
      logger,
      observer: ports.observer,
    },
  );
  return { runner, layers, runtime };
}
