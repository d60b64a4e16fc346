import type { ConnectRouter, ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { Health, HealthCheckResponseSchema, HealthCheckResponse_ServingStatus as ServingStatus } from "../../../gen/grpc/health/v1/health_pb.js";

export { ServingStatus };

/**
 * The gRPC health checking protocol. "" stands for the whole server; every registered service has its own
 * status. Watch streams each change until the client goes away.
 */
export class HealthRegistry {
  private readonly statuses = new Map<string, ServingStatus>([["", ServingStatus.SERVING]]);
  private readonly watchers = new Set<() => void>();

  set(service: string, status: ServingStatus): void {
    this.statuses.set(service, status);
    for (const notify of this.watchers) notify();
  }

  /** Marks the server and every service NOT_SERVING, as a draining server must. */
  drain(): void {
    for (const service of this.statuses.keys()) this.set(service, ServingStatus.NOT_SERVING);
  }

  register(router: ConnectRouter): void {
    const impl: ServiceImpl<typeof Health> = {
      check: (request) => {
        const status = this.statuses.get(request.service);
        if (status === undefined) throw new ConnectError(`unknown service "${request.service}"`, Code.NotFound);
        return create(HealthCheckResponseSchema, { status });
      },
      watch: (request, context) => this.watch(request.service, context.signal),
    };
    router.service(Health, impl);
  }

  private async *watch(service: string, signal: AbortSignal) {
    let changed: () => void = () => {};
    const notify = () => changed();
    this.watchers.add(notify);
    try {
      let last: ServingStatus | undefined;
      while (!signal.aborted) {
        const status = this.statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
        if (status !== last) yield create(HealthCheckResponseSchema, { status });
        last = status;
        await new Promise<void>((resolve) => {
          changed = resolve;
          signal.addEventListener("abort", () => resolve(), { once: true });
        });
      }
    } finally {
      this.watchers.delete(notify);
    }
  }
}
