import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from "node:fs/promises";
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

  it("makes a context local again when the directories it read in place are no longer where it saved them", async () => {
    const provider = new LocalContextProvider(dir);
    const contextId = await provider.add({ files: { "moved.rb": "task :moved\n" }, properties: {}, dockerfile: "FROM scratch\n", defaultDockerfile: false });
    const root = join(dir, "moved");
    await new ContextCache(provider, root).materialize(contextId);
    // As after a restart of both services with the context-service's directories made again elsewhere.
    const saved = join(root, contextId.slice(7), "sources.json");
    const sources = JSON.parse(await readFile(saved, "utf8")) as Record<string, string>;
    const remote = await provider.describe(contextId);
    for (const directory of remote.directories) sources[directory.name] = `/nonexistent/${directory.name}`;
    await writeFile(saved, JSON.stringify(sources));
    const again = await new ContextCache(provider, root).materialize(contextId);
    for (const directory of remote.directories) assert.equal(again.contextSources[directory.name], directory.hostPath, directory.name);
  });

  it("describes a context with one GetContext, and makes it local after that without asking again", async () => {
    const provider = new LocalContextProvider(dir);
    const contextId = await provider.add({
      files: { "described.rb": "task :described\n" },
      properties: {},
      dockerfile: "FROM scratch\n",
      defaultDockerfile: true,
    });
    let asked = 0;
    const counting = { describe: (id: string) => (asked++, provider.describe(id)), read: provider.read.bind(provider) };
    const cache = new ContextCache(counting, join(dir, "described"));
    const description = await cache.describe(contextId);
    assert.deepEqual([description.contextId, description.defaultDockerfile, asked], [contextId, true, 1]);
    assert.deepEqual(await readdir(join(dir, "described")).catch(() => []), [], "no file made local by a description");
    const local = await cache.materialize(contextId);
    assert.equal(local.stepContextZip.digest, description.stepContextZip.digest);
    assert.equal(await cache.describe(contextId), local, "described from the local context now");
    assert.equal(asked, 1);
  });

  it("removes contexts unused for longer than its limit, and keeps those in use", async () => {
    const provider = new LocalContextProvider(dir);
    const add = (name: string) => provider.add({ files: { [name]: name }, properties: {}, dockerfile: "FROM scratch\n", defaultDockerfile: false });
    const [old, fresh] = [await add("old.txt"), await add("fresh.txt")];
    const cache = new ContextCache(provider, join(dir, "evicting"), 60_000);
    await cache.materialize(old);
    await cache.materialize(fresh);
    const hourAgo = new Date(Date.now() - 3600_000);
    await utimes(join(dir, "evicting", old.slice(7)), hourAgo, hourAgo);
    assert.deepEqual(await cache.sweep(), [old]);
    assert.deepEqual(await readdir(join(dir, "evicting")), [fresh.slice(7)]);
    assert.equal((await cache.materialize(old)).contextId, old, "an evicted context is fetched again when asked for");
  });
});
