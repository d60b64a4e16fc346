import { createHash } from "node:crypto";
import type { BuiltStepImage, ImageBuilder, PreparedStepContext, StepRequest } from "./ports.js";
import { type ImageInputs, sameImageInputs } from "../../shared/image-inputs.js";
import { keepRecent } from "../../shared/recent-entries.js";

/** How many kinds of step (requests alike but for their ids) are remembered. */
const REMEMBERED_REQUESTS = 256;

/** The image a step like an earlier one was asked for early, taken only when its context turns out to have it. */
export interface ImageGuess {
  readonly contextId: string;
  /**
   * The image when the context the step really got is the guessed one, or has the same image inputs (its
   * properties alone differ), and the image-service had it built; undefined otherwise (the guess is then
   * abandoned and the step builds as usual).
   */
  take(actual: Pick<PreparedStepContext, "contextId" | "imageInputs">): Promise<{ built: BuiltStepImage; warnings: string[] } | undefined>;
  /** Stops asking (the step ended before it had a context). */
  abandon(): void;
}

interface Remembered {
  contextId: string;
  inputs?: ImageInputs;
}

/**
 * Overlaps a warm step's two round trips. A step whose request is the same as an earlier one's but for its id
 * usually gets the same context (same commit, same properties) and so the same image; one whose properties,
 * secrets or context values alone changed gets a new context, whose image is usually the earlier one's too
 * (see ImageInputs). While its context is being prepared, the image of the context the most alike earlier step
 * got is asked for, reuse only (nothing is built). When the step's context turns out the same, or with the same
 * image inputs, the build phase only waits for that answer.
 */
export class ImageSpeculation {
  /** The context each kind of request was last prepared as, least recently used first. */
  private readonly lastContexts = new Map<string, Remembered>();
  /** The same, by request less what only goes into step_context.json (properties, secrets, context values). */
  private readonly lastAlike = new Map<string, Remembered>();

  constructor(
    private readonly images: ImageBuilder,
    /** Told why an early request for the guessed context's image failed (the step then builds as usual). */
    private readonly onFailed: (error: unknown) => void = () => {},
  ) {}

  /** Asks early for the image of the context a request like this one got last; undefined when none is known. */
  guess(request: StepRequest, signal: AbortSignal): ImageGuess | undefined {
    if (request.buildWithoutCache) return undefined;
    const remembered = this.lastContexts.get(requestKey(request)) ?? this.lastAlike.get(alikeKey(request));
    if (!remembered) return undefined;
    const { contextId, inputs } = remembered;
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
        if (actual.contextId === contextId || (inputs && actual.imageInputs && sameImageInputs(actual.imageInputs, inputs))) return asked;
        controller.abort(new Error("the step got a context with another image"));
        return Promise.resolve(undefined);
      },
      abandon: () => controller.abort(new Error("the step ended before its context was prepared")),
    };
  }

  /** Notes the context a request was prepared as, for the next request like it. */
  remember(request: StepRequest, prepared: Pick<PreparedStepContext, "contextId" | "imageInputs">): void {
    const remembered = { contextId: prepared.contextId, ...(prepared.imageInputs ? { inputs: prepared.imageInputs } : {}) };
    keepRecent(this.lastContexts, requestKey(request), remembered, REMEMBERED_REQUESTS);
    keepRecent(this.lastAlike, alikeKey(request), remembered, REMEMBERED_REQUESTS);
  }
}

/** What builds a step's image: its request less the step's id, action, limits and step_context.json's values. */
function alikeInputs(request: StepRequest): unknown[] {
  return [request.repositoryUrl, request.gitRev, request.repoFolder, request.excludeGitHistory, request.hostNetwork];
}

/** What makes a step's context and image: its request less the step's id, action, limits and run-time values. */
function requestKey(request: StepRequest): string {
  return digest([...alikeInputs(request), request.properties, request.secretPointers, request.contextValues]);
}

function alikeKey(request: StepRequest): string {
  return digest(alikeInputs(request));
}

function digest(inputs: unknown[]): string {
  return createHash("sha256").update(JSON.stringify(inputs)).digest("hex");
}
