import {
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
} from "@opentelemetry/api";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { STEPRUNNER_VERSION } from "./version.js";

/**
 * OpenTelemetry traces through the API alone (tracing-setup.ts installs the SDK in a service, so that a client
 * such as the CLI never loads it). Off by default: then the API's no-op tracer is all there is, no span is recorded
 * and no trace header is sent. STEPRUNNER_TRACING=otlp exports spans over OTLP/HTTP (protobuf) to
 * OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), and W3C trace context travels on
 * every RPC between the services and to BuildKit.
 */
export function tracer(): Tracer {
  // Looked up at each use rather than kept: a tracer taken from one provider would keep sending its spans
  // there after another was installed (tests start tracing more than once in a process).
  return trace.getTracer("steprunner", STEPRUNNER_VERSION);
}

/**
 * Runs `work` in a new span, a child of the active one, and ends it when `work` settles; a failure is
 * recorded with its message. With tracing off the span is a no-op.
 */
export function inSpan<T>(name: string, attributes: Attributes, work: (span: Span) => Promise<T>): Promise<T> {
  return tracer().startActiveSpan(name, { attributes }, async (span) => {
    try {
      return await work(span);
    } catch (error) {
      failed(span, error);
      throw error;
    } finally {
      span.end();
    }
  });
}

function failed(span: Span, error: unknown): void {
  span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
}

const headerGetter: TextMapGetter<Headers> = {
  keys: (headers) => [...headers.keys()],
  get: (headers, key) => headers.get(key) ?? undefined,
};

const headerSetter: TextMapSetter<Headers> = {
  set: (headers, key, value) => headers.set(key, value),
};

/** Sends the active trace context (traceparent, tracestate) with each call; nothing when tracing is off. */
export function injectTraceContext(): Interceptor {
  return (next) => (request) => {
    propagation.inject(context.active(), request.header, headerSetter);
    return next(request);
  };
}

/**
 * A server span per RPC, a child of the caller's trace context when the request carries one. A streaming
 * response is read in the span's context, so that the handler's own spans nest under it, and the span
 * ends with the stream.
 */
export function serverSpans(): Interceptor {
  return (next) => async (request) => {
    const parent = propagation.extract(ROOT_CONTEXT, request.header, headerGetter);
    const span = tracer().startSpan(
      `${request.service.typeName}/${request.method.name}`,
      { kind: SpanKind.SERVER, attributes: { "rpc.system": "grpc", "rpc.service": request.service.typeName, "rpc.method": request.method.name } },
      parent,
    );
    if (!span.isRecording()) return next(request);
    const active = trace.setSpan(parent, span);
    const end = (error?: unknown) => {
      // gRPC's OK is 0; Connect's codes are gRPC's others.
      span.setAttribute("rpc.grpc.status_code", error === undefined ? 0 : ConnectError.from(error).code);
      if (error !== undefined) failed(span, error);
      span.end();
    };
    try {
      const response = await context.with(active, () => next(request));
      if (!response.stream) {
        end();
        return response;
      }
      return { ...response, message: readInContext(active, response.message, end) };
    } catch (error) {
      end(error);
      throw error;
    }
  };
}

async function* readInContext<T>(active: Context, messages: AsyncIterable<T>, end: (error?: unknown) => void): AsyncGenerator<T> {
  const iterator = messages[Symbol.asyncIterator]();
  let ended = false;
  try {
    for (;;) {
      const next = await context.with(active, () => iterator.next());
      if (next.done) break;
      yield next.value;
    }
    ended = true;
    end();
  } catch (error) {
    ended = true;
    end(error);
    throw error;
  } finally {
    // The caller went away mid-stream: the handler is told to stop, and the span still ends.
    if (!ended) {
      await context.with(active, () => iterator.return?.());
      end(new ConnectError("the caller went away", Code.Canceled));
    }
  }
}

/** The active span's ids, for log lines; undefined when no span is recording. */
export function activeTraceIds(): { trace_id: string; span_id: string } | undefined {
  const span = trace.getActiveSpan();
  if (!span?.isRecording()) return undefined;
  const { traceId, spanId } = span.spanContext();
  return { trace_id: traceId, span_id: spanId };
}
