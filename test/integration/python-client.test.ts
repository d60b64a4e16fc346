import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { ROOT, run, stack } from "../support/stack.js";

// Debian's interpreter: python3-grpc-tools is a Debian package, and another python3 may come first on PATH.
const PYTHON = "/usr/bin/python3";

describe("a Python client generated from our protos (python3-grpc-tools)", () => {
  let stubs: string;
  before(async () => {
    stubs = await mkdtemp(join(tmpdir(), "steprunner-python-"));
    const made = await run(join(ROOT, "deploy/sample/make-sample-repo.sh"), [join(stubs, "sample")]);
    assert.equal(made.code, 0, made.stderr);
    const wellKnown = (await run(PYTHON, ["-c", "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))"])).stdout.trim();
    const protos = ["steprunner/context/v1/context_service.proto", "steprunner/image/v1/image_service.proto", "steprunner/step/v1/step_service.proto"];
    const ours = await run(PYTHON, [
      "-m",
      "grpc_tools.protoc",
      "-I",
      join(ROOT, "proto"),
      "-I",
      wellKnown,
      `--python_out=${stubs}`,
      `--grpc_python_out=${stubs}`,
      ...protos,
    ]);
    assert.equal(ours.code, 0, ours.stderr);
    // Under its own module name: a "grpc" package of stubs would hide grpcio's.
    await mkdir(join(stubs, "src/health_check"), { recursive: true });
    await copyFile(join(ROOT, "proto/wire/grpc/health/v1/health.proto"), join(stubs, "src/health_check/health.proto"));
    const health = await run(PYTHON, [
      "-m",
      "grpc_tools.protoc",
      "-I",
      join(stubs, "src"),
      `--python_out=${stubs}`,
      `--grpc_python_out=${stubs}`,
      "health_check/health.proto",
    ]);
    assert.equal(health.code, 0, health.stderr);
  });
  after(() => rm(stubs, { recursive: true, force: true }));

  it("calls every service over gRPC, gets their answers and error codes, and runs a whole step", async () => {
    const result = await run(
      PYTHON,
      [join(ROOT, "test/polyglot/python_client.py"), stubs, stack.contextAddr, stack.imageAddr, stack.stepAddr, join(stubs, "sample")],
      {
        timeoutMs: 300_000,
      },
    );
    assert.equal(result.code, 0, result.stderr);
    const answers = JSON.parse(result.stdout);
    assert.equal(answers.context_health, "SERVING");
    assert.match(answers.default_dockerfile_digest, /^sha256:[0-9a-f]{64}$/);
    // The workers BuildKit itself lists (dockerd's is "moby"; a buildkitd's OCI worker has a generated id).
    const buildkit = new BuildKitClient(stack.buildkitAddr);
    try {
      assert.deepEqual(
        answers.workers,
        (await buildkit.listWorkers()).map((worker) => worker.id),
      );
    } finally {
      buildkit.close();
    }
    if (stack.buildkit === "dockerd") assert.deepEqual(answers.workers, ["moby"]);
    assert.equal(answers.registry_api_version, "registry/2.0");
    assert.equal(answers.invalid_prune, "INVALID_ARGUMENT");
    assert.match(answers.runc_version, /^runc version/);
    assert.equal(answers.step_state, "STEP_STATE_SUCCESS");
    assert.ok(answers.step_stdout.includes("hello from python"), answers.step_stdout.join("\n"));
    assert.equal(answers.step_result.last_greeting, "hello");
    for (const kind of ["accepted", "phase_changed", "log_line", "finished"])
      assert.ok(answers.step_events.includes(kind), `a ${kind} event: ${answers.step_events}`);
  });
});
