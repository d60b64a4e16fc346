import * as http2 from "node:http2";
import { upgradeDockerConnection } from "../../services/image-service/buildkit/docker-upgrade.js";

export interface RecordedCall {
  /** "/moby.buildkit.v1.Control/Solve" and the like. */
  path: string;
  headers: http2.IncomingHttpHeaders;
}

/**
 * A gRPC proxy on a unix socket in front of dockerd's BuildKit that keeps the path and headers of every call
 * it forwards. Unlike buildkit-socket-proxy's byte pipe it decodes HTTP/2, so a test can see the metadata
 * that reached BuildKit.
 */
export async function startRecordingBuildKitProxy(
  dockerSocket: string,
  socketPath: string,
): Promise<{ address: string; calls: RecordedCall[]; close(): Promise<void> }> {
  const calls: RecordedCall[] = [];
  const upstreams = new WeakMap<http2.ServerHttp2Session, Promise<http2.ClientHttp2Session>>();
  const open = new Set<http2.Http2Session>();
  const upstreamFor = (session: http2.ServerHttp2Session) => {
    let upstream = upstreams.get(session);
    if (!upstream) {
      upstream = upgradeDockerConnection(dockerSocket, "/grpc", []).then((socket) => {
        const client = http2.connect("http://docker", { createConnection: () => socket });
        client.on("error", () => session.destroy());
        open.add(client);
        client.once("close", () => open.delete(client));
        session.once("close", () => client.close());
        return client;
      });
      upstreams.set(session, upstream);
    }
    return upstream;
  };
  const server = http2.createServer();
  server.on("session", (session) => {
    open.add(session);
    session.once("close", () => open.delete(session));
  });
  server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => {
    calls.push({ path: String(headers[":path"]), headers });
    stream.on("error", () => {});
    upstreamFor(stream.session as http2.ServerHttp2Session).then(
      (client) => {
        // gRPC metadata may repeat a key (a session names each method it serves): Node joins repeated
        // headers into one, so they are forwarded from the raw list, each value on its own.
        const forwarded: Record<string, string[]> = {};
        for (let i = 0; i < rawHeaders.length; i += 2) {
          const name = rawHeaders[i]!;
          if (name === ":scheme" || name === ":authority") continue;
          (forwarded[name] ??= []).push(rawHeaders[i + 1]!);
        }
        const request = client.request(forwarded);
        let trailers: http2.OutgoingHttpHeaders = {};
        request.on("error", () => stream.destroy());
        stream.on("close", () => request.destroy());
        request.on("response", (response) => {
          // A "trailers-only" answer (an error before any message) carries grpc-status in its headers.
          if (response["grpc-status"] !== undefined) return stream.respond(response, { endStream: true });
          stream.respond(response, { waitForTrailers: true });
          request.pipe(stream);
        });
        request.on("trailers", (received) => (trailers = received));
        stream.on("wantTrailers", () => stream.sendTrailers(trailers));
        stream.pipe(request);
      },
      () => stream.destroy(),
    );
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  return {
    address: `unix://${socketPath}`,
    calls,
    close: () =>
      new Promise((resolve) => {
        for (const session of open) session.destroy();
        server.close(() => resolve());
      }),
  };
}
