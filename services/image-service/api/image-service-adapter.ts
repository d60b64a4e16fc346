import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { durationFromMs, timestampFromDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type BuildImageResponseSchema,
  type BuildProgress,
  BuildProgressSchema,
  ImageHandoff,
  type ImageService,
  LogStream,
  NetworkMode,
  VertexState,
} from "../../../gen/steprunner/image/v1/image_service_pb.js";
import type { ProgressEvent } from "../buildkit/progress.js";
import type { Builder } from "../core/builder.js";
import type { ImageBuilder } from "../core/image-builder.js";
import type { BuildEvent, Handoff, ImageResult } from "../core/model.js";
import { EventChannel } from "../../shared/event-channel.js";
import { durationMs, invalidField, invalidFieldMessage } from "../../shared/validation.js";
import { ImageError, type ImageErrorKind } from "../core/errors.js";

const MAX_KEEP_BYTES = 1n << 50n;

/** The Connect adapter of ImageService: validates requests and translates between the API and the core. */
export function imageServiceAdapter(builder: Builder, images: ImageBuilder): Partial<ServiceImpl<typeof ImageService>> {
  return {
    async *buildImage(request, context) {
      if (!/^sha256:[0-9a-f]{64}$/.test(request.contextId)) {
        throw invalidField("context_id", 'must be a prepared context\'s id: "sha256:" and 64 hex digits', request.contextId);
      }
      if (!(request.networkMode in NetworkMode))
        throw invalidField("network_mode", "must be NETWORK_MODE_NONE, NETWORK_MODE_HOST or unset", request.networkMode);
      if (!(request.handoff in ImageHandoff))
        throw invalidField("handoff", "must be IMAGE_HANDOFF_REGISTRY, IMAGE_HANDOFF_LAYER_STORE or unset", request.handoff);
      if (request.reuseOnly && request.buildWithoutCache) throw invalidField("reuse_only", "cannot be set with build_without_cache, which reuses nothing");
      const events = new EventChannel<MessageInitShape<typeof BuildImageResponseSchema>>();
      images
        .build(
          {
            contextId: request.contextId,
            baseRunner: request.baseRunner,
            network: request.networkMode === NetworkMode.HOST ? "host" : "none",
            buildWithoutCache: request.buildWithoutCache,
            handoff: HANDOFFS[request.handoff],
            reuseOnly: request.reuseOnly,
          },
          (event) => events.push(toResponse(event)),
          context.signal,
        )
        .then(
          (image) => {
            events.push({ event: { case: "image", value: toBuiltImage(image) } });
            events.close();
          },
          (error) => events.close(toConnectError(error)),
        );
      yield* events;
    },

    async getBuilderInfo(_request, context) {
      const info = await builder.info(context.signal);
      const buildkits = info.buildkits.map((daemon) => ({
        address: daemon.address,
        version: daemon.version ?? "",
        workers: daemon.workers.map((worker) => ({
          id: worker.id,
          platforms: worker.platforms,
          labels: worker.labels,
          cacheCollection: worker.cacheCollection.map((rule) => ({
            all: rule.all,
            keepDuration: rule.keepDurationMs > 0 ? durationFromMs(rule.keepDurationMs) : undefined,
            reservedBytes: rule.reservedBytes,
            maxUsedBytes: rule.maxUsedBytes,
            minFreeBytes: rule.minFreeBytes,
            filters: rule.filters,
          })),
        })),
        problem: daemon.problem ?? "",
      }));
      const [first] = buildkits;
      return {
        buildkitAddress: first!.address,
        buildkitVersion: first!.version,
        workers: first!.workers,
        registryAddress: info.registryAddress,
        registryApiVersion: info.registryApiVersion ?? "",
        defaultBaseRunner: info.defaultBaseRunner,
        buildkits,
      };
    },

    async getDiskUsage(_request, context) {
      const records = await builder.diskUsage(context.signal);
      return {
        records: records.map((record) => ({
          id: record.id,
          description: record.description,
          sizeBytes: record.sizeBytes,
          inUse: record.inUse,
          shared: record.shared,
          recordType: record.recordType,
          lastUsedAt: record.lastUsedAt ? timestampFromDate(record.lastUsedAt) : undefined,
          usageCount: record.usageCount,
          buildkitAddress: record.buildkitAddress,
        })),
        totalBytes: records.reduce((sum, record) => sum + record.sizeBytes, 0n),
      };
    },

    async pruneImages(request, context) {
      const olderThanMs = request.olderThan ? durationMs("older_than", request.olderThan) : undefined;
      if (olderThanMs !== undefined && olderThanMs < 0) throw invalidField("older_than", "must not be negative", `${request.olderThan!.seconds}s`);
      const contentKeys = await images.prune(olderThanMs, context.signal).catch(rethrowMapped);
      return { imagesRemoved: contentKeys.length, contentKeys };
    },

    async pruneCache(request, context) {
      if (request.keepBytes < 0n || request.keepBytes > MAX_KEEP_BYTES)
        throw invalidField("keep_bytes", `must be between 0 and ${MAX_KEEP_BYTES}`, request.keepBytes);
      const keepDurationMs = request.keepDuration ? durationMs("keep_duration", request.keepDuration) : 0;
      if (keepDurationMs < 0) throw invalidField("keep_duration", "must not be negative", `${request.keepDuration!.seconds}s`);
      const removed = await builder.prune({ all: request.all, keepBytes: request.keepBytes, keepDurationMs }, context.signal);
      return {
        reclaimedBytes: removed.reduce((sum, record) => sum + record.sizeBytes, 0n),
        recordsRemoved: removed.length,
      };
    },
  };
}

