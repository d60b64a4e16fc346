import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { type MessageInitShape, toJson } from "@bufbuild/protobuf";
import { ListValueSchema } from "@bufbuild/protobuf/wkt";
import { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { LogStream } from "../../gen/steprunner/image/v1/image_service_pb.js";
import { type RunStepRequestSchema, type Step, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";
import { stack } from "../support/stack.js";

/**
 * Repositories written (our own code) from the examples of OpsChain's public docs — the actions, properties,
 * context and step runner guides and the downloadable Dockerfile — run unchanged through the running services
 * (context, image build with BuildKit, runc) on the base runner image that deploy/local/runner-image.sh built.
 */

type Request = MessageInitShape<typeof RunStepRequestSchema>;

interface Outcome {
  step: Step;
  stdout: string;
  stderr: string;
  build: string;
}

const GEMFILE = "source 'https://rubygems.org'\n\ngem 'opschain-core', require: 'opschain'\n";

const ACTIONS_GUIDE = `require 'opschain'

action :hello_world, description: 'Log a greeting' do
  log.info 'hello world!'
end

action go_to_work: ['wake_up', 'get_dressed'] do
  log.info 'at work'
end

action :wake_up do
  puts 'awake'
end

action :get_dressed do
  puts 'dressed'
end

action :always_fails, ignore_failure: true do
  raise 'This action will always fail'
end

action :conditional do
  OpsChain.run_action(:get_dressed) unless OpsChain.properties.dressed_already
  puts 'conditional done'
end

action :do_something, steps: ['do_something_after', 'do_something_else_after'], run_as: :parallel do
  puts 'before the children'
end

action :conditional_strategy, steps: ['do_something_after', 'do_something_else_after'], run_as: :parallel do
  OpsChain.append_child_steps('do_the_final_thing') if OpsChain.child_steps.include?('do_something_after')
  OpsChain.child_execution_strategy = :sequential
end

action :do_something_after do end
action :do_something_else_after do end
action :do_the_final_thing do end
`;

const PROPERTIES_GUIDE = `require 'opschain'

action :show_properties do
  puts OpsChain.properties.server.setting
  puts OpsChain.properties[:server][:setting]
  puts OpsChain.properties['server']['region']
  puts "repository says #{OpsChain.repository_properties.server.setting}"
  puts "env says #{ENV.fetch('DEPLOY_TARGET')}"
  puts File.read('/opt/opschain/config/app.conf')
  OpsChain.properties_for(:project).server_name = 'server1.example.com'
  OpsChain.properties_for(:project).parent = { child: { grandchild: 'value' } }
  OpsChain.properties_for(:environment).server.delete(:obsolete)
  File.write('/opt/opschain/known_hosts', "example.com ssh-ed25519 AAAA\\n")
  OpsChain.store_file!(:environment, '/opt/opschain/known_hosts')
end

action :leak do
  OpsChain.properties['server']['setting'] = 'sneaky'
end
`;

const CONTEXT_GUIDE = `require 'opschain'

action :report_target do
  log.info "Deploying to #{OpsChain.context.parents.environment.name} in #{OpsChain.context.parents.project.name}"
  log.info "change #{OpsChain.context.change.id} runs #{OpsChain.context[:change][:action]} for #{OpsChain.context['user']['name']}"
  log.info "step action #{OpsChain.context.step.action}"
end
`;

const RESOURCES_GUIDE = `require 'opschain'

class CityController
  def initialize(options)
    @options = options
  end

  def report_weather
    puts "The weather in #{@options[:name]} looks #{@options[:weather]}"
  end
end

resource_type :city do
  controller CityController, available_actions: [:report_weather]
  property :name
  property :weather

  action :send_postcard do
    puts "Sending postcard from #{name}"
  end
end

namespace :earth do
  namespace :australia do
    city :perth do
      name 'Perth'
      weather 'sunny'
    end
  end
  namespace :scotland do
    city :perth do
      name 'Perth'
      weather lazy { 'gloomy' }
    end
  end
end
`;

// The docs' downloadable Dockerfile, with what the BuildKit in dockerd 20.10 lacks left out (the "# syntax"
// line, COPY --link and --exclude) and no trust store stage (the build context has no opschain-trust-store.tar).
const DOCS_DOCKERFILE = `ARG OPSCHAIN_BASE_RUNNER

FROM scratch as repo
ADD ./repo.tar .

FROM \${OPSCHAIN_BASE_RUNNER}
USER opschain

COPY --chown=10001:10001 --from=repo / /opt/opschain/

ARG GIT_REV

ARG GIT_SHA
RUN opschain_configure_project_repo.sh "$GIT_SHA"

RUN --mount=type=secret,required=true,id=env_context_zip,uid=10001,gid=10001,target=/opt/opschain/.opschain/step_context.json.zip \\
    opschain-exec sh -c 'echo "built for $DEPLOY_TARGET" > /opt/opschain/build-note.txt'

RUN --mount=type=secret,id=env_context_zip,target=/tmp/step_context.json.zip,uid=10001 \\
    opschain-exec --context /tmp/step_context.json.zip sh -c 'echo "context option gave $DEPLOY_TARGET" >> /opt/opschain/build-note.txt'

RUN --mount=type=secret,required=true,id=env_context_zip,uid=10001,gid=10001,target=/opt/opschain/.opschain/step_context.json.zip \\
    --mount=type=secret,required=false,id=mintpress_license,uid=10001,gid=10001,target=/opt/opschain/.environmint/mintpress.license \\
    bundle_and_lint.sh

RUN opschain-action -AT > /opt/opschain/actions-listing.txt
`;

/**
 * No Gemfile: the runner starts Ruby without RubyGems (deploy/runner/lib/opschain/boot.rb) and loads it only when
 * the action needs it: a gem the load path lacks (rexml, one of Ruby's bundled gems), the constant Gem, Kernel#gem.
 */
const GEMS_WITHOUT_GEMFILE = `action :gems do
  puts "rubygems at the start: #{Object.autoload?(:Gem) ? 'deferred' : 'loaded'}"
  require 'rexml/document'
  puts "rexml: #{REXML::Document.new('<a>read</a>').root.text}"
  puts "after rexml: #{Object.autoload?(:Gem) ? 'deferred' : 'loaded'}, Gem::Version #{Gem::Version.new('1.10') > Gem::Version.new('1.9')}"
  gem 'minitest'
  require 'minitest'
  puts "minitest #{Minitest::VERSION.split('.').first}"
  begin
    require 'no_such_feature_anywhere'
  rescue LoadError => e
    puts "missing: #{e.message}"
  end
end
`;

describe("OpsChain projects from the public docs run unchanged on the base runner", () => {
  let work: string;
  const steps = serviceTransport(stack.stepAddr, {});
  const repos: Record<string, string> = {};

  async function repository(name: string, files: Record<string, string>): Promise<string> {
    const dir = join(work, name);
    await mkdir(dir, { recursive: true });
    await gitIn(dir, ["init", "-q", "-b", "main"]);
    await commitFiles(dir, files, `${name} from the docs`, "2026-01-01T00:00:00Z");
    return dir;
  }

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "opschain-docs-test-"));
    repos.actions = await repository("actions", { "actions.rb": ACTIONS_GUIDE, Gemfile: GEMFILE });
    repos.properties = await repository("properties", {
      "actions.rb": PROPERTIES_GUIDE,
      ".opschain/properties.json": JSON.stringify({ server: { setting: "from the repository", region: "repo-region" } }),
    });
    repos.context = await repository("context", { "actions.rb": CONTEXT_GUIDE });
    repos.resources = await repository("resources", { "actions.rb": RESOURCES_GUIDE });
    repos.gems = await repository("gems", { "actions.rb": GEMS_WITHOUT_GEMFILE });
    repos.missingGem = await repository("missing-gem", {
      "actions.rb": "action(:hello) { puts 'hello' }\n",
      Gemfile: `${GEMFILE}gem 'no-such-gem-in-the-image'\n`,
    });
    repos.dockerfile = await repository("docs-dockerfile", {
      "actions.rb": ACTIONS_GUIDE.replace(
        "action :hello_world,",
        "action :show_build do\n  puts File.read('/opt/opschain/build-note.txt'), File.read('/opt/opschain/actions-listing.txt')\nend\n\naction :hello_world,",
      ),
      Gemfile: GEMFILE,
      ".opschain/Dockerfile": DOCS_DOCKERFILE,
    });
  });

  after(async () => {
    steps.close();
    await rm(work, { recursive: true, force: true });
  });

  async function runStep(repo: string, action: string, extra: Request = {}): Promise<Outcome> {
    const request: Request = { repositoryUrl: repo, gitRev: "main", action, repoFolder: ".opschain", ...extra };
    let step: Step | undefined;
    const lines: Record<"stdout" | "stderr" | "build", string[]> = { stdout: [], stderr: [], build: [] };
    for await (const response of createClient(StepService, steps.transport).runStep(request, { timeoutMs: 300_000 })) {
      if (response.event.case === "logLine") {
        const stream = response.event.value.stream === LogStream.STDERR ? "stderr" : response.event.value.stream === LogStream.STDOUT ? "stdout" : "build";
        lines[stream].push(response.event.value.text);
      } else if (response.event.case === "finished") {
        step = response.event.value.step;
      }
    }
    assert.ok(step, "the stream ended with the finished event");
    return { step, stdout: lines.stdout.join("\n"), stderr: lines.stderr.join("\n"), build: lines.build.join("\n") };
  }

  const diffsOf = (outcome: Outcome, owner: string) => {
    const diff = outcome.step.result?.propertiesDiffs.find((entry) => entry.owner === owner);
    return diff ? toJson(ListValueSchema, diff.operations!) : [];
  };

  it("actions guide: require 'opschain', a Gemfile naming opschain-core, log and prerequisites in one step", async () => {
    const outcome = await runStep(repos.actions!, "go_to_work");
    assert.equal(outcome.step.state, StepState.SUCCESS, `${outcome.step.reason}\n${outcome.stderr}`);
    assert.match(outcome.stdout, /awake\ndressed\nat work/);
    const hello = await runStep(repos.actions!, "hello_world");
    assert.equal(hello.step.state, StepState.SUCCESS, hello.stderr);
    assert.match(hello.stdout, /^hello world!$/m);
  });

  it("actions guide: ignore_failure, run_action", async () => {
    const ignored = await runStep(repos.actions!, "always_fails");
    assert.equal(ignored.step.state, StepState.SUCCESS, ignored.stderr);
    assert.match(ignored.stdout, /This action will always fail/);
    const conditional = await runStep(repos.actions!, "conditional", { properties: [{ owner: "project", properties: { dressed_already: false } }] });
    assert.equal(conditional.step.state, StepState.SUCCESS, conditional.stderr);
    assert.match(conditional.stdout, /dressed\nconditional done/);
  });

  it("actions guide: steps: with run_as: :parallel, and dynamic child steps with their strategy changed", async () => {
    const parallel = await runStep(repos.actions!, "do_something");
    assert.equal(parallel.step.state, StepState.SUCCESS, parallel.stderr);
    const definitions = parallel.step.result!.childStepDefinitions!;
    assert.deepEqual(
      definitions.children.map((child) => child.action),
      ["do_something_after", "do_something_else_after"],
    );
    assert.equal(definitions.childExecutionStrategy, ChildExecutionStrategy.PARALLEL);
    const changed = await runStep(repos.actions!, "conditional_strategy");
    assert.equal(changed.step.state, StepState.SUCCESS, changed.stderr);
    const dynamic = changed.step.result!.childStepDefinitions!;
    assert.deepEqual(
      dynamic.children.map((child) => child.action),
      ["do_something_after", "do_something_else_after", "do_the_final_thing"],
    );
    assert.equal(dynamic.childExecutionStrategy, ChildExecutionStrategy.SEQUENTIAL);
  });

  it("properties guide: dot/symbol/string access, repository, env var and file properties, writes as diffs", async () => {
    const outcome = await runStep(repos.properties!, "show_properties", {
      properties: [
        { owner: "project", properties: { server: { setting: "from the project" }, opschain: { env: { DEPLOY_TARGET: "blue" } } } },
        {
          owner: "environment",
          properties: {
            server: { region: "env-region", obsolete: true },
            opschain: { files: { "/opt/opschain/config/app.conf": { content: "listen 8080", mode: "0600" } } },
          },
        },
      ],
    });
    assert.equal(outcome.step.state, StepState.SUCCESS, `${outcome.step.reason}\n${outcome.stderr}`);
    assert.match(outcome.stdout, /^from the project\nfrom the project\nenv-region\nrepository says from the repository\nenv says blue\nlisten 8080$/m);
    assert.deepEqual(diffsOf(outcome, "project"), [
      { op: "add", path: "/server_name", value: "server1.example.com" },
      { op: "add", path: "/parent", value: { child: { grandchild: "value" } } },
    ]);
    // The step context's objects have their keys sorted, so opschain comes before server.
    assert.deepEqual(diffsOf(outcome, "environment"), [
      { op: "add", path: "/opschain/files/~1opt~1opschain~1known_hosts", value: { content: "example.com ssh-ed25519 AAAA\n" } },
      { op: "remove", path: "/server/obsolete" },
    ]);
  });

  it("properties guide: a nested write through the merged view fails the step and changes nothing", async () => {
    const outcome = await runStep(repos.properties!, "leak", { properties: [{ owner: "project", properties: { server: { setting: "kept" } } }] });
    assert.equal(outcome.step.state, StepState.ERROR);
    assert.match(outcome.stderr, /OpsChain\.properties is read only/);
    assert.deepEqual(diffsOf(outcome, "project"), []);
  });

  it("context guide: dot access to change, step, user and parents filled from the request", async () => {
    const outcome = await runStep(repos.context!, "report_target", {
      contextValues: {
        change: { id: "change-7", action: "report_target", projectName: "Finance", projectCode: "fin", environmentName: "Receivables", environmentCode: "rcv" },
        user: { name: "mary" },
      },
    });
    assert.equal(outcome.step.state, StepState.SUCCESS, `${outcome.step.reason}\n${outcome.stderr}`);
    assert.match(outcome.stdout, /^Deploying to Receivables in Finance$/m);
    assert.match(outcome.stdout, /^change change-7 runs report_target for mary$/m);
    assert.match(outcome.stdout, /^step action report_target$/m);
  });

  it("actions guide: resource types, a controller, namespaces and lazy properties", async () => {
    const perth = await runStep(repos.resources!, "earth:scotland:perth:report_weather");
    assert.equal(perth.step.state, StepState.SUCCESS, `${perth.step.reason}\n${perth.stderr}`);
    assert.match(perth.stdout, /^The weather in Perth looks gloomy$/m);
    const postcard = await runStep(repos.resources!, "earth:australia:perth:send_postcard");
    assert.equal(postcard.step.state, StepState.SUCCESS, postcard.stderr);
    assert.match(postcard.stdout, /^Sending postcard from Perth$/m);
  });

  it("without a Gemfile, RubyGems is loaded only when the action needs a gem, and then works as always", async () => {
    const outcome = await runStep(repos.gems!, "gems");
    assert.equal(outcome.step.state, StepState.SUCCESS, `${outcome.step.reason}\n${outcome.stderr}`);
    assert.equal(
      outcome.stdout,
      [
        "rubygems at the start: deferred",
        "rexml: read",
        "after rexml: loaded, Gem::Version true",
        "minitest 5",
        "missing: cannot load such file -- no_such_feature_anywhere",
      ].join("\n"),
    );
  });

  it("a Gemfile asking for a gem the image lacks fails naming it (no network at run time)", async () => {
    const outcome = await runStep(repos.missingGem!, "hello");
    assert.equal(outcome.step.state, StepState.ERROR);
    assert.match(outcome.stderr, /asks for gems this runner image does not have: no-such-gem-in-the-image \(>= 0\)/);
    assert.doesNotMatch(outcome.stdout, /hello/);
  });

  it("the docs' Dockerfile: configure script, opschain-exec reading the zip secret, bundle_and_lint.sh, -AT", async () => {
    const outcome = await runStep(repos.dockerfile!, "show_build", {
      properties: [{ owner: "project", properties: { opschain: { env: { DEPLOY_TARGET: "green" } } } }],
    });
    assert.equal(outcome.step.state, StepState.SUCCESS, `${outcome.step.reason}\n${outcome.stderr}\n${outcome.build.slice(-4000)}`);
    assert.match(outcome.stdout, /^built for green\ncontext option gave green$/m);
    assert.match(outcome.stdout, /^opschain-action go_to_work +#/m);
    assert.match(outcome.stdout, /^opschain-action hello_world +# Log a greeting$/m);
  });
});
