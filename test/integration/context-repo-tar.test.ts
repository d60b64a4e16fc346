import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { ContextFileKind, type PreparedContext } from "../../gen/steprunner/context/v1/context_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { PrepareContextRequestSchema } from "../../gen/steprunner/context/v1/context_service_pb.js";
import { COMPRESSED_OBJECT_LIMIT } from "../../services/context-service/core/git-objects.js";
import { type Fixture, commitFiles, gitIn, makeFixture } from "../support/git-fixture.js";
import { type TestContextService, startTestContextService } from "../support/context-service.js";
import { run } from "../support/stack.js";

/**
 * repo.tar of the fixture's second commit (default options). It depends only on the commit, our tar and .git
 * layout, and fflate's level-6 output: a change here means every cached build context changes too.
 */
const GOLDEN_REPO_TAR = "sha256:e5d95c1bde858eb888fa7acbaa50977d971db7b839af7197f844b3420e9566cd";

type PrepareInit = MessageInitShape<typeof PrepareContextRequestSchema>;

async function readFileOf(service: TestContextService, context: PreparedContext, kind: ContextFileKind, offset = 0n): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const response of service.client.readContextFile({ contextId: context.contextId, kind, offset })) chunks.push(Buffer.from(response.chunk));
  return Buffer.concat(chunks);
}

function digestOf(context: PreparedContext, kind: ContextFileKind): string {
  const file = context.files.find((candidate) => candidate.kind === kind);
  assert.ok(file, `no file of kind ${ContextFileKind[kind]}`);
  return file.digest;
}

async function prepare(service: TestContextService, request: PrepareInit): Promise<PreparedContext> {
  const { context } = await service.client.prepareContext(request);
  assert.ok(context);
  return context;
}

async function extract(tarBytes: Buffer, into: string): Promise<void> {
  await mkdir(into, { recursive: true });
  await writeFile(`${into}.tar`, tarBytes);
  const result = await run("tar", ["-xf", `${into}.tar`, "-C", into, "--no-same-owner"]);
  assert.equal(result.code, 0, result.stderr);
}

const sha256 = (bytes: Buffer) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

