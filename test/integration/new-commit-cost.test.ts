import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ContextFileKind } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { ContextServiceProvider } from "../../services/image-service/api/context-service-provider.js";
import { BuildKitClient } from "../../services/image-service/buildkit/client.js";
import { buildDockerfile } from "../../services/image-service/buildkit/dockerfile-build.js";
import { ProgressTracker } from "../../services/image-service/buildkit/progress.js";
import { ContextCache } from "../../services/image-service/core/context-cache.js";
import { type DockerfileBuilder, ImageBuilder } from "../../services/image-service/core/image-builder.js";
import { ReuseRecords } from "../../services/image-service/core/reuse-records.js";
import { DockerApi } from "../../services/image-service/docker/docker-api.js";
import { serviceTransport } from "../../services/shared/client/transport.js";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";
import { type TestContextService, startTestContextService } from "../support/context-service.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";
import { needsDockerd, run, samePassOnEither, stack } from "../support/stack.js";
import { StandaloneBuildKitd, buildkitdUnavailable } from "../support/standalone-buildkitd.js";
import { clientSecurityFromSettings } from "../../services/shared/config/common.js";

const STEPS_REPOSITORY = "steprunner-test/new-commit";
const HISTORY_COMMITS = 20_000;
const FILES = 400;

/**
 * A repository with a long history made in seconds by `git fast-import`: each commit rewrites one of FILES
 * files, so the history holds many times the objects of the tree, as a real project's does.
 */
