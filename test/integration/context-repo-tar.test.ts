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
import { type Fixture, commitFiles, gitIn, makeFixture } from "../support/git-fixture.js";
import { type TestContextService, startTestContextService } from "../support/context-service.js";
import { run, samePassOnEither } from "../support/stack.js";

/** A big blob, as a repository with a vendored archive has: git packs it like any other. */
const BIG_OBJECT_BYTES = 5 * 1024 * 1024;

type PrepareInit = MessageInitShape<typeof PrepareContextRequestSchema>;

async function readFileOf(service: TestContextService, context: PreparedContext, kind: ContextFileKind, offset = 0n): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const response of service.client.readContextFile({ contextId: context.contextId, kind, offset })) chunks.push(Buffer.from(response.chunk));
  return Buffer.concat(chunks);
}

/** The repository as a build gets it: each directory of the context copied over the ones before. */
async function composed(context: PreparedContext, into: string): Promise<string> {
  await mkdir(into, { recursive: true });
  for (const directory of context.directories) {
    const copied = await run("cp", ["-a", `${directory.hostPath}/.`, into]);
    assert.equal(copied.code, 0, copied.stderr);
  }
  return into;
}

/** What a repository holds, as git sees it: HEAD, every object id, the index, each file's content and mode. */
async function describeRepository(dir: string): Promise<Record<string, string>> {
  const files = (await gitIn(dir, ["ls-files", "-s"])).split("\n");
  const contents = await Promise.all(
    files.map(async (line) => {
      const path = line.split("\t")[1]!;
      const bytes = await readFile(join(dir, path)).catch(() => Buffer.from("(absent)"));
      return `${line} ${sha256(bytes)}`;
    }),
  );
  return {
    head: await gitIn(dir, ["rev-parse", "HEAD"]),
    objects: await gitIn(dir, ["cat-file", "--batch-all-objects", "--batch-check=%(objectname) %(objecttype)"]),
    files: contents.join("\n"),
    status: await gitIn(dir, ["status", "--porcelain", "--ignored"]),
    fsck: String((await run("git", ["fsck", "--strict"], { cwd: dir })).code),
  };
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

describe("context-service repo.tar from real git repositories", samePassOnEither("no BuildKit"), () => {
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

  it("lists no repo.tar for the default Dockerfile, and streams one on request whose bytes match its digest", async () => {
    const context = await prepare(service, { repositoryUrl: fixture.path, gitRev: "main" });
    assert.equal(context.gitSha, fixture.second);
    assert.equal(
      context.files.find((file) => file.kind === ContextFileKind.REPO_TAR),
      undefined,
    );
    assert.deepEqual(
      context.directories.map((directory) => directory.name),
      ["history", "base", "changes"],
    );
    const first = await readFileOf(service, context, ContextFileKind.REPO_TAR);
    assert.deepEqual(await readFileOf(service, context, ContextFileKind.REPO_TAR), first, "made once, then read from the cache");
  });

  it("gives the same repository (tree, objects, index, HEAD) from two mirrors with different histories and bases", async () => {
    // Mirror A sees the first commit, then the second, then an unrelated branch, and is repacked; mirror B
    // fetches once at the end. A's layers are built on the first commit's history and tree, B's on the second's.
    const upstream = join(work, "upstream");
    await gitIn(work, ["clone", "-q", "--bare", fixture.path, upstream]);
    await gitIn(upstream, ["update-ref", "refs/heads/main", fixture.first]);
    const other = await startTestContextService();
    try {
      const atFirst = await prepare(other, { repositoryUrl: upstream, gitRev: "main" });
      assert.equal(atFirst.gitSha, fixture.first);
      await gitIn(upstream, ["update-ref", "refs/heads/main", fixture.second]);
      const side = join(work, "side");
      await gitIn(work, ["clone", "-q", upstream, side]);
      await commitFiles(side, { "side.txt": "only on a side branch\n" }, "side", "2024-02-01T00:00:00Z");
      await gitIn(side, ["push", "-q", "origin", "HEAD:refs/heads/side"]);
      assert.ok((await other.client.resolveRevision({ repositoryUrl: upstream, gitRev: "side" })).gitSha);
      const [mirrorA] = await readdir(join(other.stateDir, "mirrors"));
      await gitIn(join(other.stateDir, "mirrors", mirrorA!), ["repack", "-q", "-a", "-d", "-f", "--window=250", "--depth=250"]);
      const fromA = await prepare(other, { repositoryUrl: upstream, gitRev: fixture.second });
      const fromB = await prepare(service, { repositoryUrl: fixture.path, gitRev: fixture.second.slice(0, 10) });
      assert.equal(fromA.directories[0]!.identity, `pack:${fixture.first}`, "A's history is the first commit's pack");
      assert.equal(fromB.directories[0]!.identity, `pack:${fixture.second}`);
      const a = await describeRepository(await composed(fromA, join(work, "from-a")));
      const b = await describeRepository(await composed(fromB, join(work, "from-b")));
      assert.deepEqual(a, b);
      assert.equal(a.head, fixture.second);
      assert.equal(a.status, "");
      assert.equal(a.fsck, "0");
      assert.ok(!a.objects.includes(await gitIn(side, ["rev-parse", "HEAD"])), "no object of the side branch");
      const fromTar = join(work, "from-a-tar");
      await extract(await readFileOf(other, fromA, ContextFileKind.REPO_TAR), fromTar);
      assert.deepEqual(await describeRepository(fromTar), a, "repo.tar holds the same repository");
    } finally {
      await other.stop();
    }
  });

  it("writes only what a new commit changed; a deletion starts a new base tree", async () => {
    const repo = join(work, "incremental");
    await makeFixture(repo);
    const before = await prepare(service, { repositoryUrl: repo, gitRev: "main" });
    const changedSha = await commitFiles(repo, { "README.md": "# changed\n" }, "change", "2024-06-01T00:00:00Z");
    const after = await prepare(service, { repositoryUrl: repo, gitRev: "main" });
    assert.equal(after.gitSha, changedSha);
    assert.equal(after.directories[0]!.identity, before.directories[0]!.identity, "the history pack is kept");
    assert.equal(after.directories[1]!.identity, before.directories[1]!.identity, "the base tree is kept");
    const listing = (await run("find", [".", "-type", "f"], { cwd: after.directories[2]!.hostPath })).stdout.trim().split("\n").sort();
    assert.deepEqual(
      listing.filter((path) => !path.startsWith("./.git/")),
      ["./README.md"],
    );
    assert.equal(listing.filter((path) => path.startsWith("./.git/objects/pack/")).length, 2, "one pack of the new objects");
    const afterRepository = await describeRepository(await composed(after, join(work, "incremental-after")));
    assert.equal(afterRepository.head, changedSha);
    assert.equal(afterRepository.status, "");
    assert.equal(afterRepository.fsck, "0");
    await gitIn(repo, ["rm", "-q", "README.md"]);
    await gitIn(repo, ["commit", "-q", "-m", "delete"], "2024-06-02T00:00:00Z");
    const deleted = await prepare(service, { repositoryUrl: repo, gitRev: "main" });
    assert.notEqual(deleted.directories[1]!.identity, before.directories[1]!.identity, "a deletion needs a new base tree");
    const dir = await composed(deleted, join(work, "incremental-deleted"));
    await assert.rejects(readFile(join(dir, "README.md")));
    assert.equal((await describeRepository(dir)).status, "");
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
    const dir = join(work, "export-ignore");
    await extract(await readFileOf(service, context, ContextFileKind.REPO_TAR), dir);
    await assert.rejects(readFile(join(dir, "docs/internal/notes.txt")));
    assert.equal(await readFile(join(dir, "docs/guide.md"), "utf8"), "guide\n");
    assert.equal(await gitIn(dir, ["status", "--porcelain"]), "");
    assert.match(await gitIn(dir, ["ls-files", "-v", "docs/internal/notes.txt"]), /^S /);
    const again = await prepare(service, { repositoryUrl: fixture.path, gitRev: "main", honorExportIgnore: true });
    assert.deepEqual(again.directories, context.directories, "the same commit again gets the layers chosen before");
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

  it("carries a big object that git reads back", async () => {
    const repo = join(work, "big-object");
    await makeFixture(repo);
    const big = randomBytes(BIG_OBJECT_BYTES).toString("base64");
    const sha = await commitFiles(repo, { "big.txt": big }, "big", "2024-05-01T00:00:00Z");
    const context = await prepare(service, { repositoryUrl: repo, gitRev: "main" });
    assert.equal(context.gitSha, sha);
    const dir = join(work, "big-object-unpacked");
    await extract(await readFileOf(service, context, ContextFileKind.REPO_TAR), dir);
    assert.equal((await run("git", ["fsck", "--strict"], { cwd: dir })).code, 0);
    assert.equal(await gitIn(dir, ["status", "--porcelain"]), "");
    assert.equal(await readFile(join(dir, "big.txt"), "utf8"), big);
  });

  it("writes every file exactly as its blob whatever .gitattributes asks (eol, ident), and git status stays clean", async () => {
    const repo = join(work, "attributes");
    await makeFixture(repo);
    await commitFiles(repo, { ".gitattributes": "*.txt eol=crlf ident\n", "notes.txt": "line one\n$Id$\n" }, "attributes", "2024-05-03T00:00:00Z");
    const context = await prepare(service, { repositoryUrl: repo, gitRev: "main" });
    const dir = await composed(context, join(work, "attributes-composed"));
    assert.equal(await readFile(join(dir, "notes.txt"), "utf8"), "line one\n$Id$\n");
    assert.equal((await describeRepository(dir)).status, "");
  });

  it("says the disk is full when the repository does not fit, and leaves nothing half-written", async () => {
    const repo = join(work, "too-big");
    await makeFixture(repo);
    await commitFiles(repo, { "big.bin": randomBytes(3 * 1024 * 1024).toString("base64") }, "big", "2024-05-02T00:00:00Z");
    const state = join(work, "small-disk");
    await mkdir(state);
    const mounted = await run("mount", ["-t", "tmpfs", "-o", "size=6m", "tmpfs", state]);
    assert.equal(mounted.code, 0, mounted.stderr);
    const small = await startTestContextService({ stateDir: state });
    try {
      const error = await small.client.prepareContext({ repositoryUrl: repo, gitRev: "main" }).catch((caught) => ConnectError.from(caught));
      assert.ok(error instanceof ConnectError, "the prepare failed");
      assert.equal(error.code, Code.ResourceExhausted, error.message);
      assert.match(error.message, /disk is full/);
      const left = (await run("find", [join(state, "layers"), "-name", "*.partial-*"])).stdout.trim();
      assert.equal(left, "", "no half-written directory");
    } finally {
      await small.stop().catch(() => undefined);
      await run("umount", [state]);
    }
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
