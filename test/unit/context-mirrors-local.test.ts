import assert from "node:assert/strict";
import { readdirSync, statSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MirrorStore } from "../../services/context-service/core/mirrors.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";

/** The mirror of a repository on this machine, made by a hard-linked clone: real git repositories. */
describe("the context-service's mirror of a local repository", () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "mirrors-local-"));
  });
  after(() => rm(root, { recursive: true, force: true }));

  async function repository(name: string): Promise<{ path: string; first: string; second: string }> {
    const path = join(root, "repos", name);
    await mkdir(path, { recursive: true });
    await gitIn(path, ["init", "-q", "-b", "main"]);
    const first = await commitFiles(path, { "actions.rb": "# one\n" }, "first", "2024-01-01T00:00:00Z");
    await gitIn(path, ["tag", "-a", "-m", "release", "v1"]);
    const second = await commitFiles(path, { "actions.rb": "# two\n" }, "second", "2024-01-02T00:00:00Z");
    await gitIn(path, ["branch", "other", first]);
    return { path, first, second };
  }

  const gitOf = (mirror: string, args: string[]) => gitIn(root, ["--git-dir", mirror, ...args]).then((text) => text.trim());

  it("shares the repository's objects and holds its branches, tags and HEAD as a fetch would, with our settings", async () => {
    const { path, first, second } = await repository("plain");
    const store = new MirrorStore(join(root, "state-plain"), 60_000);
    await store.init();
    const resolved = await store.resolve(path, "main");
    assert.equal(resolved.gitSha, second);
    assert.equal((await store.resolve(path, "HEAD")).gitSha, second);
    assert.equal((await store.resolve(path, "other")).gitSha, first);
    assert.equal((await store.resolve(path, "v1")).gitSha, first);
    const { mirror } = resolved;
    assert.equal(await gitOf(mirror, ["rev-parse", "refs/steprunner/HEAD"]), second);
    assert.equal(await gitOf(mirror, ["config", "steprunner.url"]), path);
    assert.equal(await gitOf(mirror, ["config", "gc.auto"]), "0");
    assert.equal(await gitOf(mirror, ["config", "core.logAllRefUpdates"]), "false");
    await assert.rejects(gitOf(mirror, ["config", "--get-regexp", "^remote\\."]), "the mirror names no remote");
    const objects = join(mirror, "objects");
    const linked = readdirSync(objects)
      .filter((name) => /^[0-9a-f]{2}$/.test(name))
      .flatMap((dir) => readdirSync(join(objects, dir)).map((file) => statSync(join(objects, dir, file)).nlink));
    assert.ok(linked.length > 0 && linked.every((links) => links > 1), "every object is a hard link to the repository's");
  });

  it("records a detached HEAD as the commit it names", async () => {
    const { path, first } = await repository("detached");
    await gitIn(path, ["checkout", "-q", "--detach", first]);
    const store = new MirrorStore(join(root, "state-detached"), 60_000);
    await store.init();
    assert.equal((await store.resolve(path, "HEAD")).gitSha, first);
  });

  it("refuses a repository with no commit, as a fetch of it would, and leaves no mirror behind", async () => {
    const path = join(root, "repos", "empty");
    await mkdir(path, { recursive: true });
    await gitIn(path, ["init", "-q", "-b", "main"]);
    const state = join(root, "state-empty");
    const store = new MirrorStore(state, 60_000);
    await store.init();
    await assert.rejects(store.resolve(path, "main"), /has no commits/);
    assert.deepEqual(readdirSync(join(state, "mirrors")), []);
  });
});
