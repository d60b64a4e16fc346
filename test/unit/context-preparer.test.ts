import assert from "node:assert/strict";
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { BlobStore } from "../../services/context-service/core/blob-store.js";
import { ContextPreparer, type PrepareInput } from "../../services/context-service/core/context-preparer.js";
import { loadDefaultDockerfile } from "../../services/context-service/core/default-dockerfile.js";
import { ContextError, notFound } from "../../services/context-service/core/errors.js";
import type { Commit, Repositories, Revision } from "../../services/context-service/core/repositories.js";
import { MirrorStore } from "../../services/context-service/core/mirrors.js";
import { SingleFlight } from "../../services/context-service/core/single-flight.js";

/** Commits in memory: each rev names a SHA and a repo.tar body; counts how often repo.tar is written. */
class FakeRepositories implements Repositories {
  writes = 0;
  /** Lets a test hold repo.tar writing until it says so. */
  gate: Promise<void> = Promise.resolve();

  constructor(private readonly commits: Record<string, { sha: string; tar: string }>) {}

  async resolve(_url: string, rev: string): Promise<Revision> {
    const commit = this.commits[rev];
    if (!commit) throw notFound(`no ${rev}`);
    return { gitSha: commit.sha, movingRef: false };
  }

  async open(url: string, rev: string): Promise<Commit> {
    const { gitSha, movingRef } = await this.resolve(url, rev);
    const body = this.commits[rev]!.tar;
    return {
      gitSha,
      movingRef,
      warnings: [],
      lookup: async () => undefined,
      writeRepoTar: async (_options, destination: Writable) => {
        this.writes++;
        await this.gate;
        destination.end(body);
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
    const created = new ContextPreparer(repositories, blobs, join(dir, name, "contexts"), loadDefaultDockerfile("1.0.0"), {
      repoFolder: ".mintpress",
      maxDockerfileBytes: 1024,
      maxPropertiesBytes: 1024,
    });
    await created.init();
    return { preparer: created, blobs };
  }

  it("writes one commit's repo.tar once for concurrent requests, then serves it from the cache", async () => {
    const repositories = new FakeRepositories({ main: { sha: "1".repeat(40), tar: "tar of one" } });
    let release!: () => void;
    repositories.gate = new Promise((resolve) => (release = resolve));
    const { preparer: subject } = await preparer("single", repositories);
    const pending = Array.from({ length: 5 }, () => subject.prepare(request("main")));
    await new Promise((resolve) => setTimeout(resolve, 50));
    release();
    const contexts = await Promise.all(pending);
    assert.equal(repositories.writes, 1);
    assert.equal(new Set(contexts.map((context) => context.contextId)).size, 1);
    await subject.prepare(request("main"));
    assert.equal(repositories.writes, 1, "the second request is a cache hit");
  });

  it("evicts the least recently used files past the size cap, and says so when one is read", async () => {
    const repositories = new FakeRepositories({
      old: { sha: "2".repeat(40), tar: "o".repeat(3000) },
      new: { sha: "3".repeat(40), tar: "n".repeat(3000) },
    });
    const { preparer: subject, blobs } = await preparer("evict", repositories, 5000);
    const old = await subject.prepare(request("old"));
    const oldTar = old.files.find((file) => file.kind === "repo-tar")!;
    await utimes(blobs.path(oldTar.digest), new Date(0), new Date(0));
    const fresh = await subject.prepare(request("new"));
    await assert.rejects(subject.read(old.contextId, "repo-tar", 0, 1024), (error: unknown) => error instanceof ContextError && error.kind === "not-found" && /PrepareContext again/.test(error.message));
    const chunks: Buffer[] = [];
    for await (const chunk of await subject.read(fresh.contextId, "repo-tar", 2990, 4)) chunks.push(chunk as Buffer);
    assert.equal(Buffer.concat(chunks).toString(), "n".repeat(10));
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
