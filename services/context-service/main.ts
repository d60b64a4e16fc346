import { ContextService } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { createLogger } from "../shared/log.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { startTracingWith } from "../shared/tracing-setup.js";
import { STEPRUNNER_VERSION } from "../shared/version.js";
import { openContextService, readContextServiceConfig } from "./service.js";

// Every setting is read here, once (docs/settings.md).
const config = readContextServiceConfig();
const { common, service: settings } = config;
const tracing = startTracingWith(common.tracing);
const logger = createLogger("context-service", {}, { level: common.logLevel });
const service = await openContextService(settings, STEPRUNNER_VERSION, logger);
logger.info("state", { stateDir: settings.stateDir, repoFolder: settings.repoFolder, cacheMaxBytes: settings.cacheMaxBytes });

const server = await startServer({
  address: parseListenAddress(config.listenAddress),
  services: [ContextService],
  routes: service.routes,
  httpRoutes: service.httpRoutes,
  logger,
  security: common.serverSecurity,
  limits: common.serverLimits,
});
stopOnSignals(server, logger, common.shutdownGraceMs, { stop: () => tracing.shutdown() });
