import assert from "node:assert/strict";
import { imageServiceAdapter } from "../../services/image-service/api/image-service-adapter.js";
import { type BuildKitApi, Builder } from "../../services/image-service/core/builder.js";
import { ImageBuilder } from "../../services/image-service/core/image-builder.js";
import { ReuseRecords } from "../../services/image-service/core/reuse-records.js";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { createLogger } from "../../services/shared/log.js";
import { type ServerOptions, startServer, type RunningServer } from "../../services/shared/server/serve.js";

/** An image-service whose BuildKit and registry are fakes: for tests of the server around it. */
const fakeBuildKit: BuildKitApi = {
  listWorkers: async () => [
    {
      id: "fake",
      platforms: ["linux/amd64"],
      labels: {},
      cacheCollection: [{ all: false, keepDurationMs: 48 * 3_600_000, reservedBytes: 0n, maxUsedBytes: 0n, minFreeBytes: 0n, filters: ["type==source.local"] }],
    },
  ],
  diskUsage: async () => [
    { id: "a", description: "one", sizeBytes: 100n, inUse: false, shared: false, recordType: "regular", lastUsedAt: undefined, usageCount: 1n },
    { id: "b", description: "two", sizeBytes: 50n, inUse: true, shared: false, recordType: "regular", lastUsedAt: new Date(0), usageCount: 2n },
  ],
  prune: async () => [],
  version: async () => undefined,
};

export function startImageService(
  address: ServerOptions["address"],
  extra: Pick<ServerOptions, "security" | "limits" | "httpRoutes"> = {},
): Promise<RunningServer> {
  const builder = new Builder(
    [{ address: "docker-unix:///fake.sock", api: fakeBuildKit }],
    { address: "registry.test:5000", apiVersion: async () => "registry/2.0" },
    { defaultBaseRunner: "registry.test:5000/runner:1" },
  );
  const unusedImages = new ImageBuilder({
    contexts: { describe: async () => assert.fail("no build in these tests"), materialize: async () => assert.fail("no build in these tests") },
    buildkit: { build: async () => assert.fail("no build in these tests") },
    images: { inspectImage: async () => undefined, removeImage: async () => {}, tagImage: async () => {}, pushImage: async () => assert.fail("no push") },
    registry: {
      address: "registry.test:5000",
      manifest: async () => assert.fail("no registry"),
      config: async () => assert.fail("no registry"),
      deleteManifest: async () => assert.fail("no registry"),
    },
    records: new ReuseRecords("/nonexistent"),
    settings: {
      defaultBaseRunner: "",
      version: "0",
      stepsRepository: "steps",
      defaultHandoff: "layer-store",
      reuseTtlMs: 0,
      maxConcurrentBuilds: 1,
      transportAttempts: 1,
    },
  });
  return startServer({
    address,
    services: [ImageService],
    routes: (router) => router.service(ImageService, imageServiceAdapter(builder, unusedImages)),
    logger: createLogger("test", {}, { quiet: true }),
    security: extra.security ?? {},
    limits: extra.limits ?? { maxRequestBytes: 4 * 1024 * 1024, maxConcurrentStreams: 100 },
    httpRoutes: extra.httpRoutes,
  });
}
