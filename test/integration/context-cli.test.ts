import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { unzipSync } from "fflate";
import { type TestContextService, startTestContextService } from "../support/context-service.js";
import { type Fixture, makeFixture } from "../support/git-fixture.js";
import { CLI, run, samePassOnEither } from "../support/stack.js";

const exec = promisify(execFile);

describe("steprunner context", samePassOnEither("no BuildKit"), () => {
  let work: string;
  let fixture: Fixture;
  let service: TestContextService;

  before(async () => {
    work = await mkdtemp(join(tmpdir(), "context-cli-"));
    fixture = await makeFixture(join(work, "fixture"));
    service = await startTestContextService();
  });
  after(async () => {
    await service?.stop();
    await rm(work, { recursive: true, force: true });
  });

  it("writes repo.tar, the repository's directories, step_context.json.zip and the Dockerfile, and prints GIT_SHA and the digests", async () => {
    const properties = join(work, "properties.json");
    await writeFile(properties, JSON.stringify({ project: { opschain: { env: { TOKEN: "t0ken" } } }, environment: { tier: "dev" } }));
    const out = join(work, "out");
    const result = await run("node", [
      CLI,
      "context",
      "--repo",
      fixture.path,
      "--rev",
      "v1",
      "--properties",
      properties,
      "--secrets",
      "/project/opschain/env/TOKEN",
      "--out",
      out,
      "--json",
      "--context-addr",
      service.address,
    ]);
    assert.equal(result.code, 0, result.stderr);
    const summary = JSON.parse(result.stdout);
    assert.equal(summary.gitSha, fixture.first);
    assert.equal(summary.dockerfile, "default");
    assert.deepEqual((await readdir(out)).sort(), ["Dockerfile", "base", "changes", "history", "repo.tar", "step_context.json.zip"]);
    assert.equal(
      await readFile(join(out, "changes", "README.md"), "utf8"),
      await readFile(join(fixture.path, "README.md"), "utf8"),
      "the repository unpacked for the default Dockerfile",
    );
    for (const file of summary.files) {
      const bytes = await readFile(join(out, file.name));
      assert.equal(`sha256:${createHash("sha256").update(bytes).digest("hex")}`, file.digest, file.name);
    }
    const document = JSON.parse(Buffer.from(unzipSync(await readFile(join(out, "step_context.json.zip")))["step_context.json"]!).toString());
    assert.equal(document.properties.project.opschain.env.TOKEN, "[REDACTED]");
    assert.deepEqual(document.context.parent_order, ["project", "environment"]);

    const text = await run("node", [CLI, "context", "--repo", fixture.path, "--rev", "main", "--out", out, "--context-addr", service.address]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`^GIT_SHA +${fixture.second}$`, "m"));
    assert.match(text.stdout, /^repo\.tar +sha256:[0-9a-f]{64} \d+ bytes$/m);
    assert.match(text.stdout, /^Dockerfile +\.mintpress\/Dockerfile$/m);
  });

  it("refuses a properties file that is not a JSON object, before calling the service", async () => {
    const properties = join(work, "list.json");
    await writeFile(properties, "[1, 2]");
    const result = await run("node", [
      CLI,
      "context",
      "--repo",
      fixture.path,
      "--rev",
      "main",
      "--properties",
      properties,
      "--out",
      join(work, "never"),
      "--context-addr",
      service.address,
    ]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /must be a JSON object/);
    await assert.rejects(readdir(join(work, "never")));
  });

  it("on a full disk, fails with the write's error and leaves no partial file", async () => {
    const out = join(work, "full");
    await mkdir(out);
    await exec("mount", ["-t", "tmpfs", "-o", "size=8k", "steprunner-test-full", out]);
    try {
      const result = await run("node", [CLI, "context", "--repo", fixture.path, "--rev", "main", "--out", out, "--context-addr", service.address]);
      assert.equal(result.code, 1);
      assert.match(result.stderr, /ENOSPC: no space left on device/);
      assert.doesNotMatch(result.stderr, /Unhandled 'error' event/);
      // The files written before the disk filled up are whole; the one it failed on is not there at all.
      const left = await readdir(out);
      assert.ok(!left.includes("repo.tar"), "repo.tar does not fit in 8 KB");
      assert.deepEqual(
        left.filter((name) => name.includes(".partial-")),
        [],
      );
    } finally {
      await exec("umount", [out]);
    }
  });

  it("reports the service's code for an unknown revision and exits 1", async () => {
    const result = await run("node", [
      CLI,
      "context",
      "--repo",
      fixture.path,
      "--rev",
      "nope",
      "--out",
      join(work, "never"),
      "--context-addr",
      service.address,
    ]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /NotFound: git_rev: "nope" is not a branch, tag or commit/);
  });
});
