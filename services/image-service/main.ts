import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { serviceTransport } from "../shared/client/transport.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { createLogger } from "../shared/log.js";
import { ServiceMetrics } from "../shared/metrics.js";
import { readRegistryCredentials } from "../shared/registry/credentials.js";
import { RegistryClient } from "../shared/registry/registry-client.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { startTracingFromSettings } from "../shared/tracing-setup.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";
import { ContextServiceProvider } from "./api/context-service-provider.js";
import { imageServiceAdapter } from "./api/image-service-adapter.js";
import type { BuildKitTls } from "./buildkit/address.js";
import { BuildKitClient } from "./buildkit/client.js";
import { buildDockerfile } from "./buildkit/dockerfile-build.js";
import { ShardedBuilder } from "./buildkit/sharded-builder.js";
import { Builder } from "./core/builder.js";
import { ContextCache } from "./core/context-cache.js";
import { ImageBuilder } from "./core/image-builder.js";
import type { Handoff } from "./core/model.js";
import { ReuseRecords } from "./core/reuse-records.js";
import { DockerApi } from "./docker/docker-api.js";

const tracing = startTracingFromSettings("image-service");
const logger = createLogger("image-service");
const stateDir = setting("STEPRUNNER_IMAGE_STATE_DIR", join(setting("STEPRUNNER_STATE_DIR", "/var/lib/steprunner"), "image"));
const registryAddress = setting("STEPRUNNER_REGISTRY_ADDR", "127.0.0.1:5000");
const buildkitAddress = setting("STEPRUNNER_BUILDKIT_ADDR", "docker-unix:///var/lib/steprunner/run/docker.sock");
// Several comma-separated addresses spread builds over several daemons (a buildkitd StatefulSet).
const buildkitAddresses = buildkitAddress.split(",").map((address) => address.trim()).filter(Boolean);
const dockerSocket = setting(
  "STEPRUNNER_DOCKER_SOCKET",
  buildkitAddresses[0]!.startsWith("docker-unix://") ? buildkitAddresses[0]!.slice("docker-unix://".length) : "/var/lib/steprunner/run/docker.sock",
);
// dockerd's BuildKit leaves images in dockerd's store; a standalone buildkitd pushes them to the registry.
const imageOutput = setting("STEPRUNNER_IMAGE_OUTPUT", buildkitAddresses[0]!.startsWith("docker-unix://") ? "dockerd" : "registry");
if (imageOutput !== "dockerd" && imageOutput !== "registry") throw new Error(`STEPRUNNER_IMAGE_OUTPUT must be dockerd or registry, got "${imageOutput}"`);
const handoff = setting("STEPRUNNER_IMAGE_HANDOFF", imageOutput === "registry" ? "registry" : "layer-store");
if (handoff !== "layer-store" && handoff !== "registry") throw new Error(`STEPRUNNER_IMAGE_HANDOFF must be layer-store or registry, got "${handoff}"`);
const defaultBaseRunner = setting("OPSCHAIN_BASE_RUNNER", `${registryAddress}/steprunner/runner:${STEPRUNNER_VERSION}`);

const metrics = new ServiceMetrics("image-service");
const builds = metrics.histogram("steprunner_image_builds_seconds", "Image requests by outcome (built, reused, failed, cancelled) and their time", ["outcome"], [0.05, 0.2, 1, 5, 20, 60, 300, 1200]);
const retries = metrics.counter("steprunner_buildkit_retries_total", "Builds tried again after the connection to BuildKit failed", []);
const tls = await buildkitTls();
const buildkits = buildkitAddresses.map((address) => new BuildKitClient(address, { tls: address.startsWith("tcp://") ? tls : undefined }));
const buildkit = buildkits[0]!;
const authFile = setting("STEPRUNNER_REGISTRY_AUTH_FILE", "");
const registryCredentials = authFile ? readRegistryCredentials(authFile) : undefined;
const sharded = new ShardedBuilder(
  buildkits.map((client, index) => ({
    address: buildkitAddresses[index]!,
    build: (build, onStatus, signal) => buildDockerfile(client, build, onStatus, signal),
  })),
);
const registry = new RegistryClient(registryAddress);
const contextService = serviceTransport(setting("STEPRUNNER_CONTEXT_ADDR", "127.0.0.1:7701"));
const builder = new Builder(buildkit, registry, { buildkitAddress: buildkitAddresses[0]!, defaultBaseRunner });
const images = new ImageBuilder(
  new ContextCache(new ContextServiceProvider(contextService.transport), join(stateDir, "contexts"), numberSetting("STEPRUNNER_IMAGE_CONTEXTS_MAX_AGE_MS", 24 * 3600_000)),
  sharded,
  new DockerApi(dockerSocket, registryCredentials),
  registry,
  new ReuseRecords(join(stateDir, "images")),
  {
    imageOutput,
    defaultBaseRunner,
    version: STEPRUNNER_VERSION,
    stepsRepository: "steprunner/steps",
    defaultHandoff: handoff as Handoff,
    reuseTtlMs: numberSetting("STEPRUNNER_IMAGE_REUSE_TTL_HOURS", 168) * 3_600_000,
    maxConcurrentBuilds: numberSetting("STEPRUNNER_MAX_CONCURRENT_BUILDS", 8),
    transportAttempts: 3,
    registryCredentials,
  },
  {
    buildEnded: (outcome, seconds) => builds.observe({ outcome }, seconds),
    transportRetried: () => retries.inc(),
  },
);
metrics.gauge("steprunner_image_build_queue_depth", "Builds waiting for a build slot", () => images.queueDepth);

// Expired step images are removed regularly so that disk does not grow by one image per step.
const pruneTimer = setInterval(
  () => images.prune().then(
    (removed) => removed.length && logger.info("removed expired step images", { count: removed.length }),
    (error) => logger.warn("removing expired step images failed", { error }),
  ),
  numberSetting("STEPRUNNER_IMAGE_PRUNE_INTERVAL_MINUTES", 60) * 60_000,
).unref();

const server = await startServer({
  address: parseListenAddress(setting("STEPRUNNER_IMAGE_ADDR", "127.0.0.1:7702")),
  services: [ImageService],
  routes: (router) => router.service(ImageService, imageServiceAdapter(builder, images)),
  logger,
  metrics,
});
stopOnSignals(server, logger, numberSetting("STEPRUNNER_SHUTDOWN_GRACE_MS", 10_000), {
  stop: async () => {
    clearInterval(pruneTimer);
    for (const client of buildkits) client.close();
    contextService.close();
    await tracing.shutdown();
  },
});

/** TLS for a tcp:// BuildKit, from PEM files named by the settings (none: plain TCP). */
async function buildkitTls(): Promise<BuildKitTls | undefined> {
  const ca = setting("STEPRUNNER_BUILDKIT_TLS_CA", "");
  if (!ca) return undefined;
  const cert = setting("STEPRUNNER_BUILDKIT_TLS_CERT", "");
  const key = setting("STEPRUNNER_BUILDKIT_TLS_KEY", "");
  return {
    ca: await readFile(ca, "utf8"),
    cert: cert ? await readFile(cert, "utf8") : undefined,
    key: key ? await readFile(key, "utf8") : undefined,
    serverName: setting("STEPRUNNER_BUILDKIT_TLS_SERVER_NAME", "") || undefined,
  };
}
