import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { numberSetting, setting } from "../shared/config/env.js";
import { createLogger } from "../shared/log.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { stepServiceAdapter } from "./api/step-service-adapter.js";

const logger = createLogger("step-service");

const server = await startServer({
  address: parseListenAddress(setting("STEPRUNNER_STEP_ADDR", "127.0.0.1:7703")),
  services: [StepService],
  routes: (router) =>
    router.service(
      StepService,
      stepServiceAdapter({
        runcPath: setting("STEPRUNNER_RUNC", "runc"),
        maxConcurrentSteps: numberSetting("STEPRUNNER_MAX_CONCURRENT_STEPS", 4),
      }),
    ),
  logger,
});
stopOnSignals(server, logger, numberSetting("STEPRUNNER_SHUTDOWN_GRACE_MS", 10_000));
