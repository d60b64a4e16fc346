import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { ChildExecutionStrategy } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { RunStepRequestSchema } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { ownerRule, repositoryUrlRule, revisionRule, secretPointerRule } from "../../services/shared/request-rules.js";
import { durationMs, invalidField, shown, violationMessage } from "../../services/shared/validation.js";
import { callService } from "../../services/step-service/clients/service-calls.js";
import { type StepServiceSettings, validateRunStep } from "../../services/step-service/api/step-service-adapter.js";
import { RefusedInputError } from "../../services/step-service/steps/ports.js";

describe("request validation shared by the services", () => {
  it("says field, rule and the value given, cutting long values short", () => {
    assert.equal(violationMessage("limits.pids", "must be at least 8", 2n), "limits.pids: must be at least 8, got 2");
    assert.equal(violationMessage("action", "must be a Rake task", "rm -rf"), 'action: must be a Rake task, got "rm -rf"');
    assert.equal(violationMessage("properties", "must be a JSON object"), "properties: must be a JSON object");
    assert.equal(shown("x".repeat(500)), `"${"x".repeat(80)}…" (500 characters)`);
    assert.equal(shown('a"b\n'), '"a\\"b\\n"', "quotes and control characters are escaped");
  });

  it("answers INVALID_ARGUMENT with a google.rpc.BadRequest field violation", () => {
    const error = invalidField("step_id", "must be 1-64 characters of [A-Za-z0-9_.-]", "bad id!");
    assert.equal(error.code, Code.InvalidArgument);
    assert.equal(error.rawMessage, 'step_id: must be 1-64 characters of [A-Za-z0-9_.-], got "bad id!"');
    const [detail] = error.findDetails(BadRequestSchema);
    assert.deepEqual(
      detail?.fieldViolations.map((violation) => [violation.field, violation.description]),
      [["step_id", error.rawMessage]],
    );
  });

  it("reads durations, refusing mixed signs and nanos out of range", () => {
    assert.equal(durationMs("timeout", { seconds: 2n, nanos: 500_000_000 }), 2500);
    assert.equal(durationMs("timeout", { seconds: -1n, nanos: 0 }), -1000);
    for (const bad of [
      { seconds: 1n, nanos: -1 },
      { seconds: -1n, nanos: 1 },
      { seconds: 0n, nanos: 1_000_000_000 },
    ]) {
      assert.throws(
        () => durationMs("timeout", bad),
        (error: ConnectError) => error.code === Code.InvalidArgument && /^timeout: must be a valid duration/.test(error.rawMessage),
      );
    }
  });

  it("knows repository addresses, revisions, owners and secret pointers", () => {
    for (const good of [
      "/srv/repo",
      "/srv/repo/",
      "file:///srv/repo",
      "https://git.test/r.git",
      "ssh://git@git.test/r",
      "git://127.0.0.1/r.git",
      "git@git.test:r.git",
    ]) {
      assert.equal(repositoryUrlRule(good), undefined, good);
    }
    for (const bad of ["", "relative/repo", "ext::sh -c touch% /tmp/x", "fd::3", "file://relative", "/srv/\nrepo", `/${"a".repeat(2048)}`]) {
      assert.ok(repositoryUrlRule(bad), bad);
    }
    for (const good of ["main", "v1.0", "refs/tags/v1", "HEAD", "0123abcd", "feature/x-y"]) assert.equal(revisionRule(good), undefined, good);
    for (const [bad, said] of [
      ["", /^must be a branch/],
      ["main~1", /~ \^/],
      ["--upload-pack=x", /'-'/],
      ["a..b", /'\.\.'/],
      ["@{u}", /'@\{'/],
      ["a/", /empty path/],
      ["x.lock", /\.lock/],
      ["a/.hidden", /starting with '\.'/],
    ] as const) {
      assert.match(revisionRule(bad) ?? "", said, bad);
    }
    assert.equal(ownerRule("project"), undefined);
    for (const bad of ["", "Project", "1st", "../p", "a".repeat(64)]) assert.ok(ownerRule(bad), bad);
    assert.equal(secretPointerRule("/project/a~1b/c~0d"), undefined);
    for (const bad of ["project/x", "/", "/bad~2", "/trailing~"]) assert.ok(secretPointerRule(bad), bad);
    assert.match(secretPointerRule("/nobody/x", new Set(["project"])) ?? "", /"nobody" is not an owner/);
  });
});

