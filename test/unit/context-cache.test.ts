import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ContextCache } from "../../services/image-service/core/context-cache.js";
import { LocalContextProvider } from "../support/contexts.js";

describe("the image-service's context cache", () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "context-cache-"));
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  it("reads the repository's directories in place, and unpacks repo.tar instead once they are gone", async () => {
    const provider = new LocalContextProvider(dir);
    const contextId = await provider.add({ files: { "actions.rb": "task :hello\n" }, properties: {}, dockerfile: "FROM scratch\n", defaultDockerfile: false });
    const cache = new ContextCache(provider, join(dir, "cache"));
    const base = (await provider.describe(contextId)).directories.find((directory) => directory.name === "base")!;
    const shared = await cache.materialize(contextId);
    assert.equal(shared.contextSources.base, base.hostPath, "read where the context-service wrote it");

    await rm(`${base.hostPath}.identity`);
    const local = await cache.materialize(contextId);
    assert.notEqual(local.contextSources.base, base.hostPath);
    assert.equal(await readFile(join(local.contextSources.changes!, "actions.rb"), "utf8"), "task :hello\n", "the repository unpacked from repo.tar");
  });
});
