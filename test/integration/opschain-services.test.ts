import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { type JsonObject, type MessageInitShape, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import {
  type Change,
  type ChangeStep,
  type RunChangeResponse,
  type RunStepRequestSchema,
  type Step,
  StepService,
  StepState,
} from "../../gen/steprunner/step/v1/step_service_pb.js";
import { defaultDockerfile } from "../../services/context-service/core/default-dockerfile.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";
import { CLI, run, stack } from "../support/stack.js";

/**
 * Issue #14's services side through the running services: the .opschain repo folder, several actions and
 * listings in one step, the step context's keys, a change's child steps (RunChange and `run --children`), dry
 * runs, and "# syntax=" lines. The actions are mostly plain Rake tasks using the runner's step API
 * (OpsChain.properties_for, OpsChain.child_steps, OpsChain.context as a Hash).
 */
const ACTIONS = `
desc 'Says where it runs'
task(:where) do
  folder = ENV['OPSCHAIN_REPO_FOLDER']
  puts "folder=#{folder} context=#{File.exist?("/opt/opschain/#{folder}/step_context.json")} custom=#{File.exist?('/opt/opschain-custom-image')}"
end
desc 'First of two'
task(:first) { puts 'ran first' }
task(:second) { puts 'ran second' }
task(:context) do
  c = OpsChain.context
  puts "change.action=#{c['change']['action']} step.action=#{c['step']['action']} step.id=#{c['step']['id']}"
  puts "change.id=#{c['change']['id']} parent=#{c['step']['parent_step_id']} parents=#{c['parents'].to_a.map { |k, v| "#{k}:#{v['code']}" }.join(',')} user=#{c['user']['name']}"
end
task(:parent) do
  OpsChain.properties_for(:project)['count'] = 1
  OpsChain.child_steps('child_a', 'child_b', strategy: :sequential)
end
task(:child_a) do
  OpsChain.properties_for(:project)['count'] += 1
  OpsChain.properties_for(:environment)['from_a'] = 'a'
  OpsChain.child_steps('grandchild')
end
task(:grandchild) { puts "grandchild sees count=#{OpsChain.properties['count']}" }
task(:child_b) { puts "child_b sees count=#{OpsChain.properties['count']} from_a=#{OpsChain.properties['from_a']}" }
task(:fan) { OpsChain.child_steps('left', 'right', strategy: :parallel) }
task(:left) { OpsChain.properties_for(:project)['server'] = 'left' }
task(:right) { OpsChain.properties_for(:project)['server'] = 'right' }
task(:fan_ok) { OpsChain.child_steps('left', 'other', strategy: :parallel) }
task(:other) { OpsChain.properties_for(:environment)['other'] = true }
task(:slow_parent) { OpsChain.child_steps('slow') }
task(:slow) { puts 'slow start'; $stdout.flush; sleep 120 }
action :dry, steps: ['first']
`;

type StepRequest = MessageInitShape<typeof RunStepRequestSchema>;

function findStep(step: ChangeStep | undefined, action: string): ChangeStep | undefined {
  if (!step) return undefined;
  if (step.action === action) return step;
  for (const child of step.children) {
    const found = findStep(child, action);
    if (found) return found;
  }
  return undefined;
}

describe("OpsChain projects' services side (#14) through the running services", () => {
  let work: string;
  let opschainRepo: string;
  let syntaxRepo: string;
  let trustRepo: string;
  const transport = serviceTransport(stack.stepAddr, {});
  const client = createClient(StepService, transport.transport);
  const properties: Array<{ owner: string; properties: JsonObject }> = [
    { owner: "project", properties: { keep: true } },
    { owner: "environment", properties: {} },
  ];

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "opschain-services-test-"));
    // A repository written for OpsChain: its custom Dockerfile in .opschain/, no .mintpress/.
    opschainRepo = join(work, "opschain-repo");
    await mkdir(opschainRepo);
    await gitIn(opschainRepo, ["init", "-q", "-b", "main"]);
    const custom = defaultDockerfile("test").replace("ARG GIT_REV", "USER root\nRUN touch /opt/opschain-custom-image\nUSER opschain\nARG GIT_REV");
    await commitFiles(opschainRepo, { "actions.rb": ACTIONS, ".opschain/Dockerfile": custom }, "an OpsChain project", "2026-01-01T00:00:00Z");
    // Dockerfiles with a syntax line naming a frontend on Docker Hub, one per branch.
    syntaxRepo = join(work, "syntax-repo");
    await mkdir(syntaxRepo);
    await gitIn(syntaxRepo, ["init", "-q", "-b", "main"]);
    await commitFiles(
      syntaxRepo,
      { "actions.rb": ACTIONS, ".mintpress/Dockerfile": `# syntax=docker/dockerfile:1.4\n${defaultDockerfile("test")}` },
      "syntax line",
      "2026-01-01T00:00:00Z",
    );
    // OpsChain's sample Dockerfile as it works on BuildKit v0.8: no syntax line, --link or --exclude, nor the
    // runner scripts it calls; its trust store stage, repository stage and secret mounts as they are.
    trustRepo = join(work, "trust-repo");
    await mkdir(trustRepo);
    await gitIn(trustRepo, ["init", "-q", "-b", "main"]);
    const sample = [
      "ARG OPSCHAIN_BASE_RUNNER",
      "FROM scratch as repo",
      "ADD ./repo.tar .",
      "FROM scratch as trust_store",
      "ADD ./opschain-trust-store.tar .",
      "FROM ${OPSCHAIN_BASE_RUNNER}",
      "USER opschain",
      "COPY --chown=10001:10001 --from=trust_store / /opt/opschain-trust/",
      "COPY --chown=10001:10001 --from=repo / /opt/opschain/",
      "ARG GIT_REV",
      "ARG GIT_SHA",
      "RUN --mount=type=secret,required=true,id=env_context_zip,uid=10001,gid=10001,target=/opt/opschain/.opschain/step_context.json.zip \\",
      "    --mount=type=secret,required=false,id=mintpress_license,uid=10001,gid=10001,target=/opt/opschain/.environmint/mintpress.license \\",
      "    test -s /opt/opschain/.opschain/step_context.json.zip && test ! -e /opt/opschain/.environmint/mintpress.license",
      "",
    ].join("\n");
    await commitFiles(trustRepo, { "actions.rb": ACTIONS, ".mintpress/Dockerfile": sample }, "the sample Dockerfile", "2026-01-01T00:00:00Z");
    await gitIn(syntaxRepo, ["checkout", "-q", "-b", "link"]);
    await commitFiles(
      syntaxRepo,
      {
        ".mintpress/Dockerfile": `# syntax=docker/dockerfile:1.4\n${defaultDockerfile("test").replace("COPY --chown=10001:10001 base/", "COPY --link --chown=10001:10001 base/")}`,
      },
      "COPY --link",
      "2026-01-02T00:00:00Z",
    );
  });
  after(async () => {
    transport.close();
    await rm(work, { recursive: true, force: true });
  });

  async function runStep(request: StepRequest): Promise<{ step: Step; stdout: string; warnings: string[] }> {
    let step: Step | undefined;
    const stdout: string[] = [];
    const warnings: string[] = [];
    for await (const response of client.runStep({ repositoryUrl: opschainRepo, properties, ...request }, { timeoutMs: 300_000 })) {
      const event = response.event;
      if (event.case === "finished") step = event.value.step;
      if (event.case === "warning") warnings.push(event.value);
      if (event.case === "logLine" && event.value.stream === LogStream.STDOUT) stdout.push(event.value.text);
    }
    assert.ok(step);
    return { step, stdout: stdout.join("\n"), warnings };
  }

  async function runChange(
    request: StepRequest,
    extra: object = {},
    onEvent?: (event: RunChangeResponse) => void,
  ): Promise<{ change: Change; stdout: Map<string, string[]> }> {
    const stdout = new Map<string, string[]>();
    let change: Change | undefined;
    for await (const response of client.runChange({ step: { repositoryUrl: opschainRepo, properties, ...request }, ...extra }, { timeoutMs: 600_000 })) {
      onEvent?.(response);
      const event = response.event;
      if (event.case === "finished") change = event.value.change;
      if (event.case === "stepEvent" && event.value.event?.event.case === "logLine" && event.value.event.event.value.stream === LogStream.STDOUT) {
        stdout.set(event.value.stepId, [...(stdout.get(event.value.stepId) ?? []), event.value.event.event.value.text]);
      }
    }
    assert.ok(change);
    return { change, stdout };
  }

  it("uses .opschain/ when the configured .mintpress/ is absent: its Dockerfile, and the context mounted under it, with a warning", async () => {
    const { step, stdout, warnings } = await runStep({ action: "where" });
    assert.equal(step.state, StepState.SUCCESS, step.reason);
    assert.match(stdout, /^folder=\.opschain context=true custom=true$/m);
    assert.ok(
      warnings.some((warning) =>
        /the repo folder \.mintpress \(OPSCHAIN_REPO_FOLDER\) is not in commit [0-9a-f]{12}, but \.opschain is: \.opschain is used instead/.test(warning),
      ),
      warnings.join("\n"),
    );
    const named = await runStep({ action: "where", repoFolder: ".opschain" });
    assert.match(named.stdout, /^folder=\.opschain context=true custom=true$/m);
    assert.deepEqual(
      named.warnings.filter((warning) => /repo folder/.test(warning)),
      [],
      "no warning when the folder is named",
    );
  });

  it("runs several actions in one step, and lists them with -T and -AT", async () => {
    const both = await runStep({ action: "first second" });
    assert.equal(both.step.state, StepState.SUCCESS, both.step.reason);
    assert.match(both.stdout, /ran first\nran second/);
    assert.equal(both.step.action, "first second");
    const described = await runStep({ action: "-T" });
    assert.equal(described.step.state, StepState.SUCCESS, described.step.reason);
    assert.match(described.stdout, /opschain-action first\s+# First of two/);
    assert.doesNotMatch(described.stdout, /opschain-action second/);
    const all = await runStep({ action: "-AT" });
    assert.match(all.stdout, /opschain-action second/);
  });

  it("refuses an action that is another option to Rake, naming it", async () => {
    const refused = await runStep({ action: "first --require=/tmp/x" }).catch((error: unknown) => ConnectError.from(error));
    assert.ok(refused instanceof ConnectError);
    assert.equal(refused.code, Code.InvalidArgument);
    assert.match(refused.rawMessage, /^action: must be what opschain-action accepts.*the option "--require=\/tmp\/x" is refused/);
  });

  it("fills the step context's documented keys from the request: change and step action, step id, parents", async () => {
    const { step, stdout } = await runStep({
      action: "context",
      contextValues: { change: { projectCode: "fin", environmentCode: "dev" }, user: { name: "mary" } },
    });
    assert.equal(step.state, StepState.SUCCESS, step.reason);
    assert.match(stdout, new RegExp(`^change.action=context step.action=context step.id=${step.id}$`, "m"));
    assert.match(stdout, /parents=(project:fin,environment:dev|environment:dev,project:fin) user=mary$/m);
  });

  it("RunChange runs the declared child steps in fresh containers, in order, each seeing its predecessors' property changes", async () => {
    const { change, stdout } = await runChange({ action: "parent" }, { changeId: `tree-${process.pid}` });
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    const id = `tree-${process.pid}`;
    assert.deepEqual(
      [change.root!, ...change.root!.children, ...change.root!.children.flatMap((child) => child.children)].map((step) => [step.id, step.action, step.state]),
      [
        [`${id}.1`, "parent", StepState.SUCCESS],
        [`${id}.2`, "child_a", StepState.SUCCESS],
        [`${id}.3`, "child_b", StepState.SUCCESS],
        [`${id}.4`, "grandchild", StepState.SUCCESS],
      ],
    );
    assert.equal(change.root!.childExecutionStrategy, ChildExecutionStrategy.SEQUENTIAL);
    assert.deepEqual(stdout.get(`${id}.4`), ["grandchild sees count=2"]);
    assert.deepEqual(stdout.get(`${id}.3`), ["child_b sees count=2 from_a=a"]);
    assert.deepEqual(
      change.properties.map((set) => [set.owner, set.properties]),
      [
        ["project", { keep: true, count: 2 }],
        ["environment", { from_a: "a" }],
      ],
    );
    // Each step is a step of its own, with its durable record.
    assert.equal((await client.getStep({ stepId: `${id}.4` })).step?.state, StepState.SUCCESS);
  });

  it("fails a change whose parallel children change the same property, and applies non-conflicting ones", async () => {
    const conflicting = await runChange({ action: "fan" });
    assert.equal(conflicting.change.state, StepState.ERROR);
    assert.match(conflicting.change.reason, /\(right\) changed project property \/server, which parallel step .* \(left\) also changed \(\/server\)/);
    assert.equal(findStep(conflicting.change.root, "right")?.state, StepState.ERROR);
    const fine = await runChange({ action: "fan_ok" });
    assert.equal(fine.change.state, StepState.SUCCESS, fine.change.reason);
    assert.deepEqual(
      fine.change.properties.map((set) => set.properties),
      [{ keep: true, server: "left" }, { other: true }],
    );
    assert.equal(fine.change.root?.childExecutionStrategy, ChildExecutionStrategy.PARALLEL);
  });

  it("cancels the whole change with CancelStep on the change's id", async () => {
    const changeId = `cancel-${process.pid}`;
    let cancelled = false;
    const { change } = await runChange({ action: "slow_parent" }, { changeId }, (event) => {
      if (
        !cancelled &&
        event.event.case === "stepEvent" &&
        event.event.value.event?.event.case === "logLine" &&
        event.event.value.event.event.value.text === "slow start"
      ) {
        cancelled = true;
        void client.cancelStep({ stepId: changeId });
      }
    });
    assert.equal(change.state, StepState.CANCELLED);
    assert.equal(findStep(change.root, "slow")?.state, StepState.CANCELLED);
  });

  it("runs a dry run's first step only, with OPSCHAIN_DRY_RUN, and returns its expected_step_tree", async () => {
    const { change } = await runChange({ action: "dry", dryRun: true });
    assert.equal(change.state, StepState.SUCCESS, change.reason);
    assert.equal(change.root?.children.length, 0);
    const step = (await client.getStep({ stepId: change.root!.id })).step!;
    assert.deepEqual(toJson(ValueSchema, step.result!.expectedStepTree!), {
      action: "dry",
      prerequisites: [],
      child_execution_strategy: "sequential",
      children: [{ action: "first", description: "First of two", prerequisites: [], child_execution_strategy: "sequential", children: [] }],
    });
  });

  it("steprunner run --children runs the tree and prints it; --repo-folder and --action with several tasks work", async () => {
    const propertiesFile = join(work, "properties.json");
    await writeFile(propertiesFile, JSON.stringify({ project: { keep: true }, environment: {} }));
    const cli = (args: string[]) =>
      run("node", [CLI, "run", "--step-addr", stack.stepAddr, "--repo", opschainRepo, "--properties", propertiesFile, ...args], { timeoutMs: 300_000 });
    const tree = await cli(["--action", "parent", "--children"]);
    assert.equal(tree.code, 0, tree.stderr);
    assert.match(tree.stdout, /\] grandchild sees count=2$/m);
    assert.match(tree.stderr, /^\S+\.1 parent: success \(exit status 0\) \[children in sequence\]$/m);
    assert.match(tree.stderr, /^ {4}\S+\.4 grandchild: success/m);
    const failed = await cli(["--action", "fan", "--children"]);
    assert.equal(failed.code, 1);
    const folder = await cli(["--action", "where first", "--repo-folder", ".opschain"]);
    assert.equal(folder.code, 0, folder.stderr);
    assert.match(folder.stdout, /^folder=\.opschain context=true custom=true\nran first$/m);
  });

  it("builds OpsChain's sample Dockerfile without what BuildKit v0.8 lacks: the trust store tar, repo.tar stage and secret mounts", async () => {
    const { step, stdout } = await runStep({ repositoryUrl: trustRepo, action: "first" });
    assert.equal(step.state, StepState.SUCCESS, step.reason);
    assert.match(stdout, /^ran first$/m);
  });

  it("ignores a # syntax= line naming a frontend image that cannot be pulled, with a warning, when the builtin frontend understands the file", async () => {
    const { step, warnings } = await runStep({ repositoryUrl: syntaxRepo, gitRev: "main", action: "first" });
    assert.equal(step.state, StepState.SUCCESS, step.reason);
    assert.ok(
      warnings.some((warning) =>
        /^the Dockerfile's line 1 "# syntax=docker\/dockerfile:1\.4" names the frontend image docker\/dockerfile:1\.4, which is not in this service's registry .*; the line is ignored/.test(
          warning,
        ),
      ),
      warnings.join("\n"),
    );
  });

  it("refuses a file the builtin frontend does not understand, naming the syntax line (COPY --link on BuildKit v0.8)", async (t) => {
    const { step } = await runStep({ repositoryUrl: syntaxRepo, gitRev: "link", action: "first" });
    if (step.state === StepState.SUCCESS) {
      t.skip("this BuildKit's builtin frontend understands COPY --link (v0.24)");
      return;
    }
    assert.equal(step.state, StepState.ERROR);
    assert.match(
      step.reason,
      /the Dockerfile's line 1 "# syntax=docker\/dockerfile:1\.4" names the frontend image docker\/dockerfile:1\.4, .* and BuildKit's builtin Dockerfile frontend does not understand the file \(.*[Uu]nknown flag: link\)/,
    );
  });
});