describe("context-service repo.tar from real git repositories", () => {
  let work: string;
  let fixture: Fixture;
  let service: TestContextService;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), "context-repo-tar-"));
    fixture = await makeFixture(join(work, "fixture"));
    service = await startTestContextService();
  });
  after(async () => {
    await service?.stop();
    await rm(work, { recursive: true, force: true });
  });

  it("gives the fixture's golden repo.tar digest, and the bytes it streams match the digest", async () => {
    const context = await prepare(service, { repositoryUrl: fixture.path, gitRev: "main" });
    assert.equal(context.gitSha, fixture.second);
    assert.equal(digestOf(context, ContextFileKind.REPO_TAR), GOLDEN_REPO_TAR);
    assert.equal(sha256(await readFileOf(service, context, ContextFileKind.REPO_TAR)), GOLDEN_REPO_TAR);
  });

  it("gives a different repo.tar for a different commit", async () => {
    const first = await prepare(service, { repositoryUrl: fixture.path, gitRev: "v1" });
    assert.equal(first.gitSha, fixture.first);
    assert.notEqual(digestOf(first, ContextFileKind.REPO_TAR), GOLDEN_REPO_TAR);
  });

  it("gives byte-identical repo.tar from two mirrors with different fetch histories", async () => {
    // Mirror A sees the first commit, then the second, then an unrelated branch; mirror B fetches once at the end.
    const upstream = join(work, "upstream");
    await gitIn(work, ["clone", "-q", "--bare", fixture.path, upstream]);
    await gitIn(upstream, ["update-ref", "refs/heads/main", fixture.first]);
    const other = await startTestContextService();
    try {
      assert.equal((await other.client.resolveRevision({ repositoryUrl: upstream, gitRev: "main" })).gitSha, fixture.first);
      await gitIn(upstream, ["update-ref", "refs/heads/main", fixture.second]);
      assert.equal((await other.client.resolveRevision({ repositoryUrl: upstream, gitRev: "main" })).gitSha, fixture.second);
      const side = join(work, "side");
      await gitIn(work, ["clone", "-q", upstream, side]);
      await commitFiles(side, { "side.txt": "only on a side branch\n" }, "side", "2024-02-01T00:00:00Z");
      await gitIn(side, ["push", "-q", "origin", "HEAD:refs/heads/side"]);
      await gitIn(upstream, ["update-ref", "refs/heads/main", fixture.second]);
      assert.ok((await other.client.resolveRevision({ repositoryUrl: upstream, gitRev: "side" })).gitSha);
      // Repacked with other delta choices: git's own pack bytes now differ from mirror B's.
      const [mirrorA] = await readdir(join(other.stateDir, "mirrors"));
      await gitIn(join(other.stateDir, "mirrors", mirrorA!), ["repack", "-q", "-a", "-d", "-f", "--window=250", "--depth=250"]);
      const fromA = await prepare(other, { repositoryUrl: upstream, gitRev: fixture.second });
      const fromB = await prepare(service, { repositoryUrl: fixture.path, gitRev: fixture.second.slice(0, 10) });
      assert.equal(digestOf(fromA, ContextFileKind.REPO_TAR), digestOf(fromB, ContextFileKind.REPO_TAR));
      assert.equal(digestOf(fromA, ContextFileKind.REPO_TAR), GOLDEN_REPO_TAR);
    } finally {
      await other.stop();
    }
  });

  it("unpacks to a repository at GIT_SHA with its full history and a clean status", async () => {
    const context = await prepare(service, { repositoryUrl: fixture.path, gitRev: "main" });
    const dir = join(work, "unpacked");
    await extract(await readFileOf(service, context, ContextFileKind.REPO_TAR), dir);
    assert.equal(await gitIn(dir, ["rev-parse", "HEAD"]), fixture.second);
    assert.deepEqual((await gitIn(dir, ["log", "--format=%H"])).split("\n"), [fixture.second, fixture.first]);
    assert.equal(await gitIn(dir, ["status", "--porcelain", "--ignored"]), "");
    assert.equal(await gitIn(dir, ["for-each-ref"]), "", "no refs besides the detached HEAD");
    assert.equal((await run("git", ["fsck", "--strict"], { cwd: dir })).code, 0);
    // export-subst is never applied: the file is the committed blob, whatever refs the mirror has.
    assert.equal(await readFile(join(dir, "VERSION"), "utf8"), "$Format:%H$\n");
    assert.equal(await readFile(join(dir, "docs/internal/notes.txt"), "utf8"), "not for the image\n");
  });

  it("honours export-ignore when asked, and git status stays clean", async () => {
    const context = await prepare(service, { repositoryUrl: fixture.path, gitRev: "main", honorExportIgnore: true });
    assert.notEqual(digestOf(context, ContextFileKind.REPO_TAR), GOLDEN_REPO_TAR);
    const dir = join(work, "export-ignore");
    await extract(await readFileOf(service, context, ContextFileKind.REPO_TAR), dir);
    await assert.rejects(readFile(join(dir, "docs/internal/notes.txt")));
    assert.equal(await readFile(join(dir, "docs/guide.md"), "utf8"), "guide\n");
    assert.equal(await gitIn(dir, ["status", "--porcelain"]), "");
    assert.match(await gitIn(dir, ["ls-files", "-v", "docs/internal/notes.txt"]), /^S /);
  });

  it("leaves .git out when exclude_git_history is set", async () => {
    const context = await prepare(service, { repositoryUrl: fixture.path, gitRev: "main", excludeGitHistory: true });
    const dir = join(work, "no-git");
    await extract(await readFileOf(service, context, ContextFileKind.REPO_TAR), dir);
    await assert.rejects(readFile(join(dir, ".git/HEAD")));
    assert.equal(await readFile(join(dir, "README.md"), "utf8"), "# fixture\n");
    const names = (await run("tar", ["-tvf", `${dir}.tar`])).stdout.trim().split("\n");
    for (const line of names) assert.match(line, /^(-rw[-x]r-[-x]r-[-x]|drwxr-xr-x|lrwxrwxrwx) opschain\/opschain .* 2000-01-01 00:00 /);
  });

  it("stores objects above the compression limit so that git reads them back", async () => {
    const repo = join(work, "big-object");
    await makeFixture(repo);
    const big = randomBytes(COMPRESSED_OBJECT_LIMIT + 70_000).toString("base64");
    const sha = await commitFiles(repo, { "big.txt": big }, "big", "2024-05-01T00:00:00Z");
    const context = await prepare(service, { repositoryUrl: repo, gitRev: "main" });
    assert.equal(context.gitSha, sha);
    const dir = join(work, "big-object-unpacked");
    await extract(await readFileOf(service, context, ContextFileKind.REPO_TAR), dir);
    assert.equal((await run("git", ["fsck", "--strict"], { cwd: dir })).code, 0);
    assert.equal(await gitIn(dir, ["status", "--porcelain"]), "");
    assert.equal(await readFile(join(dir, "big.txt"), "utf8"), big);
  });

  it("streams a file from an offset, and refuses an offset past its end", async () => {
    const context = await prepare(service, { repositoryUrl: fixture.path, gitRev: "main" });
    const whole = await readFileOf(service, context, ContextFileKind.REPO_TAR);
    assert.ok(whole.length > 2048);
    assert.deepEqual(await readFileOf(service, context, ContextFileKind.REPO_TAR, 1000n), whole.subarray(1000));
    const past = await readFileOf(service, context, ContextFileKind.REPO_TAR, BigInt(whole.length + 1)).catch((error) => ConnectError.from(error));
    assert.ok(past instanceof ConnectError);
    assert.equal(past.code, Code.OutOfRange);
  });
});
