import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { type Change, type RunChangeResponse, StepKind, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { stepServiceAdapter, type StepServiceSettings } from "../../services/step-service/api/step-service-adapter.js";
import type { ContainerExit, ContainerRun } from "../../services/step-service/runtime/container.js";
import type { ContainerRunner } from "../../services/step-service/steps/ports.js";
import { ChangeRunner, type ChangeView, findNode } from "../../services/step-service/steps/change-runner.js";
import type { StepRequest } from "../../services/step-service/steps/ports.js";
import type { StepRunner } from "../../services/step-service/steps/step-runner.js";
import { applyPatch, findConflict, PatchError } from "../../services/step-service/steps/json-patch.js";
import { findStep } from "../support/change-steps.js";
import { fakeStepRunner } from "../support/fake-step-parts.js";
import { stepRequest } from "../support/step-request.js";

interface Seen {
  args: string[];
  env: Record<string, string>;
  context: { context: Record<string, Record<string, unknown>>; properties: Record<string, Record<string, unknown>> };
}

/** Runs each action as `actions` says: what it returns as step_result.json, or "block" until cancelled. */
class ScriptedRuntime implements ContainerRunner {
  seen = new Map<string, Seen>();
  actions: Record<string, (seen: Seen) => Partial<ContainerExit> | Record<string, unknown> | "block"> = {};

  async run(request: ContainerRun): Promise<ContainerExit> {
    request.onStarted();
    const context = JSON.parse(await readFile(request.binds[0]!.source, "utf8")) as Seen["context"];
    const seen = { args: request.args, env: request.env, context };
    const action = request.args.slice(1).join(" ");
    this.seen.set(String(context.context.step?.id), seen);
    const script = this.actions[action] ?? (() => ({}));
    const outcome = script(seen);
    const base = { exitCode: 0, signal: null, oomKilled: false, timedOut: false, cancelled: false, result: null };
    if (outcome === "block") {
      return new Promise((resolve) => {
        if (request.signal.aborted) resolve({ ...base, exitCode: null, cancelled: true });
        request.signal.addEventListener("abort", () => resolve({ ...base, exitCode: null, cancelled: true }));
      });
    }
    if ("exitCode" in outcome) return { ...base, ...(outcome as Partial<ContainerExit>) };
    return { ...base, result: { text: JSON.stringify(outcome) } };
  }
  async reap(): Promise<string[]> {
    return [];
  }
}

const settings: StepServiceSettings = {
  runcPath: "runc",
  maxConcurrentSteps: 2,
  defaultLimits: { memoryBytes: 64 * 1024 * 1024, cpuMillis: 1000, pids: 64 },
  defaultTimeoutMs: 10_000,
  maxTimeoutMs: 60_000,
  defaultRepoFolder: ".mintpress",
};

const children = (strategy: "sequential" | "parallel", ...actions: string[]) => ({
  child_step_definitions: { children: actions.map((action) => ({ action })), child_execution_strategy: strategy },
});
const diff = (owner: string, ...operations: object[]) => ({ properties_diffs: { [owner]: operations } });

describe("RunChange: a step and then its child steps, each a fresh step (fakes for the runtime and images)", () => {
  let stateDir: string;
  let runtime: ScriptedRuntime;
  let runner: StepRunner;
  let client: ReturnType<typeof createClient<typeof StepService>>;

  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "steprunner-change-"));
    runtime = new ScriptedRuntime();
    runner = fakeStepRunner(stateDir, runtime, { maxConcurrentSteps: 2, logCapBytes: 100_000 });
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

  async function runChange(
    changeId: string,
    action: string,
    extra: object = {},
    onEvent?: (event: RunChangeResponse) => void,
  ): Promise<{ change: Change; events: RunChangeResponse[] }> {
    const events: RunChangeResponse[] = [];
    for await (const event of client.runChange({
      changeId,
      step: {
        repositoryUrl: stateDir,
        action,
        properties: [
          { owner: "project", properties: { keep: true } },
          { owner: "environment", properties: {} },
        ],
      },
      ...extra,
    })) {
      events.push(event);
      onEvent?.(event);
    }
    const last = events.at(-1)!;
    assert.equal(last.event.case, "finished");
    return { change: (last.event.value as { change: Change }).change, events };
  }

  it("runs sequential children in order, each seeing the properties its predecessors changed, with the tree and states", async () => {
    runtime.actions = {
      parent: () => ({ ...children("sequential", "first", "second"), ...diff("project", { op: "add", path: "/count", value: 1 }) }),
      first: (seen) => {
        assert.equal(seen.context.properties.project?.count, 1, "the parent's change is seen");
        return diff("project", { op: "replace", path: "/count", value: 2 }, { op: "add", path: "/by_first", value: "yes" });
      },
      second: (seen) => {
        assert.equal(seen.context.properties.project?.count, 2, "the first child's change is seen");
        return diff("environment", { op: "add", path: "/seen", value: seen.context.properties.project?.by_first });
      },
    };
    const { change, events } = await runChange("seq", "parent");
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.deepEqual(
      change.properties.map((set) => [set.owner, set.properties]),
      [
        ["project", { keep: true, count: 2, by_first: "yes" }],
        ["environment", { seen: "yes" }],
      ],
    );
    assert.equal(change.root?.id, "seq.1");
    assert.equal(change.root?.childExecutionStrategy, ChildExecutionStrategy.SEQUENTIAL);
    assert.deepEqual(
      change.root?.children.map((child) => [child.id, child.action, child.parentId, child.state]),
      [
        ["seq.2", "first", "seq.1", StepState.SUCCESS],
        ["seq.3", "second", "seq.1", StepState.SUCCESS],
      ],
    );
    // Each step's events are streamed, tagged with its id, in order: the parent's end before the first child's start.
    const order = events.flatMap((event) =>
      event.event.case === "stepEvent" && ["accepted", "finished"].includes(event.event.value.event?.event.case ?? "")
        ? [`${event.event.value.stepId} ${event.event.value.event?.event.case}`]
        : [],
    );
    assert.deepEqual(order, ["seq.1 accepted", "seq.1 finished", "seq.2 accepted", "seq.2 finished", "seq.3 accepted", "seq.3 finished"]);
    assert.ok(events.some((event) => event.event.case === "treeChanged"));
    // The context each child saw: its own step, its parent, the change's action.
    const first = runtime.seen.get("seq.2")!;
    assert.equal(first.context.context.step?.id, "seq.2");
    assert.equal(first.context.context.step?.parent_step_id, "seq.1");
    assert.equal(first.context.context.step?.action, "first");
    assert.equal(first.context.context.change?.action, "parent");
    assert.equal(first.context.context.change?.id, "seq");
    // Each step keeps its own durable record.
    assert.equal((await client.getStep({ stepId: "seq.3" })).step?.state, StepState.SUCCESS);
  });

  it("runs parallel children from the same properties and applies their changes in declared order", async () => {
    runtime.actions = {
      fan: () => children("parallel", "left", "right"),
      left: (seen) => {
        assert.equal(seen.context.properties.project?.right, undefined, "a parallel sibling's change is not seen");
        return diff("project", { op: "add", path: "/left", value: 1 });
      },
      right: () => diff("project", { op: "add", path: "/right", value: 2 }),
    };
    const { change } = await runChange("par", "fan");
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.deepEqual(change.properties[0]?.properties, { keep: true, left: 1, right: 2 });
    assert.equal(change.root?.childExecutionStrategy, ChildExecutionStrategy.PARALLEL);
  });

  it("fails the step whose parallel property changes conflict with a sibling's, and the change with it", async () => {
    runtime.actions = {
      fan: () => children("parallel", "left", "right"),
      left: () => diff("project", { op: "add", path: "/server", value: { name: "a" } }),
      right: () => diff("project", { op: "add", path: "/other", value: 1 }, { op: "add", path: "/server", value: { name: "b" } }),
    };
    const { change } = await runChange("conflict", "fan");
    assert.equal(change.state, StepState.ERROR);
    assert.match(
      change.reason,
      /step conflict\.3 \(right\) changed project property \/server, which parallel step conflict\.2 \(left\) also changed \(\/server\); parallel steps may not change the same properties/,
    );
    const right = findStep(change.root, "conflict.3")!;
    assert.equal(right.state, StepState.ERROR);
    assert.deepEqual(change.properties[0]?.properties, { keep: true }, "no conflicting change is applied");
  });

  it("stops at the first child that fails: later steps are not run, and the change ends in that step's state", async () => {
    runtime.actions = {
      parent: () => children("sequential", "broken", "never"),
      broken: () => ({ exitCode: 3 }),
    };
    const { change } = await runChange("fails", "parent");
    assert.equal(change.state, StepState.ERROR);
    assert.match(change.reason, /^step fails\.2 \(broken\): exit status 3$/);
    const never = findStep(change.root, "fails.3")!;
    assert.equal(never.state, StepState.UNSPECIFIED);
    assert.match(never.reason, /^not run/);
    assert.equal(runtime.seen.has("fails.3"), false);
  });

  it("refuses a declared child step whose action is an option to Rake, naming it, and runs nothing more", async () => {
    runtime.actions = { sneaky: () => children("sequential", "--require=socket") };
    const { change } = await runChange("sneaky", "sneaky");
    assert.equal(change.state, StepState.ERROR);
    assert.match(
      change.reason,
      /^step sneaky\.1 \(sneaky\) declares a child step "--require=socket" that cannot run: must be one action of actions\.rb.*it starts with '-', so Rake would read it as an option/,
    );
    assert.equal(change.root?.children.length, 0);
  });

  it("refuses property changes that do not apply, naming the step", async () => {
    runtime.actions = { bad: () => diff("project", { op: "remove", path: "/missing" }) };
    const { change } = await runChange("badpatch", "bad");
    assert.equal(change.state, StepState.ERROR);
    assert.match(change.reason, /step badpatch\.1 \(bad\): its properties_diffs do not apply: operation 0 \(remove "\/missing"\): nothing at \/missing/);
  });

  it("cancels the whole tree: CancelStep with the change's id stops the running child and skips the rest", async () => {
    runtime.actions = { parent: () => children("sequential", "slow", "after"), slow: () => "block" };
    const { change } = await runChange("cancelme", "parent", {}, (event) => {
      if (
        event.event.case === "stepEvent" &&
        event.event.value.stepId === "cancelme.2" &&
        event.event.value.event?.event.case === "phaseChanged" &&
        event.event.value.event.event.value.state === StepState.RUNNING
      ) {
        void client.cancelStep({ stepId: "cancelme" });
      }
    });
    assert.equal(change.state, StepState.CANCELLED);
    assert.equal(findStep(change.root, "cancelme.2")?.state, StepState.CANCELLED);
    assert.equal(findStep(change.root, "cancelme.3")?.state, StepState.UNSPECIFIED);
  });

  it("times the whole tree out", async () => {
    runtime.actions = { parent: () => children("sequential", "slow"), slow: () => "block" };
    const started = Date.now();
    const { change } = await runChange("late", "parent", { timeout: { seconds: 0n, nanos: 300_000_000 } });
    assert.ok(Date.now() - started < 5000);
    assert.equal(change.state, StepState.TIMED_OUT);
    assert.match(findStep(change.root, "late.2")!.reason, /timed out/);
  });

  it("runs a dry run's first step only, with OPSCHAIN_DRY_RUN, and returns its expected_step_tree", async () => {
    const tree = { action: "parent", children: [{ action: "first", children: [] }] };
    runtime.actions = { parent: (seen) => ({ ...children("sequential", "first"), expected_step_tree: seen.env.OPSCHAIN_DRY_RUN === "true" ? tree : null }) };
    const dry = await (async () => {
      const events: RunChangeResponse[] = [];
      for await (const event of client.runChange({ changeId: "dry2", step: { repositoryUrl: stateDir, action: "parent", dryRun: true } })) events.push(event);
      return events;
    })();
    const finished = dry.at(-1)!.event.value as { change: Change };
    assert.equal(finished.change.state, StepState.SUCCESS);
    assert.equal(finished.change.root?.children.length, 0, "a dry run runs no child step");
    const step = (await client.getStep({ stepId: "dry2.1" })).step!;
    assert.deepEqual(toJson(ValueSchema, step.result!.expectedStepTree!), tree);
  });

  it("keeps RunStep's meaning: a single step, its declared children only reported", async () => {
    runtime.actions = { parent: () => children("sequential", "first") };
    const events = [];
    for await (const event of client.runStep({ stepId: "single", repositoryUrl: stateDir, action: "parent" })) events.push(event);
    const step = (await client.getStep({ stepId: "single" })).step!;
    assert.equal(step.state, StepState.SUCCESS);
    assert.deepEqual(
      step.result?.childStepDefinitions?.children.map((child) => child.action),
      ["first"],
    );
    assert.equal(runtime.seen.has("single.2"), false);
    assert.equal([...runtime.seen.keys()].filter((id) => id.startsWith("single")).length, 1);
  });

  it("masks the secrets in the change's properties, also after a step moved them", async () => {
    runtime.actions = { secretive: () => diff("project", { op: "copy", from: "/token", path: "/copied" }, { op: "add", path: "/plain", value: "visible" }) };
    const events: RunChangeResponse[] = [];
    for await (const event of client.runChange({
      changeId: "secret",
      step: {
        repositoryUrl: stateDir,
        action: "secretive",
        properties: [{ owner: "project", properties: { token: "s3cr3t-value" } }],
        secretPointers: ["/project/token"],
      },
    }))
      events.push(event);
    const change = (events.at(-1)!.event.value as { change: Change }).change;
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.deepEqual(change.properties[0]?.properties, { token: "***", copied: "***", plain: "visible" });
    assert.ok(
      !JSON.stringify(events, (_key, value) => (typeof value === "bigint" ? String(value) : value)).includes("s3cr3t-value"),
      "no event shows the secret",
    );
  });

  it("uses .opschain in a local repository directory that has no .mintpress, with a warning (the local stand-in)", async () => {
    const { mkdir } = await import("node:fs/promises");
    const dir = join(stateDir, "local-opschain");
    await mkdir(join(dir, ".opschain"), { recursive: true });
    runtime.actions = { where: () => ({}) };
    const warnings: string[] = [];
    for await (const event of client.runStep({ stepId: "local-folder", repositoryUrl: dir, action: "where" }))
      if (event.event.case === "warning") warnings.push(event.event.value);
    assert.equal(runtime.seen.get("local-folder")?.env.OPSCHAIN_REPO_FOLDER, ".opschain");
    assert.ok(
      warnings.some((warning) => /\.mintpress is not in the repository directory, but \.opschain is/.test(warning)),
      warnings.join("\n"),
    );
  });

  const group = (action: string, strategy: "sequential" | "parallel", kids: object[], extra: object = {}) => ({
    action,
    type: "group",
    child_execution_strategy: strategy,
    children: kids,
    ...extra,
  });
  const declared = (strategy: "sequential" | "parallel", ...kids: object[]) => ({
    child_step_definitions: { children: kids, child_execution_strategy: strategy },
  });

  /** Runs a change in the background; `until` resolves with the first event the test waits for. */
  function startChange(changeId: string, action: string, extra: object = {}) {
    const waiters: { test: (event: RunChangeResponse) => boolean; resolve: (event: RunChangeResponse) => void }[] = [];
    const done = runChange(changeId, action, extra, (event) => {
      for (const waiter of [...waiters]) {
        if (waiter.test(event)) {
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.resolve(event);
        }
      }
    });
    const until = (test: (event: RunChangeResponse) => boolean) => new Promise<RunChangeResponse>((resolve) => waiters.push({ test, resolve }));
    const waiting = (stepId: string) =>
      until((event) => event.event.case === "treeChanged" && findStep(event.event.value.change?.root, stepId)?.state === StepState.WAITING);
    return { done, waiting };
  }

  it("runs nested groups as a tree: a parallel group inside a sequential list, each group its own strategy", async () => {
    const order: string[] = [];
    const record = (name: string) => () => {
      order.push(name);
      return {};
    };
    runtime.actions = {
      deploy: () =>
        declared(
          "sequential",
          { action: "prepare" },
          group("opschain_steps_1", "parallel", [{ action: "app_1" }, { action: "app_2" }], { step_name: "Deploy apps" }),
          { action: "verify" },
        ),
      prepare: record("prepare"),
      app_1: (seen) => {
        order.push("app_1");
        return diff("project", { op: "add", path: "/app_1", value: seen.context.context.step?.parent_step_id });
      },
      app_2: () => {
        order.push("app_2");
        return diff("project", { op: "add", path: "/app_2", value: true });
      },
      verify: (seen) => {
        order.push("verify");
        assert.equal(seen.context.properties.project?.app_2, true, "the group's changes are seen after it");
        return {};
      },
    };
    const { change } = await runChange("tree", "deploy");
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.deepEqual(
      change.root?.children.map((child) => [child.id, child.action, child.kind, child.stepName, child.state, child.children.map((inner) => inner.id)]),
      [
        ["tree.2", "prepare", StepKind.ACTION, "", StepState.SUCCESS, []],
        ["tree.3", "opschain_steps_1", StepKind.GROUP, "Deploy apps", StepState.SUCCESS, ["tree.4", "tree.5"]],
        ["tree.6", "verify", StepKind.ACTION, "", StepState.SUCCESS, []],
      ],
    );
    assert.equal(findStep(change.root, "tree.3")?.childExecutionStrategy, ChildExecutionStrategy.PARALLEL);
    assert.equal(order[0], "prepare");
    assert.equal(order.at(-1), "verify");
    assert.equal(change.properties[0]?.properties?.app_1, "tree.3", "a group's child has the group as its parent step");
    // Only actions run in containers: the group has no step record.
    assert.equal(runtime.seen.has("tree.3"), false);
  });

  it("pauses at a wait step until ContinueChange, then runs the steps nested under it", async () => {
    runtime.actions = {
      destroy: () =>
        declared(
          "sequential",
          { action: "opschain_wait_step_1", type: "wait", step_name: "Confirm destroy", children: [{ action: "Shutdown" }] },
          { action: "infra_destroy" },
        ),
      Shutdown: () => ({}),
      infra_destroy: () => ({}),
    };
    const { done, waiting } = startChange("waits", "destroy");
    await waiting("waits.2");
    assert.equal(runtime.seen.has("waits.3"), false, "nothing under the wait step runs before it is continued");
    const live = (await client.getChange({ changeId: "waits" })).change!;
    assert.equal(findStep(live.root, "waits.2")?.state, StepState.WAITING);
    assert.match(findStep(live.root, "waits.2")!.reason, /waiting to be continued/);
    const refused = await client.continueChange({ changeId: "waits", inputValues: { x: 1 } }).catch((e: unknown) => ConnectError.from(e));
    assert.equal((refused as ConnectError).code, Code.InvalidArgument);
    assert.match((refused as ConnectError).rawMessage, /^input_values\.x: step waits\.2 \(Confirm destroy\) is a wait step and takes no input values/);
    await client.continueChange({ changeId: "waits" });
    const { change } = await done;
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.deepEqual(
      [...runtime.seen.keys()].filter((id) => id.startsWith("waits.")),
      ["waits.1", "waits.3", "waits.4"],
    );
    const again = await client.continueChange({ changeId: "waits" }).catch((e: unknown) => ConnectError.from(e));
    assert.equal((again as ConnectError).code, Code.FailedPrecondition);
    assert.match((again as ConnectError).rawMessage, /the change "waits" has finished \(5: every step succeeded\)|has finished/);
  });

  it("continues a timed wait by itself", async () => {
    runtime.actions = {
      timed: () => declared("sequential", { action: "opschain_wait_step_1", type: "wait", wait_seconds: 1 }, { action: "after" }),
      after: () => ({}),
    };
    const started = Date.now();
    const { change } = await runChange("timedwait", "timed");
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.ok(Date.now() - started >= 900, "it waited its second");
  });

  it("takes an input step's values, checked and converted, into the change's properties for the steps after it", async () => {
    runtime.actions = {
      ask: () =>
        declared("sequential", {
          action: "opschain_input_step_1",
          type: "input",
          step_name: "Server details",
          input_arguments: [
            { name: "server_name", path: "/database/server", gui_name: "Server name", type: "string", required: true },
            { name: "patch", path: "/patches", type: "integer", required: false, valid_values: [1, 10] },
            { name: "restart", path: "/", type: "boolean", required: true, default_value: true },
            { name: "keep", path: "/", type: "string", required: false },
          ],
          children: [{ action: "use_input" }],
        }),
      use_input: (seen) => diff("environment", { op: "add", path: "/saw", value: seen.context.properties.change }),
    };
    const { done, waiting } = startChange("inputs", "ask", {
      step: {
        repositoryUrl: stateDir,
        action: "ask",
        properties: [
          { owner: "project", properties: { keep: "from project" } },
          { owner: "environment", properties: {} },
        ],
      },
    });
    await waiting("inputs.2");
    const refused = async (inputValues: object, field: string, message: RegExp) => {
      const error = await client
        .continueChange({ changeId: "inputs", stepId: "inputs.2", inputValues: inputValues as never })
        .catch((e: unknown) => ConnectError.from(e));
      assert.equal((error as ConnectError).code, Code.InvalidArgument, JSON.stringify(inputValues));
      assert.equal((error as ConnectError).rawMessage.split(":")[0], field);
      assert.match((error as ConnectError).rawMessage, message);
    };
    await refused({}, "input_values.server_name", /server_name \(Server name\) is required/);
    await refused({ server_name: "db1", patch: "1.5" }, "input_values.patch", /patch must be a integer, got "1.5"/);
    await refused({ server_name: "db1", patch: 2 }, "input_values.patch", /patch must be one of 1, 10, got 2/);
    await refused({ server_name: "db1", colour: "red" }, "input_values.colour", /has no argument colour \(its arguments: server_name, patch, restart, keep\)/);
    const continued = await client.continueChange({ changeId: "inputs", inputValues: { server_name: "db1", patch: "10", keep: "mine" } });
    assert.deepEqual(findStep(continued.change?.root, "inputs.2")?.inputValues, { server_name: "db1", patch: 10, restart: true, keep: "mine" });
    const { change, events } = await done;
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    const written = { database: { server: { server_name: "db1" } }, patches: { patch: 10 }, restart: true };
    assert.deepEqual(change.properties.find((set) => set.owner === "change")?.properties, written);
    assert.deepEqual(change.properties.find((set) => set.owner === "environment")?.properties, { saw: written });
    assert.ok(events.some((event) => event.event.case === "warning" && /already hold keep, kept \(no overwrite\)/.test(event.event.value)));
  });

  it("ignores a failure under a step with ignore_failure: its remaining children are not run, the change goes on", async () => {
    runtime.actions = {
      destroy: () =>
        declared(
          "sequential",
          group("opschain_ignore_failure_step_1", "sequential", [{ action: "Shutdown" }, { action: "never" }], {
            ignore_failure: true,
            step_name: 'Run "Shutdown" ignoring failures',
          }),
          { action: "infra_destroy" },
        ),
      Shutdown: () => ({ exitCode: 1 }),
      infra_destroy: () => ({}),
    };
    const { change } = await runChange("ignored", "destroy");
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.match(change.reason, /every step succeeded or had its failure ignored \(step ignored\.3 \(Shutdown\): exit status 1\)/);
    assert.equal(findStep(change.root, "ignored.2")?.state, StepState.SUCCESS);
    assert.equal(findStep(change.root, "ignored.3")?.state, StepState.ERROR);
    assert.equal(findStep(change.root, "ignored.4")?.state, StepState.UNSPECIFIED);
    assert.match(findStep(change.root, "ignored.4")!.reason, /^not run: .*ignored: Run "Shutdown" ignoring failures has ignore_failure/);
    assert.equal(findStep(change.root, "ignored.5")?.state, StepState.SUCCESS);
  });

  it("cancels and times out a change that waits at a wait step", async () => {
    runtime.actions = { pause: () => declared("sequential", { action: "opschain_wait_step_1", type: "wait" }, { action: "after" }), after: () => ({}) };
    const cancelled = startChange("waitcancel", "pause");
    await cancelled.waiting("waitcancel.2");
    await client.cancelStep({ stepId: "waitcancel.2" });
    const { change } = await cancelled.done;
    assert.equal(change.state, StepState.CANCELLED);
    assert.equal(findStep(change.root, "waitcancel.2")?.state, StepState.CANCELLED);
    assert.equal(findStep(change.root, "waitcancel.3")?.state, StepState.UNSPECIFIED);
    const late = await runChange("waitlate", "pause", { timeout: { seconds: 0n, nanos: 500_000_000 } });
    assert.equal(late.change.state, StepState.TIMED_OUT);
    assert.equal(findStep(late.change.root, "waitlate.2")?.state, StepState.TIMED_OUT);
  });

  /** A validated RunStep request, as the change runner takes it. */
  const domainRequest = (action: string): StepRequest => stepRequest({ repositoryUrl: stateDir, gitRev: "HEAD", action, limits: settings.defaultLimits });

  it("hands back a change that waits when the service shuts down", async () => {
    runtime.actions = { pause: () => declared("sequential", { action: "opschain_wait_step_1", type: "wait" }, { action: "after" }), after: () => ({}) };
    const changes = new ChangeRunner(runner);
    const ended = new Promise<ChangeView>((resolve) => {
      changes.start(
        { changeId: "drained", root: domainRequest("pause"), timeoutMs: 10_000, requestJson: "{}" },
        (event) => {
          if (event.type === "tree" && findNode(event.change.root, "drained.2")?.state === "waiting") changes.drain();
          if (event.type === "finished") resolve(event.change);
        },
        new AbortController().signal,
      );
    });
    const change = await ended;
    assert.equal(change.state, "handed_back");
    assert.match(change.reason, /shut down while drained\.2 waited; run the change again/);
    assert.equal(findNode(change.root, "drained.3")?.state, "not_run");
  });

  it("keeps a finished change: GetChange shows it, the same request again returns it without running anything", async () => {
    runtime.actions = { kept: () => children("sequential", "kept_child"), kept_child: () => ({}) };
    const first = await runChange("keepme", "kept");
    const ran = runtime.seen.size;
    const again = await runChange("keepme", "kept");
    assert.equal(runtime.seen.size, ran, "nothing ran again");
    assert.deepEqual(
      again.events.map((event) => event.event.case),
      ["accepted", "finished"],
    );
    assert.deepEqual(again.change, first.change);
    assert.deepEqual((await client.getChange({ changeId: "keepme" })).change, first.change);
    const other = await (async () => {
      for await (const _ of client.runChange({ changeId: "keepme", step: { repositoryUrl: stateDir, action: "kept_child" } })) void _;
    })().catch((e: unknown) => ConnectError.from(e));
    assert.equal((other as ConnectError).code, Code.AlreadyExists);
    assert.match((other as ConnectError).rawMessage, /the change "keepme" has already run \(it ended success\) with a different request/);
    const missing = await client.getChange({ changeId: "never-ran" }).catch((e: unknown) => ConnectError.from(e));
    assert.equal((missing as ConnectError).code, Code.NotFound);
    const unknown = await client.continueChange({ changeId: "never-ran" }).catch((e: unknown) => ConnectError.from(e));
    assert.equal((unknown as ConnectError).code, Code.NotFound);
  });

  it("runs RunStep's actions one name each, spaces kept, and validates them", async () => {
    runtime.actions = { "Hello world action": () => ({}) };
    for await (const _ of client.runStep({ stepId: "named", repositoryUrl: stateDir, actions: ["Hello world action"] })) void _;
    assert.deepEqual(runtime.seen.get("named")?.args, ["opschain-action", "Hello world action"]);
    assert.equal((await client.getStep({ stepId: "named" })).step?.action, "Hello world action");
    const refused = async (request: object, message: RegExp) => {
      const error = await (async () => {
        for await (const _ of client.runStep({ repositoryUrl: stateDir, ...request })) void _;
      })().catch((e: unknown) => ConnectError.from(e));
      assert.equal((error as ConnectError).code, Code.InvalidArgument);
      assert.match((error as ConnectError).rawMessage, message);
    };
    await refused({ action: "a", actions: ["b"] }, /^actions: give either action .* or actions .*, not both/);
    await refused({ actions: ["ok", "-T"] }, /^actions\[1\]: .*it starts with '-', so Rake would read it as an option/);
    await refused({ actions: ["NAME=value"] }, /^actions\[0\]: .*it holds "="/);
    await refused({ actions: ["task[1]"] }, /^actions\[0\]: .*it holds "\["/);
  });

  it("validates the request with fields named from RunChange's", async () => {
    const refused = async (request: object, field: RegExp) => {
      const error = await (async () => {
        for await (const _ of client.runChange(request)) void _;
      })().catch((e: unknown) => ConnectError.from(e));
      assert.ok(error instanceof ConnectError, "refused");
      assert.equal(error.code, Code.InvalidArgument);
      assert.match(error.rawMessage, field);
    };
    await refused({ changeId: "x" }, /^step: must be given/);
    await refused({ changeId: "bad id", step: { repositoryUrl: stateDir, action: "a" } }, /^change_id: /);
    await refused({ step: { repositoryUrl: stateDir, action: "a", stepId: "s" } }, /^step\.step_id: must be empty/);
    await refused({ step: { repositoryUrl: stateDir, action: "--require=x" } }, /^step\.action: .*"--require=x" is refused/);
    const exists = await (async () => {
      for await (const _ of client.runChange({ changeId: "seq", step: { repositoryUrl: stateDir, action: "a" } })) void _;
    })().catch((e: unknown) => ConnectError.from(e));
    assert.equal((exists as ConnectError).code, Code.AlreadyExists);
  });
});

