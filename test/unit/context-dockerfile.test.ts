import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { defaultDockerfile } from "../../services/context-service/core/default-dockerfile.js";
import {
  type TreeFile,
  checkCustomDockerfile,
  checkRepoFolder,
  chooseRepoFolder,
  findRepositoryDockerfile,
} from "../../services/context-service/core/dockerfile.js";
import { ContextError } from "../../services/context-service/core/errors.js";
import { refersToTrustStore, trustStoreTar } from "../../services/context-service/core/trust-store.js";

/** A commit's tree in memory: path → file, or "dir"; a string starting with "->" is a symlink. */
function fakeTree(entries: Record<string, string>) {
  return async (path: string): Promise<TreeFile | undefined> => {
    const value = entries[path];
    if (value === undefined) return undefined;
    if (value === "dir") return { kind: "directory", size: 0, read: async () => Buffer.alloc(0) };
    if (value.startsWith("->")) return { kind: "symlink", size: value.length - 2, read: async () => Buffer.from(value.slice(2)) };
    return { kind: "file", size: value.length, read: async () => Buffer.from(value) };
  };
}

const refusal = (kind: string, pattern: RegExp) => (error: unknown) => error instanceof ContextError && error.kind === kind && pattern.test(error.message);

describe("custom Dockerfile checks", () => {
  it("find nothing to say about the default Dockerfile copied into a repository", () => {
    assert.deepEqual(checkCustomDockerfile(defaultDockerfile("1.0.0"), ".mintpress/Dockerfile"), []);
  });

  it("follow the final stage through stage names to its base", () => {
    const text = 'ARG OPSCHAIN_BASE_RUNNER\nFROM golang AS tools\nENTRYPOINT ["x"]\nfrom $OPSCHAIN_BASE_RUNNER as base\nFROM base\nCOPY --from=tools /x /x\n';
    assert.deepEqual(checkCustomDockerfile(text, "D"), []);
  });

  it("warn about another base and about ENTRYPOINT in the final chain, with line numbers", () => {
    const warnings = checkCustomDockerfile('FROM --platform=linux/amd64 debian:12 AS base\nRUN a \\\n  b\nFROM base\nENTRYPOINT ["/bin/sh"]\n', "D");
    assert.equal(warnings.length, 2);
    assert.match(warnings[0]!, /starts from "debian:12"/);
    assert.match(warnings[1]!, /line 5 sets ENTRYPOINT/);
  });
});

describe("the repository's Dockerfile", () => {
  it("is read from the repo folder, or is absent", async () => {
    const tree = fakeTree({ ".mintpress": "dir", ".mintpress/Dockerfile": "FROM x\n" });
    assert.equal((await findRepositoryDockerfile(tree, ".mintpress", 100))?.toString(), "FROM x\n");
    assert.equal(await findRepositoryDockerfile(tree, ".opschain", 100), undefined);
    assert.equal(await findRepositoryDockerfile(fakeTree({ ".mintpress": "dir" }), ".mintpress", 100), undefined);
  });

  it("follows symlinks inside the repository and refuses those that leave it", async () => {
    const inside = fakeTree({ ".mintpress": "dir", ".mintpress/Dockerfile": "->../build/Dockerfile", "build/Dockerfile": "FROM y\n" });
    assert.equal((await findRepositoryDockerfile(inside, ".mintpress", 100))?.toString(), "FROM y\n");
    await assert.rejects(
      findRepositoryDockerfile(fakeTree({ ".mintpress": "dir", ".mintpress/Dockerfile": "->../../etc/passwd" }), ".mintpress", 100),
      refusal("failed-precondition", /symlink out of the repository/),
    );
    await assert.rejects(
      findRepositoryDockerfile(fakeTree({ ".mintpress": "dir", ".mintpress/Dockerfile": "->/etc/passwd" }), ".mintpress", 100),
      refusal("failed-precondition", /symlink out/),
    );
    await assert.rejects(
      findRepositoryDockerfile(fakeTree({ ".mintpress": "dir", ".mintpress/Dockerfile": "->Dockerfile" }), ".mintpress", 100),
      refusal("failed-precondition", /more than 8 symlinks/),
    );
    await assert.rejects(
      findRepositoryDockerfile(fakeTree({ ".mintpress": "dir", ".mintpress/Dockerfile": "->gone" }), ".mintpress", 100),
      refusal("failed-precondition", /not in the commit/),
    );
  });

  it("refuses a repo folder that is a symlink, and a Dockerfile above the limit", async () => {
    await assert.rejects(
      findRepositoryDockerfile(fakeTree({ ".mintpress": "->/etc" }), ".mintpress", 100),
      refusal("failed-precondition", /is a symlink, not a directory/),
    );
    await assert.rejects(
      findRepositoryDockerfile(fakeTree({ ".mintpress": "dir", ".mintpress/Dockerfile": "x".repeat(101) }), ".mintpress", 100),
      refusal("failed-precondition", /at most 100/),
    );
  });

  it("repo folders must stay inside the repository", () => {
    assert.equal(checkRepoFolder(".mintpress/"), ".mintpress");
    assert.equal(checkRepoFolder("ops/.opschain"), "ops/.opschain");
    for (const bad of ["..", "a/../..", "/abs", "a//b", "./a", ".git", ""]) assert.throws(() => checkRepoFolder(bad), refusal("invalid-argument", /./), bad);
  });
});

