import assert from "node:assert/strict";
import { once } from "node:events";
import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { unzipSync } from "fflate";
import {
  ContextFileKind,
  DockerfileSource,
  type PreparedContext,
  type PrepareContextRequestSchema,
} from "../../gen/steprunner/context/v1/context_service_pb.js";
import { type TestContextService, startTestContextService } from "../support/context-service.js";
import { type GitDaemon, freePort, startGitDaemon } from "../support/git-daemon.js";
import { type Fixture, commitFiles, gitIn, makeFixture } from "../support/git-fixture.js";
import { spyOnGit } from "../support/git-spy.js";
import { run, samePassOnEither } from "../support/stack.js";
import { failure } from "../support/rpc.js";

type PrepareInit = MessageInitShape<typeof PrepareContextRequestSchema>;

async function readAll(service: TestContextService, contextId: string, kind: ContextFileKind): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const response of service.client.readContextFile({ contextId, kind })) chunks.push(Buffer.from(response.chunk));
  return Buffer.concat(chunks);
}

function stepContextJson(zip: Buffer): any {
  const entries = unzipSync(zip);
  assert.deepEqual(Object.keys(entries), ["step_context.json"]);
  return JSON.parse(Buffer.from(entries["step_context.json"]!).toString("utf8"));
}

function digest(context: PreparedContext, kind: ContextFileKind): string {
  return context.files.find((file) => file.kind === kind)!.digest;
}

