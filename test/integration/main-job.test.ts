import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { Phase, type RunStepRequest, type Step, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { type MessageInitShape, toJson } from "@bufbuild/protobuf";
import { ListValueSchema } from "@bufbuild/protobuf/wkt";
import type { RunStepRequestSchema } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { ROOT, run, stack } from "../support/stack.js";

const SECRET = "sample-secret-token";
const properties = {
  project: { app: "sample-app", opschain: { env: { GREETING: "hello", API_TOKEN: SECRET } } },
  environment: { region: "local", opschain: { env: { REGION: "local-1" } } },
};

interface Outcome {
  step: Step;
  logs: Array<{ stream: LogStream; text: string; offset: bigint }>;
  buildEvents: number;
}

describe("the main job: the sample repository's actions through the running services", () => {
  let work: string;
  let repository: string;
  const steps = serviceTransport(stack.stepAddr, {});

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "main-job-test-"));
    repository = join(work, "sample");
    const made = await run(join(ROOT, "deploy/sample/make-sample-repo.sh"), [repository]);
    assert.equal(made.code, 0, made.stderr);
  });
  after(async () => {
    steps.close();
    await rm(work, { recursive: true, force: true });
  });

  async function runStep(action: string, extra: Partial<MessageInitShape<typeof RunStepRequestSchema>> = {}): Promise<Outcome> {
    const request: MessageInitShape<typeof RunStepRequestSchema> = {
      repositoryUrl: repository,
      gitRev: "main",
      action,
      properties: Object.entries(properties).map(([owner, values]) => ({ owner, properties: values })),
      secretPointers: ["/project/opschain/env/API_TOKEN"],
      contextValues: { change: { id: "change-1", environmentCode: "dev" } },
      ...extra,
    } as RunStepRequest;
    const outcome: Outcome = { step: undefined as never, logs: [], buildEvents: 0 };
    for await (const response of createClient(StepService, steps.transport).runStep(request, { timeoutMs: 300_000 })) {
      switch (response.event.case) {
        case "logLine":
          outcome.logs.push({ stream: response.event.value.stream, text: response.event.value.text, offset: response.event.value.offset });
          break;
        case "buildProgress":
          outcome.buildEvents++;
          break;
        case "finished":
          outcome.step = response.event.value.step!;
      }
    }
    assert.ok(outcome.step, "the stream ended with the finished event");
    return outcome;
  }

  const output = (outcome: Outcome, stream: LogStream) =>
    outcome.logs
      .filter((line) => line.stream === stream)
      .map((line) => line.text)
      .join("\n");

  it("runs an action that prints and sets properties: logs, result and RFC 6902 diffs", async () => {
    const outcome = await runStep("hello");
    assert.equal(outcome.step.state, StepState.SUCCESS, outcome.step.reason);
    assert.equal(outcome.step.exitCode, 0);
    assert.match(output(outcome, LogStream.STDOUT), /^hello from dev$/m);
    const offsets = outcome.logs.map((line) => line.offset);
    assert.deepEqual(
      offsets,
      [...offsets].sort((a, b) => (a < b ? -1 : 1)),
      "log lines arrive in order",
    );
    const diffs = outcome.step.result!.propertiesDiffs.find((diff) => diff.owner === "environment")!;
    assert.deepEqual(toJson(ListValueSchema, diffs.operations!), [
      { op: "add", path: "/greetings", value: 1 },
      { op: "add", path: "/last_greeting", value: "hello" },
    ]);
    assert.equal(outcome.step.result!.properties?.last_greeting, "hello");
  });

  it("gives env var properties to the action and masks the secret in logs and the record", async () => {
    const outcome = await runStep("show_env");
    assert.equal(outcome.step.state, StepState.SUCCESS, outcome.step.reason);
    const stdout = output(outcome, LogStream.STDOUT);
    assert.match(stdout, /^GREETING=hello$/m);
    assert.match(stdout, /^REGION=local-1$/m);
    assert.match(stdout, /^API_TOKEN=\*+$/m);
    assert.match(output(outcome, LogStream.STDERR), /show_env: done/);
    const seen = JSON.stringify(outcome, (_key, value) => (typeof value === "bigint" ? value.toString() : value));
    assert.ok(!seen.includes(SECRET), "the secret appears nowhere in what the client saw");
  });

  it("returns child step definitions with their execution strategy", async () => {
    const outcome = await runStep("deploy");
    assert.equal(outcome.step.state, StepState.SUCCESS, outcome.step.reason);
    const children = outcome.step.result!.childStepDefinitions!;
    assert.deepEqual(
      children.children.map((child) => child.action),
      ["verify", "notify"],
    );
    assert.equal(children.childExecutionStrategy, ChildExecutionStrategy.SEQUENTIAL);
    assert.deepEqual(toJson(ListValueSchema, outcome.step.result!.propertiesDiffs.find((diff) => diff.owner === "project")!.operations!), [
      { op: "add", path: "/deployed", value: true },
    ]);
  });

  it("reports a failing action as an error with its exit status", async () => {
    const outcome = await runStep("fail");
    assert.equal(outcome.step.state, StepState.ERROR);
    assert.equal(outcome.step.exitCode, 3);
    assert.match(output(outcome, LogStream.STDERR), /failing on purpose/);
  });

  it("reuses the image when nothing changed: no build progress the second time", async () => {
    const outcome = await runStep("hello");
    assert.equal(outcome.step.imageReused, true);
    assert.equal(outcome.buildEvents, 0);
  });

  /** The build phase's part that says where the image came from without a build call of its own, if one does. */
  const buildPart = (outcome: Outcome) =>
    outcome.step.phaseParts.find((part) => part.phase === Phase.BUILD && (part.name === "image-asked-early" || part.name === "image-answer-kept"))?.name;
  /** BuildImage calls the image-service has answered, whatever their outcome. */
  const imageServiceCalls = async () => {
    const text = await (await fetch(`http://${stack.imageAddr}/metrics`)).text();
    return [...text.matchAll(/^steprunner_image_builds_seconds_count\{[^}]*\} (\d+)$/gm)].reduce((sum, match) => sum + Number(match[1]), 0);
  };

  it("gives the image-service's answer again while it holds, without a call: the image-service sees one call less for each", async () => {
    // An answer holds until the image-service's base digest is to be asked again (5 s by default): of three steps
    // in a row, the second or the third is within the time of the one before.
    const before = await imageServiceCalls();
    const outcomes = [await runStep("hello"), await runStep("hello"), await runStep("hello")];
    const calls = (await imageServiceCalls()) - before;
    for (const outcome of outcomes) assert.equal(outcome.step.state, StepState.SUCCESS, outcome.step.reason);
    const kept = outcomes.filter((outcome) => buildPart(outcome) === "image-answer-kept").length;
    assert.ok(kept >= 1, `an answer was given again: ${outcomes.map(buildPart).join(", ")}`);
    assert.equal(calls, outcomes.length - kept, "each step whose answer was kept made no call; each other step one (asked early)");
    assert.deepEqual(new Set(outcomes.map((outcome) => outcome.step.imageId)).size, 1);
    for (const outcome of outcomes) assert.equal(outcome.step.imageReused, true);
  });

  it("asks for the image of a step like the last one while preparing its context, and takes it for the same context or one of other properties", async () => {
    const askedEarly = (outcome: Outcome) => buildPart(outcome) !== undefined;
    const same = await runStep("hello");
    assert.equal(same.step.state, StepState.SUCCESS, same.step.reason);
    assert.ok(askedEarly(same), `the build phase waited only for the early (or kept) answer: ${same.step.phaseParts.map((part) => part.name).join(", ")}`);
    // Other properties make another context (the image is the same: the default Dockerfile does not read them).
    const other = await runStep("hello", {
      properties: Object.entries({ ...properties, project: { ...properties.project, app: "another-app" } }).map(([owner, values]) => ({
        owner,
        properties: values,
      })),
    });
    assert.equal(other.step.state, StepState.SUCCESS, other.step.reason);
    assert.deepEqual([other.step.imageReused, other.step.imageId], [true, same.step.imageId]);
    assert.ok(askedEarly(other), "properties alone changed: the last alike step's image was asked for early, and taken");
    const otherRevision = await runStep("hello", { gitRev: "custom-dockerfile" });
    assert.ok(!askedEarly(otherRevision), "a step of a revision no earlier step had is not guessed");
  });

  it("builds and runs the custom .mintpress/Dockerfile of a branch", async () => {
    const outcome = await runStep("tool", { gitRev: "custom-dockerfile" });
    assert.equal(outcome.step.state, StepState.SUCCESS, outcome.step.reason);
    assert.match(output(outcome, LogStream.STDOUT), /sample-tool 1\.0, built into the runner image/);
  });

  it("builds and runs the downloaded default Dockerfile committed unchanged as .mintpress/Dockerfile", async () => {
    const downloaded = await (await fetch(`http://${stack.contextAddr}/downloads/Dockerfile`)).text();
    const git = (...args: string[]) => run("git", ["-C", repository, "-c", "user.name=test", "-c", "user.email=test@steprunner.invalid", ...args]);
    assert.equal((await git("checkout", "-q", "-b", "downloaded-dockerfile", "main")).code, 0);
    await mkdir(join(repository, ".mintpress"), { recursive: true });
    await writeFile(join(repository, ".mintpress", "Dockerfile"), downloaded);
    assert.equal((await git("add", ".mintpress/Dockerfile")).code, 0);
    assert.equal((await git("commit", "-q", "-m", "the downloaded Dockerfile")).code, 0);
    assert.equal((await git("checkout", "-q", "main")).code, 0);
    const outcome = await runStep("hello", { gitRev: "downloaded-dockerfile" });
    assert.equal(outcome.step.state, StepState.SUCCESS, outcome.step.reason);
    assert.match(output(outcome, LogStream.STDOUT), /hello/);
  });

  it("counts the steps and their phases in the step-service's Prometheus metrics", async () => {
    const text = await (await fetch(`http://${stack.stepAddr}/metrics`)).text();
    const count = (state: string) => Number(new RegExp(`^steprunner_steps_total\\{[^}]*state="${state}"[^}]*\\} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
    assert.ok(count("success") >= 5, `successful steps counted: ${count("success")}`);
    assert.ok(count("error") >= 1, "the failing step is counted");
    assert.match(text, /^steprunner_step_phase_seconds_count\{[^}]*phase="run"[^}]*\} \d+$/m);
    assert.match(text, /^steprunner_layer_store_bytes\{[^}]*\} \d+/m);
  });

  it("runs a whole step through StepService with buf curl, a client that is not ours, using reflection", async () => {
    const body = JSON.stringify({
      repositoryUrl: repository,
      gitRev: "v1",
      action: "show_env",
      properties: [{ owner: "project", properties: properties.project }],
      secretPointers: ["/project/opschain/env/API_TOKEN"],
    });
    const requestFile = join(work, "run-step.json");
    await writeFile(requestFile, body);
    const result = await run(
      join(ROOT, "node_modules/.bin/buf"),
      ["curl", "--http2-prior-knowledge", "--protocol", "grpc", "--data", `@${requestFile}`, `http://${stack.stepAddr}/steprunner.step.v1.StepService/RunStep`],
      { timeoutMs: 300_000 },
    );
    assert.equal(result.code, 0, result.stderr);
    const events = result.stdout.split(/\n(?=\{)/).map((text) => JSON.parse(text));
    const finished = events.find((event) => event.finished)?.finished;
    assert.equal(finished.step.state, "STEP_STATE_SUCCESS");
    assert.ok(events.some((event) => event.logLine?.text === "GREETING=hello"));
  });
});
