import { randomUUID } from "node:crypto";
import * as http2 from "node:http2";
import type { Duplex } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { HealthCheckResponseSchema, HealthCheckResponse_ServingStatus } from "../../../../gen/grpc/health/v1/health_pb.js";
import { GetSecretRequestSchema, GetSecretResponseSchema } from "../../../../gen/moby/buildkit/secrets/v1/secrets_pb.js";
import { CredentialsRequestSchema, CredentialsResponseSchema } from "../../../../gen/moby/filesync/v1/filesync_pb.js";
import type { RegistryCredentials } from "../../../shared/registry/credentials.js";
import type { BuildKitAddress } from "../address.js";
import { upgradeDockerConnection } from "../docker-upgrade.js";
import { type LocalSource, type TransferObserver, sendDirectory, syncOption } from "./file-sync.js";
import { type SessionMethod, serveGrpc } from "./grpc-server.js";
import { openSessionTunnel } from "./tunnel.js";

/** How a session reaches the daemon: dockerd's POST /session, or the Control.Session tunnel. */
export type SessionTransport = "docker-session-endpoint" | "control-tunnel";

export interface SessionOptions {
  /** Shown by BuildKit as the session's name. */
  name: string;
  /**
   * BuildKit keeps the last snapshot of each local source per shared key and asks only for files whose
   * metadata changed: a stable key per source of builds means unchanged files are never sent twice.
   */
  sharedKey: string;
  /** Local sources by name ("context", "dockerfile"), sent with FileSync.DiffCopy. */
  localDirs: Record<string, LocalSource>;
  /** Secrets by id, for RUN --mount=type=secret; read only when a build asks. */
  secrets?: Record<string, () => Promise<Uint8Array>>;
  observer?: TransferObserver;
  /** Registry credentials by host, for the daemon's pulls (FROM) and pushes; absent: anonymous. */
  registryCredentials?: RegistryCredentials;
}

/**
 * A BuildKit session: the daemon calls back into it for local sources, secrets and health. We are the gRPC
 * server; the connection is opened by us. Close it when the build is over.
 */
export class BuildKitSession {
  readonly id = randomUUID();
  private http2Session: http2.ServerHttp2Session | undefined;
  private socket: Duplex | undefined;
  private failure: unknown;

  private constructor(private readonly options: SessionOptions) {}

  static async open(
    address: BuildKitAddress,
    options: SessionOptions,
    signal?: AbortSignal,
    via: SessionTransport = "docker-session-endpoint",
  ): Promise<BuildKitSession> {
    const session = new BuildKitSession(options);
    await session.attach(address, via, signal);
    return session;
  }

  /** The first error a session call failed with, if any (shown when a build fails for want of a file). */
  get error(): unknown {
    return this.failure;
  }

  close(): void {
    this.http2Session?.close();
    this.socket?.destroy();
  }

  private methods(): Map<string, SessionMethod> {
    const methods = new Map<string, SessionMethod>();
    methods.set("/grpc.health.v1.Health/Check", {
      kind: "unary",
      handle: async () => toBinary(HealthCheckResponseSchema, create(HealthCheckResponseSchema, { status: HealthCheckResponse_ServingStatus.SERVING })),
    });
    methods.set("/moby.filesync.v1.FileSync/DiffCopy", {
      kind: "bidi",
      handle: async (call) => {
        const dirName = syncOption(call.headers, "dir-name")[0] ?? "";
        const dir = this.options.localDirs[dirName];
        if (!dir) throw new ConnectError(`the build asked for local source "${dirName}", which this session does not have`, Code.NotFound);
        await sendDirectory(call, dirName, dir, this.options.observer);
      },
    });
    const credentials = this.options.registryCredentials;
    if (credentials) {
      methods.set("/moby.filesync.v1.Auth/Credentials", {
        kind: "unary",
        handle: async (request) => {
          const { Host } = fromBinary(CredentialsRequestSchema, request);
          // An unknown host gets empty credentials: the daemon then tries anonymously.
          const credential = credentials.get(Host);
          return toBinary(
            CredentialsResponseSchema,
            create(CredentialsResponseSchema, { Username: credential?.username ?? "", Secret: credential?.password ?? "" }),
          );
        },
      });
    }
    if (this.options.secrets) {
      const secrets = this.options.secrets;
      methods.set("/moby.buildkit.secrets.v1.Secrets/GetSecret", {
        kind: "unary",
        handle: async (request) => {
          const { ID } = fromBinary(GetSecretRequestSchema, request);
          const read = secrets[ID];
          if (!read) throw new ConnectError(`secret "${ID}" is not provided to this build`, Code.NotFound);
          return toBinary(GetSecretResponseSchema, create(GetSecretResponseSchema, { data: await read() }));
        },
      });
    }
    return methods;
  }

  private async attach(address: BuildKitAddress, via: SessionTransport, signal?: AbortSignal): Promise<void> {
    const methods = this.methods();
    const headers: Array<[string, string]> = [
      ["X-Docker-Expose-Session-Uuid", this.id],
      ["X-Docker-Expose-Session-Name", this.options.name],
      ["X-Docker-Expose-Session-Sharedkey", this.options.sharedKey],
      // One header per method: a joined value makes the daemon see no methods at all.
      ...[...methods.keys()].map((method): [string, string] => ["X-Docker-Expose-Session-Grpc-Method", method]),
    ];
    // dockerd takes sessions on its own endpoint, with the metadata as HTTP headers of the upgrade;
    // any BuildKit (dockerd's too) also takes them through the Control.Session tunnel.
    const socket =
      via === "docker-session-endpoint" && address.kind === "docker-unix"
        ? await upgradeDockerConnection(address.socketPath, "/session", headers, signal)
        : await openSessionTunnel(address, headers, signal);
    const remember = (error: unknown) => (this.failure ??= error);
    // The daemon resets the connection or the tunnel whenever a build ends early: that ends the session only.
    socket.on("error", remember);
    // An upgraded socket is served as it is: Node's HTTP/2 session reads the bytes pushed back onto it first.
    const session = http2.performServerHandshake(socket);
    session.on("error", remember);
    serveGrpc(session, methods, remember);
    this.http2Session = session;
    this.socket = socket;
  }
}