const CODES: Record<ImageErrorKind, Code> = {
  "invalid-argument": Code.InvalidArgument,
  "not-found": Code.NotFound,
  "failed-precondition": Code.FailedPrecondition,
  unavailable: Code.Unavailable,
  cancelled: Code.Canceled,
  "data-loss": Code.DataLoss,
  internal: Code.Internal,
};

/**
 * The core's errors become their gRPC codes (an invalid field with a BadRequest detail naming it); the
 * errors of the ports' adapters (BuildKit's, the context-service's, already Connect errors) and anything
 * else pass on as they are.
 */
export function toConnectError(error: unknown): unknown {
  if (!(error instanceof ImageError)) return error;
  const mapped = error.field ? invalidFieldMessage(error.field, error.message) : new ConnectError(error.message, CODES[error.kind]);
  mapped.cause = error;
  return mapped;
}

function rethrowMapped(error: unknown): never {
  throw toConnectError(error);
}

const HANDOFFS: Record<ImageHandoff, Handoff | undefined> = {
  [ImageHandoff.UNSPECIFIED]: undefined,
  [ImageHandoff.REGISTRY]: "registry",
  [ImageHandoff.LAYER_STORE]: "layer-store",
};

const VERTEX_STATES = {
  started: VertexState.STARTED,
  completed: VertexState.COMPLETED,
  cached: VertexState.CACHED,
  errored: VertexState.ERRORED,
  canceled: VertexState.CANCELED,
} as const;

function toResponse(event: BuildEvent): MessageInitShape<typeof BuildImageResponseSchema> {
  switch (event.kind) {
    case "queued":
      return { event: { case: "queued", value: { position: event.position } } };
    case "warning":
      return { event: { case: "warning", value: { message: event.message } } };
    case "progress":
      return { event: { case: "progress", value: toProgress(event.events) } };
  }
}

/** Build progress in the API's form; the step-service forwards it as is. */
export function toProgress(events: ProgressEvent[]): BuildProgress {
  return create(BuildProgressSchema, {
    vertexes: events.flatMap((event) =>
      event.kind !== "vertex"
        ? []
        : [
            {
              digest: event.digest,
              number: event.number,
              name: event.name,
              state: VERTEX_STATES[event.state],
              startedAt: event.startedAt !== undefined ? timestampFromMs(event.startedAt) : undefined,
              completedAt: event.completedAt !== undefined ? timestampFromMs(event.completedAt) : undefined,
              error: event.error ?? "",
            },
          ],
    ),
    statuses: events.flatMap((event) =>
      event.kind !== "status" ? [] : [{ vertexDigest: event.digest, id: event.id, current: event.current, total: event.total, completed: event.completed }],
    ),
    logs: events.flatMap((event) =>
      event.kind !== "log"
        ? []
        : [
            {
              vertexDigest: event.digest,
              stream: event.stream === "stderr" ? LogStream.STDERR : LogStream.STDOUT,
              data: event.data,
              time: timestampFromMs(event.time),
            },
          ],
    ),
  });
}

function toBuiltImage(image: ImageResult) {
  return {
    imageId: image.imageId,
    handoff: image.handoff === "registry" ? ImageHandoff.REGISTRY : ImageHandoff.LAYER_STORE,
    reference: image.reference,
    manifestDigest: image.manifestDigest,
    config: image.config,
    layers: image.layers.map((layer) => ({ digest: layer.digest, diffId: layer.diffId, sizeBytes: layer.size, mediaType: layer.mediaType })),
    layerDirectories: image.layerDirectories,
    contentKey: image.contentKey,
    reused: image.reused,
    builtAt: timestampFromMs(image.builtAt),
    buildDuration: { seconds: BigInt(Math.floor(image.buildDurationMs / 1000)), nanos: (image.buildDurationMs % 1000) * 1_000_000 },
    ...(image.reusableUntilMs !== undefined ? { reusableUntil: timestampFromMs(image.reusableUntilMs) } : {}),
  };
}
