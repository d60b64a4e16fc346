import type * as http2 from "node:http2";
import * as net from "node:net";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Control, type SolveRequestSchema, type SolveResponse, type StatusResponse, type UsageRecord } from "../../../gen/moby/buildkit/v1/control_pb.js";
import { isTlsHandshakeFailure } from "../../shared/client/transport.js";
import { injectTraceContext } from "../../shared/tracing.js";
import { type BuildKitAddress, type BuildKitTls, parseBuildKitAddress, tlsOptions } from "./address.js";
import { upgradeDockerConnection } from "./docker-upgrade.js";
import { UpgradedHttp2SessionManager } from "./session-manager.js";
import { BuildKitSession, type SessionOptions, type SessionTransport } from "./session/session.js";

export interface BuildKitWorker {
  id: string;
  /** "os/architecture[/variant]" */
  platforms: string[];
  labels: Record<string, string>;
  /** Its garbage collection of the build cache; empty when off. */
  cacheCollection: CacheCollectionRule[];
}

/** One rule of a worker's garbage collection (sizes 0 when the daemon does not set or know them). */
export interface CacheCollectionRule {
  all: boolean;
  keepDurationMs: number;
  reservedBytes: bigint;
  maxUsedBytes: bigint;
  minFreeBytes: bigint;
  filters: string[];
}

export interface CacheUsageRecord {
  id: string;
  description: string;
  sizeBytes: bigint;
  inUse: boolean;
  shared: boolean;
  recordType: string;
  lastUsedAt: Date | undefined;
  usageCount: bigint;
}

export interface PruneOptions {
  all?: boolean;
  keepBytes?: bigint;
  keepDurationMs?: number;
}

/**
 * A BuildKit client in TypeScript: the moby.buildkit.v1.Control API over any of the addresses in
 * address.ts. Every call takes an AbortSignal; aborting it cancels the call on the daemon.
 */
export class BuildKitClient {
  readonly address: BuildKitAddress;
  private readonly control: Client<typeof Control>;
  private readonly closeTransport: () => void;

  constructor(addressText: string, options: { tls?: BuildKitTls } = {}) {
    const address = parseBuildKitAddress(addressText);
    if (options.tls && address.kind !== "tcp") throw new Error(`TLS applies to tcp:// BuildKit addresses only, not ${address.kind}://`);
    this.address = address.kind === "tcp" ? { ...address, tls: options.tls } : address;
    const { transport, close } = createControlTransport(this.address);
    this.control = createClient(Control, transport);
    this.closeTransport = close;
  }

  async listWorkers(signal?: AbortSignal): Promise<BuildKitWorker[]> {
    const response = await this.call(() => this.control.listWorkers({}, { signal }), signal);
    return response.record.map((record) => ({
      id: record.ID,
      platforms: record.platforms.map((p) => [p.OS, p.Architecture, p.Variant].filter(Boolean).join("/")),
      labels: { ...record.Labels },
      cacheCollection: record.GCPolicy.map((policy) => ({
        all: policy.all,
        keepDurationMs: Number(policy.keepDuration / 1_000_000n),
        reservedBytes: policy.keepBytes,
        maxUsedBytes: policy.maxUsedSpace,
        minFreeBytes: policy.minFreeSpace,
        filters: policy.filters,
      })),
    }));
  }

  async diskUsage(signal?: AbortSignal): Promise<CacheUsageRecord[]> {
    const response = await this.call(() => this.control.diskUsage({}, { signal }), signal);
    return response.record.map(toUsageRecord);
  }

  /** Frees build cache; returns what was removed. */
  async prune(options: PruneOptions, signal?: AbortSignal): Promise<CacheUsageRecord[]> {
    const removed: CacheUsageRecord[] = [];
    await this.call(async () => {
      const stream = this.control.prune(
        {
          all: options.all ?? false,
          keepBytes: options.keepBytes ?? 0n,
          keepDuration: BigInt(Math.round((options.keepDurationMs ?? 0) * 1e6)),
        },
        { signal },
      );
      for await (const record of stream) removed.push(toUsageRecord(record));
    }, signal);
    return removed;
  }

  /** BuildKit's version, or undefined from daemons older than v0.11, which have no Info call. */
  async version(signal?: AbortSignal): Promise<string | undefined> {
    try {
      const info = await this.control.info({}, { signal });
      return info.buildkitVersion?.version || undefined;
    } catch (error) {
      if (ConnectError.from(error).code === Code.Unimplemented) return undefined;
      throw describeFailure(this.address, error, signal);
    }
  }

  /** Opens a session that serves local sources and secrets to the builds that name it. */
  openSession(options: SessionOptions, signal?: AbortSignal, via?: SessionTransport): Promise<BuildKitSession> {
    return BuildKitSession.open(this.address, options, signal, via).catch((error) => {
      throw describeFailure(this.address, error, signal);
    });
  }

  solve(request: MessageInitShape<typeof SolveRequestSchema>, signal?: AbortSignal): Promise<SolveResponse> {
    return this.call(() => this.control.solve(request, { signal }), signal);
  }

