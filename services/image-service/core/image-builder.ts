import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import type { StatusResponse } from "../../../gen/moby/buildkit/v1/control_pb.js";
import type { DockerfileBuild } from "../buildkit/dockerfile-build.js";
import { ProgressTracker } from "../buildkit/progress.js";
import type { ImageInspect, PushResult } from "../docker/docker-api.js";
import type { RegistryCredentials } from "../../shared/registry/credentials.js";
import { type ImageReference, parseImageReference } from "../../shared/registry/image-reference.js";
import { inSpan, tracer } from "../../shared/tracing.js";
import { invalidField } from "../../shared/validation.js";
import { type ImageConfigFile, type ImageManifest, RegistryError } from "../../shared/registry/registry-client.js";
import { BuildQueue } from "./build-queue.js";
import { findRemoteSource } from "./remote-sources.js";
import { explainBuildFailure, isTransient } from "./build-errors.js";
import type { BuildEvent, BuildRequest, ContextSource, Handoff, ImageResult, LocalContext } from "./model.js";
import type { ReuseRecord, ReuseRecords } from "./reuse-records.js";

/** Runs a Dockerfile build on BuildKit (buildDockerfile over a BuildKitClient in production). */
export interface DockerfileBuilder {
  build(build: DockerfileBuild, onStatus: (status: StatusResponse) => void, signal?: AbortSignal): Promise<Record<string, string>>;
}

/** dockerd's image store, where BuildKit's moby exporter leaves images. */
export interface ImageStore {
  inspectImage(name: string, signal?: AbortSignal): Promise<ImageInspect | undefined>;
  removeImage(name: string, signal?: AbortSignal): Promise<void>;
  tagImage(image: string, repository: string, tag: string, signal?: AbortSignal): Promise<void>;
  pushImage(repository: string, tag: string, signal?: AbortSignal): Promise<PushResult>;
}

/** The registry images are handed over through. */
export interface Registry {
  readonly address: string;
  manifest(repository: string, reference: string, signal?: AbortSignal): Promise<{ digest: string; manifest: ImageManifest }>;
  config(repository: string, descriptor: ImageManifest["config"], signal?: AbortSignal): Promise<ImageConfigFile>;
  deleteManifest(repository: string, digest: string, signal?: AbortSignal): Promise<void>;
}

/**
 * Where a build's image goes: into dockerd's image store (BuildKit's moby exporter, dockerd's BuildKit), or
 * straight into the registry (the image exporter with push, a standalone buildkitd, which has no image store
 * of its own that a step could mount).
 */
export type ImageOutput = "dockerd" | "registry";

export interface ImageBuilderSettings {
  /** Absent: dockerd. */
  imageOutput?: ImageOutput;
  defaultBaseRunner: string;
  /** OPSCHAIN_VERSION. */
  version: string;
  /** Repository (in dockerd and the registry) that step images are named in. */
  stepsRepository: string;
  defaultHandoff: Handoff;
  /** Images older than this are built again rather than reused. */
  reuseTtlMs: number;
  maxConcurrentBuilds: number;
  /** Attempts for a build whose connection to BuildKit fails (not for a failing build). */
  transportAttempts: number;
  /** Credentials by registry host for BuildKit's pulls; none: anonymous. */
  registryCredentials?: RegistryCredentials;
}

type Listener = (event: BuildEvent) => void;

export type BuildOutcome = "built" | "reused" | "failed" | "cancelled";

/** Told of every build's end and of each retry, for metrics. */
export interface BuildObserver {
  buildEnded(outcome: BuildOutcome, seconds: number): void;
  transportRetried(): void;
}

/** A built image: its record and, for an image in dockerd, what dockerd says of it, inspected once. */
interface Built {
  record: ReuseRecord;
  inspect?: ImageInspect;
}

interface SharedBuild {
  result: Promise<Built>;
  listeners: Set<Listener>;
  subscribers: number;
  controller: AbortController;
}

const LOG_TAIL_BYTES = 4096;

