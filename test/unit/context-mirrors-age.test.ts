import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MirrorStore } from "../../services/context-service/core/mirrors.js";
import { contextServiceSettings } from "../../services/context-service/service.js";
import { commitFiles, gitIn } from "../support/git-fixture.js";

const HOUR = 3600_000;

/** Real git repositories and mirrors; the store's clock is the test's. */
describe("the context-service's mirrors unused for long", () => {
  let root: string;
  const repositories: string[] = [];
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "mirrors-age-"));
    for (const name of ["a", "b"]) {
      const repository = join(root, "repos", name);
      await mkdir(repository, { recursive: true });
      await gitIn(repository, ["init", "-q", "-b", "main"]);
      await commitFiles(repository, { "actions.rb": `# ${name}\n` }, "first", "2024-01-01T00:00:00Z");
      repositories.push(repository);
    }
  });
  after(() => rm(root, { recursive: true, force: true }));

  const mirrorsIn = (state: string) => readdirSync(join(state, "mirrors")).sort();

  it("are removed by a sweep, the recently used kept, and a removed one is fetched again when asked for", async () => {
    const state = join(root, "state-sweep");
    let now = Date.now();
    const store = new MirrorStore(state, 60_000, 2 * HOUR, () => now);
    await store.init();
    const [a, b] = repositories as [string, string];
    const first = await store.resolve(a, "main");
    now += 3 * HOUR;
    // b's fetch is followed by a sweep (the last one, at the start, is long ago): it removes a's mirror.
    const second = await store.resolve(b, "main");
    assert.deepEqual(mirrorsIn(state), [second.mirror.split("/").at(-1)], "only b's mirror, and nothing set aside, is left");
    assert.notEqual(first.mirror, second.mirror);

    const again = await store.resolve(a, "main");
    assert.equal(again.mirror, first.mirror);
    assert.equal(again.gitSha, first.gitSha);
    assert.ok(existsSync(again.mirror));
  });

  it("are removed by an explicit sweep, and kept when a request marked them used since, however old their last fetch", async () => {
    const state = join(root, "state-marked");
    let now = Date.now();
    const store = new MirrorStore(state, 60_000, 2 * HOUR, () => now);
    await store.init();
    const [kept, unused] = await Promise.all([store.resolve(repositories[0]!, "main"), store.resolve(repositories[1]!, "main")]);
    now += 3 * HOUR;
    // A warm request: the mirror knows the commit and the ref has not moved, so nothing is fetched (nor swept).
    await store.resolve(repositories[0]!, "main");
    assert.deepEqual(await store.sweep(), [unused.mirror.split("/").at(-1)]);
    assert.ok(existsSync(kept.mirror));
    assert.deepEqual(mirrorsIn(state), [kept.mirror.split("/").at(-1)]);
  });

  it("are kept for good when the limit is 0", async () => {
    const state = join(root, "state-forever");
    let now = Date.now();
    const store = new MirrorStore(state, 60_000, 0, () => now);
    await store.init();
    const resolved = await store.resolve(repositories[1]!, "main");
    now += 1000 * HOUR;
    assert.deepEqual(await store.sweep(), []);
    assert.ok(existsSync(resolved.mirror));
  });

  it("refuse a limit that a fetch in flight could outlast", () => {
    const saved = { ...process.env };
    try {
      process.env.STEPRUNNER_CONTEXT_FETCH_TIMEOUT_MS = String(HOUR);
      process.env.STEPRUNNER_CONTEXT_MIRRORS_MAX_AGE_MS = String(HOUR);
      assert.throws(() => contextServiceSettings(), /STEPRUNNER_CONTEXT_MIRRORS_MAX_AGE_MS must be 0 \(keep mirrors\) or at least 7200000/);
      process.env.STEPRUNNER_CONTEXT_MIRRORS_MAX_AGE_MS = "0";
      assert.equal(contextServiceSettings().mirrorsMaxAgeMs, 0);
      delete process.env.STEPRUNNER_CONTEXT_MIRRORS_MAX_AGE_MS;
      delete process.env.STEPRUNNER_CONTEXT_FETCH_TIMEOUT_MS;
      assert.equal(contextServiceSettings().mirrorsMaxAgeMs, 30 * 24 * HOUR);
    } finally {
      process.env = saved;
    }
  });
});
