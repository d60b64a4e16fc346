import { join } from "node:path";
import type { ConnectRouter } from "@connectrpc/connect";
import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { type CommonSettings, readCommonSettings } from "../shared/config/common.js";
import { numberSetting, setting } from "../shared/config/env.js";
import type { Logger } from "../shared/log.js";
import type { HttpHandler } from "../shared/server/serve.js";
import { contextServiceAdapter, downloadDockerfileHandler } from "./api/context-service-adapter.js";
import { BlobStore } from "./core/blob-store.js";
import { ContextPreparer } from "./core/context-preparer.js";
import { type DefaultDockerfile, loadDefaultDockerfile } from "./core/default-dockerfile.js";
import { DEFAULT_REPO_FOLDER, checkRepoFolder } from "./core/dockerfile.js";
import { MirrorStore } from "./core/mirrors.js";
import { GitTrees } from "./core/git-tree.js";
import { GitRepositories } from "./core/repositories.js";
import { DEFAULT_LAYER_LIMITS, RepositoryLayers } from "./core/repository-layers.js";

const DEFAULT_MIRRORS_MAX_AGE_MS = 30 * 24 * 3600_000;
const MIN_MIRRORS_MAX_AGE_MS = 3600_000;

export interface ContextServiceSettings {
  stateDir: string;
  repoFolder: string;
  cacheMaxBytes: number;
  fetchTimeoutMs: number;
  layersMaxAgeMs: number;
  /** A repository's mirror unused this long is removed; 0 keeps mirrors for good. */
  mirrorsMaxAgeMs: number;
  maxDockerfileBytes: number;
  maxPropertiesBytes: number;
  /** Where the CA certificates of opschain-trust-store.tar come from; empty: the tar is empty. */
  trustStoreDir: string;
}

/** Everything the context-service's main reads from the environment, once. */
export interface ContextServiceConfig {
  common: CommonSettings;
  listenAddress: string;
  service: ContextServiceSettings;
}

export function readContextServiceConfig(): ContextServiceConfig {
  return {
    common: readCommonSettings("context-service"),
    listenAddress: setting("STEPRUNNER_CONTEXT_ADDR", "127.0.0.1:7701"),
    service: contextServiceSettings(),
  };
}

/** The settings from the environment, with the defaults docs/settings.md documents. */
export function contextServiceSettings(): ContextServiceSettings {
  const repoFolder = setting("OPSCHAIN_REPO_FOLDER", DEFAULT_REPO_FOLDER);
  checkRepoFolder(repoFolder);
  const fetchTimeoutMs = numberSetting("STEPRUNNER_CONTEXT_FETCH_TIMEOUT_MS", 600_000);
  const mirrorsMaxAgeMs = numberSetting("STEPRUNNER_CONTEXT_MIRRORS_MAX_AGE_MS", DEFAULT_MIRRORS_MAX_AGE_MS);
  // A mirror in use must never look unused: the limit stays far above the longest fetch.
  const shortestMirrorsMaxAgeMs = Math.max(MIN_MIRRORS_MAX_AGE_MS, 2 * fetchTimeoutMs);
  if (mirrorsMaxAgeMs !== 0 && mirrorsMaxAgeMs < shortestMirrorsMaxAgeMs) {
    throw new Error(
      `STEPRUNNER_CONTEXT_MIRRORS_MAX_AGE_MS must be 0 (keep mirrors) or at least ${shortestMirrorsMaxAgeMs} (an hour, and twice STEPRUNNER_CONTEXT_FETCH_TIMEOUT_MS), got ${mirrorsMaxAgeMs}`,
    );
  }
  return {
    stateDir: setting("STEPRUNNER_CONTEXT_STATE_DIR", join(setting("STEPRUNNER_STATE_DIR", "/var/lib/steprunner"), "context")),
    repoFolder,
    cacheMaxBytes: numberSetting("STEPRUNNER_CONTEXT_CACHE_MAX_BYTES", 10 * 1024 ** 3),
    fetchTimeoutMs,
    layersMaxAgeMs: numberSetting("STEPRUNNER_CONTEXT_LAYERS_MAX_AGE_MS", DEFAULT_LAYER_LIMITS.maxAgeMs),
    mirrorsMaxAgeMs,
    maxDockerfileBytes: numberSetting("STEPRUNNER_CONTEXT_MAX_DOCKERFILE_BYTES", 1024 * 1024),
    maxPropertiesBytes: numberSetting("STEPRUNNER_CONTEXT_MAX_PROPERTIES_BYTES", 4 * 1024 * 1024),
    trustStoreDir: setting("STEPRUNNER_TRUST_STORE_DIR", ""),
  };
}

export interface ContextServiceParts {
  dockerfile: DefaultDockerfile;
  preparer: ContextPreparer;
  routes: (router: ConnectRouter) => void;
  httpRoutes: Record<string, HttpHandler>;
}

/** Builds the context-service on a state directory: mirrors, the blob cache, contexts and the RPC routes. */
export async function openContextService(settings: ContextServiceSettings, version: string, logger: Logger): Promise<ContextServiceParts> {
  const dockerfile = loadDefaultDockerfile(version);
  const trees = new GitTrees(settings.stateDir);
  await trees.init();
  const layers = new RepositoryLayers(join(settings.stateDir, "layers"), trees, { ...DEFAULT_LAYER_LIMITS, maxAgeMs: settings.layersMaxAgeMs });
  await layers.init();
  const blobs = new BlobStore(join(settings.stateDir, "cache"), settings.cacheMaxBytes);
  await blobs.init();
  const mirrors = new MirrorStore(settings.stateDir, settings.fetchTimeoutMs, settings.mirrorsMaxAgeMs);
  await mirrors.init();
  const repositories = new GitRepositories(mirrors, trees, layers);
  const preparer = new ContextPreparer({
    repositories,
    blobs,
    contextsDir: join(settings.stateDir, "contexts"),
    defaultDockerfile: dockerfile,
    settings,
  });
  await preparer.init();
  return {
    dockerfile,
    preparer,
    routes: (router) => router.service(ContextService, contextServiceAdapter(dockerfile, preparer, logger)),
    httpRoutes: { "/downloads/Dockerfile": downloadDockerfileHandler(dockerfile) },
  };
}
