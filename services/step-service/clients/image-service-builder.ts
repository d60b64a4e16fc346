import { createClient, type Client, type Transport } from "@connectrpc/connect";
import type { BuildProgress } from "../../../gen/steprunner/image/v1/image_service_pb.js";
import { ImageHandoff, ImageService, NetworkMode } from "../../../gen/steprunner/image/v1/image_service_pb.js";
import type { BuiltStepImage, ImageBuilder, PreparedStepContext, StepRequest } from "../steps/ports.js";
import { callService } from "./service-calls.js";

/** Builds or reuses a step's image with the image-service, forwarding its progress. */
export class ImageServiceBuilder implements ImageBuilder {
  private readonly client: Client<typeof ImageService>;

  constructor(transport: Transport) {
    this.client = createClient(ImageService, transport);
  }

  build(context: PreparedStepContext, request: StepRequest, onProgress: (progress: BuildProgress) => void, signal: AbortSignal, onWarning?: (message: string) => void): Promise<BuiltStepImage> {
    return callService("image-service", signal, () => this.buildImage(context, request, onProgress, signal, onWarning));
  }

  private async buildImage(
    context: PreparedStepContext,
    request: StepRequest,
    onProgress: (progress: BuildProgress) => void,
    signal: AbortSignal,
    onWarning?: (message: string) => void,
  ): Promise<BuiltStepImage> {
    const stream = this.client.buildImage(
      {
        contextId: context.contextId,
        networkMode: request.hostNetwork ? NetworkMode.HOST : NetworkMode.NONE,
        buildWithoutCache: request.buildWithoutCache,
      },
      { signal },
    );
    for await (const response of stream) {
      if (response.event.case === "progress") onProgress(response.event.value);
      if (response.event.case === "warning") onWarning?.(response.event.value.message);
      if (response.event.case !== "image") continue;
      const image = response.event.value;
      if (image.handoff === ImageHandoff.LAYER_STORE) {
        const config = image.config;
        return {
          image: {
            kind: "layer-directories",
            imageId: image.imageId,
            directories: image.layerDirectories,
            config: { env: config?.env ?? [], entrypoint: config?.entrypoint ?? [], cmd: config?.cmd ?? [], workingDir: config?.workingDir ?? "", user: config?.user ?? "" },
          },
          imageId: image.imageId,
          reused: image.reused,
        };
      }
      return { image: { kind: "registry", reference: image.reference }, imageId: image.imageId, reused: image.reused };
    }
    throw new Error("the image-service ended the build without an image");
  }
}