/**
 * Builds the image of a prepared context, or reuses the one built before for the same inputs. Identical
 * builds in flight are merged into one; builds beyond the limit wait in FIFO order.
 */
export class ImageBuilder {
  private readonly queue: BuildQueue;
  private readonly inFlight = new Map<string, SharedBuild>();
  /** dockerd's descriptions of images reused lately (inspectReused), least recently read first. */
  private readonly inspected = new Map<string, ImageInspect>();

  constructor(
    private readonly contexts: ContextSource,
    private readonly buildkit: DockerfileBuilder,
    private readonly images: ImageStore,
    private readonly registry: Registry,
    private readonly records: ReuseRecords,
    private readonly settings: ImageBuilderSettings,
    private readonly observer: BuildObserver = { buildEnded: () => {}, transportRetried: () => {} },
  ) {
    this.queue = new BuildQueue(settings.maxConcurrentBuilds);
  }

  get queueDepth(): number {
    return this.queue.depth;
  }

  private get output(): ImageOutput {
    return this.settings.imageOutput ?? "dockerd";
  }

  /** "<registry>/<steps repository>", where pushed step images are named. */
  private get stepsReference(): string {
    return `${this.registry.address}/${this.settings.stepsRepository}`;
  }

  build(request: BuildRequest, emit: Listener, signal?: AbortSignal): Promise<ImageResult> {
    return inSpan("image.build", { "image.context_id": request.contextId }, async (span) => {
      const started = Date.now();
      try {
        const image = await this.buildOrReuse(request, emit, signal);
        this.observer.buildEnded(image.reused ? "reused" : "built", (Date.now() - started) / 1000);
        span.setAttributes({ "image.outcome": image.reused ? "reused" : "built", "image.id": image.imageId, "image.content_key": image.contentKey });
        return image;
      } catch (error) {
        const outcome = signal?.aborted ? "cancelled" : "failed";
        this.observer.buildEnded(outcome, (Date.now() - started) / 1000);
        span.setAttribute("image.outcome", outcome);
        throw error;
      }
    });
  }

  private async buildOrReuse(request: BuildRequest, emit: Listener, signal?: AbortSignal): Promise<ImageResult> {
    const baseRunner = request.baseRunner || this.settings.defaultBaseRunner;
    const base = this.checkBaseRunner(baseRunner);
    // The base image's digest is asked of the registry while the context is made local.
    const baseDigestAsked = this.resolveBaseImage(base, baseRunner, signal);
    baseDigestAsked.catch(() => undefined);
    const context = await this.contexts.materialize(request.contextId, signal);
    if (request.network === "none" && !context.defaultDockerfile) {
      const remote = findRemoteSource(await readFile(join(context.dockerfileDir, "Dockerfile"), "utf8"));
      if (remote) {
        throw new ConnectError(
          `the Dockerfile's line ${remote.line} ADDs ${remote.source} from the network, which a build without network may not (BuildKit would fetch it outside the build's sandbox); commit the file to the repository, or build with host networking`,
          Code.FailedPrecondition,
        );
      }
    }
    const baseDigest = await baseDigestAsked;
    const buildArgs = {
      GIT_REV: context.gitRev,
      GIT_SHA: context.gitSha,
      OPSCHAIN_BASE_RUNNER: baseRunner,
      OPSCHAIN_VERSION: this.settings.version,
    };
    const contentKey = this.contentKey(context, baseDigest, buildArgs, request.network);
    const handoff = request.handoff ?? this.settings.defaultHandoff;
    if (this.output === "registry" && handoff === "layer-store") {
      throw new ConnectError("handoff: the layer-store hand-off needs dockerd's image store, and this image-service builds on a standalone buildkitd; ask for the registry hand-off", Code.FailedPrecondition);
    }

    if (!request.buildWithoutCache) {
      const reused = await this.reuse(contentKey, handoff, signal);
      if (reused) return reused;
    }
    const key = `${contentKey}/${request.buildWithoutCache}`;
    let shared = this.inFlight.get(key);
    if (!shared) {
      const controller = new AbortController();
      const listeners = new Set<Listener>();
      const fanOut = (event: BuildEvent) => listeners.forEach((listener) => listener(event));
      const queuedAt = Date.now();
      const result = this.queue
        .run(
          () => {
            tracer().startSpan("image.queue", { startTime: queuedAt }).end();
            return inSpan("image.solve", { "image.content_key": contentKey, "image.no_cache": request.buildWithoutCache }, () =>
              this.solve(context, { ...buildArgs, OPSCHAIN_BASE_RUNNER: `${baseRunner}@${baseDigest}` }, contentKey, request, fanOut, controller.signal),
            );
          },
          (position) => fanOut({ kind: "queued", position }),
          controller.signal,
        )
        .finally(() => this.inFlight.delete(key));
      shared = { result, listeners, subscribers: 0, controller };
      this.inFlight.set(key, shared);
    }
    const built = await this.follow(shared, emit, signal);
    return this.handOver(built, handoff, false, signal);
  }

