import assert from "node:assert/strict";
import { readFile, readdir, stat } from "node:fs/promises";
import * as net from "node:net";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parseImageReference } from "../../services/shared/registry/image-reference.js";
import { RegistryClient } from "../../services/shared/registry/registry-client.js";
import { run, stack } from "../support/stack.js";

// These tests take the stack down at the end: they run last.

async function daemonPids(): Promise<Record<string, string>> {
  const files = (await readdir(stack.runDir)).filter((name) => name.endsWith(".pid")).sort();
  return Object.fromEntries(await Promise.all(files.map(async (name) => [name, (await readFile(join(stack.runDir, name), "utf8")).trim()])));
}

function accepts(address: string): Promise<boolean> {
  const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    socket.once("connect", () => (socket.destroy(), resolve(true)));
    socket.once("error", () => resolve(false));
  });
}

describe("the local stack's lifecycle", () => {
  it("brought up a second time, changes nothing", async () => {
    const reference = parseImageReference(stack.baseRunner);
    const registry = new RegistryClient(stack.registry);
    const pidsBefore = await daemonPids();
    const imageBefore = await registry.manifest(reference.repository, reference.reference);
    const builtBefore = (await stat("dist/services/cli/main.js")).mtimeMs;
    const bundledBefore = (await stat("dist/services/cli-bundle/steprunner.cjs")).mtimeMs;

    const result = await run("deploy/local/up.sh", [], { timeoutMs: 600_000 });
    assert.equal(result.code, 0, result.stderr);
    for (const part of [stack.buildkit, "registry", "context-service", "image-service", "step-service"]) {
      assert.match(result.stderr, new RegExp(`${part} already running`));
    }
    assert.match(result.stderr, /steprunner\/runner:\S+ is up to date/);
    assert.doesNotMatch(result.stderr, /installing/);

    assert.deepEqual(await daemonPids(), pidsBefore);
    assert.equal(Object.keys(pidsBefore).length, 5);
    assert.equal((await registry.manifest(reference.repository, reference.reference)).digest, imageBefore.digest);
    assert.equal((await stat("dist/services/cli/main.js")).mtimeMs, builtBefore, "nothing was recompiled");
    assert.equal((await stat("dist/services/cli-bundle/steprunner.cjs")).mtimeMs, bundledBefore, "the CLI was not bundled again");
  });

  it("taken down, leaves no process, mount or socket of ours", async () => {
    const result = await run("deploy/local/down.sh", [], { timeoutMs: 300_000 });
    assert.equal(result.code, 0, result.stderr);
    const leftovers = await run("deploy/local/leftovers.sh", []);
    assert.equal(leftovers.code, 0, leftovers.stderr);
    assert.equal(leftovers.stdout, "");
    for (const address of [stack.contextAddr, stack.imageAddr, stack.stepAddr, stack.registry]) {
      assert.equal(await accepts(address), false, `${address} still accepts connections`);
    }
    assert.deepEqual(await daemonPids(), {});
  });
});
