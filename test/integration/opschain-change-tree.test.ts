import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { type JsonObject, type MessageInitShape, toJson } from "@bufbuild/protobuf";
import { timestampMs, ValueSchema } from "@bufbuild/protobuf/wkt";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import {
  type Change,
  type ChangeStep,
  Phase,
  type RunChangeResponse,
  type RunStepRequestSchema,
  StepKind,
  StepService,
  StepState,
} from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";
import { CLI, run, stack } from "../support/stack.js";
import { findStep } from "../support/change-steps.js";

/**
 * Issue #14's step tree through the running services and the base runner's opschain library: repositories
 * written (our own code) from the examples of OpsChain's actions and properties guides — groups mixing
 * strategies (OpsChain.steps), wait steps (plain, timed, with nested steps), input steps, ignore_failure_step,
 * a dry run's expected_step_tree, .opschain/properties.toml, an action named with spaces — run as changes
 * (RunChange, ContinueChange, GetChange and the CLI), each action in its own container.
 */

type StepRequest = MessageInitShape<typeof RunStepRequestSchema>;

/** The actions guide's examples of child steps. */
const CHILD_STEPS_GUIDE = `require 'opschain'

action :deploy, steps: [
  'prepare',
  OpsChain.steps(['deploy_app_1', 'deploy_app_2'], run_as: :parallel, step_name: 'Deploy apps'),
  'verify',
] do
  log.info 'before the child steps'
end

action(:prepare) { OpsChain.properties_for(:environment).prepared = true }
action(:deploy_app_1) { OpsChain.properties_for(:project).app_1 = "#{OpsChain.properties.prepared}"; sleep 2 }
action(:deploy_app_2) { OpsChain.properties_for(:environment).app_2 = 'deployed'; sleep 2 }
action(:verify) { puts "verify sees app_1=#{OpsChain.properties.app_1} app_2=#{OpsChain.properties.app_2}" }

action :do_something, steps: [:do_something_before_waiting, OpsChain.wait_step(step_name: 'Wait for network team'), :do_something_else_after_waiting]
action(:do_something_before_waiting) { puts 'before waiting' }
action(:do_something_else_after_waiting) { puts 'after waiting' }

action :timed, steps: [OpsChain.wait_step(seconds: 2, step_name: 'Wait for server restart'), :do_something_else_after_waiting]

action :destroy, steps: [
  OpsChain.wait_step(step_name: 'Confirm destroy', steps: ['Shutdown']),
  'infra_destroy'
]
action('Shutdown') { puts 'shutting down' }
action(:infra_destroy) { puts 'infra destroyed' }

action :careless_destroy, steps: [OpsChain.ignore_failure_step('Fragile shutdown'), 'infra_destroy']
action('Fragile shutdown') { raise 'the vm was not there' }

action :restart, steps: [
  :do_something_before_input,
  OpsChain.input_step(
    step_name: 'Server details',
    input_arguments: [
      :comments,
      server_name: { path: '/database/server', gui_name: 'Server name', description: 'Name of the server to restart' },
      patch_number: { path: '/patches', gui_name: 'Patch number', required: false, type: :integer },
      restart_after_hours: { path: '/restart_after_hours', gui_name: 'Restart after hours', type: :boolean, default_value: true }
    ],
    steps: ['do_something_with_input']
  )
]
action(:do_something_before_input) { puts 'asking for input' }
action(:do_something_with_input) do
  props = OpsChain.properties
  puts "restarting #{props.database.server.server_name} patch=#{props.patches.patch_number} after_hours=#{props.restart_after_hours.restart_after_hours} comments=#{props.comments}"
end

desc 'Greets in a readable name'
action 'Hello world action' do
  puts "hello from #{OpsChain.context.step.action}"
end
action :greet_by_name, steps: ['Hello world action']

action :show_toml do
  puts "toml: #{OpsChain.repository_properties.server.name} port=#{OpsChain.repository_properties.server.port} tags=#{OpsChain.repository_properties.tags.join(',')}"
end
`;

const PROPERTIES_TOML = `# repository properties, as the properties guide allows them in TOML
tags = ["web", "blue"]

[server]
name = "toml-server"
port = 8080
`;