describe("JSON Patch (RFC 6902) and conflicts between patches", () => {
  it("applies add, remove, replace, move, copy and test in order, to a copy", () => {
    const original = { a: { b: 1 }, list: [1, 2] };
    const patched = applyPatch(original, [
      { op: "add", path: "/a/c", value: 2 },
      { op: "replace", path: "/a/b", value: 3 },
      { op: "add", path: "/list/-", value: 3 },
      { op: "add", path: "/list/0", value: 0 },
      { op: "copy", from: "/a", path: "/copy" },
      { op: "move", from: "/copy/c", path: "/moved" },
      { op: "remove", path: "/list/1" },
      { op: "test", path: "/moved", value: 2 },
      { op: "add", path: "/we~1ird~0", value: true },
    ]);
    assert.deepEqual(patched, { a: { b: 3, c: 2 }, list: [0, 2, 3], copy: { b: 3 }, moved: 2, "we/ird~": true });
    assert.deepEqual(original, { a: { b: 1 }, list: [1, 2] });
  });

  it("says which operation fails and why", () => {
    assert.throws(
      () => applyPatch({}, [{ op: "replace", path: "/x", value: 1 }]),
      (error: Error) => error instanceof PatchError && /operation 0 \(replace "\/x"\): nothing at \/x/.test(error.message),
    );
    assert.throws(() => applyPatch({ a: 1 }, [{ op: "test", path: "/a", value: 2 }]), /the test failed/);
    assert.throws(() => applyPatch({ l: [] }, [{ op: "add", path: "/l/5", value: 1 }]), /index 5 is out of range/);
  });

  it("finds overlapping writes, but not the same change made twice nor tests", () => {
    assert.deepEqual(findConflict([{ op: "add", path: "/a/b", value: 1 }], [{ op: "remove", path: "/a" }]), { path: "/a/b", otherPath: "/a" });
    assert.equal(findConflict([{ op: "add", path: "/a", value: 1 }], [{ op: "add", path: "/ab", value: 1 }]), undefined);
    assert.equal(findConflict([{ op: "add", path: "/a", value: { x: 1 } }], [{ op: "add", path: "/a", value: { x: 1 } }]), undefined);
    assert.equal(findConflict([{ op: "test", path: "/a", value: 1 }], [{ op: "replace", path: "/a", value: 2 }]), undefined);
    assert.ok(findConflict([{ op: "move", from: "/a", path: "/b" }], [{ op: "replace", path: "/a", value: 2 }]));
  });
});