  /** Waits for a shared build; it is cancelled only when every caller waiting for it has gone. */
  private async follow(shared: SharedBuild, emit: Listener, signal?: AbortSignal): Promise<Built> {
    shared.subscribers++;
    shared.listeners.add(emit);
    let left = false;
    const leave = () => {
      if (left) return;
      left = true;
      shared.listeners.delete(emit);
      if (--shared.subscribers === 0 && signal?.aborted) shared.controller.abort(signal.reason);
    };
    const cancelled = new Promise<never>((_, reject) => {
      const onAbort = () => reject(new ConnectError("the build was cancelled", Code.Canceled));
      if (signal?.aborted) onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    signal?.addEventListener("abort", leave, { once: true });
    try {
      return await Promise.race([shared.result, cancelled]);
    } finally {
      signal?.removeEventListener("abort", leave);
      leave();
    }
  }

  private async solve(
    context: LocalContext,
    buildArgs: Record<string, string>,
    contentKey: string,
    request: BuildRequest,
    emit: Listener,
    signal: AbortSignal,
  ): Promise<Built> {
    const started = Date.now();
    const tag = contentKey.replace(/^sha256:/, "");
    const scope = cacheScope(context);
    const cacheSource = request.buildWithoutCache ? undefined : await this.records.cacheSource(scope);
    const tracker = new ProgressTracker();
    const logTails = new Map<string, string>();
    const onStatus = (status: StatusResponse) => {
      const events = tracker.update(status);
      for (const event of events) {
        if (event.kind === "log") logTails.set(event.digest, ((logTails.get(event.digest) ?? "") + Buffer.from(event.data).toString("utf8")).slice(-LOG_TAIL_BYTES));
      }
      if (events.length) emit({ kind: "progress", events });
    };
    const build: DockerfileBuild = {
      context: { entries: context.contextSources },
      dockerfileDir: context.dockerfileDir,
      buildArgs,
      network: request.network,
      noCache: request.buildWithoutCache,
      secrets: { env_context_zip: () => readFile(context.secretZipPath) },
      exporter:
        this.output === "registry"
          ? { type: "image", attrs: { name: `${this.stepsReference}:${tag}`, push: "true" } }
          : { type: "moby", attrs: { name: `${this.settings.stepsRepository}:${tag}` } },
      // Pushed images carry their build cache, and builds import it from the last one pushed for the same
      // Dockerfile, so that a BuildKit without local cache (a new node, a pruned one) still reuses layers.
      cacheExports: [{ type: "inline", attrs: {} }],
      cacheImports: cacheSource ? [{ type: "registry", attrs: { ref: cacheSource } }] : [],
      sessionName: `steprunner ${context.gitSha.slice(0, 12)}`,
      sharedKey: `steprunner-${scope}`,
      registryCredentials: this.settings.registryCredentials,
    };
    let exporterResponse: Record<string, string> | undefined;
    for (let attempt = 1; !exporterResponse; attempt++) {
      try {
        exporterResponse = await this.buildkit.build(build, onStatus, signal);
      } catch (error) {
        if (signal.aborted) throw new ConnectError("the build was cancelled", Code.Canceled);
        if (isTransient(error) && attempt < this.settings.transportAttempts) {
          this.observer.transportRetried();
          emit({ kind: "warning", message: `BuildKit connection failed (${ConnectError.from(error).rawMessage}); trying again (${attempt + 1}/${this.settings.transportAttempts})` });
          continue;
        }
        const failedVertex = [...logTails.keys()].pop();
        throw explainBuildFailure(error, failedVertex ? logTails.get(failedVertex)! : "");
      }
    }
    const imageId = exporterResponse["containerimage.digest"];
    if (!imageId) throw new ConnectError("BuildKit finished without naming the image it exported", Code.Internal);
    const timing = { builtAt: Date.now(), buildDurationMs: Date.now() - started };
    if (this.output === "registry") {
      // The image exporter pushed it: its digest is the manifest's, the config's comes beside it.
      const record: ReuseRecord = {
        contentKey,
        imageId: exporterResponse["containerimage.config.digest"] ?? imageId,
        cacheScope: scope,
        reference: `${this.stepsReference}@${imageId}`,
        manifestDigest: imageId,
        handoffs: ["registry"],
        ...timing,
      };
      await this.records.put(record);
      await this.records.setCacheSource(scope, `${this.stepsReference}:${tag}`);
      return { record };
    }
    const record: ReuseRecord = { contentKey, imageId, cacheScope: scope, handoffs: ["layer-store"], ...timing };
    await this.records.put(record);
    return { record, inspect: await this.inspect(record.imageId, signal) };
  }

  private async reuse(contentKey: string, handoff: Handoff, signal?: AbortSignal): Promise<ImageResult | undefined> {
    const record = await this.records.get(contentKey);
    if (!record) return undefined;
    const expired = Date.now() - record.builtAt > this.settings.reuseTtlMs;
    if (this.output === "registry") {
      // The registry is the image store: an image is reused while its manifest is there.
      if (!expired && record.reference && (await this.inRegistry(record, signal))) return this.describe(record, undefined, handoff, true, signal);
      await this.records.remove(contentKey);
      return undefined;
    }
    const inspect = expired ? undefined : await this.inspectReused(record.imageId, signal);
    if (!inspect) {
      await this.records.remove(contentKey);
      return undefined;
    }
    return this.handOver({ record, inspect }, handoff, true, signal);
  }

  /**
   * dockerd's description of an image to reuse: the one read before while its layer directories are all still
   * there (dockerd removes an image's directories with it), so that a warm step does not ask dockerd again.
   */
  private async inspectReused(imageId: string, signal?: AbortSignal): Promise<ImageInspect | undefined> {
    const known = this.inspected.get(imageId);
    const directories = known ? layerDirectories(known) : [];
    if (known && directories.length > 0 && (await Promise.all(directories.map((dir) => stat(dir).then(() => true, () => false)))).every(Boolean)) return known;
    const inspect = await this.images.inspectImage(imageId, signal);
    if (inspect) {
      this.inspected.set(imageId, inspect);
      if (this.inspected.size > INSPECTED_IMAGES) this.inspected.delete(this.inspected.keys().next().value!);
    } else this.inspected.delete(imageId);
    return inspect;
  }

  private async inspect(imageId: string, signal?: AbortSignal): Promise<ImageInspect> {
    const inspect = await this.images.inspectImage(imageId, signal);
    if (!inspect) throw new ConnectError(`image ${imageId} vanished from dockerd`, Code.Unavailable);
    return inspect;
  }

  private async inRegistry(record: ReuseRecord, signal?: AbortSignal): Promise<boolean> {
    try {
      await this.registry.manifest(parseImageReference(record.reference!).repository, record.manifestDigest!, signal);
      return true;
    } catch (error) {
      if (error instanceof RegistryError && error.status === 404) return false;
      throw error;
    }
  }

  /** Pushes the image when the registry hand-off is asked for and it is not there yet. */
  private async handOver({ record: built, inspect }: Built, handoff: Handoff, reused: boolean, signal?: AbortSignal): Promise<ImageResult> {
    if (!inspect) return this.describe(built, undefined, handoff, reused, signal);
    let record = built;
    // Another caller of a merged build may have pushed it meanwhile.
    if (handoff === "registry" && !record.reference) record = (await this.records.get(record.contentKey)) ?? record;
    if (handoff === "registry" && !record.reference) record = await this.push(record, signal);
    try {
      return await this.describe(record, inspect, handoff, reused, signal);
    } catch (error) {
      // The registry lost the manifest pushed before (a prune, its garbage collection, another instance's
      // prune of the same repository): dockerd still has the image, so it is pushed again.
      if (handoff !== "registry" || !(error instanceof RegistryError) || error.status !== 404) throw error;
      return this.describe(await this.push(record, signal), inspect, handoff, reused, signal);
    }
  }

  /** Pushes a built image to the registry under its content key and records where it went. */
  private async push(built: ReuseRecord, signal?: AbortSignal): Promise<ReuseRecord> {
    const tag = built.contentKey.replace(/^sha256:/, "");
    const repository = `${this.registry.address}/${this.settings.stepsRepository}`;
    const pushed = await inSpan("image.push", { "image.repository": repository }, async () => {
      await this.images.tagImage(built.imageId, repository, tag, signal);
      return this.images.pushImage(repository, tag, signal);
    });
    const record: ReuseRecord = { ...built, reference: `${repository}@${pushed.digest}`, manifestDigest: pushed.digest, handoffs: ["layer-store", "registry"] };
    await this.records.put(record);
    await this.records.setCacheSource(record.cacheScope, `${repository}:${tag}`);
    return record;
  }

  /** The image as the step-service takes it; its config from dockerd when it is there, else from the registry. */
  private async describe(record: ReuseRecord, inspect: ImageInspect | undefined, handoff: Handoff, reused: boolean, signal?: AbortSignal): Promise<ImageResult> {
    const common = { imageId: record.imageId, handoff, contentKey: record.contentKey, reused, builtAt: record.builtAt, buildDurationMs: record.buildDurationMs };
    if (handoff === "layer-store" && inspect) {
      return {
        ...common,
        config: imageConfig(inspect.Config),
        reference: "",
        manifestDigest: "",
        layers: (inspect.RootFS.Layers ?? []).map((diffId) => ({ digest: "", diffId, size: 0n, mediaType: "" })),
        layerDirectories: layerDirectories(inspect),
      };
    }
    const { repository } = parseImageReference(record.reference!);
    const { manifest } = await this.registry.manifest(repository, record.manifestDigest!, signal);
    const configFile = await this.registry.config(repository, manifest.config, signal);
    return {
      ...common,
      config: imageConfig(inspect?.Config ?? configFile.config),
      reference: record.reference!,
      manifestDigest: record.manifestDigest!,
      layers: manifest.layers.map((layer, index) => ({
        digest: layer.digest,
        diffId: configFile.rootfs.diff_ids[index] ?? "",
        size: BigInt(layer.size),
        mediaType: layer.mediaType,
      })),
      layerDirectories: [],
    };
  }

  /**
   * Removes the images built longer ago than olderThanMs (default: the reuse TTL): their names in dockerd
   * (the image goes with its last name) and their manifests in the registry. Images a build in flight is
   * producing are not touched. Returns the content keys removed.
   */
  async prune(olderThanMs = this.settings.reuseTtlMs, signal?: AbortSignal): Promise<string[]> {
    const removed: string[] = [];
    const now = Date.now();
    for (const record of await this.records.list()) {
      if (now - record.builtAt < olderThanMs) continue;
      if ([...this.inFlight.keys()].some((key) => key.startsWith(record.contentKey))) continue;
      const tag = record.contentKey.replace(/^sha256:/, "");
      this.inspected.delete(record.imageId);
      if (this.output === "dockerd") await this.images.removeImage(`${this.settings.stepsRepository}:${tag}`, signal);
      if (record.reference && this.output === "registry") {
        await this.registry.deleteManifest(parseImageReference(record.reference).repository, record.manifestDigest!, signal).catch((error: unknown) => {
          if (!(error instanceof RegistryError && error.status === 404)) throw error;
        });
      } else if (record.reference) {
        const { repository } = parseImageReference(record.reference);
        await this.images.removeImage(`${this.registry.address}/${repository}:${tag}`, signal);
        await this.registry.deleteManifest(repository, record.manifestDigest!, signal);
      }
      await this.records.remove(record.contentKey);
      removed.push(record.contentKey);
    }
    return removed;
  }

  /** A base runner must be a reference into our registry: checked before any work, so a bad one changes nothing. */
  private checkBaseRunner(baseRunner: string): ImageReference {
    let reference;
    try {
      reference = parseImageReference(baseRunner);
    } catch (error) {
      throw invalidField("base_runner", `must be an image reference in the registry ${this.registry.address} (${(error as Error).message})`, baseRunner);
    }
    if (reference.registry !== this.registry.address) throw invalidField("base_runner", `must be an image in the registry ${this.registry.address}`, baseRunner);
    return reference;
  }

  private async resolveBaseImage(reference: ImageReference, baseRunner: string, signal?: AbortSignal): Promise<string> {
    try {
      return (await this.registry.manifest(reference.repository, reference.reference, signal)).digest;
    } catch (error) {
      if ((error as { status?: number }).status === 404) {
        throw new ConnectError(`base_runner: the image ${baseRunner} is not in the registry; push it there, or for the default base runner run deploy/local/runner-image.sh ensure`, Code.FailedPrecondition);
      }
      throw new ConnectError(`cannot resolve the base runner image ${baseRunner}: ${(error as Error).message}`, Code.Unavailable);
    }
  }

  private contentKey(context: LocalContext, baseDigest: string, buildArgs: Record<string, string>, network: string): string {
    const inputs = {
      // The repository by its commit and options, not by the bytes it travels in (repo.tar's or the
      // directories' depend on which older commits this machine has seen).
      gitSha: context.gitSha,
      repository: context.repositoryOptions,
      dockerfile: context.dockerfile.digest,
      baseImage: baseDigest,
      buildArgs,
      // The default Dockerfile never puts the properties in a layer: a change of properties reuses the image.
      stepContextZip: context.defaultDockerfile ? null : context.stepContextZip.digest,
      network,
    };
    return `sha256:${createHash("sha256").update(JSON.stringify(inputs)).digest("hex")}`;
  }
}

const INSPECTED_IMAGES = 256;

/**
 * Builds of one repository with one Dockerfile share BuildKit's snapshot of their local sources (unchanged
 * files are not sent again) and their registry cache; other repositories and Dockerfiles do not evict theirs.
 */
function cacheScope(context: LocalContext): string {
  return `${context.repositoryId.slice(0, 16)}-${context.dockerfile.digest.slice(7, 23)}`;
}

/** dockerd's overlay2 directories of an image, bottom layer first. */
function layerDirectories(inspect: ImageInspect): string[] {
  const data = inspect.GraphDriver.Data ?? {};
  if (inspect.GraphDriver.Name !== "overlay2" || !data.UpperDir) return [];
  const lower = data.LowerDir ? data.LowerDir.split(":").reverse() : [];
  return [...lower, data.UpperDir];
}

/** An image's run settings, from dockerd's inspect or the registry's config file (the same field names). */
function imageConfig(config: ImageInspect["Config"] | ImageConfigFile["config"] | undefined): ImageResult["config"] {
  return {
    env: config?.Env ?? [],
    entrypoint: config?.Entrypoint ?? [],
    cmd: config?.Cmd ?? [],
    workingDir: config?.WorkingDir ?? "",
    user: config?.User ?? "",
    labels: config?.Labels ?? {},
  };
}
