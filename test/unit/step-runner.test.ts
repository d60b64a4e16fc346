import assert from "node:assert/strict";
import { appendFile, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import type { BuildProgress } from "../../services/step-service/steps/ports.js";
import { StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import type { Fields, Logger } from "../../services/shared/log.js";
import { stepServiceAdapter, type StepServiceSettings } from "../../services/step-service/api/step-service-adapter.js";
import type { ContainerExit, ContainerRun } from "../../services/step-service/runtime/container.js";
import { PrebuiltImageBuilder } from "../../services/step-service/steps/local.js";
import type { ContainerRunner } from "../../services/step-service/steps/ports.js";
import { CallerLimitError, type StepEvent, type StepRunner } from "../../services/step-service/steps/step-runner.js";
import { FakeImages, fakeStepRunner } from "../support/fake-step-parts.js";
import { stepRequest } from "../support/step-request.js";

type StepRecordOf = Extract<StepEvent, { type: "finished" }>["step"];

/** A container runner that prints what it is told and exits as told; "block" waits for cancel or timeout. */
class FakeRuntime implements ContainerRunner {
  runs: ContainerRun[] = [];
  reaped = 0;
  script: (request: ContainerRun) => Promise<Partial<ContainerExit>> = async () => ({});

  async run(request: ContainerRun): Promise<ContainerExit> {
    this.runs.push(request);
    request.onStarted();
    const exit = await this.script(request);
    return { exitCode: 0, signal: null, oomKilled: false, timedOut: false, cancelled: false, result: null, ...exit };
  }
  async reap(): Promise<string[]> {
    this.reaped++;
    return [];
  }
}

const request = (repositoryUrl: string) => stepRequest({ repositoryUrl, gitRev: "", action: "go" });

const settings: StepServiceSettings = {
  runcPath: "runc",
  maxConcurrentSteps: 1,
  defaultLimits: { memoryBytes: 64 * 1024 * 1024, cpuMillis: 1000, pids: 64 },
  defaultTimeoutMs: 10_000,
  maxTimeoutMs: 60_000,
  defaultRepoFolder: ".mintpress",
};

describe("StepRunner and the StepService adapter (fakes for the runtime and images)", () => {
  let stateDir: string;
  let runtime: FakeRuntime;
  let images: FakeImages;
  let runner: StepRunner;
  let client: ReturnType<typeof createClient<typeof StepService>>;

  const newRunner = () => fakeStepRunner(stateDir, runtime, { images, logCapBytes: 200 });

  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "steprunner-runner-"));
    runtime = new FakeRuntime();
    images = new FakeImages();
    runner = newRunner();
    await runner.recover();
    client = createClient(
      StepService,
      createRouterTransport((router) => router.service(StepService, stepServiceAdapter(settings, runner))),
    );
  });
  after(async () => {
    await runner.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  const collect = async (stepId: string, action = "go", extra: object = {}) => {
    const events = [];
    for await (const event of client.runStep({ stepId, repositoryUrl: stateDir, action, ...extra })) events.push(event);
    return events;
  };

  it("streams accepted, phases, logs and finished, and keeps the record", async () => {
    runtime.script = async (request) => {
      request.onOutput("stdout", "hello", new Date());
      return { exitCode: 0, result: { text: JSON.stringify({ step: { properties: { a: 1 } } }) } };
    };
    const events = await collect("s1");
    assert.equal(events[0]?.event.case, "accepted");
    assert.equal(events.at(-1)?.event.case, "finished");
    assert.ok(events.some((e) => e.event.case === "logLine" && e.event.value.text === "hello"));
    const { step } = await client.getStep({ stepId: "s1" });
    assert.equal(step?.state, StepState.SUCCESS);
    assert.deepEqual(step?.result?.properties, { a: 1 });
    assert.deepEqual(
      step?.phases.map((phase) => phase.phase),
      [1, 2, 3, 4, 5, 6],
    );
    assert.equal(images.held, 0, "the image's layers were released");
    assert.equal(runtime.runs.at(-1)?.args.join(" "), "opschain-action go");
  });

  it("logs each step's start and end as JSON fields with the step's and its change's ids", async () => {
    const lines: Array<{ message: string } & Fields> = [];
    const capturing = (base: Fields): Logger => ({
      debug: (message, fields) => lines.push({ message, ...base, ...fields }),
      info: (message, fields) => lines.push({ message, ...base, ...fields }),
      warn: (message, fields) => lines.push({ message, ...base, ...fields }),
      error: (message, fields) => lines.push({ message, ...base, ...fields }),
      child: (fields) => capturing({ ...base, ...fields }),
    });
    const dir = await mkdtemp(join(tmpdir(), "steprunner-logs-"));
    const logged = fakeStepRunner(dir, runtime, { images, logCapBytes: 200, logger: capturing({}) });
    try {
      await logged.recover();
      runtime.script = async () => ({ exitCode: 0 });
      const finished = new Promise<void>((resolve) => {
        logged.submit(
          { ...request(dir), stepId: "logged", contextValues: { change: { id: "change-7" } } },
          (event) => event.type === "finished" && resolve(),
          new AbortController().signal,
        );
      });
      await finished;
      const mine = lines.filter((line) => line.step_id === "logged");
      assert.deepEqual(
        mine.map((line) => line.message),
        ["step accepted", "step finished"],
      );
      assert.ok(mine.every((line) => line.change_id === "change-7"));
      assert.equal(mine[1]?.state, "success");
      assert.equal(typeof mine[1]?.duration_ms, "number");
    } finally {
      await logged.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("answers a retry with the same step_id with that step's events instead of running it again", async () => {
    const runs = runtime.runs.length;
    const events = await collect("s1");
    assert.equal(runtime.runs.length, runs);
    assert.deepEqual(
      events.map((e) => e.event.case),
      ["accepted", "logLine", "logLine", "logLine", "finished"],
    );
  });

  it("forwards build progress, and a failing part is a system_error that names it", async () => {
    const contexts = { prepare: async () => Promise.reject(new Error("git fetch failed")) };
    const builder = {
      async build(_context: unknown, _request: unknown, onProgress: (progress: BuildProgress) => void) {
        onProgress({ vertexes: [{ digest: "v1", number: 1, name: "[1/2] FROM base", state: "started", error: "" }], statuses: [], logs: [] });
        throw new Error("solve failed");
      },
    };
    const full = { prepare: async () => Promise.reject(Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" })) };
    for (const [parts, reason] of [
      [{ contexts }, /^the context failed: git fetch failed$/],
      [
        { contexts: full },
        /^the context failed: ENOSPC: no space left on device, write; the step-service's disk is full: free space under \/.*steprunner-parts-/,
      ],
      [{ images: builder }, /^the image build failed: solve failed$/],
    ] as const) {
      const dir = await mkdtemp(join(tmpdir(), "steprunner-parts-"));
      const failing = fakeStepRunner(dir, runtime, {
        images,
        contexts: "contexts" in parts ? parts.contexts : undefined,
        imageBuilder: "images" in parts ? parts.images : new PrebuiltImageBuilder("127.0.0.1:5000/x:1"),
      });
      await failing.recover();
      const events: StepEvent[] = [];
      await new Promise<void>((resolve) =>
        failing.submit({ ...request(dir), stepId: "p" }, (event) => (events.push(event), event.type === "finished" && resolve()), new AbortController().signal),
      );
      const finished = events.at(-1) as Extract<StepEvent, { type: "finished" }>;
      assert.equal(finished.step.state, "system_error");
      assert.match(finished.step.reason, reason);
      if ("images" in parts) assert.ok(events.some((event) => event.type === "build" && event.progress.vertexes[0]?.name === "[1/2] FROM base"));
      await failing.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("maps exits to final states with reasons", async () => {
    const cases: [Partial<ContainerExit>, StepState, RegExp][] = [
      [{ exitCode: 2 }, StepState.ERROR, /^exit status 2$/],
      [{ exitCode: null, signal: "SIGKILL", oomKilled: true }, StepState.ERROR, /out of memory/],
      [{ exitCode: null, signal: "SIGSEGV" }, StepState.ERROR, /killed by SIGSEGV/],
      [{ exitCode: null, signal: "SIGTERM", timedOut: true }, StepState.TIMED_OUT, /timed out/],
      [{ exitCode: 0, result: { text: "{bad" } }, StepState.ERROR, /invalid step_result\.json is not JSON/],
      [{ exitCode: 0, result: { problem: "too big" } }, StepState.ERROR, /too big/],
    ];
    for (const [index, [exit, state, reason]] of cases.entries()) {
      runtime.script = async () => exit;
      await collect(`map-${index}`);
      const { step } = await client.getStep({ stepId: `map-${index}` });
      assert.equal(step?.state, state, `case ${index}: ${step?.reason}`);
      assert.match(step!.reason, reason);
    }
    runtime.script = async () => {
      throw new Error("runc exploded");
    };
    await collect("sys");
    const { step } = await client.getStep({ stepId: "sys" });
    assert.equal(step?.state, StepState.SYSTEM_ERROR);
    assert.match(step!.reason, /runc exploded/);
  });

  it("queues past the limit in order, cancels a queued step, and reports the counts", async () => {
    let release: (() => void) | undefined;
    runtime.script = (request) =>
      new Promise((resolve) => {
        release = () => resolve({});
        request.signal.addEventListener("abort", () => resolve({ cancelled: true }));
      });
    const order: string[] = [];
    const listen = (id: string) => (event: StepEvent) => {
      if (event.type === "phase" && event.phase === "run") order.push(id);
    };
    const signal = new AbortController().signal;
    const base = request(stateDir);
    const finished = ["q1", "q2", "q3"].map(
      (id) =>
        new Promise<void>((resolve) => runner.submit({ ...base, stepId: id }, (event) => (listen(id)(event), event.type === "finished" && resolve()), signal)),
    );
    // The first step runs once it reaches the runtime (however busy the machine); the others wait.
    while (!release) await new Promise((resolve) => setTimeout(resolve, 5));
    const info = await client.getRuntimeInfo({});
    assert.deepEqual([info.runningSteps, info.queuedSteps, info.maxConcurrentSteps], [1, 2, 1]);
    const cancelled = await client.cancelStep({ stepId: "q2" });
    assert.equal(cancelled.step?.state, StepState.CANCELLED);
    release();
    while (!order.includes("q3")) await new Promise((resolve) => setTimeout(resolve, 5));
    release!();
    await Promise.all(finished);
    assert.deepEqual(order, ["q1", "q3"]);
  });

  it("masks secrets in logs and caps the log with a marker", async () => {
    runtime.script = async (request) => {
      request.onOutput("stdout", "the token is hunter2", new Date());
      for (let i = 0; i < 50; i++) request.onOutput("stdout", `line ${i} of filler`, new Date());
      return {};
    };
    await collect("masked", "go", {
      properties: [{ owner: "project", properties: { opschain: { env: { TOKEN: "hunter2" } } } }],
      secretPointers: ["/project/opschain/env/TOKEN"],
    });
    const lines = [];
    for await (const response of client.followLogs({ stepId: "masked" })) lines.push(response.line!.text);
    assert.ok(lines.includes("the token is ***"));
    assert.ok(!lines.join("\n").includes("hunter2"));
    assert.match(lines.at(-2)!, /log truncated/);
    const { step } = await client.getStep({ stepId: "masked" });
    assert.equal(step?.logTruncated, true);
  });

  it("validates requests with actionable messages", async () => {
    const invalid = async (request: object, message: RegExp) => {
      const error = await collect("x", "go", request).catch((e: unknown) => ConnectError.from(e));
      assert.ok(error instanceof ConnectError);
      assert.equal(error.code, Code.InvalidArgument);
      assert.match(error.rawMessage, message);
    };
    await invalid({ stepId: "bad id!" }, /step_id/);
    await invalid({ action: "rm -rf" }, /^action: must be what opschain-action accepts: .*the option "-rf" is refused/);
    await invalid({ action: "deploy --require=socket" }, /the option "--require=socket" is refused/);
    await invalid({ repoFolder: "../x" }, /repo_folder/);
    await invalid({ secretPointers: ["/nobody/x"] }, /^secret_pointers\[0\]: .*"nobody" is not an owner/);
    await invalid({ limits: { memoryBytes: 1n } }, /memory_bytes/);
    const notFound = await client.getStep({ stepId: "missing" }).catch((e: unknown) => ConnectError.from(e));
    assert.equal((notFound as ConnectError).code, Code.NotFound);
  });

  it("times a step out in any phase: the context, the build, the run", async () => {
    const untilAborted = (signal: AbortSignal) => new Promise<never>((_, reject) => signal.addEventListener("abort", () => reject(new Error("aborted"))));
    const parts = [
      { contexts: { prepare: (_request: unknown, signal: AbortSignal) => untilAborted(signal) }, reason: /^timed out after 0.1 s, while preparing$/ },
      {
        images: { build: (_c: unknown, _r: unknown, _p: unknown, signal: AbortSignal) => untilAborted(signal) },
        reason: /^timed out after 0.1 s, while building$/,
      },
      { reason: /^timed out after 0.1 s$/ },
    ];
    runtime.script = (request) => new Promise((resolve) => request.signal.addEventListener("abort", () => resolve({ cancelled: true })));
    for (const part of parts) {
      const dir = await mkdtemp(join(tmpdir(), "steprunner-timeout-"));
      try {
        const timing = fakeStepRunner(dir, runtime, {
          images,
          contexts: part.contexts,
          imageBuilder: part.images ?? new PrebuiltImageBuilder("127.0.0.1:5000/x:1"),
        });
        await timing.recover();
        const finished = await new Promise<StepRecordOf>((resolve) =>
          timing.submit(
            { ...request(dir), stepId: "t", timeoutMs: 100 },
            (event) => event.type === "finished" && resolve(event.step),
            new AbortController().signal,
          ),
        );
        assert.equal(finished.state, "timed_out");
        assert.match(finished.reason, part.reason);
        await timing.close();
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }
  });

  it("lists newest first in pages", async () => {
    const first = await client.listSteps({ pageSize: 2 });
    assert.equal(first.steps.length, 2);
    const second = await client.listSteps({ pageSize: 2, pageToken: first.nextPageToken });
    assert.notEqual(second.steps[0]?.id, first.steps[0]?.id);
    assert.ok(first.steps[0]!.createdAt!.seconds >= second.steps[0]!.createdAt!.seconds);
  });

  it("marks steps a crash interrupted as system_error at restart, with every line its log holds counted", async () => {
    runtime.script = (request) => {
      request.onOutput("stdout", "before the crash", new Date());
      request.onOutput("stdout", "still before", new Date());
      return new Promise((resolve) => request.signal.addEventListener("abort", () => resolve({ cancelled: true })));
    };
    const signal = new AbortController().signal;
    await new Promise<void>((resolve) =>
      runner.submit(
        { ...request(stateDir), stepId: "interrupted" },
        (event) => event.type === "log" && event.line.text === "still before" && resolve(),
        signal,
      ),
    );
    // A line the crash cut in half is dropped.
    await appendFile(join(stateDir, "logs", "interrupted.log"), '{"offset":4,"stream":"stdout","te');
    // A second runner on the same state directory is what a restart after SIGKILL sees.
    const restarted = newRunner();
    await restarted.recover();
    const record = restarted.get("interrupted");
    assert.equal(record?.state, "system_error");
    assert.match(record!.reason, /stopped while the step was running/);
    assert.ok(runtime.reaped >= 2);
    const lines = (await readFile(join(stateDir, "logs", "interrupted.log"), "utf8"))
      .trimEnd()
      .split("\n")
      .map((line) => JSON.parse(line) as { offset: number; text: string });
    assert.equal(record!.logLines, lines.length);
    assert.deepEqual(
      lines.map((line) => line.offset),
      lines.map((_, index) => index),
    );
    assert.ok(lines.some((line) => line.text === "still before"));
    assert.match(lines.at(-1)!.text, /^\[steprunner\] system_error: the step-service stopped/);
    await restarted.close();
  });
});

describe("the per-caller step limit (fakes for the runtime and images)", () => {
  let stateDir: string;
  let runtime: FakeRuntime;
  let runner: StepRunner;
  const outcomes = new Map<string, () => void>();

  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "steprunner-callers-"));
    runtime = new FakeRuntime();
    // Each step runs until the test ends it: "ok", "fail" or "crash", or until it is cancelled.
    runtime.script = (run) =>
      new Promise((resolve, reject) => {
        outcomes.set(run.stepId, () => resolve({}));
        outcomes.set(`${run.stepId}:fail`, () => resolve({ exitCode: 1 }));
        outcomes.set(`${run.stepId}:crash`, () => reject(new Error("runc exploded")));
        // A step cancelled on its way to the runtime arrives with its signal aborted already.
        if (run.signal.aborted) resolve({ cancelled: true });
        run.signal.addEventListener("abort", () => resolve({ cancelled: true }));
      });
    const images = new FakeImages();
    runner = fakeStepRunner(stateDir, runtime, { images, maxConcurrentSteps: 2, maxStepsPerCaller: 2 });
    await runner.recover();
  });
  after(async () => {
    await runner.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  const finished = new Map<string, Promise<void>>();
  const submit = (stepId: string, caller: string) => {
    let done!: () => void;
    const ended = new Promise<void>((resolve) => (done = resolve));
    runner.submit({ ...request(stateDir), stepId }, (event) => event.type === "finished" && done(), new AbortController().signal, caller);
    finished.set(stepId, ended);
  };
  const running = async (stepId: string) => {
    while (!outcomes.has(stepId)) await new Promise((resolve) => setTimeout(resolve, 2));
  };

  it("refuses a caller's step past the limit, counting queued steps too, while other callers go on", async () => {
    submit("a1", "token a");
    submit("a2", "token a");
    submit("b1", "token b"); // queued: both slots are a's
    await running("a2");
    assert.throws(
      () => submit("a3", "token a"),
      (error: Error) => {
        assert.ok(error instanceof CallerLimitError);
        assert.equal(
          error.message,
          "token a has 2 steps queued or running, the most one caller may have (STEPRUNNER_MAX_STEPS_PER_CALLER=2); retry when one has ended",
        );
        return true;
      },
    );
    assert.equal(runner.get("a3"), undefined, "the refused step left no record");
    submit("b2", "token b");
    assert.throws(() => submit("b3", "token b"), /token b has 2 steps queued or running/);
  });

  it("frees a slot when a step succeeds, fails, crashes or is cancelled", async () => {
    for (const [end, stepId, caller] of [
      ["ok", "a1", "token a"],
      ["fail", "a2", "token a"],
      ["crash", "b1", "token b"],
      ["cancel", "b2", "token b"],
    ] as const) {
      await running(stepId);
      if (end === "cancel") runner.cancel(stepId);
      else outcomes.get(end === "ok" ? stepId : `${stepId}:${end}`)!();
      await finished.get(stepId);
      submit(`${stepId}-next`, caller);
    }
    assert.throws(() => submit("a-third", "token a"), CallerLimitError);
    for (const id of ["a1-next", "a2-next", "b1-next", "b2-next"]) runner.cancel(id);
    await Promise.all([...finished.values()]);
  });

  it("is RESOURCE_EXHAUSTED through the adapter", async () => {
    const client = createClient(
      StepService,
      createRouterTransport((router) => router.service(StepService, stepServiceAdapter(settings, runner))),
    );
    const streams = ["r1", "r2"].map((stepId) => client.runStep({ stepId, repositoryUrl: stateDir, action: "go" })[Symbol.asyncIterator]());
    for (const stream of streams) await stream.next();
    const refused = await client
      .runStep({ stepId: "r3", repositoryUrl: stateDir, action: "go" })
      [Symbol.asyncIterator]()
      .next()
      .catch((error: unknown) => ConnectError.from(error));
    assert.ok(refused instanceof ConnectError);
    assert.equal(refused.code, Code.ResourceExhausted);
    assert.match(refused.rawMessage, /has 2 steps queued or running/);
    for (const id of ["r1", "r2"]) runner.cancel(id);
    for (const stream of streams) while (!(await stream.next()).done);
  });
});
