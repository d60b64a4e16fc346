import { mkdir } from "node:fs/promises";
import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { createLogger } from "../shared/log.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { serviceTransport } from "../shared/client/transport.js";
import { stepServiceAdapter } from "./api/step-service-adapter.js";
import { ContextServicePreparer } from "./clients/context-service-preparer.js";
import { ImageServiceBuilder } from "./clients/image-service-builder.js";
import { configFromEnv, createStepRunner } from "./service.js";

const logger = createLogger("step-service");
const config = configFromEnv();
await mkdir(config.stateDir, { recursive: true });
// Contexts and images come from the context- and image-service.
const contextService = serviceTransport(setting("STEPRUNNER_CONTEXT_ADDR", "127.0.0.1:7701"));
const imageService = serviceTransport(setting("STEPRUNNER_IMAGE_ADDR", "127.0.0.1:7702"));
const { runner } = createStepRunner(config, logger, {
  contexts: new ContextServicePreparer(contextService.transport),
  images: new ImageServiceBuilder(imageService.transport),
});
await runner.recover();

const server = await startServer({
  address: parseListenAddress(setting("STEPRUNNER_STEP_ADDR", "127.0.0.1:7703")),
  services: [StepService],
  routes: (router) => router.service(StepService, stepServiceAdapter(config, runner)),
  logger,
});
stopOnSignals(server, logger, numberSetting("STEPRUNNER_SHUTDOWN_GRACE_MS", 10_000), async () => {
  await runner.close();
  contextService.close();
  imageService.close();
});
