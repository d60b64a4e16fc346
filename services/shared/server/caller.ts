import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { TLSSocket } from "node:tls";
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import { acceptedTokenIndex, bearerToken, type ServerSecurity } from "../security.js";

export const CALLER = createContextKey<string>("unknown caller", { description: "who made the call, for limits and messages" });

/** Who made a call: set by the server for every request (see callerFromRequest). */
export function callerOf(context: HandlerContext): string {
  return context.values.get(CALLER);
}

/**
 * The caller of a request, by what authenticated it: the subject of its client certificate (mutual TLS),
 * else the name of its bearer token (never the token), else the peer's address. Unauthenticated requests
 * are refused before any handler sees this.
 */
export function callerFromRequest(request: IncomingMessage | Http2ServerRequest, security: ServerSecurity): string {
  const socket = request.socket as Partial<TLSSocket>;
  if (security.tls?.clientCa && typeof socket.getPeerCertificate === "function") {
    const subject = socket.getPeerCertificate().subject as Record<string, string | string[]> | undefined;
    if (subject && Object.keys(subject).length > 0) {
      return `certificate ${Object.entries(subject)
        .map(([key, value]) => `${key}=${[value].flat().join("+")}`)
        .join(",")}`;
    }
  }
  if (security.tokens) {
    const index = acceptedTokenIndex(security.tokens, bearerToken(request.headers.authorization));
    if (index >= 0) return `token ${security.tokenNames?.[security.tokens[index]!] ?? `#${index + 1}`}`;
  }
  const address = request.socket.remoteAddress;
  return address ? `address ${address}` : "a local socket";
}
