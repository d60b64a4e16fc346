import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, createClient } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import tar from "tar-stream";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import {
  type ChildExecutionStrategy,
  ContextFileKind,
  ContextService,
  type PrepareContextRequestSchema,
} from "../../gen/steprunner/context/v1/context_service_pb.js";
import { type BuildImageRequestSchema, type ImageHandoff, ImageService, type NetworkMode } from "../../gen/steprunner/image/v1/image_service_pb.js";
import {
  type RunChangeRequestSchema,
  type RunStepRequestSchema,
  type RunStepResponse,
  type Step,
  StepService,
  StepState,
} from "../../gen/steprunner/step/v1/step_service_pb.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { gitIn, makeFixture } from "../support/git-fixture.js";
import { BOMB_BYTES, ESCAPING_DOCKERFILES, type HostileRepository, makeHostileRepository } from "../support/hostile-repo.js";
import { stack } from "../support/stack.js";
import { failure } from "../support/rpc.js";
import { clientSecurityFromSettings } from "../../services/shared/config/common.js";

type PrepareInit = MessageInitShape<typeof PrepareContextRequestSchema>;
type RunInit = MessageInitShape<typeof RunStepRequestSchema>;

/** The services' state directories, to see that a refused request left nothing behind. */
const contextState = process.env.STEPRUNNER_CONTEXT_STATE_DIR || join(stack.stateDir, "context");
const imageState = process.env.STEPRUNNER_IMAGE_STATE_DIR || join(stack.stateDir, "image");
const stepState = process.env.STEPRUNNER_STEP_STATE_DIR || join(stack.stateDir, "step");
const MiB = 1024 * 1024;

async function drain(stream: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of stream) void _;
}

/**
 * Every bad input the services must refuse or survive, through their public gRPC API (the running services:
 * addresses from test/support/stack.ts): each refusal has the right code, a message that says what to fix
 * and changes nothing; each misbehaving step ends in the right state with an actionable reason.
 */
