import type * as http2 from "node:http2";
import type { Readable } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";

/** Request headers with repeated values kept apart (BuildKit sends include patterns as repeated headers). */
export type RepeatedHeaders = Map<string, string[]>;

export interface BidiCall {
  headers: RepeatedHeaders;
  /** The client's messages, undecoded. */
  messages: AsyncIterable<Uint8Array>;
  /**
   * Sends one message, waiting while the stream is congested. A message given in parts is framed as one
   * without joining them, so that large payloads are never copied.
   */
  send(message: Uint8Array | Uint8Array[]): Promise<void>;
  signal: AbortSignal;
}

export type SessionMethod =
  | { kind: "unary"; handle(request: Uint8Array, headers: RepeatedHeaders, signal: AbortSignal): Promise<Uint8Array> }
  | { kind: "bidi"; handle(call: BidiCall): Promise<void> };

/**
 * A minimal gRPC server on a raw HTTP/2 session: inside a BuildKit session the daemon is the client and we
 * answer. node:http2 is used directly because it keeps repeated header values apart (rawHeaders), which both
 * the grpc-js server and Connect's handlers join into one string.
 */
export function serveGrpc(session: http2.ServerHttp2Session, methods: Map<string, SessionMethod>, onError: (error: unknown) => void): void {
  session.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => {
    // A stream the daemon resets after its handler stopped reading still emits 'error'.
    stream.on("error", onError);
    const path = String(headers[":path"] ?? "");
    const method = methods.get(path);
    if (!method) {
      respondError(stream, new ConnectError(`method ${path} is not served by this session`, Code.Unimplemented));
      return;
    }
    handleCall(stream, method, repeatedHeaders(rawHeaders)).catch(onError);
  });
}

async function handleCall(stream: http2.ServerHttp2Stream, method: SessionMethod, headers: RepeatedHeaders): Promise<void> {
  const controller = new AbortController();
  stream.once("close", () => controller.abort());
  const messages = readMessages(stream);
  try {
    if (method.kind === "unary") {
      let request: Uint8Array | undefined;
      for await (const message of messages) request ??= message;
      const response = await method.handle(request ?? new Uint8Array(), headers, controller.signal);
      respondHeaders(stream);
      await write(stream, frame(response));
    } else {
      let responded = false;
      await method.handle({
        headers,
        messages,
        signal: controller.signal,
        send: async (message) => {
          if (!responded) respondHeaders(stream);
          responded = true;
          if (!Array.isArray(message)) return write(stream, frame(message));
          const length = message.reduce((sum, part) => sum + part.length, 0);
          const header = Buffer.allocUnsafe(5);
          header[0] = 0;
          header.writeUInt32BE(length, 1);
          for (const part of [header, ...message]) await write(stream, part as Buffer);
        },
      });
      if (!responded) respondHeaders(stream);
    }
    endWithStatus(stream, 0, "");
  } catch (error) {
    const failure = ConnectError.from(error);
    if (stream.headersSent) endWithStatus(stream, failure.code, failure.rawMessage);
    else respondError(stream, failure);
  }
}

function repeatedHeaders(raw: string[]): RepeatedHeaders {
  const headers: RepeatedHeaders = new Map();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    headers.set(name, [...(headers.get(name) ?? []), raw[i + 1]!]);
  }
  return headers;
}

function respondHeaders(stream: http2.ServerHttp2Stream): void {
  if (stream.headersSent || stream.destroyed) return;
  stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
}

function endWithStatus(stream: http2.ServerHttp2Stream, code: number, message: string): void {
  if (stream.destroyed) return;
  stream.once("wantTrailers", () => {
    stream.sendTrailers({ "grpc-status": String(code), ...(message ? { "grpc-message": encodeURIComponent(message) } : {}) });
  });
  stream.end();
}

function respondError(stream: http2.ServerHttp2Stream, error: ConnectError): void {
  if (stream.destroyed) return;
  stream.respond(
    { ":status": 200, "content-type": "application/grpc", "grpc-status": String(error.code), "grpc-message": encodeURIComponent(error.rawMessage) },
    { endStream: true },
  );
}

/** gRPC's length-prefixed framing: a flag byte (0: not compressed), a 4-byte big-endian length, the message. */
export function frame(message: Uint8Array): Buffer {
  const framed = Buffer.allocUnsafe(5 + message.length);
  framed[0] = 0;
  framed.writeUInt32BE(message.length, 1);
  framed.set(message, 5);
  return framed;
}

/** Decodes framed messages; stopping early leaves the stream open (a handler may still answer on it). */
export async function* readMessages(source: Readable): AsyncGenerator<Uint8Array> {
  let pending: Buffer = Buffer.alloc(0);
  for await (const chunk of source.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 5) {
      if (pending[0] !== 0) throw new ConnectError("compressed gRPC messages are not accepted in this session", Code.Unimplemented);
      const length = pending.readUInt32BE(1);
      if (pending.length < 5 + length) break;
      yield pending.subarray(5, 5 + length);
      pending = pending.subarray(5 + length);
    }
  }
  if (pending.length > 0) throw new ConnectError("the gRPC stream ended inside a message", Code.DataLoss);
}

function write(stream: http2.ServerHttp2Stream, bytes: Uint8Array): Promise<void> {
  if (stream.destroyed) return Promise.reject(new ConnectError("the daemon closed the stream", Code.Canceled));
  if (stream.write(bytes)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onDrain = () => (stream.off("close", onClose), resolve());
    const onClose = () => (stream.off("drain", onDrain), reject(new ConnectError("the daemon closed the stream", Code.Canceled)));
    stream.once("drain", onDrain);
    stream.once("close", onClose);
  });
}