describe("context-service over gRPC with real git repositories", samePassOnEither("no BuildKit"), () => {
  let work: string;
  let fixture: Fixture;
  let service: TestContextService;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), "context-service-"));
    fixture = await makeFixture(join(work, "fixture"));
    service = await startTestContextService();
  });
  after(async () => {
    await service?.stop();
    await rm(work, { recursive: true, force: true });
  });

  describe("repositories behind a git server on loopback", () => {
    let daemon: GitDaemon;
    before(async () => {
      await gitIn(work, ["clone", "-q", "--bare", fixture.path, join(work, "served", "fixture.git")]);
      daemon = await startGitDaemon(join(work, "served"));
    });
    after(async () => daemon?.stop());

    it("clones once for concurrent first requests, and looks again only at moving refs", async () => {
      const remote = await startTestContextService();
      try {
        const url = `${daemon.url}fixture.git`;
        const before = daemon.uploadPacks();
        const answers = await Promise.all(Array.from({ length: 6 }, () => remote.client.resolveRevision({ repositoryUrl: url, gitRev: "main" })));
        for (const answer of answers) assert.deepEqual([answer.gitSha, answer.movingRef], [fixture.second, true]);
        assert.equal(daemon.uploadPacks() - before, 1, "one fetch for six concurrent requests");

        const tag = await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "v1" });
        const full = await remote.client.resolveRevision({ repositoryUrl: url, gitRev: fixture.first });
        const short = await remote.client.resolveRevision({ repositoryUrl: url, gitRev: fixture.first.slice(0, 8) });
        assert.deepEqual([tag.gitSha, tag.movingRef, full.gitSha, short.gitSha], [fixture.first, false, fixture.first, fixture.first]);
        assert.equal(daemon.uploadPacks() - before, 1, "known tags and SHAs need no fetch");

        assert.equal((await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "HEAD" })).gitSha, fixture.second);
        assert.equal(daemon.uploadPacks() - before, 2, "HEAD is a moving ref: one look at where it points");

        const context = (await remote.client.prepareContext({ repositoryUrl: url, gitRev: "main" })).context!;
        const local = (await service.client.prepareContext({ repositoryUrl: fixture.path, gitRev: "main" })).context!;
        assert.equal(context.gitSha, local.gitSha);
        assert.deepEqual(
          context.files.map((file) => file.digest),
          local.files.map((file) => file.digest),
        );
      } finally {
        await remote.stop();
      }
    });

    it("fetches a moving ref only when it has moved: one look at the server per request, one fetch per move", async () => {
      const served = join(work, "served", "moving.git");
      await gitIn(work, ["clone", "-q", "--bare", fixture.path, served]);
      const url = `${daemon.url}moving.git`;
      const remote = await startTestContextService();
      const spy = await spyOnGit();
      try {
        assert.equal((await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "main" })).gitSha, fixture.second);
        assert.equal(await spy.count("fetch", url), 1, "the spy sees the first fetch");

        const packs = daemon.uploadPacks();
        for (let round = 0; round < 3; round++)
          assert.equal((await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "main" })).gitSha, fixture.second);
        assert.equal((await remote.client.prepareContext({ repositoryUrl: url, gitRev: "main" })).context!.gitSha, fixture.second);
        assert.equal((await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "HEAD" })).gitSha, fixture.second);
        assert.equal(await spy.count("fetch", url), 1, "an unmoved branch or HEAD is not fetched");
        assert.equal(await spy.count("ls-remote", url), 5, "each request looks where its ref points");
        assert.equal(daemon.uploadPacks() - packs, 5, "and that look is the only round trip");

        const tree = await gitIn(served, ["rev-parse", `${fixture.second}^{tree}`]);
        const third = await gitIn(served, ["commit-tree", tree, "-p", fixture.second, "-m", "moved"], "2024-05-01T00:00:00Z");
        await gitIn(served, ["update-ref", "refs/heads/main", third]);
        const moved = await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "main" });
        assert.deepEqual([moved.gitSha, moved.movingRef], [third, true]);
        assert.equal(await spy.count("fetch", url), 2, "a moved branch is fetched once");
        assert.equal((await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "main" })).gitSha, third);
        assert.equal((await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "HEAD" })).gitSha, third, "the fetch brought HEAD along");
        assert.equal((await remote.client.resolveRevision({ repositoryUrl: url, gitRev: "v1" })).gitSha, fixture.first);
        assert.equal(await spy.count("fetch", url), 2, "and not again");

        await gitIn(served, ["update-ref", "-d", "refs/heads/main"]);
        const gone = await failure(remote.client.resolveRevision({ repositoryUrl: url, gitRev: "main" }));
        assert.equal(gone.code, Code.NotFound, gone.message);
        assert.equal(await spy.count("fetch", url), 3, "a deleted branch is fetched once, to forget it");
      } finally {
        await spy.remove();
        await remote.stop();
      }
    });

    it("answers UNAVAILABLE for a git server that does not answer, and keeps no mirror", async () => {
      const port = await freePort();
      const error = await failure(service.client.resolveRevision({ repositoryUrl: `git://127.0.0.1:${port}/nothing.git`, gitRev: "main" }));
      assert.equal(error.code, Code.Unavailable, error.message);
      assert.match(error.message, /could not be fetched/);
      const mirrors = await readdir(join(service.stateDir, "mirrors"));
      assert.ok(
        mirrors.every((name) => !name.includes("partial")),
        mirrors.join(","),
      );
    });

    it("stops the git fetch when the caller goes away, and keeps no partial mirror", async () => {
      // A server that accepts connections and never answers: git waits until it is killed.
      const silent = net.createServer(() => undefined);
      silent.listen(0, "127.0.0.1");
      await once(silent, "listening");
      try {
        const { port } = silent.address() as net.AddressInfo;
        const error = await failure(service.client.resolveRevision({ repositoryUrl: `git://127.0.0.1:${port}/slow.git`, gitRev: "main" }, { timeoutMs: 1000 }));
        assert.equal(error.code, Code.DeadlineExceeded);
        // The caller hears DEADLINE_EXCEEDED at once; the service's clean-up follows within moments.
        let fetches = "";
        let partial: string[] = [];
        for (let attempt = 0; attempt < 50; attempt++) {
          fetches = (await run("ps", ["-o", "pid=,args=", "--ppid", String(process.pid)])).stdout
            .split("\n")
            .filter((line) => line.includes("slow.git"))
            .join("\n");
          partial = (await readdir(join(service.stateDir, "mirrors"))).filter((name) => name.includes("partial"));
          if (!fetches && partial.length === 0) break;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        assert.equal(fetches, "", "the git fetch was killed");
        assert.deepEqual(partial, [], "no partial mirror is kept");
      } finally {
        silent.close();
      }
    });

    it("answers NOT_FOUND for a repository the git server does not have", async () => {
      const error = await failure(service.client.resolveRevision({ repositoryUrl: `${daemon.url}missing.git`, gitRev: "main" }));
      assert.equal(error.code, Code.NotFound, error.message);
    });
  });

  describe("repositories on this machine", () => {
    it("fetch a moving ref only when it has moved, reading where it points from the repository itself", async () => {
      const working = join(work, "moving-local");
      await makeFixture(working);
      const bare = join(work, "moving-local-bare.git");
      await gitIn(work, ["clone", "-q", "--bare", working, bare]);
      // A working tree (its refs are in .git) by path, and a bare repository by file:// URL.
      for (const [url, repo] of [
        [working, working],
        [`file://${bare}`, bare],
      ] as const) {
        const spy = await spyOnGit();
        try {
          const first = (await service.client.resolveRevision({ repositoryUrl: url, gitRev: "main" })).gitSha;
          const fetchesBefore = await spy.count("fetch", url);
          for (let round = 0; round < 3; round++) assert.equal((await service.client.resolveRevision({ repositoryUrl: url, gitRev: "main" })).gitSha, first);
          assert.equal((await service.client.prepareContext({ repositoryUrl: url, gitRev: "main" })).context!.gitSha, first);
          assert.equal((await service.client.resolveRevision({ repositoryUrl: url, gitRev: "HEAD" })).gitSha, first);
          assert.equal(await spy.count("fetch", url), fetchesBefore, `${url}: an unmoved branch or HEAD is not fetched`);
          assert.equal(await spy.count("ls-remote", url), 0, `${url}: a repository on this machine is read, not asked`);

          const tree = await gitIn(repo, ["rev-parse", `${first}^{tree}`]);
          const next = await gitIn(repo, ["commit-tree", tree, "-p", first, "-m", "moved"], "2024-05-01T00:00:00Z");
          await gitIn(repo, ["update-ref", "refs/heads/main", next]);
          assert.equal((await service.client.resolveRevision({ repositoryUrl: url, gitRev: "main" })).gitSha, next);
          assert.equal((await service.client.resolveRevision({ repositoryUrl: url, gitRev: "HEAD" })).gitSha, next);
          assert.equal(await spy.count("fetch", url), fetchesBefore + 1, `${url}: a moved branch is fetched once`);
        } finally {
          await spy.remove();
        }
      }
    });
  });

  describe("the warm path", () => {
    it("a request seen before at an unmoved ref, or one whose properties alone changed, starts no git process", async () => {
      const working = join(work, "warm-local");
      await makeFixture(working);
      const request = (run: number) => ({ repositoryUrl: working, gitRev: "main", properties: [{ owner: "project", properties: { run } }] });
      const first = (await service.client.prepareContext(request(1))).context!;
      const spy = await spyOnGit();
      try {
        const again = (await service.client.prepareContext(request(1))).context!;
        assert.equal(again.contextId, first.contextId, "the same request gets the same context");
        const changed = (await service.client.prepareContext(request(2))).context!;
        assert.notEqual(changed.contextId, first.contextId, "other properties, another context");
        assert.equal(changed.gitSha, first.gitSha);
        assert.equal((await service.client.prepareContext({ ...request(1), gitRev: "HEAD" })).context!.gitSha, first.gitSha);
        assert.equal(await spy.total(), 0, "branches and HEAD are read from the repository's and the mirror's files, the commit's parts remembered");

        const tree = await gitIn(working, ["rev-parse", `${first.gitSha}^{tree}`]);
        const next = await gitIn(working, ["commit-tree", tree, "-p", first.gitSha, "-m", "moved"], "2024-05-01T00:00:00Z");
        await gitIn(working, ["update-ref", "refs/heads/main", next]);
        const calls = await spy.total();
        assert.equal((await service.client.prepareContext(request(1))).context!.gitSha, next, "a moved branch is seen");
        assert.ok((await spy.total()) > calls, "and fetched with git");
      } finally {
        await spy.remove();
      }
    });
  });

  describe("the Dockerfile", () => {
    it("is the repository's <repo folder>/Dockerfile when the commit has one", async () => {
      const context = (await service.client.prepareContext({ repositoryUrl: fixture.path, gitRev: "main" })).context!;
      assert.equal(context.dockerfileSource, DockerfileSource.REPOSITORY);
      assert.equal(context.repoFolder, ".mintpress");
      assert.deepEqual(context.warnings, []);
      assert.match((await readAll(service, context.contextId, ContextFileKind.DOCKERFILE)).toString(), /RUN echo custom/);
    });

    it("is the default one when the commit has none", async () => {
      const { dockerfile } = await service.client.getDefaultDockerfile({});
      const context = (await service.client.prepareContext({ repositoryUrl: fixture.path, gitRev: "v1" })).context!;
      assert.equal(context.dockerfileSource, DockerfileSource.DEFAULT);
      assert.equal((await readAll(service, context.contextId, ContextFileKind.DOCKERFILE)).toString(), dockerfile);
    });

    it("comes from the other of .opschain and .mintpress, with a warning, when the folder asked for is not in the commit", async () => {
      const asked = (await service.client.prepareContext({ repositoryUrl: fixture.path, gitRev: "main", repoFolder: ".opschain" })).context!;
      assert.equal(asked.dockerfileSource, DockerfileSource.REPOSITORY);
      assert.equal(asked.repoFolder, ".mintpress");
      assert.ok(
        asked.warnings.some((warning) =>
          /^the repo folder \.opschain \(OPSCHAIN_REPO_FOLDER\) is not in commit [0-9a-f]{12}, but \.mintpress is/.test(warning),
        ),
        asked.warnings.join("\n"),
      );
      const named = (await service.client.prepareContext({ repositoryUrl: fixture.path, gitRev: "main", repoFolder: ".mintpress" })).context!;
      assert.equal(named.repoFolder, ".mintpress");
      assert.deepEqual(
        named.warnings.filter((warning) => /repo folder/.test(warning)),
        [],
      );
    });

    it("warns, without refusing, about a Dockerfile that leaves the base runner or sets ENTRYPOINT", async () => {
      const repo = join(work, "custom-warnings");
      await makeFixture(repo);
      await commitFiles(repo, { ".mintpress/Dockerfile": 'FROM debian:12\nENTRYPOINT ["/bin/sh"]\n' }, "own base", "2024-03-01T00:00:00Z");
      const context = (await service.client.prepareContext({ repositoryUrl: repo, gitRev: "main" })).context!;
      assert.equal(context.dockerfileSource, DockerfileSource.REPOSITORY);
      assert.equal(context.warnings.length, 2, context.warnings.join("\n"));
      assert.match(context.warnings[0]!, /does not start FROM \$\{OPSCHAIN_BASE_RUNNER\}/);
      assert.match(context.warnings[1]!, /line 2 sets ENTRYPOINT/);
    });

    it("is served at GET /downloads/Dockerfile with an ETag", async () => {
      const response = await fetch(`http://${service.address}/downloads/Dockerfile`);
      assert.equal(response.status, 200);
      const text = await response.text();
      assert.match(text, /FROM \$\{OPSCHAIN_BASE_RUNNER\}/);
      const again = await fetch(`http://${service.address}/downloads/Dockerfile`, { headers: { "if-none-match": response.headers.get("etag")! } });
      assert.equal(again.status, 304);
    });
  });

  describe("step_context.json.zip", () => {
    const request: PrepareInit = {
      repositoryUrl: "",
      gitRev: "main",
      properties: [
        { owner: "project", properties: { opschain: { env: { API_TOKEN: "s3cret", REGION: "au" } }, size: 3 } },
        { owner: "environment", properties: { opschain: { env: { REGION: "nz" } } } },
      ],
      secretPointers: ["/project/opschain/env/API_TOKEN"],
      contextValues: {
        change: { id: "change-1", action: "deploy", projectCode: "demo", environmentCode: "dev", createdBy: "ann" },
        step: { id: "step-1", action: "deploy", fullPath: "deploy" },
        user: { name: "ann" },
      },
    };

    it("redacts secrets in the build context's copy and keeps them in the secret copy only", async () => {
      const context = (await service.client.prepareContext({ ...request, repositoryUrl: fixture.path })).context!;
      assert.deepEqual(
        context.files.map((file) => [ContextFileKind[file.kind], file.name]),
        [
          ["STEP_CONTEXT_ZIP", "step_context.json.zip"],
          ["DOCKERFILE", "Dockerfile"],
        ],
      );
      const redacted = stepContextJson(await readAll(service, context.contextId, ContextFileKind.STEP_CONTEXT_ZIP));
      const full = stepContextJson(await readAll(service, context.contextId, ContextFileKind.SECRET_STEP_CONTEXT_ZIP));
      assert.equal(redacted.properties.project.opschain.env.API_TOKEN, "[REDACTED]");
      assert.equal(full.properties.project.opschain.env.API_TOKEN, "s3cret");
      assert.ok(!(await readAll(service, context.contextId, ContextFileKind.STEP_CONTEXT_ZIP)).includes("s3cret"));
      assert.equal(redacted.properties.environment.opschain.env.REGION, "nz");
      assert.deepEqual(redacted.context.parent_order, ["project", "environment"]);
      assert.equal(redacted.context.change.git_rev, "main");
      assert.equal(redacted.context.change.commit_sha, fixture.second);
      assert.equal(redacted.context.step.change_id, "change-1");
      assert.equal(context.secretStepContext?.kind, ContextFileKind.SECRET_STEP_CONTEXT_ZIP);
    });

    it("is byte-identical for the same inputs, and the context id changes exactly when a file does", async () => {
      const one = (await service.client.prepareContext({ ...request, repositoryUrl: fixture.path })).context!;
      const two = (await service.client.prepareContext({ ...request, repositoryUrl: fixture.path })).context!;
      assert.equal(one.contextId, two.contextId);
      assert.equal(digest(one, ContextFileKind.STEP_CONTEXT_ZIP), digest(two, ContextFileKind.STEP_CONTEXT_ZIP));
      const described = (await service.client.getContext({ contextId: one.contextId })).context!;
      assert.deepEqual(described.files, one.files);

      const changed = structuredClone(request);
      changed.properties![1]!.properties = { opschain: { env: { REGION: "uk" } } };
      const three = (await service.client.prepareContext({ ...changed, repositoryUrl: fixture.path })).context!;
      assert.notEqual(three.contextId, one.contextId);
      assert.notEqual(digest(three, ContextFileKind.STEP_CONTEXT_ZIP), digest(one, ContextFileKind.STEP_CONTEXT_ZIP));
      assert.deepEqual(three.directories, one.directories, "the repository's directories do not depend on the properties");

      const rotated = structuredClone(request);
      rotated.properties![0]!.properties = { opschain: { env: { API_TOKEN: "rotated", REGION: "au" } }, size: 3 };
      const four = (await service.client.prepareContext({ ...rotated, repositoryUrl: fixture.path })).context!;
      assert.equal(digest(four, ContextFileKind.STEP_CONTEXT_ZIP), digest(one, ContextFileKind.STEP_CONTEXT_ZIP), "the redacted copy is unchanged");
      assert.notEqual(four.contextId, one.contextId, "one id never stands for two different secret zips");
    });
  });

  // Bad input (refused repositories, revisions, fields and hostile trees) is in bad-inputs.test.ts.
  describe("repositories that are unusual but fine", () => {
    it("a Dockerfile symlink inside the repository is followed", async () => {
      const repo = join(work, "symlink-in");
      await makeFixture(repo);
      await gitIn(repo, ["rm", "-q", ".mintpress/Dockerfile"]);
      await commitFiles(
        repo,
        { "build/Dockerfile": "ARG OPSCHAIN_BASE_RUNNER\nFROM ${OPSCHAIN_BASE_RUNNER}\nRUN echo linked\n", ".mintpress/Dockerfile": "->../build/Dockerfile" },
        "link",
        "2024-03-02T00:00:00Z",
      );
      const context = (await service.client.prepareContext({ repositoryUrl: repo, gitRev: "main" })).context!;
      assert.match((await readAll(service, context.contextId, ContextFileKind.DOCKERFILE)).toString(), /RUN echo linked/);
    });

    it("submodules and LFS pointers: prepared, with a warning that says what is (not) in repo.tar", async () => {
      const repo = join(work, "submodule-lfs");
      await makeFixture(repo);
      await mkdir(join(repo, "vendor", "lib"), { recursive: true });
      await gitIn(repo, ["update-index", "--add", "--cacheinfo", `160000,${fixture.first},vendor/lib`]);
      await gitIn(repo, ["config", "-f", ".gitmodules", "submodule.lib.path", "vendor/lib"]);
      await gitIn(repo, ["config", "-f", ".gitmodules", "submodule.lib.url", "https://example.invalid/lib.git"]);
      await commitFiles(
        repo,
        {
          ".gitattributes": "*.bin filter=lfs diff=lfs merge=lfs -text\n",
          "big.bin": "version https://git-lfs.github.com/spec/v1\noid sha256:0000000000000000000000000000000000000000000000000000000000000000\nsize 1\n",
        },
        "submodule and lfs",
        "2024-03-04T00:00:00Z",
      );
      const context = (await service.client.prepareContext({ repositoryUrl: repo, gitRev: "main" })).context!;
      assert.equal(context.warnings.length, 2, context.warnings.join("\n"));
      assert.match(context.warnings[0]!, /submodules are not included: vendor\/lib appear in the repository as empty directories/);
      assert.match(context.warnings[1]!, /Git LFS: LFS files are in the repository as their pointer files/);
    });
  });
});