describe("bad inputs through the public gRPC API", () => {
  const transports = [stack.contextAddr, stack.imageAddr, stack.stepAddr].map((address) => serviceTransport(address, clientSecurityFromSettings()));
  const contexts = createClient(ContextService, transports[0]!.transport);
  const images = createClient(ImageService, transports[1]!.transport);
  const steps = createClient(StepService, transports[2]!.transport);
  const healths = transports.map((transport) => createClient(Health, transport.transport));
  let work: string;
  let plain: string;
  let hostile: HostileRepository;
  let plainContext: string;

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "bad-inputs-"));
    plain = (await makeFixture(join(work, "plain"))).path;
    await gitIn(plain, ["branch", "release", "v1"]);
    await gitIn(plain, ["tag", "release", "main"]);
    hostile = await makeHostileRepository(join(work, "hostile"));
    plainContext = (await contexts.prepareContext({ repositoryUrl: plain, gitRev: "v1" })).context!.contextId;
  });
  after(async () => {
    transports.forEach((transport) => transport.close());
    await rm(work, { recursive: true, force: true });
  });

  /** What a refused request must not change: prepared contexts, the image-service's context copies, step records. */
  async function snapshot() {
    const newest = await steps.listSteps({ pageSize: 1 });
    return {
      contexts: (await readdir(join(contextState, "contexts")).catch(() => [])).sort(),
      cacheTmp: await readdir(join(contextState, "cache", "tmp")).catch(() => []),
      imageContexts: (await readdir(join(imageState, "contexts")).catch(() => [])).sort(),
      newestStep: newest.steps[0]?.id ?? "",
    };
  }

  async function assertHealthy() {
    for (const health of healths) assert.equal((await health.check({ service: "" }, { timeoutMs: 10_000 })).status, ServingStatus.SERVING);
  }

  describe("refused requests: the right code, a message that says what to fix, nothing changed", () => {
    const fixtureSha = `sha256:${"0".repeat(64)}`;
    const prepare = (request: () => PrepareInit) => () => contexts.prepareContext(request());
    const runStep = (request: () => RunInit) => () => drain(steps.runStep(request()));
    const runChange = (request: () => MessageInitShape<typeof RunChangeRequestSchema>) => () => drain(steps.runChange(request()));
    const buildImage = (request: MessageInitShape<typeof BuildImageRequestSchema>) => () => drain(images.buildImage(request));
    // [name, call, code, what the message must say, the field an INVALID_ARGUMENT names]
    const cases: Array<[string, () => Promise<unknown>, Code, RegExp, string?]> = [
      // Repositories and revisions.
      ["PrepareContext: no repository", prepare(() => ({ gitRev: "main" })), Code.InvalidArgument, /must be an absolute path or a file:\/\//, "repository_url"],
      [
        "PrepareContext: a relative path",
        prepare(() => ({ repositoryUrl: "some/repo", gitRev: "main" })),
        Code.InvalidArgument,
        /must be an absolute path .*, got "some\/repo"$/,
        "repository_url",
      ],
      [
        "PrepareContext: git's ext:: transport (runs a command)",
        prepare(() => ({ repositoryUrl: "ext::sh -c touch% /tmp/pwned", gitRev: "main" })),
        Code.InvalidArgument,
        /must be an absolute path/,
        "repository_url",
      ],
      [
        "PrepareContext: an oversized repository URL",
        prepare(() => ({ repositoryUrl: `/${"a".repeat(3000)}`, gitRev: "main" })),
        Code.InvalidArgument,
        /must be at most 2048 characters, got "\/a+…" \(3001 characters\)$/,
        "repository_url",
      ],
      [
        "PrepareContext: a repository that does not exist",
        prepare(() => ({ repositoryUrl: join(work, "nothing-here"), gitRev: "main" })),
        Code.NotFound,
        /^repository_url: the repository ".*nothing-here" does not exist/,
      ],
      ["PrepareContext: a directory that is not a repository", prepare(() => ({ repositoryUrl: work, gitRev: "main" })), Code.NotFound, /not found/],
      [
        "ResolveRevision: a branch that does not exist",
        () => contexts.resolveRevision({ repositoryUrl: plain, gitRev: "no-such-branch" }),
        Code.NotFound,
        /^git_rev: "no-such-branch" is not a branch, tag or commit of /,
      ],
      [
        "ResolveRevision: a SHA that is not in the repository",
        () => contexts.resolveRevision({ repositoryUrl: plain, gitRev: "0".repeat(40) }),
        Code.NotFound,
        /is not a branch, tag or commit/,
      ],
      [
        "ResolveRevision: a revision expression",
        () => contexts.resolveRevision({ repositoryUrl: plain, gitRev: "main~1" }),
        Code.InvalidArgument,
        /must be a branch, tag, short or full commit SHA, or HEAD, without .*~.*, got "main~1"$/,
        "git_rev",
      ],
      [
        "ResolveRevision: an option-like revision",
        () => contexts.resolveRevision({ repositoryUrl: plain, gitRev: "--upload-pack=touch /tmp/pwned" }),
        Code.InvalidArgument,
        /git_rev: must be a branch/,
        "git_rev",
      ],
      [
        "ResolveRevision: an empty revision",
        () => contexts.resolveRevision({ repositoryUrl: plain, gitRev: "" }),
        Code.InvalidArgument,
        /must be a branch, tag, short or full commit SHA, or HEAD, got ""$/,
        "git_rev",
      ],
      [
        "ResolveRevision: a name that is a branch and a tag",
        () => contexts.resolveRevision({ repositoryUrl: plain, gitRev: "release" }),
        Code.InvalidArgument,
        /ambiguous: both a branch and a tag; give refs\/heads\/release or refs\/tags\/release/,
        "git_rev",
      ],
      [
        "ResolveRevision: a repository URL with a newline and an option in it",
        () => contexts.resolveRevision({ repositoryUrl: `${plain}\n--upload-pack=touch /tmp/pwned`, gitRev: "main" }),
        Code.InvalidArgument,
        /without control characters/,
        "repository_url",
      ],
      // The rest of PrepareContext's fields.
      [
        "PrepareContext: a repo folder that leaves the repository",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", repoFolder: "../outside" })),
        Code.InvalidArgument,
        /without '\.\.'.*got "\.\.\/outside"$/,
        "repo_folder",
      ],
      [
        "PrepareContext: an absolute repo folder",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", repoFolder: "/etc" })),
        Code.InvalidArgument,
        /not an absolute path, got "\/etc"$/,
        "repo_folder",
      ],
      [
        "PrepareContext: an owner name that is a path",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", properties: [{ owner: "../project" }] })),
        Code.InvalidArgument,
        /must be 1-63 lower case letters/,
        "properties[0].owner",
      ],
      [
        "PrepareContext: an owner given twice",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", properties: [{ owner: "project" }, { owner: "project" }] })),
        Code.InvalidArgument,
        /must differ from the owners before it, got "project"$/,
        "properties[1].owner",
      ],
      [
        "PrepareContext: an env var property that is not a scalar",
        prepare(() => ({
          repositoryUrl: plain,
          gitRev: "main",
          properties: [{ owner: "project", properties: { opschain: { env: { A: { nested: true } } } } }],
        })),
        Code.InvalidArgument,
        /must be a string, number or boolean$/,
        "properties[0].properties.opschain.env.A",
      ],
      [
        // Control characters take 6 bytes each as JSON: a request under the message limit, properties over theirs.
        "PrepareContext: properties above their size limit",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", properties: [{ owner: "project", properties: { blob: "\u0001".repeat(MiB) } }] })),
        Code.InvalidArgument,
        /^properties: must be at most \d+ bytes of JSON in all, got "\d+ bytes"$/,
        "properties",
      ],
      [
        "PrepareContext: a secret pointer that is not a JSON pointer",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", secretPointers: ["project/x"] })),
        Code.InvalidArgument,
        /must be a JSON pointer into the properties/,
        "secret_pointers[0]",
      ],
      [
        "PrepareContext: an unknown child execution strategy",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", contextValues: { step: { childExecutionStrategy: 7 as ChildExecutionStrategy } } })),
        Code.InvalidArgument,
        /must be CHILD_EXECUTION_STRATEGY_SEQUENTIAL, CHILD_EXECUTION_STRATEGY_PARALLEL or unset, got 7$/,
        "context_values.step.child_execution_strategy",
      ],
      [
        "PrepareContext: a creation time past year 9999",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", contextValues: { change: { createdAt: { seconds: 10n ** 15n } } } })),
        Code.InvalidArgument,
        /must be a time between 0001-01-01 and 9999-12-31/,
        "context_values.change.created_at",
      ],
      [
        "PrepareContext: a request above the message size limit",
        prepare(() => ({ repositoryUrl: plain, gitRev: "main", properties: [{ owner: "project", properties: { blob: "x".repeat(5 * MiB) } }] })),
        Code.ResourceExhausted,
        /larger than configured readMaxBytes \d+/,
      ],
      // Contexts.
      [
        "GetContext: a context id that is a path",
        () => contexts.getContext({ contextId: "../../etc/passwd" }),
        Code.InvalidArgument,
        /must be "sha256:" and 64 hex digits, as PrepareContext returns it, got "\.\.\/\.\.\/etc\/passwd"$/,
        "context_id",
      ],
      [
        "GetContext: a context never prepared",
        () => contexts.getContext({ contextId: fixtureSha }),
        Code.NotFound,
        /is not known here; call PrepareContext first/,
      ],
      [
        "ReadContextFile: no file kind",
        () => drain(contexts.readContextFile({ contextId: fixtureSha })),
        Code.InvalidArgument,
        /must name a context file: one of CONTEXT_FILE_KIND_REPO_TAR, /,
        "kind",
      ],
      [
        "ReadContextFile: a negative offset",
        () => drain(contexts.readContextFile({ contextId: fixtureSha, kind: ContextFileKind.REPO_TAR, offset: -1n })),
        Code.InvalidArgument,
        /must not be negative, got -1$/,
        "offset",
      ],
      [
        "ReadContextFile: an offset past the end of the file",
        () => drain(contexts.readContextFile({ contextId: plainContext, kind: ContextFileKind.DOCKERFILE, offset: 1n << 40n })),
        Code.OutOfRange,
        /^offset: must be at most the size of Dockerfile \(\d+ bytes\), got 1099511627776$/,
      ],
      // Builds.
      [
        "BuildImage: a context id that is not one",
        buildImage({ contextId: "sha256:0" }),
        Code.InvalidArgument,
        /must be a prepared context's id/,
        "context_id",
      ],
      ["BuildImage: a context never prepared", buildImage({ contextId: fixtureSha }), Code.NotFound, /not known here/],
      [
        "BuildImage: an unknown network mode",
        buildImage({ contextId: fixtureSha, networkMode: 9 as NetworkMode }),
        Code.InvalidArgument,
        /must be NETWORK_MODE_NONE, NETWORK_MODE_HOST or unset, got 9$/,
        "network_mode",
      ],
      [
        "BuildImage: an unknown hand-off",
        buildImage({ contextId: fixtureSha, handoff: 9 as ImageHandoff }),
        Code.InvalidArgument,
        /must be IMAGE_HANDOFF_REGISTRY, IMAGE_HANDOFF_LAYER_STORE or unset, got 9$/,
        "handoff",
      ],
      [
        "BuildImage: reuse only and without cache at once",
        buildImage({ contextId: fixtureSha, reuseOnly: true, buildWithoutCache: true }),
        Code.InvalidArgument,
        /cannot be set with build_without_cache, which reuses nothing$/,
        "reuse_only",
      ],
      [
        "BuildImage: a base runner that is not an image reference",
        buildImage({ contextId: fixtureSha, baseRunner: "not an image" }),
        Code.InvalidArgument,
        /must be an image reference in the registry/,
        "base_runner",
      ],
      [
        "BuildImage: a base runner from Docker Hub",
        buildImage({ contextId: fixtureSha, baseRunner: "docker.io/library/debian:12" }),
        Code.InvalidArgument,
        /must be an image in the registry .*, got "docker\.io\/library\/debian:12"$/,
        "base_runner",
      ],
      [
        "PruneCache: a negative size to keep",
        () => images.pruneCache({ keepBytes: -1n }),
        Code.InvalidArgument,
        /must be between 0 and \d+, got -1$/,
        "keep_bytes",
      ],
      [
        "PruneCache: a duration of mixed signs",
        () => images.pruneCache({ keepDuration: { seconds: 5n, nanos: -1 } }),
        Code.InvalidArgument,
        /must be a valid duration/,
        "keep_duration",
      ],
      [
        "PruneImages: a negative age",
        () => images.pruneImages({ olderThan: { seconds: -60n } }),
        Code.InvalidArgument,
        /must not be negative, got "-60s"$/,
        "older_than",
      ],
      // Steps.
      [
        "RunStep: no action",
        runStep(() => ({ repositoryUrl: plain })),
        Code.InvalidArgument,
        /must be what opschain-action accepts: one or more Rake tasks of actions\.rb/,
        "action",
      ],
      [
        "RunStep: an action that is an option to Rake",
        runStep(() => ({ repositoryUrl: plain, action: "--require=socket" })),
        Code.InvalidArgument,
        /the option "--require=socket" is refused \(only -T and -AT are allowed/,
        "action",
      ],
      [
        "RunStep: a listing with an option that runs code",
        runStep(() => ({ repositoryUrl: plain, action: "-T -e exit!" })),
        Code.InvalidArgument,
        /the option "-e" is refused/,
        "action",
      ],
      [
        "RunStep: a task with an environment setting",
        runStep(() => ({ repositoryUrl: plain, action: "hello RUBYOPT=-rsocket" })),
        Code.InvalidArgument,
        /"RUBYOPT=-rsocket" is not a task name/,
        "action",
      ],
      [
        "RunChange: an action that is an option to Rake",
        runChange(() => ({ step: { repositoryUrl: plain, action: "hello --rakefile=/etc/passwd" } })),
        Code.InvalidArgument,
        /^step\.action: .*the option "--rakefile=\/etc\/passwd" is refused/,
        "step.action",
      ],
      [
        "RunStep: a step id with a path in it",
        runStep(() => ({ repositoryUrl: plain, action: "hello", stepId: "../../x" })),
        Code.InvalidArgument,
        /must be 1-64 characters of \[A-Za-z0-9_\.-\]/,
        "step_id",
      ],
      [
        "RunStep: a repository URL git would run a command for",
        runStep(() => ({ repositoryUrl: "ext::sh -c id", action: "hello" })),
        Code.InvalidArgument,
        /must be an absolute path/,
        "repository_url",
      ],
      [
        "RunStep: a revision expression",
        runStep(() => ({ repositoryUrl: plain, action: "hello", gitRev: "HEAD@{1}" })),
        Code.InvalidArgument,
        /without '@\{'/,
        "git_rev",
      ],
      [
        "RunStep: a repo folder that is a path",
        runStep(() => ({ repositoryUrl: plain, action: "hello", repoFolder: "../../etc" })),
        Code.InvalidArgument,
        /must be one directory name/,
        "repo_folder",
      ],
      [
        "RunStep: a secret pointer to an owner not given",
        runStep(() => ({ repositoryUrl: plain, action: "hello", secretPointers: ["/nobody/token"] })),
        Code.InvalidArgument,
        /"nobody" is not an owner/,
        "secret_pointers[0]",
      ],
      [
        "RunStep: a negative timeout",
        runStep(() => ({ repositoryUrl: plain, action: "hello", timeout: { seconds: -1n } })),
        Code.InvalidArgument,
        /must be between 0 and \d+ s \(0 or unset for the default\), got "-1s"$/,
        "timeout",
      ],
      [
        "RunStep: a memory limit too small to start",
        runStep(() => ({ repositoryUrl: plain, action: "hello", limits: { memoryBytes: 4096n } })),
        Code.InvalidArgument,
        /must be at least 16 MiB/,
        "limits.memory_bytes",
      ],
      [
        "RunStep: a pids limit too large to mean anything",
        runStep(() => ({ repositoryUrl: plain, action: "hello", limits: { pids: 1n << 40n } })),
        Code.InvalidArgument,
        /must be between 8 and 4194304/,
        "limits.pids",
      ],
      ["GetStep: a step id with a path in it", () => steps.getStep({ stepId: "../steps.db" }), Code.InvalidArgument, /must be 1-64 characters/, "step_id"],
      [
        "GetStep: a step that does not exist",
        () => steps.getStep({ stepId: "no-such-step" }),
        Code.NotFound,
        /no step with id "no-such-step"; ListSteps shows/,
      ],
      ["CancelStep: a step that does not exist", () => steps.cancelStep({ stepId: "no-such-step" }), Code.NotFound, /no step with id/],
      [
        "FollowLogs: a negative offset",
        () => drain(steps.followLogs({ stepId: "no-such-step", fromOffset: -5n })),
        Code.InvalidArgument,
        /must not be negative, got -5$/,
        "from_offset",
      ],
      ["ListSteps: a page size out of range", () => steps.listSteps({ pageSize: 100_000 }), Code.InvalidArgument, /must be between 0 and 1000/, "page_size"],
      [
        "ListSteps: a forged page token",
        () => steps.listSteps({ pageToken: "eyJub3QiOiJvdXJzIn0" }),
        Code.InvalidArgument,
        /must be a next_page_token this service gave out/,
        "page_token",
      ],
      [
        "ListSteps: an unspecified state",
        () => steps.listSteps({ states: [StepState.UNSPECIFIED] }),
        Code.InvalidArgument,
        /must be a StepState other than STEP_STATE_UNSPECIFIED/,
        "states[0]",
      ],
      // Hostile repositories the context-service refuses.
      [
        "PrepareContext: a Dockerfile that is a symlink out of the repository",
        prepare(() => ({ repositoryUrl: hostile.path, gitRev: "dockerfile-symlink" })),
        Code.FailedPrecondition,
        /is a symlink out of the repository \(to "\.\.\/\.\.\/\.\.\/\.\.\/etc\/passwd"\); the repository is refused/,
      ],
      [
        "PrepareContext: a repo folder that is a symlink out of the repository",
        prepare(() => ({ repositoryUrl: hostile.path, gitRev: "repo-folder-symlink" })),
        Code.FailedPrecondition,
        /the repo folder \.mintpress is a symlink, not a directory; the repository is refused/,
      ],
      [
        "PrepareContext: a Dockerfile above the size limit",
        prepare(() => ({ repositoryUrl: hostile.path, gitRev: "big-dockerfile" })),
        Code.FailedPrecondition,
        /a Dockerfile may have at most \d+/,
      ],
      [
        "PrepareContext: a tree with a '..' entry (path traversal)",
        prepare(() => ({ repositoryUrl: hostile.path, gitRev: "dotdot" })),
        Code.FailedPrecondition,
        /has a path git refuses to check out \("\.\.\/passwd"\); the repository is refused/,
      ],
      [
        "PrepareContext: a tree with a '.git' entry",
        prepare(() => ({ repositoryUrl: hostile.path, gitRev: "dotgit" })),
        Code.FailedPrecondition,
        /has a path git refuses to check out \("\.git\/passwd"\)/,
      ],
      [
        "PrepareContext: a tree with a '.GIT' entry (.git on a case-insensitive disk)",
        prepare(() => ({ repositoryUrl: hostile.path, gitRev: "dotgit-upper" })),
        Code.FailedPrecondition,
        /has a path git refuses to check out \("\.GIT\/passwd"\)/,
      ],
    ];

    for (const [name, call, code, message, field] of cases) {
      it(`${name}: ${Code[code]}`, async () => {
        const before = await snapshot();
        const error = await failure(call());
        assert.equal(error.code, code, error.message);
        assert.match(error.rawMessage, message);
        if (code === Code.InvalidArgument) {
          assert.ok(error.rawMessage.startsWith(`${field}: `), `the message names ${field}: ${error.rawMessage}`);
          assert.deepEqual(
            error.findDetails(BadRequestSchema).flatMap((detail) => detail.fieldViolations.map((violation) => violation.field)),
            [field],
          );
        }
        assert.deepEqual(await snapshot(), before, "nothing changed");
        await assertHealthy();
      });
    }

    it("malformed Connect JSON bodies: INVALID_ARGUMENT naming what could not be read", async () => {
      const before = await snapshot();
      for (const [body, said] of [
        ['{"pageSize":"abc"}', /cannot decode field steprunner\.step\.v1\.ListStepsRequest\.page_size from JSON: expected number/],
        ["{not json", /cannot decode message steprunner\.step\.v1\.ListStepsRequest from JSON/],
      ] as const) {
        const response = await fetch(`http://${stack.stepAddr}/steprunner.step.v1.StepService/ListSteps`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body,
        });
        const answer = (await response.json()) as { code: string; message: string };
        assert.equal(answer.code, "invalid_argument", answer.message);
        assert.match(answer.message, said);
      }
      assert.deepEqual(await snapshot(), before);
    });
  });

  describe("hostile repositories that are handled safely", () => {
    async function repoTarEntries(contextId: string): Promise<Map<string, { type: string; size: number; linkname: string; head: string }>> {
      const chunks: Buffer[] = [];
      for await (const { chunk } of contexts.readContextFile({ contextId, kind: ContextFileKind.REPO_TAR })) chunks.push(Buffer.from(chunk));
      const entries = new Map<string, { type: string; size: number; linkname: string; head: string }>();
      const extract = tar.extract();
      const done = new Promise<void>((resolve, reject) => {
        extract.on("entry", (header, stream, next) => {
          let head = "";
          stream.on("data", (data: unknown) => (head += head.length < 64 ? (data as Buffer).subarray(0, 64).toString("latin1") : ""));
          stream.on("end", () => {
            entries.set(header.name.replace(/\/$/, ""), { type: header.type ?? "", size: header.size ?? 0, linkname: header.linkname ?? "", head });
            next();
          });
        });
        extract.on("finish", resolve);
        extract.on("error", reject);
      });
      Readable.from([Buffer.concat(chunks)]).pipe(extract);
      await done;
      return entries;
    }

    it("symlinks out of the tree stay symlinks, archives are never expanded, a huge file streams whole", async () => {
      const { context } = await contexts.prepareContext({ repositoryUrl: hostile.path, gitRev: "main", excludeGitHistory: true });
      const entries = await repoTarEntries(context!.contextId);
      assert.deepEqual(entries.get("escape-abs"), { type: "symlink", size: 0, linkname: "/etc/shadow", head: "" });
      assert.equal(entries.get("escape-up")?.linkname, "../../../../../../etc");
      for (const name of ["bomb.zip", "bomb.tar.gz", "huge.bin"] as const) {
        assert.equal(entries.get(name)?.type, "file", name);
        assert.equal(entries.get(name)?.size, hostile.sizes[name], `${name} is in repo.tar as committed`);
      }
      assert.ok(hostile.sizes["bomb.zip"] < BOMB_BYTES / 100, "the zip bomb expands a hundredfold");
      assert.ok(![...entries.keys()].some((name) => name === "zeros" || name.startsWith("bomb/")), "no archive was expanded");
      assert.ok(![...entries.values()].some((entry) => entry.head.startsWith("root:")), "no host file was read");
    });

    const ESCAPE_REFUSALS = {
      "escape-copy": /^a COPY or ADD source is not in the build context \("etc(\/passwd|\/shadow)?" is missing\)/,
      "escape-add": /^a COPY or ADD source is not in the build context \("etc(\/passwd|\/shadow)?" is missing\)/,
      "escape-bind":
        /^RUN \/bin\/sh -c cat \/host\/etc\/shadow failed \(exit code: 1\); its last output:\ncat: \/host\/etc\/shadow: No such file or directory$/,
      "escape-insecure": /^the Dockerfile has an error on line 3: (Unknown flag: security|unknown flag: --security)$/,
      "escape-url":
        /^the Dockerfile's line 3 ADDs http:\/\/127\.0\.0\.1:5000\/v2\/_catalog from the network, which a build without network may not .*commit the file to the repository/,
    };
    for (const [branch, line] of Object.entries(ESCAPING_DOCKERFILES)) {
      it(`a Dockerfile that tries to escape its context (${line}): FAILED_PRECONDITION that names it`, async () => {
        const { context } = await contexts.prepareContext({ repositoryUrl: hostile.path, gitRev: branch, excludeGitHistory: true });
        const error = await failure(drain(images.buildImage({ contextId: context!.contextId })));
        assert.equal(error.code, Code.FailedPrecondition, error.message);
        assert.match(error.rawMessage, ESCAPE_REFUSALS[branch as keyof typeof ESCAPING_DOCKERFILES]);
        assert.doesNotMatch(error.rawMessage, /root:[x*!]?:0:0/, "no host file in the message");
        await assertHealthy();
      });
    }
  });

  describe("misbehaving steps end in the right state, and the service stays healthy", () => {
    async function run(action: string, extra: RunInit = {}): Promise<{ step: Step; lines: string[] }> {
      const events: RunStepResponse[] = [];
      // The same repository, revision and properties for every step: one context and one image for them all.
      const request: RunInit = { repositoryUrl: hostile.path, action, excludeGitHistory: true, properties: [{ owner: "project", properties: {} }], ...extra };
      for await (const event of steps.runStep(request, { timeoutMs: 300_000 })) events.push(event);
      const last = events.at(-1)!;
      assert.equal(last.event.case, "finished");
      const lines = events.flatMap((event) => (event.event.case === "logLine" ? [event.event.value.text] : []));
      return { step: (last.event.value as { step: Step }).step, lines };
    }

    after(async () => {
      const runcRoot = process.env.STEPRUNNER_STEP_RUNC_ROOT || join(stepState, "runc");
      const containers = execFileSync("runc", ["--root", runcRoot, "list", "-q"], { encoding: "utf8" }).trim();
      assert.equal(containers, "", "no step container is left");
      await assertHealthy();
    });

    it("a repository whose hostile files reach the container as committed: symlinks unresolved, archives unexpanded", async () => {
      const { step, lines } = await run("inspect");
      assert.equal(step.state, StepState.SUCCESS, `${step.reason}\n${lines.join("\n")}`);
      for (const expected of [
        "escape-abs -> /etc/shadow",
        "escape-up -> ../../../../../../etc",
        `bomb.zip ${hostile.sizes["bomb.zip"]}`,
        `bomb.tar.gz ${hostile.sizes["bomb.tar.gz"]}`,
        `huge.bin ${hostile.sizes["huge.bin"]}`,
        "expanded: false",
      ]) {
        assert.ok(lines.includes(expected), `${expected} in:\n${lines.join("\n")}`);
      }
    });

    it("an action that does not exist: error, with Rake's message", async () => {
      const { step, lines } = await run("no_such_task");
      assert.equal(step.state, StepState.ERROR);
      assert.equal(step.exitCode, 1);
      assert.match(lines.join("\n"), /Don't know how to build task 'no_such_task'/);
    });

    it("a revision that does not exist: error (the caller's to fix, not a system error), naming git_rev", async () => {
      const { step } = await run("ok", { gitRev: "no-such-branch" });
      assert.equal(step.state, StepState.ERROR, step.reason);
      assert.match(step.reason, /^the context was refused: git_rev: "no-such-branch" is not a branch, tag or commit/);
    });

    it("a repository that does not exist: error naming repository_url", async () => {
      const { step } = await run("ok", { repositoryUrl: join(work, "gone") });
      assert.equal(step.state, StepState.ERROR, step.reason);
      assert.match(step.reason, /^the context was refused: repository_url: the repository ".*gone" does not exist/);
    });

    it("a Dockerfile that escapes, run as a step: error naming the build's failure", async () => {
      const { step } = await run("ok", { gitRev: "escape-add" });
      assert.equal(step.state, StepState.ERROR, step.reason);
      assert.match(step.reason, /^the image build failed: a COPY or ADD source is not in the build context/);
    });

    for (const [action, said] of [
      ["result_not_json", /^invalid step_result\.json is not JSON: /],
      ["result_wrong_types", /^invalid step\.properties must be an object$/],
      ["result_bad_child", /^invalid child_step_definitions\.children\[0\] must be an object with a non-empty "action"$/],
      ["result_bad_diff", /^invalid properties_diffs\.project\[0\]\.op must be one of add, remove/],
      ["result_symlink", /^invalid step_result\.json: .*symlink/],
    ] as const) {
      it(`a malformed step_result.json (${action}): error that says what is wrong`, async () => {
        const { step } = await run(action);
        assert.equal(step.state, StepState.ERROR, step.reason);
        assert.match(step.reason, said);
        assert.doesNotMatch(step.reason, /root:/);
        assert.equal(step.result, undefined);
      });
    }

    it("a step_result.json above the size limit: error naming the limit, never read", async () => {
      const { step } = await run("result_huge");
      assert.equal(step.state, StepState.ERROR, step.reason);
      assert.match(step.reason, /step_result\.json is 68157440 bytes, more than the \d+ bytes a result may have/);
    });

    it("a step that floods its log: the log is capped, marked truncated, and the step still succeeds", async () => {
      const { step, lines } = await run("flood");
      assert.equal(step.state, StepState.SUCCESS, step.reason);
      assert.equal(step.logTruncated, true);
      assert.ok(lines.some((line) => /log truncated: the step wrote more than \d+ bytes; later output was dropped/.test(line)));
      assert.ok(!lines.includes("after the flood"));
    });

    it("a fork bomb: held by the pids limit until its timeout stops it", async () => {
      const stepId = `forkbomb-${process.pid}-${Date.now()}`;
      const running = run("forkbomb", { stepId, limits: { pids: 32n }, timeout: { seconds: 3n } });
      // The step's pids cgroup, whichever instance tag the service gives its cgroups.
      const pidsFile = async () => {
        const name = (await readdir("/sys/fs/cgroup/pids")).find((candidate) => candidate.startsWith("steprunner-") && candidate.endsWith(`-${stepId}`));
        return name ? readFile(`/sys/fs/cgroup/pids/${name}/container/pids.current`, "utf8") : "0";
      };
      let most = 0;
      let ended = false;
      void running.finally(() => (ended = true));
      while (!ended) {
        most = Math.max(most, Number((await pidsFile().catch(() => "0")).trim()));
        await sleep(50);
      }
      const { step } = await running;
      assert.equal(step.state, StepState.TIMED_OUT, step.reason);
      assert.equal(step.reason, "timed out after 3 s");
      assert.ok(most >= 16 && most <= 32, `the bomb reached ${most} processes under a limit of 32`);
    });

    it("a memory eater: OOM-killed at the memory limit, and said so", async () => {
      const { step } = await run("hog", { limits: { memoryBytes: 64n * BigInt(MiB) } });
      assert.equal(step.state, StepState.ERROR);
      assert.equal(step.oomKilled, true, step.reason);
      assert.match(step.reason, /killed: out of memory \(limit 67108864 bytes\)/);
    });

    it("a step that closes stdout early keeps its stderr and its result", async () => {
      const { step, lines } = await run("close_stdout");
      assert.equal(step.state, StepState.SUCCESS, step.reason);
      assert.ok(lines.includes("stdout closed, still working"));
      assert.deepEqual(step.result?.properties, { after_close: true });
    });

    it("a step that closes stdout and stderr still ends, with its result", async () => {
      const { step } = await run("close_both");
      assert.equal(step.state, StepState.SUCCESS, step.reason);
      assert.deepEqual(step.result?.properties, { quiet: true });
    });

    it("a step that outlives its timeout: timed out, and stopped", async () => {
      const { step, lines } = await run("sleep", { timeout: { seconds: 3n } });
      assert.equal(step.state, StepState.TIMED_OUT);
      assert.equal(step.reason, "timed out after 3 s");
      assert.ok(lines.includes("sleeping"));
    });
  });
});
