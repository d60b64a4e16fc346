import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, type Interceptor } from "@connectrpc/connect";
import {
  createAsyncIterable,
  encodeEnvelope,
  readAllBytes,
  type UniversalHandler,
  type UniversalServerRequest,
  type UniversalServerResponse,
} from "@connectrpc/connect/protocol";
import * as connect from "@connectrpc/connect/protocol-connect";
import * as grpc from "@connectrpc/connect/protocol-grpc";
import * as grpcWeb from "@connectrpc/connect/protocol-grpc-web";

// connect-es answers a request message that is not valid protobuf INTERNAL "parse binary: …", as if the server
// were at fault. A stream's messages are decoded as the service reads them, inside the interceptors, where
// decodingFailures() maps the error; a unary request is decoded before any interceptor runs, so
// reportUndecodableRequests() rewrites the answer instead, in each protocol's own form.

/** connect-es's message, with code INTERNAL, for bytes that do not decode as the message expected. */
const BINARY_DECODING_FAILURE = "parse binary: ";

/** Set on every call that reaches the interceptors: a unary one has had its request decoded by then. */
const REACHED_INTERCEPTORS = createContextKey(false, { description: "the call reached the interceptors" });

function asInvalidArgument(error: ConnectError | undefined, method: DescMethod): ConnectError | undefined {
  if (error?.code !== Code.Internal || !error.rawMessage.startsWith(BINARY_DECODING_FAILURE)) return undefined;
  const reason = error.rawMessage.slice(BINARY_DECODING_FAILURE.length);
  return new ConnectError(
    `the request could not be decoded: it is not a valid ${method.input.typeName} in protobuf's binary format (${reason})`,
    Code.InvalidArgument,
  );
}

/** Marks the calls that reach it, and answers a stream's undecodable message INVALID_ARGUMENT. */
export function decodingFailures(): Interceptor {
  return (next) => async (request) => {
    request.contextValues.set(REACHED_INTERCEPTORS, true);
    if (!request.stream) return next(request);
    return next({ ...request, message: mapDecodingFailures(request.message, request.method) });
  };
}

async function* mapDecodingFailures<T>(messages: AsyncIterable<T>, method: DescMethod): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (error) {
    // Only what reading the request throws lands here: the service's own failures do not pass through.
    throw (error instanceof ConnectError && asInvalidArgument(error, method)) || error;
  }
}

/** Wraps one of the router's handlers so that a unary request that could not be decoded is answered INVALID_ARGUMENT. */
export function reportUndecodableRequests(handler: UniversalHandler): UniversalHandler {
  const report = async (request: UniversalServerRequest): Promise<UniversalServerResponse> => {
    const response = await handler(request);
    // A call that reached the interceptors had its request decoded: a decoding failure then is the service's own.
    const reachedInterceptors = () => request.contextValues?.get(REACHED_INTERCEPTORS) === true;
    const replacement = (error: ConnectError | undefined) => (reachedInterceptors() ? undefined : asInvalidArgument(error, handler.method));
    const contentType = request.header.get("content-type");
    if (grpcWeb.parseContentType(contentType)) {
      return { ...response, body: response.body && mapTrailerFrame(response.body, (trailer) => replaceTrailerStatus(trailer, replacement)) };
    }
    if (grpc.parseContentType(contentType)) {
      const trailer = response.trailer;
      return trailer ? { ...response, body: response.body && thenRun(response.body, () => replaceTrailerStatus(trailer, replacement)) } : response;
    }
    const isConnectUnary = request.method === "GET" || connect.parseContentType(contentType)?.stream === false;
    // A compressed answer is left alone: a decoding failure's is far below compressMinBytes (1 KiB).
    if (isConnectUnary && !reachedInterceptors() && response.status !== 200 && response.body && !response.header?.has("content-encoding")) {
      const body = await readAllBytes(response.body, Number.MAX_SAFE_INTEGER);
      const error = replacement(connect.errorFromJsonBytes(body, undefined, new ConnectError("", Code.Unknown)));
      if (!error) return { ...response, body: createAsyncIterable([body]) };
      const errorBody = connect.errorToJsonBytes(error, {});
      response.header?.set("content-length", String(errorBody.byteLength));
      return { ...response, status: connect.codeToHttpStatus(error.code), body: createAsyncIterable([errorBody]) };
    }
    return response;
  };
  return Object.assign(report, { ...handler });
}

function replaceTrailerStatus(trailer: Headers, replacement: (error: ConnectError | undefined) => ConnectError | undefined): void {
  const error = replacement(grpc.findTrailerError(trailer));
  if (error) grpc.setTrailerStatus(trailer, error);
}

/** The body, after whose last chunk (gRPC sends its trailer once the body is written) run() runs. */
async function* thenRun(body: AsyncIterable<Uint8Array>, run: () => void): AsyncIterable<Uint8Array> {
  yield* body;
  run();
}

/** A gRPC-Web body, its trailer frame (one chunk, as connect-es writes each frame) rewritten by edit(). */
async function* mapTrailerFrame(body: AsyncIterable<Uint8Array>, edit: (trailer: Headers) => void): AsyncIterable<Uint8Array> {
  for await (const chunk of body) {
    if (chunk[0] !== grpcWeb.trailerFlag) {
      yield chunk;
      continue;
    }
    const trailer = grpcWeb.trailerParse(chunk.subarray(5));
    edit(trailer);
    yield encodeEnvelope(grpcWeb.trailerFlag, grpcWeb.trailerSerialize(trailer));
  }
}
