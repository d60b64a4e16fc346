import { createHash } from "node:crypto";
import { ConnectError } from "@connectrpc/connect";
import type { StatusResponse } from "../../../gen/moby/buildkit/v1/control_pb.js";
import type { DockerfileBuild } from "./dockerfile-build.js";

export interface BuildKitShard {
  address: string;
  build(build: DockerfileBuild, onStatus: (status: StatusResponse) => void, signal?: AbortSignal): Promise<Record<string, string>>;
}

export interface ShardedBuilderOptions {
  /** Whether a failure is of the daemon's connection (worth another shard), not of the build. */
  isTransient: (error: unknown) => boolean;
  /** How long a shard whose connection failed is tried only after all others. */
  cooldownMs?: number;
  now?: () => number;
}

export const DEFAULT_SHARD_COOLDOWN_MS = 30_000;

/**
 * Spreads builds over several BuildKit daemons by rendezvous hashing of the build's shared key: builds of one
 * lineage always go to the same daemon, where their cache is, and adding or removing a daemon moves only
 * the builds that hashed to it.
 *
 * Failover: a build whose daemon fails with a transport error (killed or unreachable, mid-build or before) is
 * built again on the next daemon in the key's rendezvous order, which for every key is the daemon it would
 * move to if the first were removed. A daemon that failed so is put last for a cooldown, then is first again
 * for its keys (a success ends its cooldown at once). A cancelled build or a failing build is not retried.
 */
export class ShardedBuilder {
  private readonly coolingUntil = new Map<string, number>();
  private readonly cooldownMs: number;
  private readonly now: () => number;

  constructor(
    private readonly shards: BuildKitShard[],
    private readonly options: ShardedBuilderOptions,
  ) {
    if (shards.length === 0) throw new Error("at least one BuildKit address is needed");
    this.cooldownMs = options.cooldownMs ?? DEFAULT_SHARD_COOLDOWN_MS;
    this.now = options.now ?? Date.now;
  }

  /** The shards for a key, best first: rendezvous order, with the shards cooling down after a failure last. */
  shardsFor(key: string): BuildKitShard[] {
    const ranked = this.shards
      .map((shard) => ({ shard, score: BigInt(`0x${createHash("sha256").update(`${shard.address}\n${key}`).digest("hex").slice(0, 16)}`) }))
      .sort((a, b) => (a.score === b.score ? 0 : a.score > b.score ? -1 : 1))
      .map(({ shard }) => shard);
    const now = this.now();
    const cooling = (shard: BuildKitShard) => (this.coolingUntil.get(shard.address) ?? 0) > now;
    return [...ranked.filter((shard) => !cooling(shard)), ...ranked.filter(cooling)];
  }

  shardFor(key: string): BuildKitShard {
    return this.shardsFor(key)[0]!;
  }

  /** Addresses of the shards cooling down after a failure. */
  get cooling(): string[] {
    const now = this.now();
    return [...this.coolingUntil].filter(([, until]) => until > now).map(([address]) => address);
  }

  /**
   * Builds on the key's shard, failing over to the next ones on transport errors; `onRetry` is told of each
   * failover. When every shard failed, the last failure is thrown.
   */
  async build(
    build: DockerfileBuild,
    onStatus: (status: StatusResponse) => void,
    signal?: AbortSignal,
    onRetry?: (message: string) => void,
  ): Promise<Record<string, string>> {
    const order = this.shardsFor(build.sharedKey);
    for (const [index, shard] of order.entries()) {
      try {
        const response = await shard.build(build, onStatus, signal);
        this.coolingUntil.delete(shard.address);
        return response;
      } catch (error) {
        if (signal?.aborted || !this.options.isTransient(error)) throw error;
        this.coolingUntil.set(shard.address, this.now() + this.cooldownMs);
        const next = order[index + 1];
        if (!next) throw error;
        onRetry?.(`BuildKit at ${shard.address} failed (${ConnectError.from(error).rawMessage}); building on ${next.address} instead`);
      }
    }
    throw new Error("unreachable: no shard was tried");
  }
}
