import { createLogger, type Logger } from "../../services/shared/log.js";
import type { ImageRootfs } from "../../services/step-service/images/images.js";
import { LocalDirectoryContextPreparer, PrebuiltImageBuilder } from "../../services/step-service/steps/local.js";
import type { ContainerRunner, ContextPreparer, ImageBuilder, ImageSource, LayerUpkeep } from "../../services/step-service/steps/ports.js";
import { StepRunner } from "../../services/step-service/steps/step-runner.js";

/** An image source and layer upkeep that hand out one image with no layers, counting the images held. */
export class FakeImages implements ImageSource, LayerUpkeep {
  held = 0;
  async materialise(): Promise<ImageRootfs> {
    this.held++;
    return {
      imageId: "sha256:fake",
      config: { env: [], entrypoint: [], cmd: [], workingDir: "/", user: "" },
      lowerDirs: ["/nonexistent"],
      release: () => this.held--,
    };
  }
  async init(): Promise<void> {}
  async collect(): Promise<string[]> {
    return [];
  }
}

export interface FakeStepRunnerOptions {
  images?: FakeImages;
  contexts?: ContextPreparer;
  imageBuilder?: ImageBuilder;
  logger?: Logger;
  maxConcurrentSteps?: number;
  maxStepsPerCaller?: number;
  logCapBytes?: number;
}

/** A StepRunner over a state directory with a runtime of the test's, and local or fake parts for the rest. */
export function fakeStepRunner(stateDir: string, runtime: ContainerRunner, options: FakeStepRunnerOptions = {}): StepRunner {
  const images = options.images ?? new FakeImages();
  return new StepRunner(
    {
      stateDir,
      maxConcurrentSteps: options.maxConcurrentSteps ?? 1,
      ...(options.maxStepsPerCaller !== undefined ? { maxStepsPerCaller: options.maxStepsPerCaller } : {}),
      logCapBytes: options.logCapBytes ?? 1000,
    },
    {
      contexts: options.contexts ?? new LocalDirectoryContextPreparer(),
      images: options.imageBuilder ?? new PrebuiltImageBuilder("127.0.0.1:5000/fake:1"),
      materialiser: images,
      layers: images,
      runtime,
      logger: options.logger ?? createLogger("test", {}, { quiet: true }),
    },
  );
}
