import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { readdirSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { BlobStore } from "../../services/context-service/core/blob-store.js";
import { ContextPreparer, type PrepareInput } from "../../services/context-service/core/context-preparer.js";
import { loadDefaultDockerfile } from "../../services/context-service/core/default-dockerfile.js";
import { ContextError, notFound } from "../../services/context-service/core/errors.js";
import type { Commit, Repositories, Revision } from "../../services/context-service/core/repositories.js";
import type { LayerDirectory } from "../../services/context-service/core/repository-layers.js";
import { MirrorStore } from "../../services/context-service/core/mirrors.js";
import { SingleFlight } from "../../services/shared/single-flight.js";

/** Commits in memory: each rev names a SHA and the content of its one file; counts the layer preparations. */
class FakeRepositories implements Repositories {
  layerWrites = 0;

  constructor(
    private readonly dir: string,
    private readonly commits: Record<string, { sha: string; content: string }>,
  ) {}

  async resolve(_url: string, rev: string): Promise<Revision> {
    const commit = this.commits[rev];
    if (!commit) throw notFound(`no ${rev}`);
    return { gitSha: commit.sha, movingRef: false };
  }

  async open(url: string, rev: string): Promise<Commit> {
    const { gitSha, movingRef } = await this.resolve(url, rev);
    const content = this.commits[rev]!.content;
    return {
      gitSha,
      movingRef,
      warnings: [],
      repositoryId: "fake",
      lookup: async () => undefined,
      layers: async (): Promise<LayerDirectory[]> => {
        this.layerWrites++;
        const path = join(this.dir, `tree-${gitSha}`);
        await mkdir(path, { recursive: true });
        await writeFile(join(path, "file.txt"), content);
        return [{ name: "base", identity: `tree:${gitSha}`, path }];
      },
    };
  }
}

const request = (gitRev: string): PrepareInput => ({
  repositoryUrl: "/repo",
  gitRev,
  repoFolder: "",
  excludeGitHistory: false,
  honorExportIgnore: false,
  properties: [],
  secretPointers: [],
  values: { change: {}, step: {}, user: {} },
});

describe("ContextPreparer with fake repositories", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "context-preparer-"));
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  async function preparer(name: string, repositories: Repositories, maxBytes = 1024 ** 2) {
    const blobs = new BlobStore(join(dir, name, "cache"), maxBytes);
    await blobs.init();
    const created = new ContextPreparer({
      repositories,
      blobs,
      contextsDir: join(dir, name, "contexts"),
      defaultDockerfile: loadDefaultDockerfile("1.0.0"),
      settings: {
        repoFolder: ".mintpress",
        maxDockerfileBytes: 1024,
        maxPropertiesBytes: 1024,
      },
    });
    await created.init();
    return { preparer: created, blobs };
  }

  it("lists no repo.tar for the default Dockerfile, and makes it once on first read however many read at once", async () => {
    const repositories = new FakeRepositories(dir, { main: { sha: "1".repeat(40), content: "the one file" } });
    const { preparer: subject } = await preparer("single", repositories);
    const context = await subject.prepare(request("main"));
    assert.deepEqual(context.files.map((file) => file.kind).sort(), ["dockerfile", "step-context-zip"]);
    assert.deepEqual(
      context.directories.map((directory) => directory.identity),
      [`tree:${"1".repeat(40)}`],
    );
    const tars = await Promise.all(
      Array.from({ length: 5 }, async () => {
        const chunks: Buffer[] = [];
        for await (const chunk of await subject.read(context.contextId, "repo-tar", 0, 1024)) chunks.push(chunk as Buffer);
        return Buffer.concat(chunks);
      }),
    );
    assert.equal(new Set(tars.map((tar) => tar.toString("hex"))).size, 1);
    assert.ok(tars[0]!.includes(Buffer.from("the one file")), "repo.tar holds the directories' files");
    assert.equal(
      readdirSync(join(dir, "single", "cache", "blobs")).length,
      3,
      "one repo.tar blob beside the Dockerfile and the zip (both zips are one blob when nothing is secret)",
    );
  });

  it("evicts the least recently used files past the size cap, and says so when one is read", async () => {
    const repositories = new FakeRepositories(dir, { old: { sha: "2".repeat(40), content: "old" }, new: { sha: "3".repeat(40), content: "new" } });
    const { preparer: subject, blobs } = await preparer("evict", repositories, 2200);
    const withProperties = (rev: string): PrepareInput => ({
      ...request(rev),
      properties: [{ owner: "project", properties: { noise: randomBytes(480).toString("hex") } }],
    });
    const old = await subject.prepare(withProperties("old"));
    const oldZip = old.files.find((file) => file.kind === "step-context-zip")!;
    await utimes(blobs.path(oldZip.digest), new Date(0), new Date(0));
    const fresh = await subject.prepare(withProperties("new"));
    await assert.rejects(
      subject.read(old.contextId, "step-context-zip", 0, 1024),
      (error: unknown) => error instanceof ContextError && error.kind === "not-found" && /PrepareContext again/.test(error.message),
    );
    const chunks: Buffer[] = [];
    for await (const chunk of await subject.read(fresh.contextId, "dockerfile", 10, 4)) chunks.push(chunk as Buffer);
    assert.equal(Buffer.concat(chunks).toString(), loadDefaultDockerfile("1.0.0").text.slice(10));
    assert.ok(chunks.length >= 3, "read in chunks of the asked size");
  });
});

