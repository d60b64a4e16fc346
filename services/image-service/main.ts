import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { serviceTransport } from "../shared/client/transport.js";
import { createLogger } from "../shared/log.js";
import { ServiceMetrics } from "../shared/metrics.js";
import { readRegistryCredentials } from "../shared/registry/credentials.js";
import { RegistryClient } from "../shared/registry/registry-client.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { startTracingWith } from "../shared/tracing-setup.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";
import { ContextServiceProvider } from "./api/context-service-provider.js";
import { imageServiceAdapter } from "./api/image-service-adapter.js";
import type { BuildKitTls } from "./buildkit/address.js";
import { BuildKitClient } from "./buildkit/client.js";
import { buildDockerfile } from "./buildkit/dockerfile-build.js";
import { ShardedBuilder } from "./buildkit/sharded-builder.js";
import { type BuildKitTlsFiles, readImageServiceConfig } from "./config.js";
import { Builder } from "./core/builder.js";
import { ContextCache } from "./core/context-cache.js";
import { isTransient } from "./core/build-errors.js";
import { ImageBuilder } from "./core/image-builder.js";
import { ReuseRecords } from "./core/reuse-records.js";
import { DockerApi } from "./docker/docker-api.js";
import { ProcMountedLayers } from "./docker/overlay-mounts.js";

// Every setting is read here, once (docs/settings.md).
const config = readImageServiceConfig();
const { common } = config;
const tracing = startTracingWith(common.tracing);
const logger = createLogger("image-service", {}, { level: common.logLevel });

const metrics = new ServiceMetrics("image-service");
const builds = metrics.histogram(
  "steprunner_image_builds_seconds",
  "Image requests by outcome (built, reused, failed, cancelled) and their time",
  ["outcome"],
  [0.05, 0.2, 1, 5, 20, 60, 300, 1200],
);
const retries = metrics.counter("steprunner_buildkit_retries_total", "Builds tried again after the connection to BuildKit failed", []);
const tls = config.buildkitTls ? await readBuildKitTls(config.buildkitTls) : undefined;
const buildkits = config.buildkitAddresses.map((address) => new BuildKitClient(address, { tls: address.startsWith("tcp://") ? tls : undefined }));
const registryCredentials = config.registryAuthFile ? readRegistryCredentials(config.registryAuthFile) : undefined;
const sharded = new ShardedBuilder(
  buildkits.map((client, index) => ({
    address: config.buildkitAddresses[index]!,
    build: (build, onStatus, signal) => buildDockerfile(client, build, onStatus, signal),
  })),
  // A daemon whose connection failed is tried last for its keys during the cooldown (a killed buildkitd).
  { isTransient, cooldownMs: config.shardCooldownMs },
);
const registry = new RegistryClient(config.registryAddress);
const contextService = serviceTransport(config.contextAddress, common.clientSecurity);
const builder = new Builder(
  buildkits.map((api, index) => ({ address: config.buildkitAddresses[index]!, api })),
  registry,
  { defaultBaseRunner: config.defaultBaseRunner },
);
const images = new ImageBuilder({
  contexts: new ContextCache(new ContextServiceProvider(contextService.transport), join(config.stateDir, "contexts"), config.contextsMaxAgeMs),
  buildkit: sharded,
  images: new DockerApi(config.dockerSocket, registryCredentials),
  registry,
  records: new ReuseRecords(join(config.stateDir, "images")),
  settings: {
    imageOutput: config.imageOutput,
    layerCompression: config.layerCompression,
    defaultBaseRunner: config.defaultBaseRunner,
    version: STEPRUNNER_VERSION,
    stepsRepository: config.stepsRepository,
    defaultHandoff: config.handoff,
    reuseTtlMs: config.reuseTtlMs,
    baseImageRecheckMs: config.baseImageRecheckMs,
    maxConcurrentBuilds: config.maxConcurrentBuilds,
    transportAttempts: 3,
    registryCredentials,
    inUseHoldMs: config.inUseHoldMs,
    syntaxPolicy: config.syntaxPolicy,
  },
  mountedLayers: new ProcMountedLayers(),
  observer: {
    buildEnded: (outcome, seconds) => builds.observe({ outcome }, seconds),
    transportRetried: () => retries.inc(),
  },
});
metrics.gauge("steprunner_image_build_queue_depth", "Builds waiting for a build slot", () => images.queueDepth);

// Expired step images are removed regularly so that disk does not grow by one image per step.
const pruneTimer = setInterval(
  () =>
    images.prune().then(
      (removed) => removed.length && logger.info("removed expired step images", { count: removed.length }),
      (error) => logger.warn("removing expired step images failed", { error }),
    ),
  config.pruneIntervalMs,
).unref();

const server = await startServer({
  address: parseListenAddress(config.listenAddress),
  services: [ImageService],
  routes: (router) => router.service(ImageService, imageServiceAdapter(builder, images)),
  logger,
  metrics,
  security: common.serverSecurity,
  limits: common.serverLimits,
});
stopOnSignals(server, logger, common.shutdownGraceMs, {
  stop: async () => {
    clearInterval(pruneTimer);
    for (const client of buildkits) client.close();
    contextService.close();
    await tracing.shutdown();
  },
});

/** TLS for a tcp:// BuildKit, from the PEM files the settings name. */
async function readBuildKitTls(files: BuildKitTlsFiles): Promise<BuildKitTls> {
  return {
    ca: await readFile(files.ca, "utf8"),
    cert: files.cert ? await readFile(files.cert, "utf8") : undefined,
    key: files.key ? await readFile(files.key, "utf8") : undefined,
    serverName: files.serverName,
  };
}
