import { Code, ConnectError, type ConnectRouter, createContextValues, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import type { Logger } from "../log.js";
import { ServiceMetrics } from "../metrics.js";
import { onCallEnd } from "./call-end.js";
import { acceptedTokenIndex, bearerToken, type ServerSecurity } from "../security.js";
import { CALLER, callerFromRequest } from "./caller.js";
import { DualProtocolServer } from "./dual-protocol-server.js";
import { HealthRegistry, ServingStatus } from "./health.js";
import { type ListenAddress, formatListenAddress } from "./listen-address.js";
import { registerReflection } from "./reflection.js";
import { decodingFailures, reportUndecodableRequests } from "./undecodable-requests.js";
import { serverSpans } from "../tracing.js";
import { Health } from "../../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../../../gen/grpc/reflection/v1/reflection_pb.js";

/** A plain HTTP handler, for both HTTP/1.1 and HTTP/2 requests. */
export type HttpHandler = ReturnType<typeof connectNodeAdapter>;

export interface ServerOptions {
  address: ListenAddress;
  /** The services this server implements; health and reflection are added for them. */
  services: DescService[];
  routes: (router: ConnectRouter) => void;
  /** Plain HTTP routes beside the RPCs, by exact path (e.g. GET /downloads/Dockerfile). */
  httpRoutes?: Record<string, HttpHandler>;
  logger: Logger;
  /**
   * TLS, mutual TLS and bearer tokens (a service's main passes what readCommonSettings read); by default
   * none: plaintext and open, the local default, on loopback.
   */
  security?: ServerSecurity;
  /** By default DEFAULT_SERVER_LIMITS (4 MiB requests, 100 streams). */
  limits?: ServerLimits;
  /** Served at GET /metrics, with every RPC counted; by default a registry of the RPC metrics alone. */
  metrics?: ServiceMetrics;
}

export interface ServerLimits {
  /** The largest request message accepted; larger ones get RESOURCE_EXHAUSTED. */
  maxRequestBytes: number;
  maxConcurrentStreams: number;
}

/** STEPRUNNER_MAX_REQUEST_BYTES's and STEPRUNNER_MAX_CONCURRENT_STREAMS's defaults. */
export const DEFAULT_SERVER_LIMITS: ServerLimits = { maxRequestBytes: 4 * 1024 * 1024, maxConcurrentStreams: 100 };

/** The health check answers without credentials, so that probes and load balancers need none. */
const OPEN_SERVICES = new Set([Health.typeName]);

export interface RunningServer {
  address: ListenAddress;
  /** The bound TCP port (differs from the requested one when that was 0). */
  port: number | undefined;
  health: HealthRegistry;
  /** Drains: health says NOT_SERVING, new connections are refused, calls in flight get graceMs to finish. */
  close(graceMs: number): Promise<void>;
}

/** Serves gRPC, gRPC-Web and Connect on one address, with the gRPC health check and server reflection. */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const health = new HealthRegistry();
  for (const service of options.services) health.set(service.typeName, ServingStatus.SERVING);
  const limits = options.limits ?? DEFAULT_SERVER_LIMITS;
  const security = options.security ?? {};
  const tokens = security.tokens;
  const metrics = options.metrics ?? new ServiceMetrics(options.services[0]?.typeName ?? "unknown");
  const httpRoutes: Record<string, HttpHandler> = { "/metrics": metrics.handler(), ...options.httpRoutes };
  const handler = connectNodeAdapter({
    readMaxBytes: limits.maxRequestBytes,
    contextValues: (req) => createContextValues().set(CALLER, callerFromRequest(req, security)),
    interceptors: [serverSpans(), metrics.interceptor(), explainUnexpected(options.logger), ...(tokens ? [requireToken(tokens)] : []), decodingFailures()],
    routes: (router) => {
      options.routes(router);
      health.register(router);
      registerReflection(router, [...options.services, Health, ServerReflection]);
      // The adapter serves the router's handlers as they are once this returns.
      router.handlers.splice(0, router.handlers.length, ...router.handlers.map(reportUndecodableRequests));
    },
    fallback: (req, res) => {
      const path = (req.url ?? "").split("?")[0]!;
      const route = Object.hasOwn(httpRoutes, path) ? httpRoutes[path] : undefined;
      if (route !== undefined && tokens !== undefined && acceptedTokenIndex(tokens, bearerToken(req.headers.authorization)) < 0) {
        res.writeHead(401, { "content-type": "text/plain", "www-authenticate": "Bearer" });
        res.end("a bearer token is required\n");
        return;
      }
      if (route !== undefined) return route(req, res);
      res.writeHead(404, { "content-type": "text/plain" });
      res.end(`not found: ${path}\n`);
    },
  });
  const server = new DualProtocolServer(handler, limits, security.tls);
  await server.listen(options.address);
  const port = server.port();
  const bound: ListenAddress = options.address.kind === "tcp" && port ? { ...options.address, port } : options.address;
  options.logger.info("listening", {
    address: formatListenAddress(bound),
    tls: security.tls ? (security.tls.clientCa ? "mutual" : "server") : "off",
    tokens: Boolean(tokens),
  });
  return {
    address: bound,
    port,
    health,
    close: async (graceMs) => {
      health.drain();
      await server.close(graceMs);
    },
  };
}