describe("OpsChain's child step tree (#14): groups, wait and input steps, ignored failures, through the running services", () => {
  let work: string;
  let repo: string;
  const transport = serviceTransport(stack.stepAddr, {});
  const client = createClient(StepService, transport.transport);
  const properties: Array<{ owner: string; properties: JsonObject }> = [
    { owner: "project", properties: {} },
    { owner: "environment", properties: {} },
  ];
  const runId = `t${Date.now().toString(36)}`;

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "opschain-tree-test-"));
    repo = join(work, "child-steps");
    await mkdir(repo);
    await gitIn(repo, ["init", "-q", "-b", "main"]);
    await commitFiles(
      repo,
      { "actions.rb": CHILD_STEPS_GUIDE, ".opschain/properties.toml": PROPERTIES_TOML },
      "child steps from the docs",
      "2026-01-01T00:00:00Z",
    );
  });
  after(async () => {
    transport.close();
    await rm(work, { recursive: true, force: true });
  });

  const step = (action: string, extra: StepRequest = {}): StepRequest => ({
    repositoryUrl: repo,
    gitRev: "main",
    repoFolder: ".opschain",
    properties,
    action,
    ...extra,
  });

  /** Runs a change; `onEvent` sees each event (to continue or cancel it), stdout is kept per step. */
  async function runChange(
    changeId: string,
    request: StepRequest,
    extra: object = {},
    onEvent?: (event: RunChangeResponse) => void,
  ): Promise<{ change: Change; stdout: Map<string, string>; events: RunChangeResponse[] }> {
    const stdout = new Map<string, string>();
    const events: RunChangeResponse[] = [];
    for await (const response of client.runChange({ changeId, step: request, ...extra }, { timeoutMs: 600_000 })) {
      events.push(response);
      onEvent?.(response);
      const event = response.event;
      if (event.case === "stepEvent" && event.value.event?.event.case === "logLine" && event.value.event.event.value.stream === LogStream.STDOUT) {
        stdout.set(event.value.stepId, `${stdout.get(event.value.stepId) ?? ""}${event.value.event.event.value.text}\n`);
      }
    }
    const last = events.at(-1)!;
    assert.equal(last.event.case, "finished");
    return { change: (last.event.value as { change: Change }).change, stdout, events };
  }

  /** Calls `then` once, when the step first waits. */
  const whenWaiting = (stepId: string, then: (step: ChangeStep) => void) => {
    let done = false;
    return (event: RunChangeResponse) => {
      if (done || event.event.case !== "treeChanged") return;
      const waiting = findStep(event.event.value.change?.root, stepId);
      if (waiting?.state !== StepState.WAITING) return;
      done = true;
      then(waiting);
    };
  };

  it("runs a parallel group nested in a sequential list (OpsChain.steps), each group with its own strategy", async () => {
    const id = `${runId}-groups`;
    const { change, stdout } = await runChange(id, step("deploy"));
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    const group = findStep(change.root, `${id}.3`)!;
    assert.deepEqual([group.kind, group.stepName, group.childExecutionStrategy], [StepKind.GROUP, "Deploy apps", ChildExecutionStrategy.PARALLEL]);
    assert.deepEqual(
      group.children.map((child) => [child.action, child.state]),
      [
        ["deploy_app_1", StepState.SUCCESS],
        ["deploy_app_2", StepState.SUCCESS],
      ],
    );
    assert.equal(stdout.get(`${id}.6`), "verify sees app_1=true app_2=deployed\n");
    // The two apps ran at once: each sleeps 2 s, and their records overlap.
    const [app1, app2] = await Promise.all([`${id}.4`, `${id}.5`].map(async (stepId) => (await client.getStep({ stepId })).step!));
    const span = (record: typeof app1) => [
      timestampMs(record!.phases.find((phase) => phase.phase === Phase.RUN)!.startedAt!),
      timestampMs(record!.finishedAt!),
    ];
    const [start1, end1] = span(app1);
    const [start2, end2] = span(app2);
    assert.ok(start1! < end2! && start2! < end1!, "the parallel group's steps overlapped");
  });

  it("pauses at a wait step until ContinueChange (no step after it runs before), then finishes", async () => {
    const id = `${runId}-wait`;
    let continuedAt = 0;
    const { change, stdout } = await runChange(
      id,
      step("do_something"),
      {},
      whenWaiting(`${id}.3`, (waiting) => {
        assert.equal(waiting.stepName, "Wait for network team");
        void (async () => {
          const live = (await client.getChange({ changeId: id })).change!;
          assert.equal(findStep(live.root, `${id}.4`)?.state, StepState.QUEUED, "nothing after the wait step started");
          continuedAt = Date.now();
          await client.continueChange({ changeId: id });
        })();
      }),
    );
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.ok(continuedAt > 0);
    assert.equal(stdout.get(`${id}.2`), "before waiting\n");
    assert.equal(stdout.get(`${id}.4`), "after waiting\n");
    const after = (await client.getStep({ stepId: `${id}.4` })).step!;
    assert.ok(Number(after.createdAt!.seconds) * 1000 >= continuedAt - 1000, "the step after the wait was created once continued");
  });

  it("continues a timed wait step by itself", async () => {
    const id = `${runId}-timed`;
    const { change } = await runChange(id, step("timed"));
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.equal(findStep(change.root, `${id}.2`)?.waitSeconds, 2);
  });

  it("runs the steps nested under a wait step only once it is continued", async () => {
    const id = `${runId}-nested`;
    const { change, stdout } = await runChange(
      id,
      step("destroy"),
      {},
      whenWaiting(`${id}.2`, () => void client.continueChange({ changeId: id, stepId: `${id}.2` })),
    );
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.deepEqual(
      [findStep(change.root, `${id}.3`)?.parentId, stdout.get(`${id}.3`), stdout.get(`${id}.4`)],
      [`${id}.2`, "shutting down\n", "infra destroyed\n"],
    );
  });

  it("takes an input step's values (checked, converted) into the change's properties for the steps after it", async () => {
    const id = `${runId}-input`;
    let refused: ConnectError | undefined;
    const { change, stdout } = await runChange(
      id,
      step("restart"),
      {},
      whenWaiting(`${id}.3`, (waiting) => {
        assert.deepEqual(
          waiting.inputArguments.map((argument) => [argument.name, argument.type, argument.required]),
          [
            ["comments", "string", true],
            ["server_name", "string", true],
            ["patch_number", "integer", false],
            ["restart_after_hours", "boolean", true],
          ],
        );
        void (async () => {
          refused = await client
            .continueChange({ changeId: id, inputValues: { comments: "go", server_name: "db1", patch_number: "twelve" } })
            .then(() => undefined)
            .catch((error: unknown) => ConnectError.from(error));
          await client.continueChange({ changeId: id, inputValues: { comments: "go", server_name: "db1", patch_number: "12" } });
        })();
      }),
    );
    assert.equal(refused?.code, Code.InvalidArgument);
    assert.match(refused!.rawMessage, /^input_values\.patch_number: patch_number \(Patch number\) must be a integer, got "twelve"/);
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.equal(stdout.get(`${id}.4`), "restarting db1 patch=12 after_hours=true comments=go\n");
    assert.deepEqual(change.properties.find((set) => set.owner === "change")?.properties, {
      comments: "go",
      database: { server: { server_name: "db1" } },
      patches: { patch_number: 12 },
      restart_after_hours: { restart_after_hours: true },
    });
  });

  it("goes on past a failing step wrapped by ignore_failure_step", async () => {
    const id = `${runId}-ignore`;
    const { change, stdout } = await runChange(id, step("careless_destroy"));
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.match(change.reason, /had its failure ignored/);
    assert.deepEqual(
      [findStep(change.root, `${id}.2`)?.stepName, findStep(change.root, `${id}.2`)?.state, findStep(change.root, `${id}.3`)?.state],
      ['Run "Fragile shutdown" ignoring failures', StepState.SUCCESS, StepState.ERROR],
    );
    assert.equal(stdout.get(`${id}.4`), "infra destroyed\n");
  });

  it("cancels, and times out, a change that waits at a wait step", async () => {
    const id = `${runId}-cancel`;
    const cancelled = await runChange(
      id,
      step("do_something"),
      {},
      whenWaiting(`${id}.3`, () => void client.cancelStep({ stepId: id })),
    );
    assert.equal(cancelled.change.state, StepState.CANCELLED);
    assert.equal(findStep(cancelled.change.root, `${id}.3`)?.state, StepState.CANCELLED);
    assert.equal(findStep(cancelled.change.root, `${id}.4`)?.state, StepState.UNSPECIFIED);
    const late = await runChange(`${runId}-late`, step("do_something"), { timeout: { seconds: 20n } });
    assert.equal(late.change.state, StepState.TIMED_OUT);
    assert.equal(findStep(late.change.root, `${runId}-late.3`)?.state, StepState.TIMED_OUT);
  });

  it("keeps a finished change: GetChange returns its tree, the same request again streams it, another is refused", async () => {
    const id = `${runId}-kept`;
    const first = await runChange(id, step("greet_by_name"));
    assert.equal(first.change.state, StepState.SUCCESS, first.change.reason);
    assert.equal(first.stdout.get(`${id}.2`), "hello from Hello world action\n", "a child named with spaces runs as one action");
    const again = await runChange(id, step("greet_by_name"));
    assert.deepEqual(
      again.events.map((event) => event.event.case),
      ["accepted", "finished"],
    );
    assert.deepEqual(again.change, first.change);
    assert.deepEqual((await client.getChange({ changeId: id })).change, first.change);
    const other = await runChange(id, step("deploy")).catch((error: unknown) => ConnectError.from(error));
    assert.equal((other as ConnectError).code, Code.AlreadyExists);
    assert.match((other as ConnectError).rawMessage, /has already run \(it ended success\) with a different request/);
  });

  it("runs RunStep's actions one name each, spaces kept", async () => {
    const events = [];
    for await (const response of client.runStep({ ...step(""), actions: ["Hello world action"] }, { timeoutMs: 300_000 })) events.push(response);
    const finished = events.at(-1)!.event;
    assert.equal(finished.case, "finished");
    assert.equal(finished.value.step?.state, StepState.SUCCESS, finished.value.step?.reason);
    assert.ok(events.some((event) => event.event.case === "logLine" && event.event.value.text === "hello from Hello world action"));
  });

  it("reads .opschain/properties.toml, and a dry run reports the expected step tree without running anything", async () => {
    const toml = [];
    for await (const response of client.runStep(step("show_toml"), { timeoutMs: 300_000 })) toml.push(response);
    assert.ok(
      toml.some((event) => event.event.case === "logLine" && event.event.value.text === "toml: toml-server port=8080 tags=web,blue"),
      JSON.stringify(toml.filter((event) => event.event.case === "logLine").map((event) => (event.event.value as { text: string }).text)),
    );
    const id = `${runId}-dry`;
    const { change, stdout } = await runChange(id, step("destroy", { dryRun: true }));
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.equal(stdout.get(`${id}.1`), "opschain-action: dry run (OPSCHAIN_DRY_RUN=true): destroy not run; step_result.json has the expected_step_tree\n");
    const tree = toJson(ValueSchema, (await client.getStep({ stepId: `${id}.1` })).step!.result!.expectedStepTree!) as JsonObject;
    assert.deepEqual(tree, {
      action: "destroy",
      prerequisites: [],
      child_execution_strategy: "sequential",
      children: [
        {
          action: "opschain_wait_step_3",
          type: "wait",
          step_name: "Confirm destroy",
          child_execution_strategy: "sequential",
          children: [{ action: "Shutdown", prerequisites: [], child_execution_strategy: "sequential", children: [] }],
        },
        { action: "infra_destroy", prerequisites: [], child_execution_strategy: "sequential", children: [] },
      ],
    });
  });

  it("steprunner: run --children shows the wait, continue continues it, change shows the tree; --action-name", async () => {
    const cli = (args: string[]) => run("node", [CLI, ...args, "--step-addr", stack.stepAddr], { timeoutMs: 300_000 });
    const id = `${runId}-cli`;
    const running = cli(["run", "--repo", repo, "--rev", "main", "--repo-folder", ".opschain", "--action", "destroy", "--children", "--change-id", id]);
    for (let tries = 0; ; tries++) {
      const shown = await cli(["change", id]);
      if (/Confirm destroy \[wait\]: waiting/.test(shown.stdout)) break;
      assert.ok(tries < 600, `the change never waited: ${shown.stdout}${shown.stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    const continued = await cli(["continue", id]);
    assert.equal(continued.code, 0, continued.stderr);
    const done = await running;
    assert.equal(done.code, 0, done.stderr);
    assert.match(
      done.stderr,
      new RegExp(
        `\\[${id}\\.2\\] Confirm destroy \\[wait\\]: waiting to be continued \\(ContinueChange\\); continue it with: steprunner continue ${id} ${id}\\.2`,
      ),
    );
    assert.match(done.stderr, new RegExp(`^ {2}${id}\\.2 Confirm destroy \\[wait\\]: success`, "m"));
    const shown = await cli(["change", id]);
    assert.match(shown.stdout, new RegExp(`^change ${id}: success \\(every step succeeded\\)$`, "m"));
    const named = await cli(["run", "--repo", repo, "--rev", "main", "--repo-folder", ".opschain", "--action-name", "Hello world action"]);
    assert.equal(named.code, 0, named.stderr);
    assert.match(named.stdout, /^hello from Hello world action$/m);
    const bad = await cli(["continue", `${runId}-nope`]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /no change with id/);
  });
});
