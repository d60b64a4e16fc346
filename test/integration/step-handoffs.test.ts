import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import type { ImageRootfs, StepImage } from "../../services/step-service/images/images.js";
import { type ContainerRun, RuntimeError } from "../../services/step-service/runtime/container.js";
import { baseRunnerInDockerd, CLI, needsDockerd, stack } from "../support/stack.js";
import { leftovers, removeState, repository, runtimeParts, startStepService, type TestStepService, testConfig } from "../support/step-service.js";

const exec = promisify(execFile);

/** dockerd's overlay2 directories of an image, bottom to top, as `docker image inspect` names them. */
async function dockerLayerDirectories(reference: string): Promise<{ directories: string[]; user: string; env: string[]; workingDir: string }> {
  const { stdout } = await exec("docker", ["-H", `unix://${stack.runDir}/docker.sock`, "image", "inspect", reference, "--format", "{{json .}}"]);
  const image = JSON.parse(stdout) as {
    Id: string;
    GraphDriver: { Data: { LowerDir?: string; UpperDir: string } };
    Config: { User: string; Env: string[]; WorkingDir: string };
  };
  const lower = image.GraphDriver.Data.LowerDir ? image.GraphDriver.Data.LowerDir.split(":").reverse() : [];
  return { directories: [...lower, image.GraphDriver.Data.UpperDir], user: image.Config.User, env: image.Config.Env, workingDir: image.Config.WorkingDir };
}

describe("both image hand-offs run the same step", needsDockerd("the layer-store hand-off mounts its layer directories"), () => {
  it("mounts dockerd's layer directories read-only with no copy, and pulls from the registry into the layer store", async () => {
    const config = await testConfig();
    const { layers, materialiser, runtime } = await runtimeParts(config);
    await baseRunnerInDockerd();
    const docker = await dockerLayerDirectories(stack.baseRunner);
    const base = (image: ImageRootfs): ContainerRun => ({
      stepId: "handoff",
      image,
      args: [],
      env: {},
      limits: config.defaultLimits,
      hostNetwork: false,
      binds: [],
      userDirs: [],
      resultPath: "opt/opschain/none.json",
      timeoutMs: 30_000,
      onOutput: () => {},
      onStarted: () => {},
      signal: new AbortController().signal,
    });
    const images: Record<string, StepImage> = {
      registry: { kind: "registry", reference: stack.baseRunner },
      "layer directories": {
        kind: "layer-directories",
        imageId: "dockerd",
        directories: docker.directories,
        config: { env: docker.env, entrypoint: [], cmd: [], workingDir: docker.workingDir, user: docker.user },
      },
    };
    try {
      for (const [name, image] of Object.entries(images)) {
        const signal = new AbortController().signal;
        for (const attempt of ["first", "second"]) {
          const started = Date.now();
          const rootfs = await materialiser.materialise(image, signal);
          const ready = Date.now();
          const lines: string[] = [];
          const run: ContainerRun = {
            ...base(rootfs),
            stepId: `handoff-${name.replace(/ /g, "-")}`,
            args: ["sh", "-c", "id -u; touch /opt/opschain/written && echo wrote"],
            onOutput: (_stream, text) => lines.push(text),
          };
          const exit = await runtime.run(run);
          rootfs.release();
          console.log(`${name}, ${attempt} step: image ready in ${ready - started} ms, step in ${Date.now() - ready} ms`);
          assert.equal(exit.exitCode, 0, lines.join("\n"));
          assert.deepEqual(lines, ["10001", "wrote"]);
        }
      }
      for (const dir of docker.directories) {
        await assert.rejects(exec("test", ["-e", join(dir, "opt/opschain/written")]), "the step wrote to its own upper directory, not dockerd's layer");
      }
      assert.equal((await layers.stats()).unpacked, 1, "the registry image's one layer was unpacked once");

      // runc's own failure is an error of the runtime, not an exit status of the step.
      const rootfs = await materialiser.materialise(images.registry!, new AbortController().signal);
      await assert.rejects(
        runtime.run({ ...base(rootfs), args: ["/no/such/binary"] }),
        (error: Error) => error instanceof RuntimeError && /runc failed: .*no\/such\/binary/.test(error.message),
      );
      rootfs.release();
      assert.deepEqual(await leftovers(config), { containers: [], mounts: [], cgroups: [], dirs: [] });
    } finally {
      await removeState(config);
    }
  });
});

describe("steprunner run, logs and cancel", () => {
  let service: TestStepService;
  let repo: string;
  before(async () => {
    service = await startStepService(await testConfig());
    repo = await repository(service.config, "task(:greet) { puts \"hello #{ENV['GREETING']}\"; OpsChain.child_steps('next'); exit 4 }\n");
  });
  after(async () => {
    await service.stop();
    const left = await leftovers(service.config);
    await removeState(service.config);
    assert.deepEqual(left, { containers: [], mounts: [], cgroups: [], dirs: [] });
  });

  const cli = (args: string[]) =>
    exec(process.execPath, [CLI, ...args, "--step-addr", `127.0.0.1:${service.server.port}`]).then(
      (out) => ({ code: 0, ...out }),
      (error: { code: number; stdout: string; stderr: string }) => error,
    );

  it("runs a step, prints its logs and result, and exits with the action's status", async () => {
    const run = await cli(["run", "--repo", repo, "--action", "greet", "--env", "GREETING=world"]);
    assert.equal(run.code, 4, run.stderr);
    assert.match(run.stdout, /^hello world$/m);
    assert.match(run.stdout, /"action": "next"/);
    const id = /step (\S+) accepted/.exec(run.stderr)?.[1];
    assert.ok(id, run.stderr);
    const logs = await cli(["logs", id!, "--from", "1"]);
    assert.equal(logs.code, 0);
    assert.match(logs.stdout, /^hello world$/m);
    const cancel = await cli(["cancel", id!]);
    assert.equal(cancel.code, 0);
    assert.match(cancel.stdout, /error \(exit status 4\)/);
    const missing = await cli(["logs", "no-such-step"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no step with id/);
    assert.equal((await service.client.getStep({ stepId: id! })).step?.state, StepState.ERROR);
  });
});
