import * as http2 from "node:http2";
import type * as net from "node:net";

/** The part of connect-node's HTTP/2 session manager that its transports call. */
export interface Http2SessionProvider {
  authority: string;
  request(
    method: string,
    path: string,
    headers: http2.OutgoingHttpHeaders,
    options: Omit<http2.ClientSessionRequestOptions, "signal">,
  ): Promise<http2.ClientHttp2Stream>;
  notifyResponseByteRead(stream: http2.ClientHttp2Stream): void;
}

/**
 * Keeps one HTTP/2 session on a connection that needs an asynchronous handshake before HTTP/2 starts
 * (dockerd's h2c upgrade), which connect-node's own manager cannot do. A closed session is replaced on the
 * next request. Idle sessions do not keep the process alive.
 */
export class UpgradedHttp2SessionManager implements Http2SessionProvider {
  private session: Promise<http2.ClientHttp2Session> | undefined;
  private activeStreams = 0;

  constructor(
    readonly authority: string,
    private readonly openSocket: () => Promise<net.Socket>,
  ) {}

  async request(
    method: string,
    path: string,
    headers: http2.OutgoingHttpHeaders,
    options: Omit<http2.ClientSessionRequestOptions, "signal">,
  ): Promise<http2.ClientHttp2Stream> {
    const session = await this.currentSession();
    const stream = session.request({ ...headers, ":method": method, ":path": path }, options);
    this.activeStreams++;
    session.ref();
    stream.once("close", () => {
      this.activeStreams--;
      if (this.activeStreams === 0 && !session.destroyed) session.unref();
    });
    return stream;
  }

  notifyResponseByteRead(): void {}

  close(): void {
    const session = this.session;
    this.session = undefined;
    void session?.then(
      (s) => s.close(),
      () => {},
    );
  }

  private currentSession(): Promise<http2.ClientHttp2Session> {
    if (!this.session) {
      const forget = () => {
        if (this.session === opening) this.session = undefined;
      };
      const opening = this.open(forget);
      this.session = opening;
      opening.catch(forget);
    }
    return this.session;
  }

  private async open(onGone: () => void): Promise<http2.ClientHttp2Session> {
    const socket = await this.openSocket();
    const session = http2.connect(this.authority, { createConnection: () => socket });
    session.once("close", onGone);
    session.once("goaway", onGone);
    session.on("error", onGone);
    socket.resume();
    session.unref();
    return session;
  }
}
