import * as http2 from "node:http2";
import * as net from "node:net";
import * as tls from "node:tls";
import { Duplex } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BytesMessageSchema } from "../../../../gen/moby/buildkit/v1/control_pb.js";
import { type BuildKitAddress, tlsOptions } from "../address.js";
import { upgradeDockerConnection } from "../docker-upgrade.js";
import { frame, readMessages } from "./grpc-server.js";

/**
 * Opens Control.Session, BuildKit's tunnel for a session on a daemon reached over plain gRPC: the session's
 * own HTTP/2 bytes travel inside BytesMessage frames of one bidi call, and its metadata are headers of
 * that call. Repeated values are sent as separate header fields (node:http2 keeps an array apart).
 * Returns the tunnel as a byte stream on which we then serve the session.
 */
export async function openSessionTunnel(address: BuildKitAddress, headers: Array<[string, string]>, signal?: AbortSignal): Promise<Duplex> {
  const socket = await connectToDaemon(address, signal);
  const authority = address.kind === "tcp" ? `${address.tls ? "https" : "http"}://${address.host}:${address.port}` : "http://buildkitd";
  const connection = http2.connect(authority, { createConnection: () => socket });
  connection.on("error", () => {});
  const metadata: http2.OutgoingHttpHeaders = {
    ":method": "POST",
    ":path": "/moby.buildkit.v1.Control/Session",
    "content-type": "application/grpc",
    te: "trailers",
  };
  for (const [name, value] of headers) {
    const key = name.toLowerCase();
    const previous = metadata[key];
    metadata[key] = previous === undefined ? value : [...(Array.isArray(previous) ? previous : [String(previous)]), value];
  }
  const call = connection.request(metadata, { signal });
  const tunnel = new Duplex({
    read: () => void call.resume(),
    write: (chunk: Buffer, _encoding, callback) => {
      call.write(frame(toBinary(BytesMessageSchema, create(BytesMessageSchema, { data: chunk }))), callback);
    },
    final: (callback) => {
      call.end();
      callback();
    },
    destroy: (error, callback) => {
      call.close(http2.constants.NGHTTP2_CANCEL);
      connection.close();
      socket.destroy();
      callback(error);
    },
  });
  // An aborted or reset call emits 'error' even once nothing reads it (a failed build aborts it before the
  // daemon's own error arrives): it ends the tunnel, never the process.
  call.on("error", (error) => tunnel.destroy(error));
  (async () => {
    for await (const message of readMessages(call)) {
      if (!tunnel.push(fromBinary(BytesMessageSchema, message).data)) call.pause();
    }
    tunnel.push(null);
  })().catch((error) => tunnel.destroy(error));
  call.once("response", (response) => {
    const status = response["grpc-status"];
    if (status !== undefined && status !== "0")
      tunnel.destroy(new ConnectError(`BuildKit refused the session: ${decodeURIComponent(String(response["grpc-message"] ?? status))}`, Code.Unavailable));
  });
  return tunnel;
}

function connectToDaemon(address: BuildKitAddress, signal?: AbortSignal): Promise<net.Socket> {
  if (address.kind === "docker-unix") return upgradeDockerConnection(address.socketPath, "/grpc", [], signal);
  return new Promise((resolve, reject) => {
    const socket =
      address.kind === "unix"
        ? net.connect(address.socketPath)
        : address.tls
          ? tls.connect({ host: address.host, port: address.port, ...tlsOptions(address.tls) })
          : net.connect(address.port, address.host);
    socket.once(socket instanceof tls.TLSSocket ? "secureConnect" : "connect", () => resolve(socket));
    socket.once("error", (error) => reject(new ConnectError(`cannot reach BuildKit: ${error.message}`, Code.Unavailable)));
  });
}
