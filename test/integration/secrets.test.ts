import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient } from "@connectrpc/connect";
import { type Step, StepService, StepState } from "../../gen/steprunner/step/v1/step_service_pb.js";
import { REDACTED } from "../../services/context-service/core/step-context.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { parseImageReference } from "../../services/shared/registry/image-reference.js";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";
import { occurrences, occurrencesInImageArchive, occurrencesUnder } from "../support/secret-search.js";
import { ROOT, run, stack } from "../support/stack.js";
import { waitUntilServing } from "../support/rpc.js";

const SECRET = `s3cret-${randomBytes(12).toString("hex")}`;

// The action reads the secret from its environment and puts it everywhere it can: stdout, stderr, a
// property of its result, and the message it fails with.
const ACTIONS = `# ${randomBytes(8).toString("hex")}
task(:leak) do
  token = ENV.fetch('API_TOKEN')
  puts "API_TOKEN=#{token}"
  warn "on stderr: #{token}"
  OpsChain.properties_for(:project)['copied'] = "copied #{token}"
end
task(:fail) { raise "failing with #{ENV.fetch('API_TOKEN')}" }
`;

// A custom Dockerfile that copies the (redacted) step_context.json.zip into a layer and prints the full one,
// given as the build secret, into the build log.
const CUSTOM_DOCKERFILE = `ARG OPSCHAIN_BASE_RUNNER
FROM scratch AS repository
ADD repo.tar /
FROM \${OPSCHAIN_BASE_RUNNER}
COPY step_context.json.zip /opt/opschain/copied_step_context.json.zip
RUN --mount=type=secret,id=env_context_zip,target=/tmp/ctx.zip,uid=10001 unzip -p /tmp/ctx.zip
COPY --from=repository --chown=10001:10001 / /opt/opschain/
`;

// A build that fails after printing the full step context: the error names the RUN line and ends with its output.
const FAILING_DOCKERFILE = `ARG OPSCHAIN_BASE_RUNNER
FROM \${OPSCHAIN_BASE_RUNNER}
RUN --mount=type=secret,id=env_context_zip,target=/tmp/ctx.zip,uid=10001 unzip -p /tmp/ctx.zip && exit 3
`;

const SERVICES = ["context-service", "image-service", "step-service"] as const;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const docker = (...args: string[]) => run("/usr/bin/docker", ["--host", `unix://${stack.runDir}/docker.sock`, ...args], { timeoutMs: 300_000 });

