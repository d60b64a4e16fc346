import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { ConnectError, createClient } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";

/** The error a call that must fail failed with. */
export async function failure(call: Promise<unknown>): Promise<ConnectError> {
  const error = await call.then(
    () => undefined,
    (caught: unknown) => ConnectError.from(caught),
  );
  assert.ok(error, "the call should have failed");
  return error;
}

/** Waits until the service at `address` answers its gRPC health check SERVING (up to 30 s), naming it otherwise. */
export async function waitUntilServing(address: string, name: string): Promise<void> {
  const transport = serviceTransport(address, {});
  try {
    let status: ServingStatus | undefined;
    for (let i = 0; i < 300 && status !== ServingStatus.SERVING; i++) {
      status = await createClient(Health, transport.transport)
        .check({})
        .then(
          (answer) => answer.status,
          () => undefined,
        );
      if (status !== ServingStatus.SERVING) await sleep(100);
    }
    assert.equal(status, ServingStatus.SERVING, `${name} came up`);
  } finally {
    transport.close();
  }
}
