import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { createLogger } from "../shared/log.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { startTracingFromSettings } from "../shared/tracing-setup.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";
import { contextServiceSettings, openContextService } from "./service.js";

const tracing = startTracingFromSettings("context-service");
const logger = createLogger("context-service");
const settings = contextServiceSettings();
const service = await openContextService(settings, STEPRUNNER_VERSION, logger);
logger.info("state", { stateDir: settings.stateDir, repoFolder: settings.repoFolder, cacheMaxBytes: settings.cacheMaxBytes });

const server = await startServer({
  address: parseListenAddress(setting("STEPRUNNER_CONTEXT_ADDR", "127.0.0.1:7701")),
  services: [ContextService],
  routes: service.routes,
  httpRoutes: service.httpRoutes,
  logger,
});
stopOnSignals(server, logger, numberSetting("STEPRUNNER_SHUTDOWN_GRACE_MS", 10_000), { stop: () => tracing.shutdown() });
