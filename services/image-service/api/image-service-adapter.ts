import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ImageService } from "../../../gen/steprunner/image/v1/image_service_pb.js";
import type { Builder } from "../core/builder.js";

const MAX_KEEP_BYTES = 1n << 50n;

/** The Connect adapter of ImageService: validates requests and translates between the API and the core. */
export function imageServiceAdapter(builder: Builder): Partial<ServiceImpl<typeof ImageService>> {
  return {
    async getBuilderInfo(_request, context) {
      const info = await builder.info(context.signal);
      return {
        buildkitAddress: info.buildkitAddress,
        buildkitVersion: info.buildkitVersion ?? "",
        workers: info.workers.map((worker) => ({ id: worker.id, platforms: worker.platforms, labels: worker.labels })),
        registryAddress: info.registryAddress,
        registryApiVersion: info.registryApiVersion ?? "",
        defaultBaseRunner: info.defaultBaseRunner,
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
        })),
        totalBytes: records.reduce((sum, record) => sum + record.sizeBytes, 0n),
      };
    },

    async pruneCache(request, context) {
      if (request.keepBytes < 0n || request.keepBytes > MAX_KEEP_BYTES) {
        throw new ConnectError(`keep_bytes must be between 0 and ${MAX_KEEP_BYTES}, got ${request.keepBytes}`, Code.InvalidArgument);
      }
      const keepDurationMs = request.keepDuration
        ? Number(request.keepDuration.seconds) * 1000 + request.keepDuration.nanos / 1e6
        : 0;
      if (keepDurationMs < 0) throw new ConnectError("keep_duration must not be negative", Code.InvalidArgument);
      const removed = await builder.prune({ all: request.all, keepBytes: request.keepBytes, keepDurationMs }, context.signal);
      return {
        reclaimedBytes: removed.reduce((sum, record) => sum + record.sizeBytes, 0n),
        recordsRemoved: removed.length,
      };
    },
  };
}
