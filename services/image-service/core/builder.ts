import type { BuildKitWorker, CacheUsageRecord, PruneOptions } from "../buildkit/client.js";

/** What the image-service needs to know of the registry that images are handed over through. */
export interface RegistryProbe {
  readonly address: string;
  /** The registry's Docker-Distribution-Api-Version (e.g. "registry/2.0"); rejects when it does not answer. */
  apiVersion(signal?: AbortSignal): Promise<string>;
}

/** The BuildKit calls the image-service core uses; BuildKitClient is the real one. */
export interface BuildKitApi {
  listWorkers(signal?: AbortSignal): Promise<BuildKitWorker[]>;
  diskUsage(signal?: AbortSignal): Promise<CacheUsageRecord[]>;
  prune(options: PruneOptions, signal?: AbortSignal): Promise<CacheUsageRecord[]>;
  version(signal?: AbortSignal): Promise<string | undefined>;
}

export interface BuilderInfo {
  buildkitAddress: string;
  buildkitVersion: string | undefined;
  workers: BuildKitWorker[];
  registryAddress: string;
  registryApiVersion: string | undefined;
  defaultBaseRunner: string;
}

export interface BuilderSettings {
  buildkitAddress: string;
  defaultBaseRunner: string;
}

/** The image-service's view of its builder: BuildKit and the registry it hands images over through. */
export class Builder {
  constructor(
    private readonly buildkit: BuildKitApi,
    private readonly registry: RegistryProbe,
    private readonly settings: BuilderSettings,
  ) {}

  async info(signal?: AbortSignal): Promise<BuilderInfo> {
    const [workers, buildkitVersion, registryApiVersion] = await Promise.all([
      this.buildkit.listWorkers(signal),
      this.buildkit.version(signal),
      this.registry.apiVersion(signal).catch((error) => {
        if (signal?.aborted) throw error;
        return undefined;
      }),
    ]);
    return {
      buildkitAddress: this.settings.buildkitAddress,
      buildkitVersion,
      workers,
      registryAddress: this.registry.address,
      registryApiVersion,
      defaultBaseRunner: this.settings.defaultBaseRunner,
    };
  }

  diskUsage(signal?: AbortSignal): Promise<CacheUsageRecord[]> {
    return this.buildkit.diskUsage(signal);
  }

  prune(options: PruneOptions, signal?: AbortSignal): Promise<CacheUsageRecord[]> {
    return this.buildkit.prune(options, signal);
  }
}
