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

/** One BuildKit daemon builds are spread over, by the address it is configured with. */
export interface BuildKitDaemon {
  address: string;
  api: BuildKitApi;
}

export interface DaemonInfo {
  address: string;
  version: string | undefined;
  workers: BuildKitWorker[];
  /** Why the daemon did not answer; undefined when it did. */
  problem: string | undefined;
}

export interface BuilderInfo {
  /** Every daemon, in the configured order. */
  buildkits: DaemonInfo[];
  registryAddress: string;
  registryApiVersion: string | undefined;
  defaultBaseRunner: string;
}

/** A build cache record and the daemon that holds it. */
export interface DaemonCacheRecord extends CacheUsageRecord {
  buildkitAddress: string;
}

/**
 * The image-service's view of its builders: every BuildKit daemon it spreads builds over, and the registry it
 * hands images over through. The cache calls reach every daemon, since each holds the cache of its own builds.
 */
export class Builder {
  constructor(
    private readonly daemons: BuildKitDaemon[],
    private readonly registry: RegistryProbe,
    private readonly settings: { defaultBaseRunner: string },
  ) {
    if (daemons.length === 0) throw new Error("at least one BuildKit daemon is needed");
  }

  /**
   * Each daemon's version and workers, or why it did not answer. Fails only when none answered (with the first
   * daemon's failure), so that one daemon down still shows the others.
   */
  async info(signal?: AbortSignal): Promise<BuilderInfo> {
    const [answers, registryApiVersion] = await Promise.all([
      Promise.allSettled(this.daemons.map(async ({ api }) => ({ workers: await api.listWorkers(signal), version: await api.version(signal) }))),
      this.registry.apiVersion(signal).catch((error) => {
        if (signal?.aborted) throw error;
        return undefined;
      }),
    ]);
    signal?.throwIfAborted();
    if (answers.every((answer) => answer.status === "rejected")) throw answers[0]!.reason;
    return {
      buildkits: answers.map((answer, index) => ({
        address: this.daemons[index]!.address,
        version: answer.status === "fulfilled" ? answer.value.version : undefined,
        workers: answer.status === "fulfilled" ? answer.value.workers : [],
        problem: answer.status === "rejected" ? messageOf(answer.reason) : undefined,
      })),
      registryAddress: this.registry.address,
      registryApiVersion,
      defaultBaseRunner: this.settings.defaultBaseRunner,
    };
  }

  /** The cache records of every daemon; fails naming a daemon that did not answer. */
  diskUsage(signal?: AbortSignal): Promise<DaemonCacheRecord[]> {
    return this.onEveryDaemon((api) => api.diskUsage(signal));
  }

  /**
   * Prunes every daemon's cache with the same options and returns what was removed. A daemon that failed fails
   * the call once the others are done, so that their pruning is not cut short.
   */
  prune(options: PruneOptions, signal?: AbortSignal): Promise<DaemonCacheRecord[]> {
    return this.onEveryDaemon((api) => api.prune(options, signal));
  }

  /** The records each daemon answers, each marked with its daemon; the first failure once every daemon is done. */
  private async onEveryDaemon(call: (api: BuildKitApi) => Promise<CacheUsageRecord[]>): Promise<DaemonCacheRecord[]> {
    const answers = await Promise.allSettled(
      this.daemons.map(async ({ address, api }) => (await call(api)).map((record) => ({ ...record, buildkitAddress: address }))),
    );
    const failed = answers.find((answer) => answer.status === "rejected");
    if (failed) throw failed.reason;
    return answers.flatMap((answer) => (answer as PromiseFulfilledResult<DaemonCacheRecord[]>).value);
  }
}

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));
