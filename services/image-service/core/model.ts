import type { ProgressEvent } from "../buildkit/progress.js";

export type Handoff = "registry" | "layer-store";

export interface ContextFileInfo {
  digest: string;
  size: bigint;
  /** Where the context-service keeps it, readable here when both share a filesystem. */
  hostPath?: string;
}

export interface RepositoryOptions {
  excludeGitHistory: boolean;
  honorExportIgnore: boolean;
}

/** A prepared context as the context-service describes it: what its image's reuse key is made of. */
export interface ContextDescription {
  contextId: string;
  gitRev: string;
  gitSha: string;
  /** Whether the Dockerfile is this version's default (then properties do not enter the reuse key). */
  defaultDockerfile: boolean;
  /** A stable id of the repository: builds of one repository share BuildKit's transfer cache. */
  repositoryId: string;
  repositoryOptions: RepositoryOptions;
  stepContextZip: ContextFileInfo;
  dockerfile: ContextFileInfo;
  /** opschain-trust-store.tar, listed when the Dockerfile copies it. */
  trustStoreTar?: ContextFileInfo;
}

/** A prepared context as a build needs it, its files on local disk. */
export interface LocalContext extends ContextDescription {
  /** The build context: its top-level names (the repository's directories, the redacted zip, repo.tar) and where each lies here. */
  contextSources: Record<string, string>;
  /** Holds the Dockerfile. */
  dockerfileDir: string;
  /** The unredacted zip, given to builds only as the secret env_context_zip. */
  secretZipPath: string;
}

/** Where prepared contexts come from (the context-service, or a fake in unit tests). */
export interface ContextSource {
  /** What a context is, without its files: enough to tell whether its image exists already. */
  describe(contextId: string, signal?: AbortSignal): Promise<ContextDescription>;
  /** The context with its files here, for a build. */
  materialize(contextId: string, signal?: AbortSignal): Promise<LocalContext>;
}

export interface BuildRequest {
  contextId: string;
  /** Empty: the service's default base runner. */
  baseRunner: string;
  network: "none" | "host";
  buildWithoutCache: boolean;
  /** Undefined: the service's default. */
  handoff: Handoff | undefined;
  /** Only an image built before for the same inputs; nothing is built (not-found otherwise). */
  reuseOnly?: boolean;
}

export interface ImageLayer {
  digest: string;
  diffId: string;
  size: bigint;
  mediaType: string;
}

export interface ImageResult {
  imageId: string;
  handoff: Handoff;
  reference: string;
  manifestDigest: string;
  config: { env: string[]; entrypoint: string[]; cmd: string[]; workingDir: string; user: string; labels: Record<string, string> };
  layers: ImageLayer[];
  layerDirectories: string[];
  contentKey: string;
  reused: boolean;
  builtAt: number;
  buildDurationMs: number;
  /** Until when (epoch ms) the same request would get this answer again (see BuiltImage.reusable_until). */
  reusableUntilMs?: number;
}

export type BuildEvent = { kind: "queued"; position: number } | { kind: "progress"; events: ProgressEvent[] } | { kind: "warning"; message: string };
