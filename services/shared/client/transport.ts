import * as net from "node:net";
import { setTimeout as delay } from "node:timers/promises";
import { MethodOptions_IdempotencyLevel as Idempotency } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Interceptor, type Transport } from "@connectrpc/connect";
import type { ClientSecurity } from "../security.js";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { parseListenAddress } from "../server/listen-address.js";
import { injectTraceContext } from "../tracing.js";

const STREAM_WINDOW_BYTES = 8 * 1024 * 1024;
// Pings keep a connection through a mesh's idle timeouts and find a dead peer within a minute.
const PING_INTERVAL_MS = 30_000;
const PING_TIMEOUT_MS = 15_000;
const RETRY_ATTEMPTS = 3;
const RETRY_BACKOFF_MS = 200;

export interface ServiceTransport {
  transport: Transport;
  close(): void;
}

/**
 * A gRPC transport to one of our services at "HOST:PORT" or "unix:/path": HTTP/2 with prior knowledge, or
 * over TLS when a CA is given; a bearer token when one is given. By default none (the caller passes what
 * its main read: readCommonSettings' clientSecurity, or clientSecurityFromSettings in the CLI).
 */
export function serviceTransport(addressText: string, security: ClientSecurity = {}): ServiceTransport {
  const address = parseListenAddress(addressText);
  const scheme = security.ca ? "https" : "http";
  const authority =
    address.kind === "unix" ? `${scheme}://localhost` : `${scheme}://${address.host.includes(":") ? `[${address.host}]` : address.host}:${address.port}`;
  const tlsOptions = security.ca ? { ca: security.ca, cert: security.cert, key: security.key } : {};
  const manager = new Http2SessionManager(
    authority,
    { pingIntervalMs: PING_INTERVAL_MS, pingTimeoutMs: PING_TIMEOUT_MS },
    {
      // Node's default 64 KiB receive window makes a stream wait for a round trip per window: contexts and
      // logs are streamed in larger amounts than that.
      settings: { initialWindowSize: STREAM_WINDOW_BYTES },
      ...tlsOptions,
      ...(address.kind === "unix" ? { createConnection: () => net.connect(address.path) } : {}),
    },
  );
  const token = security.token;
  const addToken: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
  const explainTlsFailure: Interceptor = (next) => async (request) => {
    try {
      return await next(request);
    } catch (error) {
      const failure = ConnectError.from(error);
      if (!isTlsHandshakeFailure(failure.rawMessage)) throw failure;
      throw new ConnectError(`the TLS handshake with ${addressText} failed (check STEPRUNNER_CLIENT_TLS_*): ${failure.rawMessage}`, Code.Unavailable);
    }
  };
  return {
    transport: createGrpcTransport({
      baseUrl: authority,
      sessionManager: manager,
      // What we stream is mostly compressed already (tars of repositories, zips, image layers): gzip made the
      // server deflate and us inflate every chunk for nothing, several times slower than the transfer itself.
      acceptCompression: [],
      interceptors: [retryIdempotent, explainTlsFailure, injectTraceContext(), ...(token ? [addToken] : [])],
    }),
    close: () => manager.abort(),
  };
}

/**
 * Tries a unary call again, with backoff, when the service was unavailable (restarting, draining, a mesh
 * without a healthy endpoint) and the protos mark the method idempotent or free of side effects. Streams are
 * not retried here: their callers know how far they got (ReadContextFile's offset, RunStep's step_id).
 */
export const retryIdempotent: Interceptor = (next) => async (request) => {
  if (request.stream || request.method.idempotency === Idempotency.IDEMPOTENCY_UNKNOWN) return next(request);
  for (let attempt = 1; ; attempt++) {
    try {
      return await next(request);
    } catch (error) {
      const failure = ConnectError.from(error);
      if (failure.code !== Code.Unavailable || attempt >= RETRY_ATTEMPTS || request.signal.aborted) throw failure;
      await delay(RETRY_BACKOFF_MS * 2 ** (attempt - 1), undefined, { signal: request.signal }).catch(() => {
        throw failure;
      });
    }
  }
};

/** OpenSSL's words for a refused or failed handshake, as Node passes them on. */
export function isTlsHandshakeFailure(message: string): boolean {
  return /SSL routines|tlsv1\d? alert|certificate|handshake/i.test(message);
}
