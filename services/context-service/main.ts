import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { createLogger } from "../shared/log.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";
import { contextServiceAdapter, downloadDockerfileHandler } from "./api/context-service-adapter.js";
import { loadDefaultDockerfile } from "./core/default-dockerfile.js";

const logger = createLogger("context-service");
const dockerfile = loadDefaultDockerfile(STEPRUNNER_VERSION);

const server = await startServer({
  address: parseListenAddress(setting("STEPRUNNER_CONTEXT_ADDR", "127.0.0.1:7701")),
  services: [ContextService],
  routes: (router) => router.service(ContextService, contextServiceAdapter(dockerfile)),
  httpRoutes: { "/downloads/Dockerfile": downloadDockerfileHandler(dockerfile) },
  logger,
});
stopOnSignals(server, logger, numberSetting("STEPRUNNER_SHUTDOWN_GRACE_MS", 10_000));
