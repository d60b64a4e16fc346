import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  type BuildProgress as BuildProgressMessage,
  ImageHandoff,
  ImageService,
  LogStream,
  NetworkMode,
  VertexState,
} from "../../../gen/steprunner/image/v1/image_service_pb.js";
import type { BuildLog, BuildProgress, BuildVertexState, BuiltStepImage, ImageBuilder, ImageBuildOptions, StepRequest } from "../steps/ports.js";
import { callService } from "./service-calls.js";

/** Builds or reuses a step's image with the image-service, forwarding its progress. */
export class ImageServiceBuilder implements ImageBuilder {
  private readonly client: Client<typeof ImageService>;

  constructor(transport: Transport) {
    this.client = createClient(ImageService, transport);
  }

  build(
    contextId: string,
    request: StepRequest,
    onProgress: (progress: BuildProgress) => void,
    signal: AbortSignal,
    onWarning?: (message: string) => void,
    options: ImageBuildOptions = {},
  ): Promise<BuiltStepImage> {
    return callService("image-service", signal, () => this.buildImage(contextId, request, onProgress, signal, onWarning, options));
  }

  private async buildImage(
    contextId: string,
    request: StepRequest,
    onProgress: (progress: BuildProgress) => void,
    signal: AbortSignal,
    onWarning: ((message: string) => void) | undefined,
    options: ImageBuildOptions,
  ): Promise<BuiltStepImage> {
    const stream = this.client.buildImage(
      {
        contextId,
        networkMode: request.hostNetwork ? NetworkMode.HOST : NetworkMode.NONE,
        buildWithoutCache: request.buildWithoutCache,
        reuseOnly: options.reuseOnly ?? false,
      },
      { signal },
    );
    for await (const response of stream) {
      if (response.event.case === "progress") onProgress(fromMessage(response.event.value));
      if (response.event.case === "warning") onWarning?.(response.event.value.message);
      if (response.event.case !== "image") continue;
      const image = response.event.value;
      const reusable = image.reusableUntil ? { reusableUntilMs: timestampMs(image.reusableUntil) } : {};
      if (image.handoff === ImageHandoff.LAYER_STORE) {
        const config = image.config;
        return {
          image: {
            kind: "layer-directories",
            imageId: image.imageId,
            directories: image.layerDirectories,
            config: {
              env: config?.env ?? [],
              entrypoint: config?.entrypoint ?? [],
              cmd: config?.cmd ?? [],
              workingDir: config?.workingDir ?? "",
              user: config?.user ?? "",
            },
          },
          imageId: image.imageId,
          reused: image.reused,
          ...reusable,
        };
      }
      return { image: { kind: "registry", reference: image.reference }, imageId: image.imageId, reused: image.reused, ...reusable };
    }
    throw new Error("the image-service ended the build without an image");
  }
}

const VERTEX_STATES: Record<VertexState, BuildVertexState> = {
  [VertexState.UNSPECIFIED]: "unspecified",
  [VertexState.STARTED]: "started",
  [VertexState.COMPLETED]: "completed",
  [VertexState.CACHED]: "cached",
  [VertexState.ERRORED]: "errored",
  [VertexState.CANCELED]: "canceled",
};
const STREAMS: Record<LogStream, BuildLog["stream"]> = {
  [LogStream.UNSPECIFIED]: "unspecified",
  [LogStream.STDOUT]: "stdout",
  [LogStream.STDERR]: "stderr",
  [LogStream.SYSTEM]: "system",
};

/** The image-service's progress message in the step-service's terms. */
export function fromMessage(progress: BuildProgressMessage): BuildProgress {
  return {
    vertexes: progress.vertexes.map((vertex) => ({
      digest: vertex.digest,
      number: vertex.number,
      name: vertex.name,
      state: VERTEX_STATES[vertex.state] ?? "unspecified",
      startedAtMs: vertex.startedAt ? timestampMs(vertex.startedAt) : undefined,
      completedAtMs: vertex.completedAt ? timestampMs(vertex.completedAt) : undefined,
      error: vertex.error,
    })),
    statuses: progress.statuses.map((status) => ({
      vertexDigest: status.vertexDigest,
      id: status.id,
      current: status.current,
      total: status.total,
      completed: status.completed,
    })),
    logs: progress.logs.map((log) => ({
      vertexDigest: log.vertexDigest,
      stream: STREAMS[log.stream] ?? "unspecified",
      data: log.data,
      timeMs: log.time ? timestampMs(log.time) : undefined,
    })),
  };
}