describe("state left by a crash", () => {
  it("is removed when the stores start: half-written blobs and half-made mirrors", async () => {
    const root = await mkdtemp(join(tmpdir(), "context-crash-"));
    try {
      await mkdir(join(root, "cache", "tmp"), { recursive: true });
      await writeFile(join(root, "cache", "tmp", "123-abc"), "half a repo.tar");
      await mkdir(join(root, "mirrors", "0123.git.partial-99-1"), { recursive: true });
      await mkdir(join(root, "mirrors", "4567.git"), { recursive: true });
      await new BlobStore(join(root, "cache"), 1024).init();
      await new MirrorStore(root, 1000).init();
      assert.deepEqual(await readdir(join(root, "cache", "tmp")), []);
      assert.deepEqual(await readdir(join(root, "mirrors")), ["4567.git"]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe("SingleFlight", () => {
  it("aborts shared work only when every caller has gone", async () => {
    const flights = new SingleFlight<string>();
    let workSignal!: AbortSignal;
    const work = (signal: AbortSignal) => {
      workSignal = signal;
      return new Promise<string>((resolve, reject) => {
        signal.addEventListener("abort", () => reject(new Error("aborted")));
        setTimeout(() => resolve("done"), 100);
      });
    };
    const impatient = new AbortController();
    const first = flights.run("k", work, impatient.signal);
    const second = flights.run("k", work);
    impatient.abort(new Error("caller went away"));
    await assert.rejects(first, /caller went away/);
    assert.equal(await second, "done");
    assert.equal(workSignal.aborted, false);

    const a = new AbortController();
    const b = new AbortController();
    const both = [flights.run("k2", work, a.signal), flights.run("k2", work, b.signal)];
    a.abort(new Error("a"));
    b.abort(new Error("b"));
    await Promise.allSettled(both);
    assert.equal(workSignal.aborted, true);
    assert.equal(flights.running, 0);
  });

  it("starts the work afresh for a caller that comes while abandoned work is still stopping", async () => {
    const flights = new SingleFlight<string>();
    let runs = 0;
    // Work that takes a while to notice its abort, as a git fetch being killed does.
    const work = (signal: AbortSignal) => {
      const run = ++runs;
      return new Promise<string>((resolve, reject) => {
        signal.addEventListener("abort", () => setTimeout(() => reject(new Error(`run ${run} aborted`)), 50));
        setTimeout(() => resolve(`run ${run} done`), 100);
      });
    };
    const gone = new AbortController();
    const abandoned = flights.run("k", work, gone.signal);
    gone.abort(new Error("caller went away"));
    await assert.rejects(abandoned, /caller went away/);
    assert.equal(await flights.run("k", work), "run 2 done");
    assert.equal(runs, 2);
    assert.equal(flights.running, 0);
  });
});
