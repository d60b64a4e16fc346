import { statSync } from "node:fs";
import { keepRecent } from "../../shared/recent-entries.js";
import type { BuildProgress, BuiltStepImage, ImageBuilder, ImageBuildOptions, StepRequest } from "./ports.js";

/** Answers kept: one per context and network mode asked lately. */
const KEPT_ANSWERS = 256;

interface KeptAnswer {
  built: BuiltStepImage;
  /** The build's warnings, said again to each step the answer is given to. */
  warnings: string[];
  untilMs: number;
}

/**
 * Gives the image-service's answer for a context again, without a call, while the image-service says it would
 * answer the same (reusableUntilMs: it holds the base runner's digest that long itself). The steps of a change
 * and a step run again share one context, and each skips a round trip and the image-service's reuse check. A
 * build without cache always asks; an answer whose layer directories have gone is dropped and asked again.
 */
export class ReusableImages implements ImageBuilder {
  /** By context and network mode, least recently stored first. */
  private readonly answers = new Map<string, KeptAnswer>();

  constructor(
    private readonly images: ImageBuilder,
    private readonly now: () => number = Date.now,
  ) {}

  async build(
    contextId: string,
    request: StepRequest,
    onProgress: (progress: BuildProgress) => void,
    signal: AbortSignal,
    onWarning?: (message: string) => void,
    options?: ImageBuildOptions,
  ): Promise<BuiltStepImage> {
    const key = JSON.stringify([contextId, request.hostNetwork]);
    if (!request.buildWithoutCache) {
      const kept = this.answers.get(key);
      if (kept && this.now() < kept.untilMs && layersHere(kept.built)) {
        signal.throwIfAborted();
        for (const warning of kept.warnings) onWarning?.(warning);
        return { ...kept.built, reused: true, answerKept: true };
      }
      if (kept) this.answers.delete(key);
    }
    const warnings: string[] = [];
    const collect = (message: string) => {
      warnings.push(message);
      onWarning?.(message);
    };
    const built = await this.images.build(contextId, request, onProgress, signal, collect, options);
    if (built.reusableUntilMs !== undefined && built.reusableUntilMs > this.now()) {
      keepRecent(this.answers, key, { built, warnings, untilMs: built.reusableUntilMs }, KEPT_ANSWERS);
    }
    return built;
  }
}

/** Whether what the run mounts is still there: dockerd's layer directories are removed with their image. */
function layersHere(built: BuiltStepImage): boolean {
  if (built.image.kind !== "layer-directories") return true;
  return built.image.directories.every((dir) => statSync(dir, { throwIfNoEntry: false }) !== undefined);
}
