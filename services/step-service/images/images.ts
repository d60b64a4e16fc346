import { statSync } from "node:fs";
import { parseImageReference } from "../../shared/registry/image-reference.js";
import { type ImageManifest, RegistryClient } from "../../shared/registry/registry-client.js";
import type { LayerBlob, LayerStore } from "./layer-store.js";
import { keepRecent } from "../../shared/recent-entries.js";

/** What a container needs of an image's config. */
export interface ImageRunConfig {
  env: string[];
  entrypoint: string[];
  cmd: string[];
  workingDir: string;
  user: string;
}

/** An image as it is handed to the step-service (issue 4's two hand-offs). */
export type StepImage =
  /** "<registry>/<repository>@sha256:…" (or a tag): layers pulled by digest into the layer store. */
  | { kind: "registry"; reference: string }
  /** dockerd's unpacked layer directories, bottom to top, mounted read-only as they are: no copy. */
  | { kind: "layer-directories"; imageId: string; directories: string[]; config: ImageRunConfig };

/** An image ready to be mounted: overlayfs lower directories, bottom to top. */
export interface ImageRootfs {
  imageId: string;
  config: ImageRunConfig;
  lowerDirs: string[];
  /** Lets the layer store collect the layers again. */
  release(): void;
}

const MANIFESTS_KEPT = 256;

/** Turns either hand-off into lower directories; the runtime never knows which one it was. */
export class ImageMaterialiser {
  private readonly registries = new Map<string, RegistryClient>();
  /**
   * Manifests read lately by a reference that names their digest: the same bytes whatever happens, so a warm
   * step asks the registry nothing (its config is kept by the registry client, its layers by the layer store).
   */
  private readonly manifests = new Map<string, ImageManifest>();

  constructor(private readonly layers: LayerStore) {}

  async materialise(image: StepImage, signal: AbortSignal): Promise<ImageRootfs> {
    if (image.kind === "layer-directories") {
      if (image.directories.length === 0) throw new Error("the image names no layer directories");
      // Synchronous stats: microseconds each, where a thread-pool round trip costs a tenth of a millisecond or more.
      const missing = image.directories.find((dir) => statSync(dir, { throwIfNoEntry: false }) === undefined);
      if (missing) throw new Error(`layer directory ${missing} of image ${image.imageId} does not exist (is the step-service on dockerd's host?)`);
      return { imageId: image.imageId, config: image.config, lowerDirs: image.directories, release: () => {} };
    }
    const reference = parseImageReference(image.reference);
    const registry = this.registry(reference.registry);
    const manifest = await this.manifest(registry, reference.repository, reference.reference, signal);
    const config = await registry.config(reference.repository, manifest.config, signal);
    const diffIds = config.rootfs?.diff_ids ?? [];
    if (diffIds.length !== manifest.layers.length) {
      throw new Error(`image ${image.reference} has ${manifest.layers.length} layers but ${diffIds.length} diff_ids`);
    }
    const blobs: LayerBlob[] = manifest.layers.map((layer, index) => {
      const compression =
        layer.mediaType.endsWith("tar.gzip") || layer.mediaType.endsWith("tar+gzip") ? "gzip" : layer.mediaType.endsWith("tar") ? "none" : undefined;
      if (!compression) throw new Error(`layer ${layer.digest} of ${image.reference} has unsupported media type ${layer.mediaType}`);
      return { diffId: diffIds[index]!, compression, open: (s: AbortSignal) => registry.blob(reference.repository, layer.digest, s) };
    });
    const lowerDirs = await this.layers.acquire(blobs, signal);
    const held = blobs.map((blob) => blob.diffId);
    return {
      imageId: manifest.config.digest,
      config: {
        env: config.config?.Env ?? [],
        entrypoint: config.config?.Entrypoint ?? [],
        cmd: config.config?.Cmd ?? [],
        workingDir: config.config?.WorkingDir ?? "",
        user: config.config?.User ?? "",
      },
      lowerDirs,
      release: () => this.layers.release(held),
    };
  }

  private async manifest(registry: RegistryClient, repository: string, reference: string, signal: AbortSignal): Promise<ImageManifest> {
    const key = `${registry.address}/${repository}@${reference}`;
    const known = this.manifests.get(key);
    if (known) return known;
    const { manifest } = await registry.manifest(repository, reference, signal);
    if (reference.startsWith("sha256:")) {
      keepRecent(this.manifests, key, manifest, MANIFESTS_KEPT);
    }
    return manifest;
  }

  private registry(address: string): RegistryClient {
    let client = this.registries.get(address);
    if (!client) this.registries.set(address, (client = new RegistryClient(address)));
    return client;
  }
}
