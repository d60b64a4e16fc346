import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { rm } from "node:fs/promises";
import type { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ServerTls } from "../security.js";
import type { ListenAddress } from "./listen-address.js";

type NodeHandlerFn = ReturnType<typeof connectNodeAdapter>;

const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export interface ProtocolLimits {
  /** HTTP/2 streams one connection may have open at once. */
  maxConcurrentStreams: number;
}

/**
 * One port for every client. In plaintext, gRPC needs HTTP/2 with prior knowledge (h2c), while curl,
 * browsers and Connect's HTTP/1.1 clients speak HTTP/1.1: each connection's first bytes tell which it is.
 * With TLS, ALPN tells.
 */
export class DualProtocolServer {
  private readonly socketServer: net.Server;
  private readonly http1: http.Server;
  private readonly http2: http2.Http2Server | http2.Http2SecureServer;
  private readonly sockets = new Set<net.Socket>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();

  constructor(handler: NodeHandlerFn, limits: ProtocolLimits, tls?: ServerTls) {
    const settings = { maxConcurrentStreams: limits.maxConcurrentStreams };
    this.http1 = http.createServer(handler);
    if (tls) {
      const secure = http2.createSecureServer(
        {
          cert: tls.cert,
          key: tls.key,
          ca: tls.clientCa,
          requestCert: tls.clientCa !== undefined,
          rejectUnauthorized: tls.clientCa !== undefined,
          allowHTTP1: true,
          settings,
        },
        handler,
      );
      secure.on("secureConnection", (socket: net.Socket) => this.track(socket));
      this.http2 = secure;
      this.socketServer = secure;
    } else {
      this.http2 = http2.createServer({ settings }, handler);
      this.socketServer = net.createServer((socket) => this.route(socket));
    }
    this.http2.on("session", (session) => {
      this.sessions.add(session);
      session.once("close", () => this.sessions.delete(session));
    });
  }

  private track(socket: net.Socket): void {
    // Without it, Nagle's algorithm holds HTTP/2's small frame writes for the peer's delayed ACK (~40 ms each):
    // streaming a file over gRPC ran at about 1 MB/s.
    socket.setNoDelay(true);
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
  }

  private route(socket: net.Socket): void {
    this.track(socket);
    socket.once("error", () => socket.destroy());
    let received = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const compared = Math.min(received.length, HTTP2_PREFACE.length);
      const isHttp2 = received.subarray(0, compared).equals(HTTP2_PREFACE.subarray(0, compared));
      if (isHttp2 && received.length < HTTP2_PREFACE.length) return; // need more bytes to decide
      socket.off("data", onData);
      socket.pause();
      // Either server reads the bytes pushed back first: HTTP/2's session takes what the socket has buffered
      // before it reads the native handle itself, so both run on the socket as accepted.
      socket.unshift(received);
      if (isHttp2) {
        this.http2.emit("connection", socket);
      } else {
        this.http1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
  }

  async listen(address: ListenAddress): Promise<void> {
    if (address.kind === "unix") await rm(address.path, { force: true });
    await new Promise<void>((resolve, reject) => {
      this.socketServer.once("error", reject);
      const onListening = () => {
        this.socketServer.off("error", reject);
        resolve();
      };
      if (address.kind === "unix") this.socketServer.listen(address.path, onListening);
      else this.socketServer.listen(address.port, address.host, onListening);
    });
  }

  /** The port actually bound (useful when listening on port 0). */
  port(): number | undefined {
    const bound = this.socketServer.address();
    return typeof bound === "object" && bound ? bound.port : undefined;
  }

  /**
   * Stops accepting connections, lets requests in flight finish for up to graceMs, then ends the rest.
   * HTTP/2 clients are told to go away so that they reconnect elsewhere.
   */
  async close(graceMs: number): Promise<void> {
    const closed = new Promise<void>((resolve) => this.socketServer.close(() => resolve()));
    for (const session of this.sessions) session.close();
    this.http1.closeIdleConnections();
    const deadline = setTimeout(() => {
      for (const socket of this.sockets) socket.destroy();
    }, graceMs);
    await closed;
    clearTimeout(deadline);
  }
}
