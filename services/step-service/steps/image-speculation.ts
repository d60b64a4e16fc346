import { createHash } from "node:crypto";
import type { BuiltStepImage, ImageBuilder, StepRequest } from "./ports.js";
import { keepRecent } from "../../shared/recent-entries.js";

/** How many kinds of step (requests alike but for their ids) are remembered. */
const REMEMBERED_REQUESTS = 256;

/** The image a step like an earlier one was asked for early, taken only when its context turns out the same. */
export interface ImageGuess {
  readonly contextId: string;
  /**
   * The image when `contextId` (the context the step really got) is the guessed one and the image-service had
   * it built; undefined otherwise (the guess is then abandoned and the step builds as usual).
   */
  take(contextId: string): Promise<{ built: BuiltStepImage; warnings: string[] } | undefined>;
  /** Stops asking (the step ended before it had a context). */
  abandon(): void;
}

/**
 * Overlaps a warm step's two round trips. A step whose request is the same as an earlier one's but for its id
 * usually gets the same context (same commit, same properties) and so the same image: while its context is
 * being prepared, the image of the context the earlier step got is asked for, reuse only (nothing is built).
 * When the context turns out the same, the build phase only waits for that answer.
 */
export class ImageSpeculation {
  /** The context each kind of request was last prepared as, least recently used first. */
  private readonly lastContexts = new Map<string, string>();

  constructor(
    private readonly images: ImageBuilder,
    /** Told why an early request for the guessed context's image failed (the step then builds as usual). */
    private readonly onFailed: (error: unknown) => void = () => {},
  ) {}

  /** Asks early for the image of the context a request like this one got last; undefined when none is known. */
  guess(request: StepRequest, signal: AbortSignal): ImageGuess | undefined {
    if (request.buildWithoutCache) return undefined;
    const contextId = this.lastContexts.get(requestKey(request));
    if (!contextId) return undefined;
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    const warnings: string[] = [];
    const asked = this.images
      .build(
        contextId,
        request,
        () => {},
        controller.signal,
        (message) => warnings.push(message),
        { reuseOnly: true },
      )
      .then(
        (built) => ({ built, warnings }),
        (error: unknown) => {
          if (!controller.signal.aborted) this.onFailed(error);
          return undefined;
        },
      )
      .finally(() => signal.removeEventListener("abort", onAbort));
    return {
      contextId,
      take: (actual) => {
        if (actual === contextId) return asked;
        controller.abort(new Error("the step got another context"));
        return Promise.resolve(undefined);
      },
      abandon: () => controller.abort(new Error("the step ended before its context was prepared")),
    };
  }

  /** Notes the context a request was prepared as, for the next request like it. */
  remember(request: StepRequest, contextId: string): void {
    keepRecent(this.lastContexts, requestKey(request), contextId, REMEMBERED_REQUESTS);
  }
}

/** What makes a step's context and image: its request less the step's id, action, limits and run-time values. */
function requestKey(request: StepRequest): string {
  const inputs = [
    request.repositoryUrl,
    request.gitRev,
    request.repoFolder,
    request.excludeGitHistory,
    request.properties,
    request.secretPointers,
    request.contextValues,
    request.hostNetwork,
  ];
  return createHash("sha256").update(JSON.stringify(inputs)).digest("hex");
}
