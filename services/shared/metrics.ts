import type { Interceptor } from "@connectrpc/connect";
import { ConnectError, Code } from "@connectrpc/connect";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { HttpHandler } from "./server/serve.js";
import { onCallEnd } from "./server/call-end.js";

/**
 * A service's Prometheus metrics: its own registry (so tests and several servers in one process do not
 * collide), process metrics, and every RPC counted by method and code with its latency.
 */
export class ServiceMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<"method" | "code">;
  private readonly latency: Histogram<"method">;

  constructor(service: string) {
    this.registry.setDefaultLabels({ service });
    collectDefaultMetrics({ register: this.registry, prefix: "steprunner_" });
    this.requests = new Counter({
      name: "steprunner_rpc_requests_total",
      help: "RPCs handled, by method and gRPC code",
      labelNames: ["method", "code"],
      registers: [this.registry],
    });
    this.latency = new Histogram({
      name: "steprunner_rpc_duration_seconds",
      help: "Time to answer an RPC (to the end of its stream)",
      labelNames: ["method"],
      buckets: [0.005, 0.02, 0.1, 0.5, 2, 10, 60, 300],
      registers: [this.registry],
    });
  }

  counter<L extends string>(name: string, help: string, labelNames: L[]): Counter<L> {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  /** A gauge read when scraped. */
  gauge(name: string, help: string, read: () => number | Promise<number>): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      async collect() {
        this.set(await read());
      },
    });
  }

  histogram<L extends string>(name: string, help: string, labelNames: L[], buckets: number[]): Histogram<L> {
    return new Histogram({ name, help, labelNames, buckets, registers: [this.registry] });
  }

  /** Counts each RPC when it ends; a streaming RPC ends when its stream does. */
  interceptor(): Interceptor {
    return onCallEnd((request) => {
      const method = `${request.service.typeName}/${request.method.name}`;
      const stop = this.latency.startTimer({ method });
      return (error) => {
        stop();
        this.requests.inc({ method, code: error === undefined ? "OK" : Code[ConnectError.from(error).code] });
        return error;
      };
    });
  }

  /** GET /metrics in Prometheus's text format. */
  handler(): HttpHandler {
    return (_req, res) => {
      this.registry.metrics().then(
        (text) => {
          res.writeHead(200, { "content-type": this.registry.contentType });
          res.end(text);
        },
        (error: Error) => {
          res.writeHead(500, { "content-type": "text/plain" });
          res.end(`${error.message}\n`);
        },
      );
    };
  }
}