async function longHistory(dir: string): Promise<void> {
  await gitIn(dir, ["init", "-q", "-b", "main"]);
  const lines: string[] = [];
  for (let i = 1; i <= HISTORY_COMMITS; i++) {
    const content = `file ${i % FILES}, revision ${i}\n${"history ".repeat(40)}\n`;
    const message = `commit ${i}\n`;
    lines.push(
      "commit refs/heads/main",
      `committer History <history@fixture.test> ${1_600_000_000 + i} +0000`,
      `data ${Buffer.byteLength(message)}`,
      message,
      `M 100644 inline src/file-${i % FILES}.txt`,
      `data ${Buffer.byteLength(content)}`,
      content,
    );
  }
  const child = spawn("git", ["fast-import", "--quiet"], { cwd: dir, stdio: ["pipe", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("close", resolve));
  child.stdin.end(lines.join("\n"));
  assert.equal(await exited, 0, stderr);
  await gitIn(dir, ["reset", "-q", "--hard", "main"]);
}

/** Counts the bytes each build's session sent. */
class CountingBuilder implements DockerfileBuilder {
  sent: Array<{ path: string; bytes: number }> = [];
  constructor(private readonly client: BuildKitClient) {}
  build: DockerfileBuilder["build"] = (build, onStatus, signal) =>
    buildDockerfile(this.client, { ...build, observer: { fileSent: (_dir, path, bytes) => this.sent.push({ path, bytes }) } }, onStatus, signal);
  take(): number {
    const total = this.sent.reduce((sum, sent) => sum + sent.bytes, 0);
    this.sent = [];
    return total;
  }
}

/** The long-history repository with actions.rb on top, a context-service in this process and a client of it. */
interface HistoryFixture {
  work: string;
  repo: string;
  contexts: TestContextService;
  transport: ReturnType<typeof serviceTransport>;
  close(): Promise<void>;
}

async function historyFixture(prefix: string): Promise<HistoryFixture> {
  await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
  const work = await mkdtemp(join(stack.stateDir, "tmp", prefix));
  const repo = join(work, "repo");
  await mkdir(repo);
  await longHistory(repo);
  await commitFiles(repo, { "actions.rb": 'task :hello do puts "hello" end\n' }, "actions", "2024-03-01T00:00:00Z");
  const contexts = await startTestContextService();
  const transport = serviceTransport(contexts.address, clientSecurityFromSettings());
  return {
    work,
    repo,
    contexts,
    transport,
    close: async () => {
      transport.close();
      await contexts.stop();
      await rm(work, { recursive: true, force: true });
    },
  };
}

describe(
  "a new commit on a repository with a long history",
  needsDockerd("this half measures its BuildKit; the other half starts a buildkitd of its own"),
  () => {
    let fixture: HistoryFixture;
    let client: BuildKitClient;
    let docker: DockerApi;
    let counting: CountingBuilder;
    let images: ImageBuilder;

    before(async () => {
      fixture = await historyFixture("new-commit-");
      client = new BuildKitClient(stack.buildkitAddr);
      docker = new DockerApi(`${stack.runDir}/docker.sock`);
      counting = new CountingBuilder(client);
      const contexts = new ContextCache(new ContextServiceProvider(fixture.transport.transport), join(fixture.work, "cache"));
      images = new ImageBuilder({
        contexts: contexts,
        buildkit: counting,
        images: docker,
        registry: new RegistryClient(stack.registry),
        records: new ReuseRecords(join(fixture.work, "records")),
        settings: {
          defaultBaseRunner: stack.baseRunner,
          version: "0.1.0",
          stepsRepository: STEPS_REPOSITORY,
          defaultHandoff: "layer-store",
          reuseTtlMs: 3_600_000,
          maxConcurrentBuilds: 2,
          transportAttempts: 1,
        },
      });
    });

    after(async () => {
      client?.close();
      const listed = await run("/usr/bin/docker", [
        "--host",
        `unix://${stack.runDir}/docker.sock`,
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        STEPS_REPOSITORY,
      ]);
      for (const name of listed.stdout.split("\n").filter(Boolean)) await docker.removeImage(name).catch(() => {});
      await fixture?.close();
    });

    async function step(): Promise<{ bytes: number; layerDirectories: string[]; contextId: string }> {
      const { context } = await fixture.contexts.client.prepareContext({ repositoryUrl: fixture.repo, gitRev: "main" });
      assert.ok(context);
      const image = await images.build(
        { contextId: context.contextId, baseRunner: "", network: "none", buildWithoutCache: false, handoff: undefined },
        () => {},
      );
      assert.equal(image.reused, false);
      return { bytes: counting.take(), layerDirectories: image.layerDirectories, contextId: context.contextId };
    }

    it("sends BuildKit at most 5% of what the first step sent, and never makes repo.tar for the default Dockerfile", async () => {
      assert.equal(await gitIn(fixture.repo, ["rev-list", "--count", "HEAD"]), String(HISTORY_COMMITS + 1));
      const first = await step();
      assert.ok(first.bytes > 1_000_000, `the first step sends the history (${first.bytes} bytes)`);

      await commitFiles(fixture.repo, { "src/file-7.txt": "one file changed\n" }, "one file", "2024-03-02T00:00:00Z");
      const second = await step();
      assert.ok(second.bytes <= first.bytes * 0.05, `a one-file commit sent ${second.bytes} bytes, the first step ${first.bytes}`);
      // The new commit's layer holds the changed file; the history and base layers are the first step's.
      assert.equal(await readFile(join(second.layerDirectories.at(-1)!, "opt/opschain/src/file-7.txt"), "utf8"), "one file changed\n");
      assert.deepEqual(second.layerDirectories.slice(0, -1), first.layerDirectories.slice(0, -1));

      const { context } = await fixture.contexts.client.getContext({ contextId: second.contextId });
      assert.equal(
        context?.files.some((file) => file.kind === ContextFileKind.REPO_TAR),
        false,
        "repo.tar is not in the default Dockerfile's context",
      );
      const blobs = join(fixture.contexts.stateDir, "cache", "blobs");
      for (const name of await readdir(blobs)) assert.ok((await stat(join(blobs, name))).size < 64 * 1024, `${name} is only a zip or a Dockerfile`);
    });
  },
);

describe(
  "a new commit on a repository with a long history, on a standalone buildkitd v0.24",
  samePassOnEither("it starts a buildkitd of its own", buildkitdUnavailable),
  () => {
    let fixture: HistoryFixture;
    let buildkitd: StandaloneBuildKitd;
    let client: BuildKitClient;
    let cache: ContextCache;

    before(async () => {
      fixture = await historyFixture("new-commit-buildkitd-");
      cache = new ContextCache(new ContextServiceProvider(fixture.transport.transport), join(fixture.work, "cache"));
      buildkitd = await StandaloneBuildKitd.start({ allowNetworkHost: false });
      client = new BuildKitClient(buildkitd.address);
    });

    after(async () => {
      client?.close();
      await buildkitd?.stop();
      await fixture?.close();
    });

    /** One build of the default Dockerfile through the tunnel; returns the bytes sent and the COPY steps' states. */
    async function step(): Promise<{ bytes: number; copies: Map<string, string> }> {
      const { context: prepared } = await fixture.contexts.client.prepareContext({ repositoryUrl: fixture.repo, gitRev: "main" });
      const context = await cache.materialize(prepared!.contextId);
      let bytes = 0;
      const tracker = new ProgressTracker();
      const copies = new Map<string, string>();
      await buildDockerfile(
        client,
        {
          context: { entries: context.contextSources },
          dockerfileDir: context.dockerfileDir,
          buildArgs: { GIT_REV: "main", GIT_SHA: context.gitSha, OPSCHAIN_BASE_RUNNER: stack.baseRunner, OPSCHAIN_VERSION: "0.1.0" },
          network: "none",
          noCache: false,
          exporter: { type: "image", attrs: { name: `steprunner-test/new-commit-buildkitd:${context.gitSha}` } },
          sessionName: "new commit on buildkitd",
          sharedKey: `steprunner-${context.repositoryId.slice(0, 16)}`,
          observer: { fileSent: (_dir, _path, sent) => (bytes += sent) },
        },
        (status) => {
          for (const event of tracker.update(status))
            if (event.kind === "vertex" && event.name.includes("COPY")) copies.set(event.name.replace(/^\[[^\]]*\] /, ""), event.state);
        },
        AbortSignal.timeout(300_000),
      );
      return { bytes, copies };
    }

    it("sends at most 5% of the first step's bytes, and rebuilds only the changes layer", async () => {
      const first = await step();
      assert.ok(first.bytes > 1_000_000, `the first step sends the history (${first.bytes} bytes)`);
      await commitFiles(fixture.repo, { "src/file-7.txt": "one file changed\n" }, "one file", "2024-03-02T00:00:00Z");
      const second = await step();
      assert.ok(second.bytes <= first.bytes * 0.05, `a one-file commit sent ${second.bytes} bytes, the first step ${first.bytes}`);
      assert.equal(second.copies.get("COPY --chown=10001:10001 history/ /opt/opschain/"), "cached");
      assert.equal(second.copies.get("COPY --chown=10001:10001 base/ /opt/opschain/"), "cached");
      assert.equal(second.copies.get("COPY --chown=10001:10001 changes/ /opt/opschain/"), "completed");
    });
  },
);
