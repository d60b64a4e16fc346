import { ImageService } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { createLogger } from "../shared/log.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { imageServiceAdapter } from "./api/image-service-adapter.js";
import { BuildKitClient } from "./buildkit/client.js";
import { Builder } from "./core/builder.js";
import { RegistryClient } from "../shared/registry/registry-client.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";

const logger = createLogger("image-service");
const registryAddress = setting("STEPRUNNER_REGISTRY_ADDR", "127.0.0.1:5000");
const buildkitAddress = setting("STEPRUNNER_BUILDKIT_ADDR", "docker-unix:///var/lib/steprunner/run/docker.sock");
const buildkit = new BuildKitClient(buildkitAddress);
const builder = new Builder(buildkit, new RegistryClient(registryAddress), {
  buildkitAddress,
  defaultBaseRunner: setting("OPSCHAIN_BASE_RUNNER", `${registryAddress}/steprunner/runner:${STEPRUNNER_VERSION}`),
});

const server = await startServer({
  address: parseListenAddress(setting("STEPRUNNER_IMAGE_ADDR", "127.0.0.1:7702")),
  services: [ImageService],
  routes: (router) => router.service(ImageService, imageServiceAdapter(builder)),
  logger,
});
stopOnSignals(server, logger, numberSetting("STEPRUNNER_SHUTDOWN_GRACE_MS", 10_000), async () => buildkit.close());
