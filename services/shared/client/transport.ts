import * as net from "node:net";
import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { parseListenAddress } from "../server/listen-address.js";

export interface ServiceTransport {
  transport: Transport;
  close(): void;
}

/** A gRPC transport (HTTP/2 with prior knowledge) to one of our services at "HOST:PORT" or "unix:/path". */
export function serviceTransport(addressText: string): ServiceTransport {
  const address = parseListenAddress(addressText);
  const authority =
    address.kind === "unix" ? "http://localhost" : `http://${address.host.includes(":") ? `[${address.host}]` : address.host}:${address.port}`;
  const manager = new Http2SessionManager(
    authority,
    {},
    address.kind === "unix" ? { createConnection: () => net.connect(address.path) } : undefined,
  );
  return {
    transport: createGrpcTransport({ baseUrl: authority, sessionManager: manager }),
    close: () => manager.abort(),
  };
}