describe("RunStep's request at the step-service's boundary", () => {
  const settings: StepServiceSettings = {
    runcPath: "runc",
    maxConcurrentSteps: 1,
    defaultLimits: { memoryBytes: 512 * 1024 * 1024, cpuMillis: 1000, pids: 256 },
    defaultTimeoutMs: 60_000,
    maxTimeoutMs: 3_600_000,
    defaultRepoFolder: ".mintpress",
  };
  const valid: MessageInitShape<typeof RunStepRequestSchema> = { repositoryUrl: "/srv/repo", action: "deploy" };
  const validate = (change: MessageInitShape<typeof RunStepRequestSchema>) =>
    validateRunStep(create(RunStepRequestSchema, { ...valid, ...change } as MessageInitShape<typeof RunStepRequestSchema>), settings);

  it("fills in the defaults for a minimal request, and for zeros", () => {
    const request = validate({});
    assert.deepEqual([request.gitRev, request.repoFolder, request.timeoutMs, request.limits], ["HEAD", ".mintpress", 60_000, settings.defaultLimits]);
    const zeros = validate({ timeout: { seconds: 0n }, limits: { memoryBytes: 0n, cpuMillis: 0n, pids: 0n } });
    assert.deepEqual([zeros.timeoutMs, zeros.limits], [60_000, settings.defaultLimits]);
    assert.equal(validate({ timeout: { seconds: 1n, nanos: 500_000_000 } }).timeoutMs, 1500);
  });

  it("accepts what opschain-action accepts: several tasks, -T and -AT (with a pattern), spaces normalised", () => {
    assert.equal(validate({ action: "build  test ns:deploy" }).action, "build test ns:deploy");
    assert.equal(validate({ action: "-T" }).action, "-T");
    assert.equal(validate({ action: "-AT" }).action, "-AT");
    assert.equal(validate({ action: "-A -T deploy" }).action, "-AT deploy");
    assert.equal(validate({ action: "-TA" }).action, "-AT");
  });

  it("fills context.change and context.step's action (and full path) from the request, and parents from the change", () => {
    const values = validate({ action: "build test" }).contextValues as {
      change: Record<string, unknown>;
      step: Record<string, unknown>;
      parents?: Record<string, unknown>;
    };
    assert.equal(values.change.action, "build test");
    assert.equal(values.step.action, "build test");
    assert.equal(values.step.fullPath, "build test");
    const given = validate({
      action: "deploy",
      contextValues: { change: { action: "release", projectCode: "fin", projectName: "Finance", environmentCode: "dev" }, step: { action: "deploy_web" } },
    }).contextValues as { change: Record<string, unknown>; step: Record<string, unknown>; parents: Record<string, unknown> };
    assert.equal(given.change.action, "release", "the caller's values win");
    assert.equal(given.step.action, "deploy_web");
    assert.deepEqual(given.parents, { project: { code: "fin", name: "Finance" }, environment: { code: "dev" } });
    const explicit = validate({ contextValues: { change: { projectCode: "fin" }, parents: { project: { id: "p1", code: "finance" } } } }).contextValues as {
      parents: Record<string, unknown>;
    };
    assert.deepEqual(explicit.parents, { project: { id: "p1", code: "finance" } });
  });

  const cases: Array<[string, MessageInitShape<typeof RunStepRequestSchema>, RegExp]> = [
    ["step_id", { stepId: "bad id!" }, /^step_id: must be 1-64 characters/],
    ["repository_url", { repositoryUrl: "" }, /^repository_url: must be an absolute path or a file:\/\/.*, got ""$/],
    ["repository_url", { repositoryUrl: "ext::sh -c x" }, /^repository_url: must be/],
    ["git_rev", { gitRev: "main~1" }, /^git_rev: must be a branch, .*, or empty for HEAD, got "main~1"$/],
    ["action", { action: "" }, /^action: must be what opschain-action accepts: one or more Rake tasks/],
    ["action", { action: "--trace" }, /the option "--trace" is refused \(only -T and -AT are allowed/],
    ["action", { action: "-T -e system('id')" }, /the option "-e" is refused/],
    ["action", { action: "deploy -f /etc/passwd" }, /the option "-f" is refused/],
    ["action", { action: "-AT a b" }, /a listing takes at most one pattern/],
    ["action", { action: "deploy FOO=bar" }, /"FOO=bar" is not a task name/],
    ["action", { action: "deploy[1,2]" }, /is not a task name/],
    ["action", { action: "a\nb" }, /without line breaks/],
    ["action", { action: "-A" }, /-A lists nothing without -T/],
    ["properties[0].owner", { properties: [{ owner: "Project" }] }, /^properties\[0\]\.owner: must be/],
    ["properties[1].owner", { properties: [{ owner: "p" }, { owner: "p" }] }, /^properties\[1\]\.owner: must differ/],
    ["secret_pointers[0]", { properties: [{ owner: "project" }], secretPointers: ["/nobody/x"] }, /^secret_pointers\[0\]: .*"nobody" is not an owner/],
    [
      "context_values.step.child_execution_strategy",
      { contextValues: { step: { childExecutionStrategy: 9 as ChildExecutionStrategy } } },
      /^context_values\.step\.child_execution_strategy: must be/,
    ],
    [
      "context_values.change.created_at",
      { contextValues: { change: { createdAt: { seconds: 10n ** 15n } } } },
      /^context_values\.change\.created_at: must be a time/,
    ],
    ["repo_folder", { repoFolder: "../x" }, /^repo_folder: must be one directory name/],
    ["repo_folder", { repoFolder: ".git" }, /^repo_folder: /],
    ["timeout", { timeout: { seconds: -5n } }, /^timeout: must be between 0 and 3600 s \(0 or unset for the default\), got "-5s"$/],
    ["timeout", { timeout: { seconds: 7200n } }, /^timeout: must be between 0 and 3600 s/],
    ["timeout", { timeout: { seconds: 1n, nanos: -1 } }, /^timeout: must be a valid duration/],
    ["limits.memory_bytes", { limits: { memoryBytes: 1n } }, /^limits\.memory_bytes: must be at least 16 MiB .*, got 1$/],
    ["limits.memory_bytes", { limits: { memoryBytes: -1n } }, /^limits\.memory_bytes: /],
    ["limits.cpu_millis", { limits: { cpuMillis: 5n } }, /^limits\.cpu_millis: /],
    ["limits.pids", { limits: { pids: 1n << 40n } }, /^limits\.pids: must be between 8 and 4194304/],
  ];
  for (const [field, change, message] of cases) {
    it(`refuses a bad ${field}: ${JSON.stringify(change, (_, value) => (typeof value === "bigint" ? String(value) : value))}`, () => {
      assert.throws(
        () => validate(change),
        (error: ConnectError) => {
          assert.equal(error.code, Code.InvalidArgument);
          assert.match(error.rawMessage, message);
          assert.equal(error.findDetails(BadRequestSchema)[0]?.fieldViolations[0]?.field, field);
          return true;
        },
      );
    });
  }
});

describe("calls of a step to the other services", () => {
  const running = new AbortController().signal;
  const refusals = (call: () => Promise<unknown>) => callService("context-service", running, call);

  it("are the caller's to fix when refused (RefusedInputError); other failures stay the service's", async () => {
    for (const code of [Code.InvalidArgument, Code.NotFound, Code.FailedPrecondition, Code.OutOfRange]) {
      await assert.rejects(
        refusals(() => Promise.reject(new ConnectError("git_rev: nope", code))),
        (error: Error) => error instanceof RefusedInputError && error.message === "git_rev: nope",
      );
    }
    for (const code of [Code.Unavailable, Code.Internal, Code.DataLoss]) {
      await assert.rejects(
        refusals(() => Promise.reject(new ConnectError("down", code))),
        (error: Error) => error instanceof ConnectError && !(error instanceof RefusedInputError),
      );
    }
  });

  it("say the service went away when a call is cut off that the step did not cancel", async () => {
    await assert.rejects(
      refusals(() => Promise.reject(new ConnectError("http/2 stream closed", Code.Canceled))),
      (error: ConnectError) =>
        error.code === Code.Unavailable &&
        /the context-service went away in the middle of the call \(stopped or restarted\): http\/2 stream closed/.test(error.rawMessage),
    );
    const cancelled = new AbortController();
    cancelled.abort();
    await assert.rejects(
      callService("image-service", cancelled.signal, () => Promise.reject(new ConnectError("cancelled", Code.Canceled))),
      (error: ConnectError) => error.code === Code.Canceled,
    );
  });
});
