import { createHash } from "node:crypto";
import { statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { StatusResponse } from "../../../gen/moby/buildkit/v1/control_pb.js";
import type { DockerfileBuild } from "../buildkit/dockerfile-build.js";
import { ProgressTracker } from "../buildkit/progress.js";
import type { ImageInspect, PushResult } from "../docker/docker-api.js";
import type { RegistryCredentials } from "../../shared/registry/credentials.js";
import { type ImageReference, parseImageReference } from "../../shared/registry/image-reference.js";
import { FifoQueue } from "../../shared/fifo-queue.js";
import { SingleFlight } from "../../shared/single-flight.js";
import { inSpan, tracer } from "../../shared/tracing.js";
import { type ImageConfigFile, type ImageManifest, RegistryError } from "../../shared/registry/registry-client.js";
import { findRemoteSource } from "./remote-sources.js";
import { explainBuildFailure, isTransient, rawMessage } from "./build-errors.js";
import { buildCancelled, failedPrecondition, ImageError, invalidField, notFound, unavailable } from "./errors.js";
import type { BuildEvent, BuildRequest, ContextDescription, ContextSource, Handoff, ImageResult, LocalContext } from "./model.js";
import type { ReuseRecord, ReuseRecords } from "./reuse-records.js";
import { findSyntaxDirective, isNotUnderstood, registryHostOf, type SyntaxDirective, type SyntaxPolicy } from "./syntax-directive.js";
import { keepRecent } from "../../shared/recent-entries.js";
import { imageInputs } from "../../shared/image-inputs.js";

/** Runs a Dockerfile build on BuildKit (buildDockerfile over a BuildKitClient in production). */
export interface DockerfileBuilder {
  /** `onRetry` is told when the builder itself tries the build again elsewhere (another BuildKit shard). */
  build(
    build: DockerfileBuild,
    onStatus: (status: StatusResponse) => void,
    signal?: AbortSignal,
    onRetry?: (message: string) => void,
  ): Promise<Record<string, string>>;
}

/** dockerd's image store, where BuildKit's moby exporter leaves images. */
export interface ImageStore {
  inspectImage(name: string, signal?: AbortSignal): Promise<ImageInspect | undefined>;
  removeImage(name: string, signal?: AbortSignal): Promise<void>;
  tagImage(image: string, repository: string, tag: string, signal?: AbortSignal): Promise<void>;
  pushImage(repository: string, tag: string, signal?: AbortSignal): Promise<PushResult>;
}

/**
 * Which directories are mounted as overlayfs lower layers on this host (a step-service's running steps, with
 * the layer-store hand-off: dockerd's overlay2 directories of the image they run).
 */
export interface MountedLayers {
  lowerDirs(signal?: AbortSignal): Promise<Set<string>>;
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

/** The layer compressions the step-service's layer store can read (Node has no zstd). */
export type LayerCompression = "gzip" | "uncompressed";

export interface ImageBuilderSettings {
  /** Absent: dockerd. */
  imageOutput?: ImageOutput;
  /** How the image exporter compresses the layers it pushes (registry output); absent: BuildKit's default, gzip. */
  layerCompression?: LayerCompression;
  defaultBaseRunner: string;
  /** OPSCHAIN_VERSION. */
  version: string;
  /** Repository (in dockerd and the registry) that step images are named in. */
  stepsRepository: string;
  defaultHandoff: Handoff;
  /** Images older than this are built again rather than reused. */
  reuseTtlMs: number;
  /**
   * How long a base runner's digest, once read from the registry, is taken without asking again (a tag pushed
   * anew is seen by the builds that start this long after); 0 or absent: asked on every build.
   */
  baseImageRecheckMs?: number;
  maxConcurrentBuilds: number;
  /** Attempts for a build whose connection to BuildKit fails (not for a failing build). */
  transportAttempts: number;
  /** Credentials by registry host for BuildKit's pulls; none: anonymous. */
  registryCredentials?: RegistryCredentials;
  /**
   * A "# syntax=" line (STEPRUNNER_DOCKERFILE_SYNTAX): "auto" (the default) uses the frontend image when it is
   * in this service's registry and otherwise ignores the line with a warning (the builtin frontend builds the
   * file; when it does not understand it, the build is refused naming the line); "pull" lets BuildKit pull
   * it from wherever it names; "builtin" always ignores the line.
   */
  syntaxPolicy?: SyntaxPolicy;
  /**
   * An image handed over in dockerd's layer store this recently may be under a running step (the longest a
   * step may run): prune keeps it, mounted or not. Absent: 25 hours.
   */
  inUseHoldMs?: number;
}

type Listener = (event: BuildEvent) => void;

export type BuildOutcome = "built" | "reused" | "failed" | "cancelled";

/** Told of every build's end and of each retry, for metrics. */
export interface BuildObserver {
  buildEnded(outcome: BuildOutcome, seconds: number): void;
  transportRetried(): void;
}

/** What an ImageBuilder works with: its ports (adapters in production, fakes in tests) and its settings. */
export interface ImageBuilderOptions {
  contexts: ContextSource;
  buildkit: DockerfileBuilder;
  images: ImageStore;
  registry: Registry;
  records: ReuseRecords;
  settings: ImageBuilderSettings;
  /** Absent: builds are not observed. */
  observer?: BuildObserver;
  /** Absent: no mount is seen (prune then relies on inUseHoldMs alone). */
  mountedLayers?: MountedLayers;
}

/** A base runner's digest as the registry gave it, and when it was asked (epoch ms). */
interface BaseDigest {
  digest: string;
  askedAt: number;
}

/** A built image: its record and, for an image in dockerd, what dockerd says of it, inspected once. */
interface Built {
  record: ReuseRecord;
  inspect?: ImageInspect;
}

const LOG_TAIL_BYTES = 4096;
/** The step-service's longest step (24 hours) and an hour for its queue, context and build. */
const DEFAULT_IN_USE_HOLD_MS = 25 * 3_600_000;

/**
 * Builds the image of a prepared context, or reuses the one built before for the same inputs. Identical
 * builds in flight are merged into one; builds beyond the limit wait in FIFO order.
 */
export class ImageBuilder {
  private readonly queue: FifoQueue;
  private readonly builds = new SingleFlight<Built>();
  /** Who follows each build in flight (its key), told of its events. */
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly contexts: ContextSource;
  private readonly buildkit: DockerfileBuilder;
  private readonly images: ImageStore;
  private readonly registry: Registry;
  private readonly records: ReuseRecords;
  private readonly settings: ImageBuilderSettings;
  private readonly observer: BuildObserver;
  private readonly mountedLayers: MountedLayers;
  /** dockerd's descriptions of images reused lately (inspectReused), least recently read first. */
  private readonly inspected = new Map<string, ImageInspect>();
  /** Each base runner's digest as the registry last gave it, and when it was asked (see baseImageRecheckMs). */
  private readonly baseDigests = new Map<string, BaseDigest>();
  /** Builds starting at once share one registry request for their base runner's digest. */
  private readonly baseLookups = new SingleFlight<BaseDigest>();

  constructor(options: ImageBuilderOptions) {
    this.contexts = options.contexts;
    this.buildkit = options.buildkit;
    this.images = options.images;
    this.registry = options.registry;
    this.records = options.records;
    this.settings = options.settings;
    this.observer = options.observer ?? { buildEnded: () => {}, transportRetried: () => {} };
    this.mountedLayers = options.mountedLayers ?? { lowerDirs: async () => new Set() };
    this.queue = new FifoQueue(options.settings.maxConcurrentBuilds);
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
    // The base image's digest is asked of the registry while the context is described.
    const baseDigestAsked = this.resolveBaseImage(base, baseRunner, signal);
    baseDigestAsked.catch(() => undefined);
    // The default Dockerfile needs none of the context's files until a build: a reused image needs only its
    // description. A repository's own Dockerfile is read once, for both checks below.
    const described = await this.contexts.describe(request.contextId, signal);
    const local = described.defaultDockerfile ? undefined : await this.contexts.materialize(request.contextId, signal);
    const dockerfile = local ? await readFile(join(local.dockerfileDir, "Dockerfile"), "utf8") : undefined;
    if (request.network === "none" && dockerfile !== undefined) {
      const remote = findRemoteSource(dockerfile);
      if (remote) {
        throw failedPrecondition(
          `the Dockerfile's line ${remote.line} ADDs ${remote.source} from the network, which a build without network may not (BuildKit would fetch it outside the build's sandbox); commit the file to the repository, or build with host networking`,
        );
      }
    }
    // Said to every caller, also when the image is reused or the build merged with another.
    const skipped = dockerfile === undefined ? undefined : await this.skippedSyntax(dockerfile, signal);
    if (skipped) {
      emit({
        kind: "warning",
        message: `the Dockerfile's line ${skipped.syntax.line} "${skipped.syntax.text}" names the frontend image ${skipped.syntax.image}, which ${skipped.unpullable}; the line is ignored and BuildKit's builtin Dockerfile frontend builds the file`,
      });
    }
    const { digest: baseDigest, askedAt: baseAskedAt } = await baseDigestAsked;
    // How long another call for the same inputs would be answered with this image: while the digest is held.
    const recheckMs = this.settings.baseImageRecheckMs ?? 0;
    const answer = (image: ImageResult): ImageResult => (recheckMs > 0 ? { ...image, reusableUntilMs: baseAskedAt + recheckMs } : image);
    const buildArgs = {
      GIT_REV: described.gitRev,
      GIT_SHA: described.gitSha,
      OPSCHAIN_BASE_RUNNER: baseRunner,
      OPSCHAIN_VERSION: this.settings.version,
    };
    const contentKey = this.contentKey(described, baseDigest, buildArgs, request.network);
    const handoff = request.handoff ?? this.settings.defaultHandoff;
    if (this.output === "registry" && handoff === "layer-store") {
      throw failedPrecondition(
        "handoff: the layer-store hand-off needs dockerd's image store, and this image-service builds on a standalone buildkitd; ask for the registry hand-off",
      );
    }

    if (!request.buildWithoutCache) {
      const reused = await this.reuse(contentKey, handoff, signal);
      if (reused) return answer(reused);
    }
    if (request.reuseOnly) throw notFound(`no image was built for context ${request.contextId} with these inputs (or it is gone); nothing was built`);
    const context = local ?? (await this.contexts.materialize(request.contextId, signal));
    const key = `${contentKey}/${request.buildWithoutCache}`;
    // Identical builds share one solve; it is cancelled only when every caller waiting for it has gone.
    let listeners = this.listeners.get(key);
    if (!listeners) this.listeners.set(key, (listeners = new Set()));
    listeners.add(emit);
    const fanOut = (event: BuildEvent) => this.listeners.get(key)?.forEach((listener) => listener(event));
    const queuedAt = Date.now();
    let built: Built;
    try {
      built = await this.builds.run(
        key,
        (flightSignal) =>
          this.queue.run(
            () => {
              tracer().startSpan("image.queue", { startTime: queuedAt }).end();
              return inSpan("image.solve", { "image.content_key": contentKey, "image.no_cache": request.buildWithoutCache }, () =>
                this.solve(context, { ...buildArgs, OPSCHAIN_BASE_RUNNER: `${baseRunner}@${baseDigest}` }, contentKey, request, fanOut, flightSignal, skipped),
              );
            },
            { onPosition: (position) => fanOut({ kind: "queued", position }), signal: flightSignal },
          ),
        signal,
      );
    } catch (error) {
      if (signal?.aborted) throw buildCancelled();
      throw error;
    } finally {
      listeners.delete(emit);
      if (listeners.size === 0 && this.listeners.get(key) === listeners) this.listeners.delete(key);
    }
    return answer(await this.handOver(built, handoff, false, signal));
  }

  private async solve(
    context: LocalContext,
    buildArgs: Record<string, string>,
    contentKey: string,
    request: BuildRequest,
    emit: Listener,
    signal: AbortSignal,
    skipped?: { syntax: SyntaxDirective; unpullable: string },
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
        if (event.kind === "log")
          logTails.set(event.digest, ((logTails.get(event.digest) ?? "") + Buffer.from(event.data).toString("utf8")).slice(-LOG_TAIL_BYTES));
      }
      if (events.length) emit({ kind: "progress", events });
    };
    const { syntax, unpullable } = skipped ?? {};
    const build: DockerfileBuild = {
      ...(unpullable ? { ignoreSyntaxDirective: true } : {}),
      context: { entries: context.contextSources },
      dockerfileDir: context.dockerfileDir,
      buildArgs,
      network: request.network,
      noCache: request.buildWithoutCache,
      secrets: { env_context_zip: () => readFile(context.secretZipPath) },
      exporter:
        this.output === "registry"
          ? {
              type: "image",
              attrs: {
                name: `${this.stepsReference}:${tag}`,
                push: "true",
                ...(this.settings.layerCompression ? { compression: this.settings.layerCompression } : {}),
              },
            }
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
        exporterResponse = await this.buildkit.build(build, onStatus, signal, (message) => {
          this.observer.transportRetried();
          emit({ kind: "warning", message });
        });
      } catch (error) {
        if (signal.aborted) throw buildCancelled();
        if (isTransient(error) && attempt < this.settings.transportAttempts) {
          this.observer.transportRetried();
          emit({
            kind: "warning",
            message: `BuildKit connection failed (${rawMessage(error)}); trying again (${attempt + 1}/${this.settings.transportAttempts})`,
          });
          continue;
        }
        const failedVertex = [...logTails.keys()].pop();
        const explained = explainBuildFailure(error, failedVertex ? logTails.get(failedVertex)! : "");
        if (syntax && unpullable && isNotUnderstood(rawMessage(explained))) {
          throw failedPrecondition(
            `the Dockerfile's line ${syntax.line} "${syntax.text}" names the frontend image ${syntax.image}, which ${unpullable}, and BuildKit's builtin Dockerfile frontend does not understand the file (${rawMessage(explained)}); ` +
              `use only what the builtin frontend supports (BuildKit v0.8 in dockerd lacks COPY --link and heredocs, for example), or push ${syntax.image} to ${this.registry.address} and name it there`,
          );
        }
        throw explained;
      }
    }
    const imageId = exporterResponse["containerimage.digest"];
    if (!imageId) throw new ImageError("internal", "BuildKit finished without naming the image it exported");
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

  /** The repository Dockerfile's syntax directive when it is to be skipped, and why. */
  private async skippedSyntax(dockerfile: string, signal?: AbortSignal): Promise<{ syntax: SyntaxDirective; unpullable: string } | undefined> {
    const syntax = findSyntaxDirective(dockerfile);
    const unpullable = syntax ? await this.unpullableFrontend(syntax, signal) : undefined;
    return syntax && unpullable ? { syntax, unpullable } : undefined;
  }

  /** Why the frontend image a syntax directive names cannot be used here, or undefined when it can. */
  private async unpullableFrontend(syntax: SyntaxDirective, signal?: AbortSignal): Promise<string | undefined> {
    const policy = this.settings.syntaxPolicy ?? "auto";
    if (policy === "pull") return undefined;
    if (policy === "builtin") return "STEPRUNNER_DOCKERFILE_SYNTAX=builtin says not to pull";
    const host = registryHostOf(syntax.image);
    // Nothing beyond this service's own registry is asked: these machines reach no other.
    if (host !== this.registry.address)
      return `is not in this service's registry (${this.registry.address}) and cannot be pulled from ${host} here (STEPRUNNER_DOCKERFILE_SYNTAX=pull lets BuildKit try)`;
    let reference: ImageReference;
    try {
      reference = parseImageReference(syntax.image);
    } catch (error) {
      return `is not a valid image reference (${(error as Error).message})`;
    }
    try {
      await this.registry.manifest(reference.repository, reference.reference, signal);
      return undefined;
    } catch (error) {
      if (error instanceof RegistryError && error.status === 404) return `is not in the registry ${this.registry.address}`;
      return `could not be looked up in the registry ${this.registry.address} (${(error as Error).message})`;
    }
  }

  private async reuse(contentKey: string, handoff: Handoff, signal?: AbortSignal): Promise<ImageResult | undefined> {
    const record = await this.records.get(contentKey);
    if (!record) return undefined;
    const expired = Date.now() - record.builtAt > this.settings.reuseTtlMs;
    if (this.output === "registry") {
      // The registry is the image store: an image is reused while its manifest is there.
      const manifest = !expired && record.reference ? await this.manifestInRegistry(record, signal) : undefined;
      if (manifest) return this.describe(record, undefined, handoff, true, signal, manifest);
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
    if (
      known &&
      directories.length > 0 &&
      // Synchronous stats: microseconds each, where a thread-pool round trip costs a tenth of a millisecond or more.
      directories.every((dir) => statSync(dir, { throwIfNoEntry: false }) !== undefined)
    )
      return known;
    const inspect = await this.images.inspectImage(imageId, signal);
    if (inspect) {
      keepRecent(this.inspected, imageId, inspect, INSPECTED_IMAGES);
    } else this.inspected.delete(imageId);
    return inspect;
  }

  private async inspect(imageId: string, signal?: AbortSignal): Promise<ImageInspect> {
    const inspect = await this.images.inspectImage(imageId, signal);
    if (!inspect) throw unavailable(`image ${imageId} vanished from dockerd`);
    return inspect;
  }

  /** The image's manifest while the registry has it; undefined once it is gone. */
  private async manifestInRegistry(record: ReuseRecord, signal?: AbortSignal): Promise<ImageManifest | undefined> {
    try {
      return (await this.registry.manifest(parseImageReference(record.reference!).repository, record.manifestDigest!, signal)).manifest;
    } catch (error) {
      if (error instanceof RegistryError && error.status === 404) return undefined;
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
  private async describe(
    record: ReuseRecord,
    inspect: ImageInspect | undefined,
    handoff: Handoff,
    reused: boolean,
    signal?: AbortSignal,
    /** The manifest when it was just read (by its digest, so it is the same). */
    knownManifest?: ImageManifest,
  ): Promise<ImageResult> {
    const common = {
      imageId: record.imageId,
      handoff,
      contentKey: record.contentKey,
      reused,
      builtAt: record.builtAt,
      buildDurationMs: record.buildDurationMs,
    };
    if (handoff === "layer-store" && inspect) {
      // Before the step-service has it: from now on prune keeps the image for a step's longest run.
      await this.records.markHandedOver(record.contentKey, Date.now());
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
    const manifest = knownManifest ?? (await this.registry.manifest(repository, record.manifestDigest!, signal)).manifest;
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
   * producing are not touched, nor images a step may be running on (see inUse). Returns the content keys
   * removed.
   */
  async prune(olderThanMs = this.settings.reuseTtlMs, signal?: AbortSignal): Promise<string[]> {
    const removed: string[] = [];
    const now = Date.now();
    let mounted: Set<string> | undefined;
    for (const record of await this.records.list()) {
      if (now - record.builtAt < olderThanMs) continue;
      if (this.builds.keys().some((key) => key.startsWith(record.contentKey))) continue;
      if (this.output === "dockerd") {
        mounted ??= await this.mountedLayers.lowerDirs(signal);
        if (await this.inUse(record, mounted, now, signal)) continue;
      }
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

  /**
   * Whether a step may be running on an image in dockerd: removing it would delete overlay2 directories that
   * the step's overlayfs has as lower layers. It is in use when any of its directories is mounted as a lower
   * layer here, or, for a step-service whose mounts this process cannot see, when it was handed over in the
   * layer store within the hold (a step's longest run).
   */
  private async inUse(record: ReuseRecord, mounted: Set<string>, now: number, signal?: AbortSignal): Promise<boolean> {
    const handedOverAt = await this.records.handedOverAt(record.contentKey);
    if (handedOverAt !== undefined && now - handedOverAt < (this.settings.inUseHoldMs ?? DEFAULT_IN_USE_HOLD_MS)) return true;
    const inspect = await this.images.inspectImage(record.imageId, signal);
    return inspect !== undefined && layerDirectories(inspect).some((dir) => mounted.has(dir));
  }

  /** A base runner must be a reference into our registry: checked before any work, so a bad one changes nothing. */
  private checkBaseRunner(baseRunner: string): ImageReference {
    let reference: ImageReference;
    try {
      reference = parseImageReference(baseRunner);
    } catch (error) {
      throw invalidField("base_runner", `must be an image reference in the registry ${this.registry.address} (${(error as Error).message})`, baseRunner);
    }
    if (reference.registry !== this.registry.address)
      throw invalidField("base_runner", `must be an image in the registry ${this.registry.address}`, baseRunner);
    return reference;
  }

  /**
   * The base runner's digest: the registry's answer of the last baseImageRecheckMs, else the registry asked
   * (once for all the builds asking at the same time).
   */
  private async resolveBaseImage(reference: ImageReference, baseRunner: string, signal?: AbortSignal): Promise<BaseDigest> {
    const known = this.baseDigests.get(baseRunner);
    if (known && Date.now() - known.askedAt < (this.settings.baseImageRecheckMs ?? 0)) return known;
    return this.baseLookups.run(
      baseRunner,
      async (lookupSignal) => {
        const askedAt = Date.now();
        try {
          const { digest } = await this.registry.manifest(reference.repository, reference.reference, lookupSignal);
          const answer = { digest, askedAt };
          keepRecent(this.baseDigests, baseRunner, answer, BASE_DIGESTS);
          return answer;
        } catch (error) {
          if ((error as { status?: number }).status === 404) {
            throw failedPrecondition(
              `base_runner: the image ${baseRunner} is not in the registry; push it there, or for the default base runner run deploy/local/runner-image.sh ensure`,
            );
          }
          throw unavailable(`cannot resolve the base runner image ${baseRunner}: ${(error as Error).message}`);
        }
      },
      signal,
    );
  }

  private contentKey(context: ContextDescription, baseDigest: string, buildArgs: Record<string, string>, network: string): string {
    const inputs = imageInputs({
      ...context,
      dockerfileDigest: context.dockerfile.digest,
      stepContextZipDigest: context.stepContextZip.digest,
      ...(context.trustStoreTar ? { trustStoreDigest: context.trustStoreTar.digest } : {}),
    });
    // GIT_REV goes in with the build arguments.
    const key = {
      gitSha: inputs.gitSha,
      repository: inputs.repositoryOptions,
      dockerfile: inputs.dockerfileDigest,
      baseImage: baseDigest,
      buildArgs,
      stepContextZip: inputs.stepContextZipDigest,
      network,
      // Absent (so left out of the JSON) without a trust store: such keys stay what they were before it counted.
      trustStore: inputs.trustStoreDigest ?? undefined,
    };
    return `sha256:${createHash("sha256").update(JSON.stringify(key)).digest("hex")}`;
  }
}

const INSPECTED_IMAGES = 256;
const BASE_DIGESTS = 64;

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
