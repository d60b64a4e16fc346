import type { ImageRootfs, StepImage } from "../images/images.js";
import type { ContainerExit, ContainerRun } from "../runtime/container.js";
import type { Limits } from "../runtime/spec.js";
import type { ImageInputs } from "../../shared/image-inputs.js";

/**
 * A step's build progress, in the step-service's own terms: the client of the image-service maps its messages
 * into this, and the API adapter maps it out again (RunStep's build_progress).
 */
export interface BuildProgress {
  vertexes: BuildVertex[];
  statuses: BuildStatus[];
  logs: BuildLog[];
}

export type BuildVertexState = "unspecified" | "started" | "completed" | "cached" | "errored" | "canceled";

export interface BuildVertex {
  digest: string;
  /** Its number in first-seen order ("#N"). */
  number: number;
  name: string;
  state: BuildVertexState;
  startedAtMs?: number;
  completedAtMs?: number;
  error: string;
}

export interface BuildStatus {
  vertexDigest: string;
  id: string;
  current: bigint;
  total: bigint;
  completed: boolean;
}

export interface BuildLog {
  vertexDigest: string;
  stream: "unspecified" | "stdout" | "stderr" | "system";
  data: Uint8Array;
  timeMs?: number;
}

/** A property owner's values, in merge order (lowest precedence first). */
export interface PropertySet {
  owner: string;
  properties: Record<string, unknown>;
}

/** A validated RunStep request, in domain terms. */
export interface StepRequest {
  stepId: string;
  repositoryUrl: string;
  gitRev: string;
  /** As RunStep's action says it; with `actions`, those joined by spaces (for records and the context). */
  action: string;
  /** RunStep's actions: each one argument of opschain-action, spaces kept; absent when `action` says it all. */
  actions?: string[];
  properties: PropertySet[];
  secretPointers: string[];
  /** context.change / step / user of step_context.json. */
  contextValues: Record<string, unknown>;
  repoFolder: string;
  excludeGitHistory: boolean;
  timeoutMs: number;
  hostNetwork: boolean;
  limits: Limits;
  buildWithoutCache: boolean;
  /** Run the action with OPSCHAIN_DRY_RUN=true: it reports its expected step tree instead of running. */
  dryRun?: boolean;
  /**
   * Values set in the step_context.json mounted at run time only (not in the build context), over what the
   * context-service wrote: e.g. {"step": {"id": …, "parent_step_id": …}} for a change's child step.
   */
  runtimeContext?: Record<string, Record<string, unknown>>;
}

/** What the context-service hands back for a step. */
export interface PreparedStepContext {
  contextId: string;
  gitRev: string;
  gitSha: string;
  repoFolder: string;
  /** step_context.json with secrets: mounted read-only into the container, never into an image. */
  stepContext: Record<string, unknown>;
  /** A host directory copied to /opt/opschain when the image does not carry the repository (prebuilt images). */
  repositoryDir?: string;
  warnings: string[];
  /** What the context's image depends on; absent where no image is built from it (prebuilt images). */
  imageInputs?: ImageInputs;
}

/**
 * The step's own inputs were refused on the way (a revision that does not exist, a Dockerfile that does not
 * build): the step ends in error with the message, since the caller, not the service, has something to fix.
 */
export class RefusedInputError extends Error {}

/** Told how long a named part of a phase took, in milliseconds (see PhasePart in the API). */
export type PartTimer = (name: string, durationMs: number) => void;

/** Prepares a step's context (the context-service's PrepareContext, or a local stand-in). */
export interface ContextPreparer {
  prepare(request: StepRequest, signal: AbortSignal, onPart?: PartTimer): Promise<PreparedStepContext>;
}

export interface BuiltStepImage {
  image: StepImage;
  imageId: string;
  reused: boolean;
  /** Until when (epoch ms) the image-service would give this answer again for the same inputs; absent: ask. */
  reusableUntilMs?: number;
  /** An earlier answer given again, without a call to the image-service (see ReusableImages). */
  answerKept?: boolean;
}

/** Builds or reuses a step's image (the image-service's BuildImage, or an image that is already built). */
export interface ImageBuilder {
  /** Builds or reuses the image of a prepared context (its contextId). */
  build(
    contextId: string,
    request: StepRequest,
    onProgress: (progress: BuildProgress) => void,
    signal: AbortSignal,
    /** Told of the build's warnings (e.g. an ignored "# syntax=" line). */
    onWarning?: (message: string) => void,
    options?: ImageBuildOptions,
  ): Promise<BuiltStepImage>;
}

export interface ImageBuildOptions {
  /** Only an image built before for the same inputs: the call fails when there is none, and nothing is built. */
  reuseOnly?: boolean;
}

/** Turns a hand-off into lower directories (ImageMaterialiser). */
export interface ImageSource {
  materialise(image: StepImage, signal: AbortSignal): Promise<ImageRootfs>;
}

/** The layer store's upkeep (LayerStore). */
export interface LayerUpkeep {
  init(): Promise<void>;
  collect(): Promise<string[]>;
}

/** Runs one container and cleans up after it, and after a crash (ContainerRuntime). */
export interface ContainerRunner {
  run(request: ContainerRun): Promise<ContainerExit>;
  reap(): Promise<string[]>;
}