describe("a secret property, through all three services, with the default and a custom Dockerfile", () => {
  let root: string;
  let repository: string;
  const children: ChildProcess[] = [];
  const addresses = {} as Record<(typeof SERVICES)[number], string>;
  let steps: ReturnType<typeof serviceTransport>;
  /** Everything a client was told, as JSON text. */
  const seen: string[] = [];
  const finished: Step[] = [];

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    root = await mkdtemp(join(stack.stateDir, "tmp", "secrets-test-"));
    repository = join(root, "repository");
    await mkdir(repository);
    await gitIn(repository, ["init", "-q", "-b", "main"]);
    await commitFiles(repository, { "actions.rb": ACTIONS }, "actions", "2024-01-01T00:00:00Z");
    await gitIn(repository, ["checkout", "-q", "-b", "custom"]);
    await commitFiles(repository, { ".mintpress/Dockerfile": CUSTOM_DOCKERFILE }, "custom Dockerfile", "2024-01-02T00:00:00Z");
    await gitIn(repository, ["checkout", "-q", "-b", "failing", "main"]);
    await commitFiles(repository, { ".mintpress/Dockerfile": FAILING_DOCKERFILE }, "failing Dockerfile", "2024-01-03T00:00:00Z");
    await gitIn(repository, ["checkout", "-q", "main"]);

    for (const name of SERVICES) addresses[name] = `127.0.0.1:${await freePort()}`;
    await mkdir(join(root, "logs"));
    const env = {
      ...process.env,
      STEPRUNNER_STATE_DIR: join(root, "state"),
      STEPRUNNER_STEP_STATE_DIR: join(root, "state", "step"),
      STEPRUNNER_CONTEXT_ADDR: addresses["context-service"],
      STEPRUNNER_IMAGE_ADDR: addresses["image-service"],
      STEPRUNNER_STEP_ADDR: addresses["step-service"],
      STEPRUNNER_BUILDKIT_ADDR: stack.buildkitAddr,
      STEPRUNNER_REGISTRY_ADDR: stack.registry,
      OPSCHAIN_BASE_RUNNER: stack.baseRunner,
      STEPRUNNER_LOG_LEVEL: "debug",
    };
    for (const name of SERVICES) {
      const log = await import("node:fs").then((fs) => fs.openSync(join(root, "logs", `${name}.log`), "a"));
      children.push(spawn(process.execPath, [join(ROOT, `dist/services/${name}/main.js`)], { env, stdio: ["ignore", log, log] }));
    }
    for (const name of SERVICES) await waitUntilServing(addresses[name], name);
    steps = serviceTransport(addresses["step-service"], {});
  });

  after(async () => {
    steps?.close();
    for (const child of children) child.kill("SIGTERM");
    await Promise.all(children.map((child) => (child.exitCode === null ? new Promise((resolve) => child.once("exit", resolve)) : undefined)));
    for (const imageId of new Set(finished.map((step) => step.imageId).filter(Boolean))) await docker("image", "rm", "--force", imageId);
    await rm(root, { recursive: true, force: true });
  });

  // Bytes (the build log's chunks) as the text they carry, so that a secret in them shows.
  const json = (value: unknown) =>
    JSON.stringify(value, (_key, item) =>
      typeof item === "bigint" ? item.toString() : item instanceof Uint8Array ? Buffer.from(item).toString("utf8") : item,
    );

  async function runStep(action: string, gitRev: string): Promise<{ step: Step; text: string }> {
    const client = createClient(StepService, steps.transport);
    const events = [];
    for await (const event of client.runStep(
      {
        repositoryUrl: repository,
        gitRev,
        action,
        properties: [{ owner: "project", properties: { opschain: { env: { API_TOKEN: SECRET, PLAIN: "visible" } } } }],
        secretPointers: ["/project/opschain/env/API_TOKEN"],
      },
      { timeoutMs: 300_000 },
    ))
      events.push(event);
    const step = events.at(-1)?.event.case === "finished" ? (events.at(-1)!.event.value as { step: Step }).step : undefined;
    assert.ok(step, "the stream ended with finished");
    finished.push(step);
    const text = json(events);
    seen.push(text);
    return { step, text };
  }

  it("masks it in what the client sees: step log, build log, result and reasons", async () => {
    const plain = await runStep("leak", "main");
    assert.equal(plain.step.state, StepState.SUCCESS, plain.step.reason);
    assert.match(plain.text, /API_TOKEN=\*\*\*/, "the secret was printed, and masked");
    const custom = await runStep("leak", "custom");
    assert.equal(custom.step.state, StepState.SUCCESS, custom.step.reason);
    assert.match(custom.text, /\\"PLAIN\\":\\"visible\\"/, "the build log shows the step context the RUN line printed");
    const failed = await runStep("fail", "main");
    assert.equal(failed.step.state, StepState.ERROR);
    assert.match(failed.text, /failing with \*\*\*/);
    const unbuilt = await runStep("leak", "failing");
    assert.equal(unbuilt.step.state, StepState.ERROR, "a Dockerfile that fails is the repository's error");
    assert.match(unbuilt.step.reason, /exit 3/, "the reason carries the end of the RUN line's output");

    const client = createClient(StepService, steps.transport);
    for (const step of finished) {
      seen.push(json(await client.getStep({ stepId: step.id })));
      for await (const line of client.followLogs({ stepId: step.id })) seen.push(json(line));
    }
    seen.push(json(await client.listSteps({})));
    assert.deepEqual(await occurrences(Buffer.from(seen.join("\n")), SECRET, "what the client saw"), []);
  });

  it("leaves it in no layer or config of the images built", async () => {
    const imageIds = [...new Set(finished.map((step) => step.imageId).filter(Boolean))];
    assert.equal(imageIds.length, 2, "one image for each Dockerfile");
    const { hits, copied } = stack.buildkit === "dockerd" ? await searchDockerd(imageIds) : await searchRegistry(imageIds);
    assert.deepEqual(hits, []);
    assert.ok(
      copied.some((hit) => hit.endsWith("copied_step_context.json.zip!step_context.json")),
      `the custom image holds the redacted copy, which the search looked into: ${copied.join(" ")}`,
    );
  });

  /** dockerd holds the images: their configs (inspect) and layers (save). */
  async function searchDockerd(imageIds: string[]): Promise<{ hits: string[]; copied: string[] }> {
    const inspect = await docker("image", "inspect", ...imageIds);
    assert.equal(inspect.code, 0, inspect.stderr);
    const save = (ids: string[]) =>
      spawn("/usr/bin/docker", ["--host", `unix://${stack.runDir}/docker.sock`, "image", "save", ...ids], { stdio: ["ignore", "pipe", "inherit"] });
    const saved = save(imageIds);
    const hits = await occurrencesInImageArchive(saved.stdout, SECRET);
    assert.equal(await new Promise((resolve) => saved.once("close", resolve)), 0);
    if (inspect.stdout.includes(SECRET)) hits.push("an image config");
    return { hits, copied: await occurrencesInImageArchive(save([finished[1]!.imageId]).stdout, REDACTED) };
  }

  /** A standalone buildkitd pushed the images: their manifests, configs and layers in the registry. */
  async function searchRegistry(imageIds: string[]): Promise<{ hits: string[]; copied: string[] }> {
    const recordsDir = join(root, "state", "image", "images");
    const records = await Promise.all(
      (await readdir(recordsDir))
        .filter((name) => name.endsWith(".json"))
        .map(async (name) => JSON.parse(await readFile(join(recordsDir, name), "utf8")) as { imageId: string; reference?: string }),
    );
    const registry = new RegistryClient(stack.registry);
    const hits: string[] = [];
    const copied: string[] = [];
    for (const imageId of imageIds) {
      const reference = records.find((record) => record.imageId === imageId)?.reference;
      assert.ok(reference, `image ${imageId} was pushed`);
      const { repository, reference: digest } = parseImageReference(reference);
      const { manifest } = await registry.manifest(repository, digest);
      if (JSON.stringify(await registry.config(repository, manifest.config)).includes(SECRET)) hits.push(`config of ${reference}`);
      for (const layer of manifest.layers) {
        const bytes = Buffer.concat(await (await registry.blob(repository, layer.digest)).toArray());
        hits.push(...(await occurrences(bytes, SECRET, layer.digest)));
        if (imageId === finished[1]!.imageId) copied.push(...(await occurrences(bytes, REDACTED, layer.digest)));
      }
    }
    return { hits, copied };
  }

  it("leaves it in no file of the services' state (databases with their WAL, logs, layers, caches) nor their logs", async () => {
    const step = join(root, "state", "step");
    assert.ok((await readdir(step)).includes("steps.db-wal"), "the WAL is among the files searched");
    const hits = await occurrencesUnder(root, SECRET);
    // The one place it is kept on purpose: the unredacted step context zip that builds mount as a secret,
    // owner-only in the context-service's blob store and the image-service's context cache.
    const kept = [];
    for (const hit of hits) {
      const file = hit.split("!")[0]!;
      const mode = (await stat(file)).mode & 0o777;
      if (
        hit.endsWith("!step_context.json") &&
        mode === 0o600 &&
        (file.startsWith(join(root, "state", "context")) || file.startsWith(join(root, "state", "image")))
      )
        kept.push(file);
      else assert.fail(`the secret is in ${hit}`);
    }
    assert.ok(kept.length > 0, "the search found the secret where it is kept on purpose");
    assert.deepEqual(await occurrencesUnder(join(root, "logs"), SECRET), []);
    assert.ok((await readFile(join(root, "logs", "step-service.log"), "utf8")).length > 0, "the services logged");
  });
});
