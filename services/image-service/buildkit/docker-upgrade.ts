import * as net from "node:net";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Opens a connection to dockerd and upgrades it to h2c on one of the Docker API's BuildKit endpoints
 * ("/grpc" for the Control API, "/session" for a build session). Returns the socket positioned at the first
 * byte of HTTP/2: dockerd sends its HTTP/2 SETTINGS together with the 101, so bytes read past the
 * response head are pushed back for the HTTP/2 client to read.
 */
export function upgradeDockerConnection(
  socketPath: string,
  endpoint: "/grpc" | "/session",
  headers: Array<[string, string]>,
  signal?: AbortSignal,
): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let received = Buffer.alloc(0);
    const fail = (error: Error) => {
      cleanup();
      socket.destroy();
      reject(error);
    };
    const onAbort = () => fail(new ConnectError("cancelled while connecting to dockerd", Code.Canceled));
    const onError = (error: Error) => fail(new ConnectError(`cannot reach dockerd at ${socketPath}: ${error.message}`, Code.Unavailable));
    const onClose = () => fail(new ConnectError(`dockerd at ${socketPath} closed the connection during the upgrade`, Code.Unavailable));
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = received.subarray(0, end).toString("latin1");
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1];
      if (status !== "101") {
        fail(new ConnectError(`dockerd refused the BuildKit upgrade on ${endpoint}: ${head.split("\r\n")[0]}`, Code.Unavailable));
        return;
      }
      cleanup();
      socket.pause();
      const rest = received.subarray(end + 4);
      if (rest.length > 0) socket.unshift(rest);
      resolve(socket);
    };
    const cleanup = () => {
      signal?.removeEventListener("abort", onAbort);
      socket.off("error", onError);
      socket.off("close", onClose);
      socket.off("data", onData);
    };
    if (signal?.aborted) return onAbort();
    signal?.addEventListener("abort", onAbort, { once: true });
    socket.on("error", onError);
    socket.on("close", onClose);
    socket.on("data", onData);
    socket.once("connect", () => {
      const lines = [`POST ${endpoint} HTTP/1.1`, "Host: docker", "Connection: Upgrade", "Upgrade: h2c", "Content-Length: 0"];
      for (const [name, value] of headers) lines.push(`${name}: ${value}`);
      socket.write(`${lines.join("\r\n")}\r\n\r\n`);
    });
  });
}
