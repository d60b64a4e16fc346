import { createHash } from "node:crypto";
import type { StatusResponse } from "../../../gen/moby/buildkit/v1/control_pb.js";
import type { DockerfileBuild } from "./dockerfile-build.js";

export interface BuildKitShard {
  address: string;
  build(build: DockerfileBuild, onStatus: (status: StatusResponse) => void, signal?: AbortSignal): Promise<Record<string, string>>;
}

/**
 * Spreads builds over several BuildKit daemons by rendezvous hashing of the build's shared key: builds of one
 * lineage always go to the same daemon, where their cache is, and adding or removing a daemon moves only
 * the builds that hashed to it.
 */
export class ShardedBuilder {
  constructor(private readonly shards: BuildKitShard[]) {
    if (shards.length === 0) throw new Error("at least one BuildKit address is needed");
  }

  shardFor(key: string): BuildKitShard {
    let best = this.shards[0]!;
    let bestScore = -1n;
    for (const shard of this.shards) {
      const score = BigInt(`0x${createHash("sha256").update(`${shard.address}\n${key}`).digest("hex").slice(0, 16)}`);
      if (score > bestScore) {
        best = shard;
        bestScore = score;
      }
    }
    return best;
  }

  build(build: DockerfileBuild, onStatus: (status: StatusResponse) => void, signal?: AbortSignal): Promise<Record<string, string>> {
    return this.shardFor(build.sharedKey).build(build, onStatus, signal);
  }
}
