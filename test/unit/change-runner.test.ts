import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { type Change, type ChangeStep, type RunChangeResponse, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { createLogger } from "../../services/shared/log.js";
import { stepServiceAdapter, type StepServiceSettings } from "../../services/step-service/api/step-service-adapter.js";
import type { ImageRootfs } from "../../services/step-service/images/images.js";
import type { ContainerExit, ContainerRun } from "../../services/step-service/runtime/container.js";
import { LocalDirectoryContextPreparer, PrebuiltImageBuilder } from "../../services/step-service/steps/local.js";
import type { ContainerRunner, ImageSource, LayerUpkeep } from "../../services/step-service/steps/ports.js";
import { StepRunner } from "../../services/step-service/steps/step-runner.js";
import { applyPatch, findConflict, PatchError } from "../../services/step-service/steps/json-patch.js";

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

class FakeImages implements ImageSource, LayerUpkeep {
  async materialise(): Promise<ImageRootfs> {
    return { imageId: "sha256:fake", config: { env: [], entrypoint: [], cmd: [], workingDir: "/", user: "" }, lowerDirs: ["/nonexistent"], release: () => {} };
  }
  async init(): Promise<void> {}
  async collect(): Promise<string[]> {
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

function findStep(step: ChangeStep | undefined, id: string): ChangeStep | undefined {
  if (!step) return undefined;
  if (step.id === id) return step;
  for (const child of step.children) {
    const found = findStep(child, id);
    if (found) return found;
  }
  return undefined;
}

describe("RunChange: a step and then its child steps, each a fresh step (fakes for the runtime and images)", () => {
  let stateDir: string;
  let runtime: ScriptedRuntime;
  let runner: StepRunner;
  let client: ReturnType<typeof createClient<typeof StepService>>;

  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), "steprunner-change-"));
    runtime = new ScriptedRuntime();
    const images = new FakeImages();
    runner = new StepRunner(
      { stateDir, maxConcurrentSteps: 2, logCapBytes: 100_000 },
      {
        contexts: new LocalDirectoryContextPreparer(),
        images: new PrebuiltImageBuilder("127.0.0.1:5000/fake:1"),
        materialiser: images,
        layers: images,
        runtime,
        logger: createLogger("test", {}, { quiet: true }),
      },
    );
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
      /^step sneaky\.1 \(sneaky\) declares a child step "--require=socket" that cannot run: must be what opschain-action accepts.*the option "--require=socket" is refused/,
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
