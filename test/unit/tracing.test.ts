import assert from "node:assert/strict";
import * as http from "node:http";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { context, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { createClient } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { Control } from "../../gen/moby/buildkit/v1/control_pb.js";
import { StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import { type RunningServer, startServer } from "../../services/shared/server/serve.js";
import { readTracingSettings } from "../../services/shared/config/common.js";
import { tracer } from "../../services/shared/tracing.js";
import { startTracing, startTracingWith, type Tracing } from "../../services/shared/tracing-setup.js";
import { stepServiceAdapter } from "../../services/step-service/api/step-service-adapter.js";
import type { ImageRootfs } from "../../services/step-service/images/images.js";
import type { ContainerExit } from "../../services/step-service/runtime/container.js";
import { LocalDirectoryContextPreparer, PrebuiltImageBuilder } from "../../services/step-service/steps/local.js";
import { StepRunner } from "../../services/step-service/steps/step-runner.js";

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/;

/** A stand-in for BuildKit's Control API that keeps the trace header of each Solve and ListWorkers call. */
async function startFakeControl(): Promise<{ port: number; traceparents: Array<string | null>; close(): Promise<void> }> {
  const traceparents: Array<string | null> = [];
  const handler = connectNodeAdapter({
    routes: (router) =>
      router.service(Control, {
        solve: (_request, call) => {
          traceparents.push(call.requestHeader.get("traceparent"));
          return { ExporterResponse: {} };
        },
        listWorkers: (_request, call) => {
          traceparents.push(call.requestHeader.get("traceparent"));
          return { record: [] };
        },
      }),
  });
  const server = http2.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    traceparents,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** A step-service over fakes: a local directory as the context, a prebuilt image and a container that exits 0 at once. */
async function startFakeStepService(stateDir: string, maxConcurrentSteps: number) {
  const logger = createLogger("test", {}, { quiet: true });
  const rootfs: ImageRootfs = {
    imageId: "sha256:fake",
    config: { env: [], entrypoint: [], cmd: [], workingDir: "/", user: "" },
    lowerDirs: [],
    release: () => {},
  };
  const runner = new StepRunner(
    { stateDir, maxConcurrentSteps, logCapBytes: 4096 },
    {
      contexts: new LocalDirectoryContextPreparer(),
      images: new PrebuiltImageBuilder("127.0.0.1:5000/fake:1"),
      materialiser: { materialise: async () => rootfs },
      layers: { init: async () => {}, collect: async () => [] },
      runtime: {
        run: async (run): Promise<ContainerExit> => {
          run.onStarted();
          await new Promise((resolve) => setTimeout(resolve, 50));
          return { exitCode: 0, signal: null, oomKilled: false, timedOut: false, cancelled: false, result: null };
        },
        reap: async () => [],
      },
      logger,
    },
  );
  await runner.recover();
  const settings = {
    runcPath: "runc",
    maxConcurrentSteps,
    defaultLimits: { memoryBytes: 1 << 26, cpuMillis: 1000, pids: 64 },
    defaultTimeoutMs: 10_000,
    maxTimeoutMs: 60_000,
    defaultRepoFolder: ".mintpress",
  };
  const server: RunningServer = await startServer({
    address: { kind: "tcp", host: "127.0.0.1", port: 0 },
    services: [StepService],
    routes: (router) => router.service(StepService, stepServiceAdapter(settings, runner)),
    logger,
  });
  const transport = serviceTransport(`127.0.0.1:${server.port}`, {});
  return {
    client: createClient(StepService, transport.transport),
    async stop() {
      transport.close();
      await server.close(1000);
      await runner.close();
    },
  };
}

describe("tracing", () => {
  let stateDir: string;
  let control: Awaited<ReturnType<typeof startFakeControl>>;
  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "steprunner-tracing-"));
    control = await startFakeControl();
  });
  after(async () => {
    await control.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  it("is off by default: no span is recorded and no trace header is sent, to our services or to BuildKit", async () => {
    const span = tracer().startSpan("unrecorded");
    assert.equal(span.isRecording(), false);
    const buildkit = new BuildKitClient(`tcp://127.0.0.1:${control.port}`);
    const ours = serviceTransport(`127.0.0.1:${control.port}`, {});
    try {
      await context.with(trace.setSpan(context.active(), span), async () => {
        await buildkit.solve({ Ref: "off" });
        await createClient(Control, ours.transport).listWorkers({});
      });
    } finally {
      span.end();
      buildkit.close();
      ours.close();
    }
    assert.deepEqual(control.traceparents.splice(0), [null, null]);
  });

  describe("when on", () => {
    const exporter = new InMemorySpanExporter();
    let tracing: Tracing;
    let service: Awaited<ReturnType<typeof startFakeStepService>>;
    before(async () => {
      tracing = startTracing("tracing-test", exporter);
      service = await startFakeStepService(stateDir, 1);
    });
    after(async () => {
      await service.stop();
      await tracing.shutdown();
    });

    const spans = (traceId: string): ReadableSpan[] => exporter.getFinishedSpans().filter((span) => span.spanContext().traceId === traceId);
    const named = (list: ReadableSpan[], name: string): ReadableSpan => {
      const found = list.find((span) => span.name === name);
      assert.ok(found, `a span "${name}" among ${list.map((span) => span.name).join(", ")}`);
      return found;
    };
    const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId;

    it("sends the active span's traceparent on a BuildKit Solve and on calls to our services", async () => {
      const buildkit = new BuildKitClient(`tcp://127.0.0.1:${control.port}`);
      const ours = serviceTransport(`127.0.0.1:${control.port}`, {});
      const span = tracer().startSpan("caller");
      try {
        await context.with(trace.setSpan(context.active(), span), async () => {
          await buildkit.solve({ Ref: "on" });
          await createClient(Control, ours.transport).listWorkers({});
        });
      } finally {
        span.end();
        buildkit.close();
        ours.close();
      }
      const sent = control.traceparents.splice(0);
      assert.equal(sent.length, 2);
      for (const header of sent) {
        const [, traceId, spanId] = TRACEPARENT.exec(header ?? "") ?? [];
        assert.equal(traceId, span.spanContext().traceId, `traceparent ${header}`);
        assert.equal(spanId, span.spanContext().spanId);
      }
    });

    it("continues the caller's trace in a server span, with the step and its phases nested in it", async () => {
      const caller = tracer().startSpan("caller");
      await context.with(trace.setSpan(context.active(), caller), async () => {
        for await (const event of service.client.runStep({
          stepId: "traced",
          repositoryUrl: stateDir,
          action: "go",
          contextValues: { change: { id: "change-7" } },
        })) {
          if (event.event.case === "finished") assert.equal(event.event.value.step?.state, StepState.SUCCESS);
        }
      });
      caller.end();
      const list = spans(caller.spanContext().traceId);
      const server = named(list, "steprunner.step.v1.StepService/RunStep");
      assert.equal(parentOf(server), caller.spanContext().spanId);
      assert.deepEqual(
        {
          system: server.attributes["rpc.system"],
          service: server.attributes["rpc.service"],
          method: server.attributes["rpc.method"],
          code: server.attributes["rpc.grpc.status_code"],
        },
        { system: "grpc", service: "steprunner.step.v1.StepService", method: "RunStep", code: 0 },
      );
      const step = named(list, "step");
      assert.equal(parentOf(step), server.spanContext().spanId, "the step's span is the streaming RPC's child");
      assert.deepEqual([step.attributes["step.id"], step.attributes["change.id"], step.attributes["step.state"]], ["traced", "change-7", "success"]);
      for (const phase of ["queue", "context", "build", "pull", "run", "teardown"]) {
        const span = named(list, `step.${phase}`);
        assert.equal(parentOf(span), step.spanContext().spanId, `step.${phase} is the step's child`);
      }
      assert.equal(named(list, "step.run").attributes["process.exit_code"], 0);
    });

    it("keeps a queued step in its own caller's trace, though it starts when another step ends", async () => {
      const callers = [tracer().startSpan("first"), tracer().startSpan("second")];
      await Promise.all(
        callers.map((caller, index) =>
          context.with(trace.setSpan(context.active(), caller), async () => {
            for await (const _ of service.client.runStep({ stepId: `queued-${index}`, repositoryUrl: stateDir, action: "go" }));
          }),
        ),
      );
      callers.forEach((caller) => caller.end());
      for (const [index, caller] of callers.entries()) {
        const list = spans(caller.spanContext().traceId);
        const step = named(list, "step");
        assert.equal(step.attributes["step.id"], `queued-${index}`);
        assert.equal(list.filter((span) => span.name === "step").length, 1, "one step in each trace");
        assert.equal(parentOf(named(list, "step.run")), step.spanContext().spanId);
      }
    });

    it("records a failed RPC with its gRPC code", async () => {
      const caller = tracer().startSpan("caller");
      await context.with(trace.setSpan(context.active(), caller), () => assert.rejects(service.client.getStep({ stepId: "no-such-step" })));
      caller.end();
      const server = named(spans(caller.spanContext().traceId), "steprunner.step.v1.StepService/GetStep");
      assert.equal(server.attributes["rpc.grpc.status_code"], 5, "NOT_FOUND");
      assert.equal(server.status.code, 2, "ERROR");
    });
  });
  describe("STEPRUNNER_TRACING", () => {
    const saved = { ...process.env };
    after(() => {
      for (const name of ["STEPRUNNER_TRACING", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"]) {
        if (saved[name] === undefined) delete process.env[name];
        else process.env[name] = saved[name];
      }
    });

    it("rejects a value it does not know", () => {
      process.env.STEPRUNNER_TRACING = "jaeger";
      assert.throws(() => startTracingWith(readTracingSettings("test-service")), /STEPRUNNER_TRACING must be off or otlp, got "jaeger"/);
    });

    it("=otlp exports spans as OTLP protobuf to OTEL_EXPORTER_OTLP_ENDPOINT, and log lines name the trace", async () => {
      const received: Array<{ path: string; type: string; body: Buffer }> = [];
      const collector = http.createServer((request, response) => {
        const chunks: Buffer[] = [];
        request.on("data", (chunk: Buffer) => chunks.push(chunk));
        request.on("end", () => {
          received.push({ path: request.url ?? "", type: request.headers["content-type"] ?? "", body: Buffer.concat(chunks) });
          response.writeHead(200, { "content-type": "application/x-protobuf" }).end();
        });
      });
      await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve));
      process.env.STEPRUNNER_TRACING = "otlp";
      process.env.OTEL_EXPORTER_OTLP_ENDPOINT = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`;
      const tracing = startTracingWith(readTracingSettings("test-service"));
      const lines: string[] = [];
      const write = process.stderr.write;
      try {
        await tracer().startActiveSpan("exported-span", async (span) => {
          process.stderr.write = ((text: string) => lines.push(text) > 0) as typeof process.stderr.write;
          createLogger("test-service").info("inside a span");
          process.stderr.write = write;
          span.end();
          const line = JSON.parse(lines[0]!) as { trace_id?: string; span_id?: string };
          assert.deepEqual([line.trace_id, line.span_id], [span.spanContext().traceId, span.spanContext().spanId]);
        });
      } finally {
        process.stderr.write = write;
        await tracing.shutdown();
        await new Promise((resolve) => collector.close(resolve));
      }
      assert.equal(received.length, 1);
      assert.equal(received[0]!.path, "/v1/traces");
      assert.equal(received[0]!.type, "application/x-protobuf");
      for (const text of ["exported-span", "test-service"]) assert.ok(received[0]!.body.includes(text), `the export names ${text}`);
    });
  });
});
