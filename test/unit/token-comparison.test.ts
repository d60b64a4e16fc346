import assert from "node:assert/strict";
import crypto from "node:crypto";
import { syncBuiltinESMExports } from "node:module";
import { afterEach, describe, it, mock } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { StepService } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import { acceptedTokenIndex } from "../../services/shared/security.js";
import { callerOf } from "../../services/shared/server/caller.js";
import { startServer } from "../../services/shared/server/serve.js";

/** Counts the calls of crypto.timingSafeEqual, named imports included, and the lengths it compared. */
function spyOnTimingSafeEqual(): { comparedLengths: () => number[] } {
  const spy = mock.method(crypto, "timingSafeEqual");
  syncBuiltinESMExports();
  return { comparedLengths: () => spy.mock.calls.map((call) => (call.arguments[0] as Buffer).length) };
}

const TOKENS = ["token-one", "token-two", "a-much-longer-third-token"];

describe("bearer token comparison", () => {
  afterEach(() => {
    mock.restoreAll();
    syncBuiltinESMExports();
  });

  it("finds the accepted token a candidate is, and no other", () => {
    assert.equal(acceptedTokenIndex(TOKENS, "token-one"), 0);
    assert.equal(acceptedTokenIndex(TOKENS, "a-much-longer-third-token"), 2);
    for (const candidate of ["token-on", "token-one2", "TOKEN-ONE", "", undefined]) {
      assert.equal(acceptedTokenIndex(TOKENS, candidate), -1, String(candidate));
    }
  });

  it("compares fixed-length digests with timingSafeEqual, against every accepted token even after a match", () => {
    const spy = spyOnTimingSafeEqual();
    assert.equal(acceptedTokenIndex(TOKENS, "token-one"), 0);
    assert.deepEqual(spy.comparedLengths(), [32, 32, 32]);
  });

  it("is what a server uses for its RPCs, the caller's name and its HTTP routes", async () => {
    const server = await startServer({
      address: { kind: "tcp", host: "127.0.0.1", port: 0 },
      services: [StepService],
      routes: (router) => router.service(StepService, { getRuntimeInfo: (_request, context) => ({ runcVersion: callerOf(context) }) }),
      logger: createLogger("test", {}, { quiet: true }),
      security: { tokens: TOKENS, tokenNames: { "token-two": "ci" } },
    });
    const call = async (token: string) => {
      const transport = serviceTransport(`127.0.0.1:${server.port}`, { token });
      try {
        return (await createClient(StepService, transport.transport).getRuntimeInfo({})).runcVersion;
      } catch (error) {
        return ConnectError.from(error).code;
      } finally {
        transport.close();
      }
    };
    try {
      const spy = spyOnTimingSafeEqual();
      assert.equal(await call("token-two"), "token ci");
      // The interceptor's check and the caller's name, each against every token.
      assert.equal(spy.comparedLengths().length, 2 * TOKENS.length);
      assert.equal(await call("token-three"), Code.Unauthenticated);

      const before = spy.comparedLengths().length;
      const metrics = await fetch(`http://127.0.0.1:${server.port}/metrics`, { headers: { authorization: "Bearer token-one" } });
      await metrics.arrayBuffer();
      assert.equal(metrics.status, 200);
      assert.ok(spy.comparedLengths().length > before, "the /metrics route compared its token with timingSafeEqual");
      const refused = await fetch(`http://127.0.0.1:${server.port}/metrics`, { headers: { authorization: "Bearer token-on" } });
      await refused.arrayBuffer();
      assert.equal(refused.status, 401);
    } finally {
      await server.close(100);
    }
  });
});