  /** The progress of the build with this ref, until it ends. */
  async *status(ref: string, signal?: AbortSignal): AsyncGenerator<StatusResponse> {
    try {
      yield* this.control.status({ Ref: ref }, { signal });
    } catch (error) {
      throw describeFailure(this.address, error, signal);
    }
  }

  close(): void {
    this.closeTransport();
  }

  /** `signal` is the one the call was given: a call it aborted stays CANCELED (describeFailure). */
  private async call<T>(run: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw describeFailure(this.address, error, signal);
    }
  }
}

function toUsageRecord(record: UsageRecord): CacheUsageRecord {
  return {
    id: record.ID,
    description: record.Description,
    sizeBytes: record.Size,
    inUse: record.InUse,
    shared: record.Shared,
    recordType: record.RecordType,
    lastUsedAt: record.LastUsedAt ? timestampDate(record.LastUsedAt) : undefined,
    usageCount: record.UsageCount,
  };
}

function createControlTransport(address: BuildKitAddress): { transport: Transport; close: () => void } {
  // BuildKit v0.9 and later continue the trace of a call that carries a traceparent (v0.8 ignores it).
  const interceptors = [injectTraceContext()];
  switch (address.kind) {
    case "docker-unix": {
      const manager = new UpgradedHttp2SessionManager("http://docker", () => upgradeDockerConnection(address.socketPath, "/grpc", []));
      const transport = createGrpcTransport({ baseUrl: "http://docker", sessionManager: manager, interceptors });
      return { transport, close: () => manager.close() };
    }
    case "unix": {
      const manager = new Http2SessionManager("http://buildkitd", {}, {
        createConnection: () => net.connect(address.socketPath),
      } satisfies http2.ClientSessionOptions);
      const transport = createGrpcTransport({ baseUrl: "http://buildkitd", sessionManager: manager, interceptors });
      return { transport, close: () => manager.abort() };
    }
    case "tcp": {
      const host = address.host.includes(":") ? `[${address.host}]` : address.host;
      const authority = `${address.tls ? "https" : "http"}://${host}:${address.port}`;
      const manager = new Http2SessionManager(authority, {}, address.tls ? tlsOptions(address.tls) : undefined);
      const transport = createGrpcTransport({ baseUrl: authority, sessionManager: manager, interceptors });
      return { transport, close: () => manager.abort() };
    }
  }
}

/**
 * Adds where BuildKit was expected to an error; a failed TLS handshake is an unreachable daemon, and so is a
 * connection lost mid-call (see lostConnection). BuildKit's own error is the cause, with its details (where in
 * the Dockerfile, which frontend), which are not passed on. `signal` is the call's: when it was aborted, a
 * cancelled call is ours and stays CANCELED.
 */
export function describeFailure(address: BuildKitAddress, error: unknown, signal?: AbortSignal): ConnectError {
  const failure = ConnectError.from(error);
  const lost = !signal?.aborted && lostConnection(failure);
  if (failure.code === Code.Canceled && !lost) return failure;
  const where = address.kind === "tcp" ? `${address.host}:${address.port}` : address.socketPath;
  const tlsRefused = isTlsHandshakeFailure(failure.rawMessage);
  const code = tlsRefused || lost ? Code.Unavailable : failure.code;
  const message = tlsRefused
    ? `the TLS handshake failed (check the CA, client certificate and key): ${failure.rawMessage}`
    : lost
      ? `the connection to the daemon was lost (${failure.rawMessage})`
      : failure.rawMessage;
  return new ConnectError(`BuildKit (${address.kind} ${where}): ${message}`, code, failure.metadata, undefined, failure);
}

const CONNECTION_ERRNOS = new Set(["ECONNRESET", "ECONNREFUSED", "ENOENT", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ECONNABORTED"]);

/**
 * Whether an error is the connection to the daemon going away rather than an answer of the daemon. When
 * buildkitd dies (SIGKILL, a lost node) during a call, node:http2 closes the call's stream with CANCEL, which
 * Connect reports as CANCELED ("http/2 stream closed with error code CANCEL (0x8)"), or as ABORTED for a reset
 * socket, or INTERNAL for a stream closed before its response; a socket that cannot connect (the daemon gone,
 * its socket file left or removed) fails with ECONNREFUSED or ENOENT. None of these comes over the wire: an
 * error the daemon sent (a failed build, a build it cancelled itself) keeps its code.
 */
function lostConnection(failure: ConnectError): boolean {
  if (failure.isWireError) return false;
  if (failure.code === Code.Canceled || failure.code === Code.Aborted) return true;
  if (/^http\/2 stream closed with error code \w+ \(0x[0-9a-f]+\)/.test(failure.rawMessage)) return true;
  for (let cause: unknown = failure.cause; cause; cause = (cause as { cause?: unknown }).cause) {
    const { code: errno, syscall } = cause as { code?: unknown; syscall?: unknown };
    // ENOENT only of a connect (a socket file that is gone), not of a file the session reads.
    if (typeof errno === "string" && CONNECTION_ERRNOS.has(errno) && (errno !== "ENOENT" || syscall === "connect")) return true;
  }
  return false;
}
