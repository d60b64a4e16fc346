import * as net from "node:net";
import * as tls from "node:tls";
import { upgradeDockerConnection } from "../../services/image-service/buildkit/docker-upgrade.js";

/**
 * Makes dockerd's BuildKit look like a standalone buildkitd: every connection to the proxy (a unix socket or
 * a loopback TCP port, optionally behind TLS) is joined to a fresh POST /grpc upgrade, so plain gRPC reaches
 * BuildKit's Control API.
 */
export async function startBuildKitProxy(
  dockerSocket: string,
  listen: { path: string } | { port: 0; host: "127.0.0.1" },
  tlsOptions?: tls.TlsOptions,
): Promise<{ address: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const onConnection = (client: net.Socket) => {
    sockets.add(client);
    client.on("error", () => client.destroy());
    client.pause();
    upgradeDockerConnection(dockerSocket, "/grpc", []).then(
      (upstream) => {
        sockets.add(upstream);
        upstream.on("error", () => upstream.destroy());
        client.pipe(upstream).pipe(client);
        upstream.resume();
        client.resume();
        const end = () => (client.destroy(), upstream.destroy());
        client.once("close", end);
        upstream.once("close", end);
      },
      () => client.destroy(),
    );
  };
  const server = tlsOptions ? tls.createServer({ ...tlsOptions, ALPNProtocols: ["h2"] }, onConnection) : net.createServer(onConnection);
  await new Promise<void>((resolve) => ("path" in listen ? server.listen(listen.path, resolve) : server.listen(listen.port, listen.host, resolve)));
  const bound = server.address();
  const address = "path" in listen ? `unix://${listen.path}` : `tcp://127.0.0.1:${(bound as net.AddressInfo).port}`;
  return {
    address,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
