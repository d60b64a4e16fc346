import { mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { ContextServiceProvider } from "../../services/image-service/api/context-service-provider.js";
import { imageServiceAdapter } from "../../services/image-service/api/image-service-adapter.js";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { Builder } from "../../services/image-service/core/builder.js";
import { ContextCache } from "../../services/image-service/core/context-cache.js";
import { ImageBuilder } from "../../services/image-service/core/image-builder.js";
import { ReuseRecords } from "../../services/image-service/core/reuse-records.js";
import { DockerApi } from "../../services/image-service/docker/docker-api.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";
import { startServer } from "../../services/shared/server/serve.js";
import { stack } from "./stack.js";

export interface TestImageService {
  address: string;
  docker: DockerApi;
  stop(): Promise<void>;
}

/**
 * An image-service in this process on 127.0.0.1 and a free port, with its own state directory, building
 * on the BuildKit at buildkitAddress and naming its images in stepsRepository (for the test to remove).
 */
export async function startTestImageService(options: { contextAddress: string; buildkitAddress: string; stepsRepository: string }): Promise<TestImageService> {
  const stateDir = await mkdtemp(join(stack.stateDir, "tmp", "image-state-"));
  const logger = createLogger("image-service-test", {}, { quiet: true });
  const buildkit = new BuildKitClient(options.buildkitAddress);
  const registry = new RegistryClient(stack.registry);
  const docker = new DockerApi(`${stack.runDir}/docker.sock`);
  const contexts = serviceTransport(options.contextAddress, {});
  const images = new ImageBuilder({
    contexts: new ContextCache(new ContextServiceProvider(contexts.transport), join(stateDir, "contexts")),
    buildkit: { build: (build, onStatus, signal) => buildDockerfile(buildkit, build, onStatus, signal) },
    images: docker,
    registry,
    records: new ReuseRecords(join(stateDir, "images")),
    settings: {
      defaultBaseRunner: stack.baseRunner,
      version: "0.1.0",
      stepsRepository: options.stepsRepository,
      defaultHandoff: "layer-store",
      reuseTtlMs: 3_600_000,
      maxConcurrentBuilds: 2,
      transportAttempts: 1,
    },
  });
  const builder = new Builder([{ address: options.buildkitAddress, api: buildkit }], registry, { defaultBaseRunner: stack.baseRunner });
  const server = await startServer({
    address: { kind: "tcp", host: "127.0.0.1", port: 0 },
    services: [ImageService],
    routes: (router) => router.service(ImageService, imageServiceAdapter(builder, images)),
    logger,
  });
  return {
    address: `127.0.0.1:${server.port}`,
    docker,
    async stop() {
      await server.close(1000);
      contexts.close();
      buildkit.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}
