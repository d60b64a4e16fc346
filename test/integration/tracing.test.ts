import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { context, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { createClient } from "@connectrpc/connect";
import { StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { createLogger } from "../../services/shared/log.js";
import { startServer } from "../../services/shared/server/serve.js";
import { tracer } from "../../services/shared/tracing.js";
import { startTracing, type Tracing } from "../../services/shared/tracing-setup.js";
import { ContextServicePreparer } from "../../services/step-service/clients/context-service-preparer.js";
import { ImageServiceBuilder } from "../../services/step-service/clients/image-service-builder.js";
import { stepServiceAdapter } from "../../services/step-service/api/step-service-adapter.js";
import { createStepRunner } from "../../services/step-service/service.js";
import { startTestContextService, type TestContextService } from "../support/context-service.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";
import { startTestImageService, type TestImageService } from "../support/image-service.js";
import { type RecordedCall, startRecordingBuildKitProxy } from "../support/recording-buildkit-proxy.js";
import { needsDockerd, run, stack } from "../support/stack.js";
import { leftovers, removeState, testConfig } from "../support/step-service.js";

const STEPS_REPOSITORY = "steprunner-test/tracing";
const SOLVE = "/moby.buildkit.v1.Control/Solve";

/**
 * One step through in-process context-, image- and step-services on the real BuildKit and runc. The
 * repository's two commits have fixed dates, so after the first run BuildKit's cache answers both solves.
 */
describe("tracing across the three services and BuildKit", needsDockerd("a recording proxy in front of its BuildKit"), () => {
  let work: string;
  let repository: string;
  let commits: string[];
  let proxy: Awaited<ReturnType<typeof startRecordingBuildKitProxy>>;
  let contexts: TestContextService;
  let images: TestImageService;
  let steps: { client: ReturnType<typeof createClient<typeof StepService>>; stop(): Promise<void> };
  let config: Awaited<ReturnType<typeof testConfig>>;
  const exporter = new InMemorySpanExporter();
  let tracing: Tracing | undefined;

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "tracing-test-"));
    repository = join(work, "repo");
    await mkdir(repository);
    await gitIn(repository, ["init", "-q", "-b", "main"]);
    commits = [
      await commitFiles(repository, { "actions.rb": "task(:traced) { puts 'untraced' }\n" }, "first", "2024-03-01T00:00:00Z"),
      await commitFiles(repository, { "actions.rb": "task(:traced) { puts 'traced' }\n" }, "second", "2024-03-02T00:00:00Z"),
    ];
    proxy = await startRecordingBuildKitProxy(`${stack.runDir}/docker.sock`, join(work, "buildkit.sock"));
    contexts = await startTestContextService();
    images = await startTestImageService({ contextAddress: contexts.address, buildkitAddress: proxy.address, stepsRepository: STEPS_REPOSITORY });
    config = await testConfig();
    const contextTransport = serviceTransport(contexts.address, {});
    const imageTransport = serviceTransport(images.address, {});
    const logger = createLogger("step-service-test", {}, { quiet: true });
    const { runner } = createStepRunner(config, logger, {
      contexts: new ContextServicePreparer(contextTransport.transport),
      images: new ImageServiceBuilder(imageTransport.transport),
    });
    await runner.recover();
    const server = await startServer({
      address: { kind: "tcp", host: "127.0.0.1", port: 0 },
      services: [StepService],
      routes: (router) => router.service(StepService, stepServiceAdapter(config, runner)),
      logger,
    });
    const stepTransport = serviceTransport(`127.0.0.1:${server.port}`, {});
    steps = {
      client: createClient(StepService, stepTransport.transport),
      async stop() {
        stepTransport.close();
        await server.close(1000);
        await runner.close();
        contextTransport.close();
        imageTransport.close();
      },
    };
  });

  after(async () => {
    await tracing?.shutdown();
    await steps?.stop();
    await images?.stop();
    await contexts?.stop();
    await proxy?.close();
    const left = config ? await leftovers(config) : undefined;
    if (config) await removeState(config);
    const tagged = await run("/usr/bin/docker", [
      "--host",
      `unix://${stack.runDir}/docker.sock`,
      "images",
      "--format",
      "{{.Repository}}:{{.Tag}}",
      STEPS_REPOSITORY,
    ]);
    for (const name of tagged.stdout.split("\n").filter(Boolean)) await images.docker.removeImage(name).catch(() => {});
    await rm(work, { recursive: true, force: true });
    assert.deepEqual(left, { containers: [], mounts: [], cgroups: [], dirs: [] });
  });

  async function runStep(gitRev: string): Promise<{ state: StepState; reason: string; lines: string[] }> {
    const lines: string[] = [];
    for await (const event of steps.client.runStep(
      { repositoryUrl: repository, gitRev, action: "traced", contextValues: { change: { id: "change-42" } } },
      { timeoutMs: 240_000 },
    )) {
      if (event.event.case === "logLine") lines.push(event.event.value.text);
      if (event.event.case === "finished") return { state: event.event.value.step!.state, reason: event.event.value.step!.reason, lines };
    }
    throw new Error("the step's stream ended without a finished event");
  }

  const solves = (calls: RecordedCall[]) => calls.filter((call) => call.path === SOLVE);

  it("with tracing off, sends BuildKit no trace header and records nothing", async () => {
    const outcome = await runStep(commits[0]!);
    assert.equal(outcome.state, StepState.SUCCESS, outcome.reason);
    const solved = solves(proxy.calls.splice(0));
    assert.equal(solved.length, 1, "the image was built (by BuildKit's cache, after the first run)");
    assert.equal(solved[0]!.headers.traceparent, undefined);
    assert.equal(exporter.getFinishedSpans().length, 0);
  });

  it("with tracing on, keeps one trace from the caller through the three services to BuildKit's Solve", async () => {
    tracing = startTracing("tracing-test", exporter);
    const caller = tracer().startSpan("caller");
    const outcome = await context.with(trace.setSpan(context.active(), caller), () => runStep(commits[1]!));
    caller.end();
    assert.equal(outcome.state, StepState.SUCCESS, outcome.reason);
    assert.ok(outcome.lines.includes("traced"), outcome.lines.join("\n"));
    const traceId = caller.spanContext().traceId;
    const all = exporter.getFinishedSpans();
    await tracing.shutdown();
    tracing = undefined;

    assert.deepEqual(
      all.filter((span) => span.spanContext().traceId !== traceId).map((span) => span.name),
      [],
      "every span is in the caller's trace",
    );
    const named = (name: string): ReadableSpan => {
      const found = all.filter((span) => span.name === name);
      assert.equal(found.length, 1, `one span "${name}" among ${all.map((span) => span.name).join(", ")}`);
      return found[0]!;
    };
    const isChild = (child: string, parent: string) =>
      assert.equal(named(child).parentSpanContext?.spanId, named(parent).spanContext().spanId, `${child} is a child of ${parent}`);

    isChild("steprunner.step.v1.StepService/RunStep", "caller");
    isChild("step", "steprunner.step.v1.StepService/RunStep");
    for (const phase of ["queue", "context", "build", "pull", "run", "teardown"]) isChild(`step.${phase}`, "step");
    assert.equal(named("step").attributes["change.id"], "change-42");
    isChild("steprunner.context.v1.ContextService/PrepareContext", "step.context");
    isChild("context.prepare", "steprunner.context.v1.ContextService/PrepareContext");
    isChild("steprunner.image.v1.ImageService/BuildImage", "step.build");
    isChild("image.build", "steprunner.image.v1.ImageService/BuildImage");
    isChild("image.solve", "image.build");
    assert.equal(named("image.build").attributes["image.outcome"], "built");
    // The image-service asks the context-service for the context within the same trace (it then reads the files
    // from the context-service's blobs, as both share the filesystem here; ReadContextFile otherwise).
    isChild("steprunner.context.v1.ContextService/GetContext", "image.build");

    const solved = solves(proxy.calls.splice(0));
    assert.equal(solved.length, 1);
    assert.equal(
      solved[0]!.headers.traceparent,
      `00-${traceId}-${named("image.solve").spanContext().spanId}-01`,
      "BuildKit's Solve carries the solve span's context",
    );
  });
});
