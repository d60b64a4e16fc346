import { context, propagation, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, BatchSpanProcessor, SimpleSpanProcessor, type SpanExporter } from "@opentelemetry/sdk-trace-base";
import { STEPRUNNER_VERSION } from "./version.js";

// The OpenTelemetry SDK, apart from tracing.ts: only the services load it (a few hundred milliseconds of module
// loading that a CLI command would otherwise pay on every call).

export interface Tracing {
  enabled: boolean;
  /** Sends the spans still buffered; call before the process exits. */
  shutdown(): Promise<void>;
}

export interface TracingSettings {
  /** off: the no-op tracer; otlp: spans exported over OTLP/HTTP (protobuf). */
  mode: "off" | "otlp";
  serviceName: string;
}

/** Turns tracing on as the settings say (config/common.ts reads them). */
export function startTracingWith(settings: TracingSettings): Tracing {
  if (settings.mode === "off") return { enabled: false, shutdown: async () => {} };
  return startTracing(settings.serviceName, new OTLPTraceExporter(), { batch: true });
}

/**
 * Installs a tracer provider exporting to `exporter` (tests pass an in-memory one), the AsyncLocalStorage
 * context manager (so spans nest across awaits) and the W3C trace-context propagator, for this process.
 */
export function startTracing(service: string, exporter: SpanExporter, options: { batch?: boolean } = {}): Tracing {
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ "service.name": service, "service.version": STEPRUNNER_VERSION }),
    spanProcessors: [options.batch ? new BatchSpanProcessor(exporter) : new SimpleSpanProcessor(exporter)],
  });
  const contextManager = new AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  return {
    enabled: true,
    async shutdown() {
      await provider.shutdown();
      trace.disable();
      propagation.disable();
      context.disable();
    },
  };
}