/**
 * An error that is not a ConnectError is a defect of ours: it is logged with its stack, and the caller gets
 * INTERNAL with its message instead of Connect's bare "internal error".
 */
function explainUnexpected(logger: Logger): Interceptor {
  return onCallEnd((request) => (error) => {
    if (error instanceof ConnectError || !(error instanceof Error)) return error;
    logger.error("unexpected error", { method: `${request.service.typeName}/${request.method.name}`, error });
    return new ConnectError(error.message, Code.Internal, undefined, undefined, error);
  });
}

function requireToken(tokens: string[]): Interceptor {
  return (next) => async (request) => {
    if (!OPEN_SERVICES.has(request.service.typeName)) {
      const token = bearerToken(request.header.get("authorization") ?? undefined);
      if (!token) throw new ConnectError("this service requires a bearer token (Authorization: Bearer …)", Code.Unauthenticated);
      if (acceptedTokenIndex(tokens, token) < 0) throw new ConnectError("the bearer token is not valid", Code.Unauthenticated);
    }
    return next(request);
  };
}

/** What a service does itself when it stops, around the server's own drain. */
export interface StopHooks {
  /** Ends the service's own work in flight within graceMs, while the server still answers (health NOT_SERVING). */
  drain?: (graceMs: number) => Promise<void>;
  /** Releases what the service holds, once the server is closed. */
  stop?: () => Promise<void>;
}

/**
 * Runs until SIGTERM or SIGINT, then drains: health says NOT_SERVING, the service's own drain runs, the
 * server closes with what is left of the grace period (at least a second, for final messages), and the
 * service stops before the process exits.
 */
export function stopOnSignals(server: RunningServer, logger: Logger, graceMs: number, hooks: StopHooks = {}): void {
  let stopping = false;
  const stop = async (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info("stopping", { signal, graceMs });
    try {
      const started = Date.now();
      server.health.drain();
      await hooks.drain?.(graceMs);
      await server.close(Math.max(1000, graceMs - (Date.now() - started)));
      await hooks.stop?.();
      logger.info("stopped");
      process.exit(0);
    } catch (error) {
      logger.error("stop failed", { error });
      process.exit(1);
    }
  };
  process.on("SIGTERM", (signal) => void stop(signal));
  process.on("SIGINT", (signal) => void stop(signal));
  // A promise that failed with nobody waiting (a stream or socket error after its call was over) is a defect to
  // log with its stack, not a reason to end every call in flight: the call it belonged to has already ended.
  process.on("unhandledRejection", (reason) => logger.error("a failure that nothing awaited; the service keeps serving", { error: reason }));
}
