import { mkdir } from "node:fs/promises";
import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { createLogger } from "../shared/log.js";
import { ServiceMetrics } from "../shared/metrics.js";
import { parseListenAddress } from "../shared/server/listen-address.js";
import { startServer, stopOnSignals } from "../shared/server/serve.js";
import { serviceTransport } from "../shared/client/transport.js";
import { startTracingWith } from "../shared/tracing-setup.js";
import { stepServiceAdapter } from "./api/step-service-adapter.js";
import { ChangeRunner } from "./steps/change-runner.js";
import { ContextServicePreparer } from "./clients/context-service-preparer.js";
import { ImageServiceBuilder } from "./clients/image-service-builder.js";
import { createStepRunner, readStepServiceProcessConfig } from "./service.js";

// Every setting is read here, once (docs/settings.md).
const { common, service: config, ...wiring } = readStepServiceProcessConfig();
const tracing = startTracingWith(common.tracing);
const logger = createLogger("step-service", {}, { level: common.logLevel });
await mkdir(config.stateDir, { recursive: true });
// Contexts and images come from the context- and image-service; "local" runs a local directory in the
// prebuilt STEPRUNNER_STEP_IMAGE without them (for trying the runtime alone).
const sources = wiring.sources;
const contextService = serviceTransport(wiring.contextAddress, common.clientSecurity);
const imageService = serviceTransport(wiring.imageAddress, common.clientSecurity);
const metrics = new ServiceMetrics("step-service");
const steps = metrics.counter("steprunner_steps_total", "Steps that ended, by final state", ["state"]);
const phases = metrics.histogram(
  "steprunner_step_phase_seconds",
  "Time of each phase of a step (queue, context, build, pull, run, teardown)",
  ["phase"],
  [0.01, 0.05, 0.2, 1, 5, 30, 120, 600],
);
const { runner, layers } = createStepRunner(config, logger, {
  ...(sources === "services"
    ? { contexts: new ContextServicePreparer(contextService.transport), images: new ImageServiceBuilder(imageService.transport) }
    : {}),
  observer: {
    stepFinished: (record) => {
      steps.inc({ state: record.state });
      for (const phase of record.phases) phases.observe({ phase: phase.phase }, phase.durationMs / 1000);
    },
  },
});
metrics.gauge("steprunner_steps_running", "Steps running now", () => runner.counts().running);
metrics.gauge("steprunner_steps_queued", "Steps waiting for a slot", () => runner.counts().queued);
metrics.gauge("steprunner_layer_store_bytes", "Size of the unpacked-layer store", async () => (await layers.stats()).totalBytes);
await runner.recover();
const changes = new ChangeRunner(runner, logger);

const server = await startServer({
  address: parseListenAddress(wiring.listenAddress),
  services: [StepService],
  routes: (router) => router.service(StepService, stepServiceAdapter(config, runner, changes)),
  logger,
  metrics,
  security: common.serverSecurity,
  limits: common.serverLimits,
});
stopOnSignals(server, logger, common.shutdownGraceMs, {
  drain: async (graceMs) => {
    await runner.drain(graceMs);
    changes.drain();
  },
  stop: async () => {
    await runner.close();
    contextService.close();
    imageService.close();
    await tracing.shutdown();
  },
});
