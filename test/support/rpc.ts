import assert from "node:assert/strict";
import { ConnectError } from "@connectrpc/connect";

/** The error a call that must fail failed with. */
export async function failure(call: Promise<unknown>): Promise<ConnectError> {
  const error = await call.then(
    () => undefined,
    (caught: unknown) => ConnectError.from(caught),
  );
  assert.ok(error, "the call should have failed");
  return error;
}
