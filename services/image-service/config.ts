import { join } from "node:path";
import { type CommonSettings, readCommonSettings } from "../shared/config/common.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";
import type { ImageOutput, LayerCompression } from "./core/image-builder.js";
import type { SyntaxPolicy } from "./core/syntax-directive.js";
import type { Handoff } from "./core/model.js";

/** PEM files for TLS to a tcp:// BuildKit (mutual with cert and key). */
export interface BuildKitTlsFiles {
  ca: string;
  cert?: string;
  key?: string;
  serverName?: string;
}

/** Everything the image-service's main reads from the environment, once (docs/settings.md). */
export interface ImageServiceConfig {
  common: CommonSettings;
  listenAddress: string;
  contextAddress: string;
  stateDir: string;
  registryAddress: string;
  /** Several spread builds over several daemons (a buildkitd StatefulSet). */
  buildkitAddresses: string[];
  /** Absent: plain TCP to a tcp:// BuildKit. */
  buildkitTls?: BuildKitTlsFiles;
  dockerSocket: string;
  imageOutput: ImageOutput;
  /** With registry output: how pushed layers are compressed. */
  layerCompression: LayerCompression;
  handoff: Handoff;
  syntaxPolicy: SyntaxPolicy;
  defaultBaseRunner: string;
  /** A Docker config.json (auths); absent: anonymous. */
  registryAuthFile?: string;
  contextsMaxAgeMs: number;
  reuseTtlMs: number;
  baseImageRecheckMs: number;
  inUseHoldMs: number;
  pruneIntervalMs: number;
  maxConcurrentBuilds: number;
  /** Repository (in dockerd and the registry) that step images are named in. */
  stepsRepository: string;
  /** How long a BuildKit daemon whose connection failed is tried last. */
  shardCooldownMs: number;
}

export function readImageServiceConfig(): ImageServiceConfig {
  const registryAddress = setting("STEPRUNNER_REGISTRY_ADDR", "127.0.0.1:5000");
  const buildkitAddress = setting("STEPRUNNER_BUILDKIT_ADDR", "docker-unix:///var/lib/steprunner/run/docker.sock");
  const buildkitAddresses = buildkitAddress
    .split(",")
    .map((address) => address.trim())
    .filter(Boolean);
  if (buildkitAddresses.length === 0) throw new Error("STEPRUNNER_BUILDKIT_ADDR names no address");
  const first = buildkitAddresses[0]!;
  const viaDockerd = first.startsWith("docker-unix://");
  // dockerd's BuildKit leaves images in dockerd's store; a standalone buildkitd pushes them to the registry.
  const imageOutput = setting("STEPRUNNER_IMAGE_OUTPUT", viaDockerd ? "dockerd" : "registry");
  if (imageOutput !== "dockerd" && imageOutput !== "registry") throw new Error(`STEPRUNNER_IMAGE_OUTPUT must be dockerd or registry, got "${imageOutput}"`);
  const handoff = setting("STEPRUNNER_IMAGE_HANDOFF", imageOutput === "registry" ? "registry" : "layer-store");
  if (handoff !== "layer-store" && handoff !== "registry") throw new Error(`STEPRUNNER_IMAGE_HANDOFF must be layer-store or registry, got "${handoff}"`);
  const layerCompression = setting("STEPRUNNER_IMAGE_COMPRESSION", "uncompressed");
  if (layerCompression !== "gzip" && layerCompression !== "uncompressed")
    throw new Error(`STEPRUNNER_IMAGE_COMPRESSION must be gzip or uncompressed, got "${layerCompression}"`);
  const syntaxPolicy = setting("STEPRUNNER_DOCKERFILE_SYNTAX", "auto");
  if (syntaxPolicy !== "auto" && syntaxPolicy !== "pull" && syntaxPolicy !== "builtin")
    throw new Error(`STEPRUNNER_DOCKERFILE_SYNTAX must be auto, pull or builtin, got "${syntaxPolicy}"`);
  const tlsCa = setting("STEPRUNNER_BUILDKIT_TLS_CA", "");
  return {
    common: readCommonSettings("image-service"),
    listenAddress: setting("STEPRUNNER_IMAGE_ADDR", "127.0.0.1:7702"),
    contextAddress: setting("STEPRUNNER_CONTEXT_ADDR", "127.0.0.1:7701"),
    stateDir: setting("STEPRUNNER_IMAGE_STATE_DIR", join(setting("STEPRUNNER_STATE_DIR", "/var/lib/steprunner"), "image")),
    registryAddress,
    buildkitAddresses,
    buildkitTls: tlsCa
      ? {
          ca: tlsCa,
          cert: setting("STEPRUNNER_BUILDKIT_TLS_CERT", "") || undefined,
          key: setting("STEPRUNNER_BUILDKIT_TLS_KEY", "") || undefined,
          serverName: setting("STEPRUNNER_BUILDKIT_TLS_SERVER_NAME", "") || undefined,
        }
      : undefined,
    dockerSocket: setting("STEPRUNNER_DOCKER_SOCKET", viaDockerd ? first.slice("docker-unix://".length) : "/var/lib/steprunner/run/docker.sock"),
    imageOutput,
    layerCompression,
    handoff,
    syntaxPolicy,
    defaultBaseRunner: setting("OPSCHAIN_BASE_RUNNER", `${registryAddress}/steprunner/runner:${STEPRUNNER_VERSION}`),
    registryAuthFile: setting("STEPRUNNER_REGISTRY_AUTH_FILE", "") || undefined,
    contextsMaxAgeMs: numberSetting("STEPRUNNER_IMAGE_CONTEXTS_MAX_AGE_MS", 24 * 3600_000),
    reuseTtlMs: numberSetting("STEPRUNNER_IMAGE_REUSE_TTL_HOURS", 168) * 3_600_000,
    baseImageRecheckMs: numberSetting("STEPRUNNER_BASE_IMAGE_RECHECK_MS", 5000),
    inUseHoldMs: numberSetting("STEPRUNNER_IMAGE_IN_USE_HOLD_HOURS", 25) * 3_600_000,
    pruneIntervalMs: numberSetting("STEPRUNNER_IMAGE_PRUNE_INTERVAL_MINUTES", 60) * 60_000,
    maxConcurrentBuilds: numberSetting("STEPRUNNER_MAX_CONCURRENT_BUILDS", 8),
    stepsRepository: setting("STEPRUNNER_STEPS_REPOSITORY", "steprunner/steps"),
    shardCooldownMs: numberSetting("STEPRUNNER_BUILDKIT_SHARD_COOLDOWN_MS", 30_000),
  };
}
