import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer, type Server } from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type Client, createClient } from "@connectrpc/connect";
import { type MessageInitShape, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { readFile } from "node:fs/promises";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { type RunStepRequestSchema, type RunStepResponse, type Step, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { instanceTagOf } from "../../services/step-service/runtime/container.js";
import { leftovers, removeState, repository, startStepService, type TestStepService, testConfig } from "../support/step-service.js";
import type { StepServiceConfig } from "../../services/step-service/service.js";
import { ConnectError, Code } from "@connectrpc/connect";
import { ROOT, samePassOnEither } from "../support/stack.js";

const ACTIONS = `
task(:ok) { puts 'hello from the action' }
task(:exit3) { warn 'failing on purpose'; exit 3 }
task(:selfkill) { Process.kill('KILL', Process.pid) }
task(:hog) { chunks = []; loop { chunks << ('x' * 8 * 1024 * 1024) } }
task(:forkbomb) { exec('bash', '-c', 'bomb() { bomb | bomb & }; bomb; sleep 60') }
task(:connect) { require 'socket'; puts TCPSocket.new('127.0.0.1', Integer(ENV.fetch('PORT'))).read }
task(:whoami) { puts "uid=#{Process.uid} gid=#{Process.gid}" }
task(:isolation) { puts File.read('/proc/self/status')[/^Seccomp:[[:space:]]*[0-9]+/].split.join(' '); system('unshare', '-U', 'true', err: File::NULL) or puts 'unshare refused' }
task(:env) { puts "GREETING=#{ENV['GREETING']} TOKEN=#{ENV['TOKEN']}" }
task(:properties) do
  OpsChain.properties_for(:environment)['deployed'] = { 'version' => ENV.fetch('GREETING') }
  OpsChain.properties_for(:project).delete('obsolete')
  OpsChain.child_steps('verify', 'notify', strategy: :parallel)
end
task(:large) { OpsChain.properties_for(:change)['blob'] = 'y' * (6 * 1024 * 1024) }
task(:symlinkresult) { exec('ln', '-sf', '/etc/passwd', '/opt/opschain/.mintpress/step_result.json') }
task(:badresult) { exec('sh', '-c', 'echo "{not json" > /opt/opschain/.mintpress/step_result.json') }
task(:sleep) { puts 'sleeping'; $stdout.flush; sleep 120 }
task(:brief) { puts 'brief start'; $stdout.flush; sleep 2; puts 'brief done' }
task(:stubborn) { $stdout.sync = true; Signal.trap('TERM') { puts 'ignoring TERM' }; sleep 120 }
task(:lines) { 200.times { |i| puts "line #{i}"; $stdout.flush; sleep 0.005 }; warn 'done' }
`;

type Request = MessageInitShape<typeof RunStepRequestSchema>;

async function runStep(client: Client<typeof StepService>, request: Request): Promise<{ events: RunStepResponse[]; step: Step; lines: string[] }> {
  const events: RunStepResponse[] = [];
  for await (const event of client.runStep(request, { timeoutMs: 180_000 })) events.push(event);
  const last = events[events.length - 1]!;
  assert.equal(last.event.case, "finished", "the last event is finished");
  const lines = events.flatMap((event) => (event.event.case === "logLine" ? [event.event.value.text] : []));
  return { events, step: (last.event.value as { step: Step }).step, lines };
}

const NO_BUILDKIT = "no BuildKit: the step-service alone, its image from the registry";

describe("step-service with real runc and the base runner", samePassOnEither(NO_BUILDKIT), () => {
  let service: TestStepService;
  let repo: string;
  const request = (action: string, extra: Request = {}): Request => ({ repositoryUrl: repo, action, ...extra });

  // Two callers, each with a token and a limit of two unfinished steps.
  const tokens = { alice: `alice-${process.pid}`, bob: `bob-${process.pid}` };
  before(async () => {
    service = await startStepService(await testConfig({ maxStepsPerCaller: 2 }), {
      security: { tokens: Object.values(tokens), tokenNames: { [tokens.alice]: "alice", [tokens.bob]: "bob" } },
      token: tokens.alice,
    });
    repo = await repository(service.config, ACTIONS);
  });

  after(async () => {
    await service.stop();
    const left = await leftovers(service.config);
    await removeState(service.config);
    assert.deepEqual(left, { containers: [], mounts: [], cgroups: [], dirs: [] });
  });

  it("runs an action as uid 10001 and a second step on the same image unpacks no layer", async () => {
    const first = await runStep(service.client, request("whoami"));
    assert.equal(first.step.state, StepState.SUCCESS, first.step.reason);
    assert.ok(first.lines.includes("uid=10001 gid=10001"), first.lines.join("\n"));
    const before = await service.layers.stats();
    const second = await runStep(service.client, request("ok"));
    assert.equal(second.step.state, StepState.SUCCESS);
    assert.ok(second.lines.includes("hello from the action"));
    const afterStats = await service.layers.stats();
    assert.equal(afterStats.unpacked, before.unpacked, "no layer was unpacked again");
    assert.ok(before.unpacked >= 1);
  });

  it("runs the action under the seccomp profile: mode 2, no user namespaces", async () => {
    const { step, lines } = await runStep(service.client, request("isolation"));
    assert.equal(step.state, StepState.SUCCESS, lines.join("\n"));
    assert.ok(lines.includes("Seccomp: 2"), lines.join("\n"));
    assert.ok(lines.includes("unshare refused"), lines.join("\n"));
  });

  it("reports exit codes, and signals by name", async () => {
    const failed = await runStep(service.client, request("exit3"));
    assert.equal(failed.step.state, StepState.ERROR);
    assert.equal(failed.step.exitCode, 3);
    assert.equal(failed.step.reason, "exit status 3");
    assert.ok(
      failed.events.some((e) => e.event.case === "logLine" && e.event.value.stream === LogStream.STDERR && e.event.value.text === "failing on purpose"),
    );
    const killed = await runStep(service.client, request("selfkill"));
    assert.equal(killed.step.state, StepState.ERROR);
    assert.equal(killed.step.signal, "SIGKILL");
    assert.equal(killed.step.oomKilled, false, "a step that kills itself is not OOM-killed");
    assert.equal(killed.step.exitCode, -1);
  });

  it("reports a memory hog as OOM-killed", async () => {
    const { step } = await runStep(service.client, request("hog", { limits: { memoryBytes: 64n * 1024n * 1024n } }));
    assert.equal(step.state, StepState.ERROR);
    assert.equal(step.oomKilled, true, step.reason);
    assert.match(step.reason, /out of memory/);
  });

  it("holds a fork bomb with the pids limit, and its timeout leaves nothing", async () => {
    const stepId = `forkbomb-${process.pid}`;
    const running = runStep(service.client, request("forkbomb", { stepId, limits: { pids: 32n }, timeout: { seconds: 4n } }));
    const pidsFile = `/sys/fs/cgroup/pids/steprunner-${instanceTagOf(service.config.stateDir)}-${stepId}/container/pids.current`;
    let most = 0;
    for (let i = 0; i < 60; i++) {
      most = Math.max(most, Number((await readFile(pidsFile, "utf8").catch(() => "0")).trim()));
      await sleep(50);
    }
    const { step } = await running;
    assert.equal(step.state, StepState.TIMED_OUT, step.reason);
    assert.ok(most >= 16 && most <= 32, `the bomb reached ${most} processes under a limit of 32`);
    assert.deepEqual(await leftovers(service.config), { containers: [], mounts: [], cgroups: [], dirs: [] });
  });

  describe("network", () => {
    let server: Server;
    let port: number;
    before(async () => {
      server = createServer((socket) => socket.end("reached the host"));
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      port = (server.address() as { port: number }).port;
    });
    after(() => server.close());
    const withPort = (extra: Request = {}) =>
      request("connect", { properties: [{ owner: "project", properties: { opschain: { env: { PORT: String(port) } } } }], ...extra });

    it("cannot reach a server on the host's loopback by default", async () => {
      const { step, lines } = await runStep(service.client, withPort());
      assert.equal(step.state, StepState.ERROR);
      assert.match(lines.join("\n"), /Connection refused/);
    });

    it("reaches it with host networking", async () => {
      const { step, lines } = await runStep(service.client, withPort({ hostNetwork: true }));
      assert.equal(step.state, StepState.SUCCESS, lines.join("\n"));
      assert.ok(lines.includes("reached the host"));
    });
  });

  it("gives the action env properties, merged in order, and masks secrets", async () => {
    const { step, lines } = await runStep(
      service.client,
      request("env", {
        properties: [
          { owner: "project", properties: { opschain: { env: { GREETING: "project", TOKEN: "s3cr3t-value" } } } },
          { owner: "environment", properties: { opschain: { env: { GREETING: "environment" } } } },
        ],
        secretPointers: ["/project/opschain/env/TOKEN"],
      }),
    );
    assert.equal(step.state, StepState.SUCCESS, step.reason);
    assert.ok(lines.includes("GREETING=environment TOKEN=***"), lines.join("\n"));
    const stored = await service.client.getStep({ stepId: step.id });
    assert.doesNotMatch(JSON.stringify(stored.step?.result?.properties ?? {}), /s3cr3t/);
  });

  it("round-trips step_result.json: properties, RFC 6902 diffs per owner, child steps", async () => {
    const { step } = await runStep(
      service.client,
      request("properties", {
        properties: [
          { owner: "project", properties: { obsolete: true } },
          { owner: "environment", properties: { opschain: { env: { GREETING: "v2" } } } },
        ],
      }),
    );
    assert.equal(step.state, StepState.SUCCESS, step.reason);
    const result = step.result!;
    assert.deepEqual(result.properties, { opschain: { env: { GREETING: "v2" } }, deployed: { version: "v2" } });
    const diffs = Object.fromEntries(result.propertiesDiffs.map((diff) => [diff.owner, diff.operations?.values.map((v) => toJson(ValueSchema, v))]));
    assert.deepEqual(diffs, {
      project: [{ op: "remove", path: "/obsolete" }],
      environment: [{ op: "add", path: "/deployed", value: { version: "v2" } }],
    });
    assert.equal(result.childStepDefinitions?.children.map((child) => child.action).join(), "verify,notify");
    assert.equal(result.childStepDefinitions?.childExecutionStrategy, 2);
  });

  it("round-trips a large step_result.json", async () => {
    const { step } = await runStep(service.client, request("large", { properties: [{ owner: "change", properties: {} }] }));
    assert.equal(step.state, StepState.SUCCESS, step.reason);
    assert.equal((step.result!.properties as { blob: string }).blob.length, 6 * 1024 * 1024);
  });

  it("turns an invalid step_result.json into an error that says what is wrong", async () => {
    const { step } = await runStep(service.client, request("badresult"));
    assert.equal(step.state, StepState.ERROR);
    assert.match(step.reason, /invalid step_result\.json is not JSON/);
  });

  it("refuses a step_result.json that is a symlink, which would be read on the host", async () => {
    const { step } = await runStep(service.client, request("symlinkresult"));
    assert.equal(step.state, StepState.ERROR);
    assert.match(step.reason, /invalid step_result\.json: .*symlink/);
    assert.doesNotMatch(step.reason, /root:/);
  });

  it("times out (TERM, grace, KILL) and leaves no container, mount, cgroup or directory", async () => {
    assert.deepEqual(await leftovers(service.config), { containers: [], mounts: [], cgroups: [], dirs: [] });
    const started = Date.now();
    const { step, lines } = await runStep(service.client, request("stubborn", { timeout: { seconds: 2n } }));
    assert.equal(step.state, StepState.TIMED_OUT);
    assert.equal(step.reason, "timed out after 2 s");
    assert.ok(lines.includes("ignoring TERM"), "TERM came first");
    assert.ok(Date.now() - started >= 2000 + service.config.killGraceMs, "KILL came after the grace period");
    assert.deepEqual(await leftovers(service.config), { containers: [], mounts: [], cgroups: [], dirs: [] });
  });

  it("cancels a running step and leaves nothing", async () => {
    const stepId = `cancel-${process.pid}`;
    const running = runStep(service.client, request("sleep", { stepId }));
    for (let i = 0; i < 200 && (await leftovers(service.config)).containers.length === 0; i++) await sleep(50);
    const during = await leftovers(service.config);
    assert.equal(during.containers.length, 1);
    assert.equal(during.mounts.length, 1);
    assert.ok(during.cgroups.length > 0);
    const cancelled = await service.client.cancelStep({ stepId });
    assert.equal(cancelled.step?.id, stepId);
    const { step } = await running;
    assert.equal(step.state, StepState.CANCELLED);
    assert.deepEqual(await leftovers(service.config), { containers: [], mounts: [], cgroups: [], dirs: [] });
  });

  it("honours the caller's deadline: the step is cancelled down to runc and nothing is left", async () => {
    const stepId = `deadline-${process.pid}`;
    const started = Date.now();
    await assert.rejects(
      async () => {
        for await (const _ of service.client.runStep(request("sleep", { stepId }), { timeoutMs: 3000 })) void _;
      },
      (error: unknown) => ConnectError.from(error).code === Code.DeadlineExceeded,
    );
    assert.ok(Date.now() - started < 10_000);
    let step: Step | undefined;
    for (let i = 0; i < 300; i++) {
      step = (await service.client.getStep({ stepId })).step;
      if (step?.state === StepState.CANCELLED) break;
      await sleep(100);
    }
    assert.equal(step?.state, StepState.CANCELLED);
    assert.match(step!.reason, /caller of RunStep went away/);
    assert.deepEqual(await leftovers(service.config), { containers: [], mounts: [], cgroups: [], dirs: [] });
  });

  it("limits each caller to two unfinished steps, with RESOURCE_EXHAUSTED, and frees the slot when one ends", async () => {
    const sleeping = async (stepId: string) => {
      const stream = service.client.runStep(request("sleep", { stepId }))[Symbol.asyncIterator]();
      for (let next = await stream.next(); !next.done; next = await stream.next()) {
        if (next.value.event.case === "logLine" && next.value.event.value.text === "sleeping") return stream;
      }
      throw new Error(`${stepId} ended before it slept`);
    };
    const first = await sleeping(`alice-1-${process.pid}`);
    const second = await sleeping(`alice-2-${process.pid}`);
    const refused = await runStep(service.client, request("ok")).catch((error: unknown) => ConnectError.from(error));
    assert.ok(refused instanceof ConnectError, "alice's third step was refused");
    assert.equal(refused.code, Code.ResourceExhausted);
    assert.match(refused.rawMessage, /^token alice has 2 steps queued or running, the most one caller may have \(STEPRUNNER_MAX_STEPS_PER_CALLER=2\)/);
    const bob = await runStep(service.clientWithToken(tokens.bob), request("ok"));
    assert.equal(bob.step.state, StepState.SUCCESS, "bob is not held up by alice's steps");
    await service.client.cancelStep({ stepId: `alice-1-${process.pid}` });
    for (let next = await first.next(); !next.done; next = await first.next());
    const again = await runStep(service.client, request("ok"));
    assert.equal(again.step.state, StepState.SUCCESS, "a cancelled step no longer counts");
    await service.client.cancelStep({ stepId: `alice-2-${process.pid}` });
    for (let next = await second.next(); !next.done; next = await second.next());
  });

  it("streams logs in order while the step runs and follows them from an offset after it ended", async () => {
    const { step, events } = await runStep(service.client, request("lines"));
    const live = events.flatMap((e) => (e.event.case === "logLine" ? [e.event.value] : []));
    assert.deepEqual(
      live.map((line) => Number(line.offset)),
      live.map((_, index) => index),
      "offsets are consecutive from 0",
    );
    const stdout = live.filter((line) => line.stream === LogStream.STDOUT).map((line) => line.text);
    assert.deepEqual(
      stdout,
      Array.from({ length: 200 }, (_, i) => `line ${i}`),
    );
    const from = 150;
    const followed = [];
    for await (const response of service.client.followLogs({ stepId: step.id, fromOffset: BigInt(from), follow: true })) followed.push(response.line!);
    assert.deepEqual(
      followed.map((line) => line.text),
      live.slice(from).map((line) => line.text),
    );
    assert.equal(Number(step.logLines), live.length);
  });

  it("follows a running step's log live until it ends", async () => {
    const stepId = `follow-${process.pid}`;
    const running = runStep(service.client, request("lines", { stepId }));
    for (let i = 0; i < 200 && !service.runner.get(stepId); i++) await sleep(20);
    const followed: string[] = [];
    for await (const response of service.client.followLogs({ stepId, fromOffset: 0n, follow: true })) followed.push(response.line!.text);
    const { lines } = await running;
    assert.deepEqual(followed, lines);
  });

  it("answers bad requests with INVALID_ARGUMENT and unknown steps with NOT_FOUND", async () => {
    await assert.rejects(runStep(service.client, { repositoryUrl: repo, action: "" }), /action: must be what opschain-action accepts: one or more Rake tasks/);
    await assert.rejects(service.client.getStep({ stepId: "no-such-step" }), /no step with id/);
    const info = await service.client.getRuntimeInfo({});
    assert.equal(info.maxConcurrentSteps, 4);
    assert.equal(info.runningSteps, 0);
  });
});

describe("a step-service killed mid-step", samePassOnEither(NO_BUILDKIT), () => {
  it("is reaped at restart and the step is marked system_error", async () => {
    const config = await testConfig();
    const repo = await repository(config, ACTIONS);
    const { child, client, exited, stop } = await serviceProcess(config);
    try {
      const stepId = `crash-${process.pid}`;
      const stream = client.runStep({ stepId, repositoryUrl: repo, action: "sleep" });
      for await (const event of stream) if (event.event.case === "logLine" && event.event.value.text === "sleeping") break;
      child.kill("SIGKILL");
      await exited;
      const left = await leftovers(config);
      assert.equal(left.containers.length, 1, "the container outlived the service");

      const restarted = await startStepService(config);
      try {
        assert.deepEqual(await leftovers(config), { containers: [], mounts: [], cgroups: [], dirs: [] });
        const { step } = await restarted.client.getStep({ stepId });
        assert.equal(step?.state, StepState.SYSTEM_ERROR);
        assert.match(step!.reason, /step-service stopped while the step was running/);
      } finally {
        await restarted.stop();
      }
    } finally {
      await stop();
    }
  });

  it("drains on SIGTERM: steps that end in the grace period finish, the rest are handed back and can run again", async () => {
    const config = await testConfig();
    const repo = await repository(config, ACTIONS);
    const { child, client, exited, stop } = await serviceProcess(config, { STEPRUNNER_MAX_CONCURRENT_STEPS: "2", STEPRUNNER_SHUTDOWN_GRACE_MS: "6000" });
    try {
      const started = (stepId: string, action: string, until: (event: RunStepResponse) => boolean) => {
        const events: RunStepResponse[] = [];
        let seen = () => {};
        const reaching = new Promise<void>((resolve) => (seen = resolve));
        const done = (async () => {
          // The first step of a fresh state directory unpacks the runner's layers: slow on a loaded machine.
          for await (const event of client.runStep({ stepId, repositoryUrl: repo, action }, { timeoutMs: 240_000 })) {
            events.push(event);
            if (until(event)) seen();
          }
          const last = events[events.length - 1]!;
          assert.equal(last.event.case, "finished");
          return (last.event.value as { step: Step }).step;
        })();
        // A stream that ends (or fails) before the awaited event fails the test instead of leaving it waiting.
        const reached = Promise.race([reaching, done.then((step) => assert.fail(`${stepId} ended (${step.state}) before it was under way`))]);
        return { reached, done };
      };
      const logged = (text: string) => (event: RunStepResponse) => event.event.case === "logLine" && event.event.value.text === text;
      const stubborn = started(`drain-long-${process.pid}`, "sleep", logged("sleeping"));
      const brief = started(`drain-brief-${process.pid}`, "brief", logged("brief start"));
      await Promise.all([stubborn.reached, brief.reached]);
      const queued = started(`drain-queued-${process.pid}`, "ok", (event) => event.event.case === "accepted");
      await queued.reached;

      const signalled = Date.now();
      child.kill("SIGTERM");
      const handedBackQueued = await queued.done;
      assert.equal(handedBackQueued.state, StepState.HANDED_BACK);
      assert.match(handedBackQueued.reason, /shut down before the step started; run it again/);
      await assert.rejects(client.runStep({ repositoryUrl: repo, action: "ok" })[Symbol.asyncIterator]().next(), (error: unknown) => {
        const connect = ConnectError.from(error);
        return connect.code === Code.Unavailable && /shutting down/.test(connect.rawMessage);
      });
      assert.equal((await brief.done).state, StepState.SUCCESS, "a step that ends within the grace period finishes");
      const handedBackRunning = await stubborn.done;
      assert.equal(handedBackRunning.state, StepState.HANDED_BACK);
      assert.match(handedBackRunning.reason, /shut down before the step finished/);
      assert.ok(Date.now() - signalled >= 5000, "the running step had its grace period");
      assert.equal(await exited, 0);
      assert.deepEqual(await leftovers(config), { containers: [], mounts: [], cgroups: [], dirs: [] });

      const restarted = await startStepService(config);
      try {
        assert.equal((await restarted.client.getStep({ stepId: `drain-long-${process.pid}` })).step?.state, StepState.HANDED_BACK);
        const again = await runStep(restarted.client, { stepId: `drain-long-${process.pid}`, repositoryUrl: repo, action: "ok" });
        assert.equal(again.step.state, StepState.SUCCESS, "a handed-back step runs again under its id");
        assert.ok(again.lines.includes("hello from the action"));
        assert.ok(!again.lines.includes("sleeping"), "with a fresh log");
      } finally {
        await restarted.stop();
      }
    } finally {
      await stop();
    }
  });
});

/**
 * The step-service as its own process (a local directory in the test's runner image), on a unix socket in its
 * state directory, and a client of it once it answers. stop() kills it and removes its state.
 */
async function serviceProcess(config: StepServiceConfig, env: Record<string, string> = {}) {
  const socket = `unix:${config.stateDir}/step.sock`;
  const child = spawn(process.execPath, [`${ROOT}/dist/services/step-service/main.js`], {
    env: {
      ...process.env,
      STEPRUNNER_STEP_STATE_DIR: config.stateDir,
      STEPRUNNER_STEP_ADDR: socket,
      STEPRUNNER_STEP_IMAGE: config.stepImage,
      STEPRUNNER_STEP_SOURCES: "local",
      ...env,
    },
    stdio: "ignore",
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", resolve));
  const transport = serviceTransport(socket);
  const client = createClient(StepService, transport.transport);
  for (let i = 0; i < 100; i++) {
    if (
      await client.getRuntimeInfo({}).then(
        () => true,
        () => false,
      )
    )
      break;
    await sleep(100);
  }
  return {
    child,
    client,
    exited,
    async stop() {
      transport.close();
      child.kill("SIGKILL");
      await removeState(config);
    },
  };
}
