import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:http";
import type { Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { killOrphanedGit, spawnGit } from "../../services/context-service/core/git.js";

/** An HTTP server that never answers: a git fetch from it stays connected until its process is killed. */
describe("git fetches that are stopped", () => {
  const sockets = new Set<Socket>();
  const server = createServer(() => undefined);
  server.on("connection", (socket) => (sockets.add(socket), socket.once("close", () => sockets.delete(socket))));
  let dir: string;
  let url: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "steprunner-git-abort-"));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as { port: number }).port}/stall.git`;
  });
  after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });

  const connected = async () => {
    for (let i = 0; i < 100 && sockets.size === 0; i++) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(sockets.size, 1, "git connected");
  };
  const disconnected = async () => {
    for (let i = 0; i < 100 && sockets.size > 0; i++) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(sockets.size, 0, "git's HTTP helper still holds the connection");
  };

  it("a cancel ends git and its HTTP helper", async () => {
    const controller = new AbortController();
    const { finished } = spawnGit(["ls-remote", url], { signal: controller.signal });
    await connected();
    controller.abort(new Error("cancelled"));
    await assert.rejects(finished, /cancelled/);
    await disconnected();
  });

  it("a timeout ends git and its HTTP helper", async () => {
    const { finished } = spawnGit(["ls-remote", url], { timeoutMs: 500 });
    await connected();
    await assert.rejects(finished, /killed/);
    await disconnected();
  });

  it("a git killed by a cancel before it read its input fails its call, and does not end the process", async () => {
    // A cancel that lands before git is started kills it at once; writing its input then meets EPIPE.
    const revisions = `${"0".repeat(40)}\n`.repeat(20_000);
    for (let i = 0; i < 50; i++) {
      const controller = new AbortController();
      controller.abort(new Error("cancelled"));
      const { child, finished } = spawnGit(["pack-objects", "--revs", "--stdout"], { gitDir: join(dir, "none.git"), signal: controller.signal });
      child.stdin.end(revisions);
      child.stdout.resume();
      await assert.rejects(finished, /cancelled/);
    }
    // An EPIPE nobody hears would surface as an uncaught exception before this test ends.
    await new Promise((resolve) => setTimeout(resolve, 50));
  });

  it("out of file descriptors, a git call fails with a message that says so, and the process lives on", () => {
    const script = fileURLToPath(new URL("../support/git-without-descriptors.js", import.meta.url));
    const run = spawnSync("bash", ["-c", `ulimit -n 64 && exec "${process.execPath}" "${script}"`], { encoding: "utf8" });
    assert.equal(run.status, 0, run.stderr);
    assert.match(run.stdout, /^failed: cannot start git --version: no pipes could be made for it \(out of file descriptors\?\)$/m);
  });

  it("a restart kills the git a crashed service left working in its directory", async () => {
    const orphan = spawn("git", ["ls-remote", url], { env: { ...process.env, GIT_DIR: join(dir, "mirror.git"), GIT_TERMINAL_PROMPT: "0" } });
    await connected();
    assert.ok((await killOrphanedGit(dir)) >= 1);
    await disconnected();
    assert.notEqual(orphan.exitCode ?? orphan.signalCode, 0);
  });
});