describe("the repo folder a commit uses (.opschain and .mintpress both understood)", () => {
  const sha = "0123456789abcdef0123456789abcdef01234567";
  it("is the configured one when the commit has it, even when the other exists too", async () => {
    const tree = fakeTree({ ".mintpress": "dir", ".opschain": "dir" });
    assert.deepEqual(await chooseRepoFolder(tree, ".mintpress", sha), { folder: ".mintpress" });
    assert.deepEqual(await chooseRepoFolder(tree, ".opschain", sha), { folder: ".opschain" });
  });

  it("is the other one, with a warning that says so, when only that one is in the commit", async () => {
    const opschain = await chooseRepoFolder(fakeTree({ ".opschain": "dir", ".opschain/Dockerfile": "FROM x\n" }), ".mintpress", sha);
    assert.equal(opschain.folder, ".opschain");
    assert.match(
      opschain.warning!,
      /^the repo folder \.mintpress \(OPSCHAIN_REPO_FOLDER\) is not in commit 0123456789ab, but \.opschain is: \.opschain is used instead/,
    );
    assert.match(opschain.warning!, /step context and step_result\.json under \/opt\/opschain\/\.opschain/);
    const mintpress = await chooseRepoFolder(fakeTree({ ".mintpress": "dir" }), ".opschain", sha);
    assert.equal(mintpress.folder, ".mintpress");
    // A custom folder that is absent falls back too, to whichever of the two the commit has.
    assert.equal((await chooseRepoFolder(fakeTree({ ".opschain": "dir" }), "ops", sha)).folder, ".opschain");
  });

  it("stays the configured one when neither is there, or the other is not a directory", async () => {
    assert.deepEqual(await chooseRepoFolder(fakeTree({}), ".mintpress", sha), { folder: ".mintpress" });
    assert.deepEqual(await chooseRepoFolder(fakeTree({ ".opschain": "a file" }), ".mintpress", sha), { folder: ".mintpress" });
  });
});

describe("opschain-trust-store.tar", () => {
  it("is made for a Dockerfile that names it", () => {
    assert.equal(refersToTrustStore("FROM scratch AS trust_store\nADD ./opschain-trust-store.tar .\n"), true);
    assert.equal(refersToTrustStore("# ADD ./opschain-trust-store.tar .\nFROM x\n"), false, "a comment does not count");
  });

  it("holds the trust store directory's files, sorted, with the same bytes every time; empty without one", async () => {
    const { mkdtemp, writeFile, mkdir, rm } = await import("node:fs/promises");
    const { tmpdir } = await import("node:os");
    const { join } = await import("node:path");
    const dir = await mkdtemp(join(tmpdir(), "trust-store-"));
    try {
      await writeFile(join(dir, "b.crt"), "B\n");
      await writeFile(join(dir, "a.pem"), "A\n");
      await mkdir(join(dir, "sub"));
      const tar = await trustStoreTar(dir);
      assert.deepEqual(tar, await trustStoreTar(dir));
      const names = [...tar.toString("latin1").matchAll(/(?:^|\0{2,})([a-z]\.(?:pem|crt))\0/g)].map((match) => match[1]);
      assert.deepEqual(names, ["a.pem", "b.crt"]);
      const empty = await trustStoreTar("");
      assert.equal(empty.length, 1024, "an empty tar: two zero blocks");
      assert.deepEqual(await trustStoreTar(join(dir, "absent")), empty);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
