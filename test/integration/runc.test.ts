import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { unpackImage } from "../support/rootfs.js";
import { run, stack } from "../support/stack.js";

describe("runc with the base runner's root filesystem", () => {
  let work: string;
  let bundle: string;
  let stateRoot: string;
  const containers: string[] = [];

  before(async () => {
    await mkdir(join(stack.stateDir, "tmp"), { recursive: true });
    work = await mkdtemp(join(stack.stateDir, "tmp", "runc-test-"));
    bundle = join(work, "bundle");
    stateRoot = join(work, "runc-state");
    await mkdir(join(bundle, "rootfs"), { recursive: true });
    await unpackImage(stack.baseRunner, join(bundle, "rootfs"));
    // runc's own default spec: its namespaces, capabilities, masked and read-only paths, read-only root.
    const generated = await run("runc", ["spec", "--bundle", bundle]);
    assert.equal(generated.code, 0, generated.stderr);
  });

  after(async () => {
    for (const id of containers) await run("runc", ["--root", stateRoot, "delete", "--force", id]);
    await rm(work, { recursive: true, force: true });
  });

  async function runInContainer(id: string, args: string[]): Promise<ReturnType<typeof run>> {
    const spec = JSON.parse(await readFile(join(bundle, "config.json"), "utf8"));
    spec.process.terminal = false;
    spec.process.args = args;
    spec.process.user = { uid: 10001, gid: 10001 };
    spec.process.cwd = "/opt/opschain";
    spec.process.env = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/opt/opschain", "LANG=C.UTF-8"];
    await writeFile(join(bundle, "config.json"), JSON.stringify(spec));
    containers.push(id);
    return run("runc", ["--root", stateRoot, "run", "--bundle", bundle, id], { timeoutMs: 60_000 });
  }

  it("has /opt/opschain owned by the opschain user (10001)", async () => {
    const info = await stat(join(bundle, "rootfs/opt/opschain"));
    assert.equal(info.uid, 10001);
    assert.equal(info.gid, 10001);
    const passwd = await readFile(join(bundle, "rootfs/etc/passwd"), "utf8");
    assert.match(passwd, /^opschain:x:10001:10001:/m);
  });

  it("runs a process as uid 10001 with Ruby, Rake and git available", async () => {
    const id = `steprunner-test-${process.pid}-1`;
    const result = await runInContainer(id, ["/bin/sh", "-c", "id -u; id -gn; ruby -e 'puts RUBY_VERSION'; rake --version; git --version; pwd"]);
    assert.equal(result.code, 0, result.stderr);
    const [uid, group, ruby, rake, git, cwd] = result.stdout.trim().split("\n");
    assert.equal(uid, "10001");
    assert.equal(group, "opschain");
    assert.match(ruby!, /^3\.\d+\.\d+$/);
    assert.match(rake!, /^rake, version/);
    assert.match(git!, /^git version/);
    assert.equal(cwd, "/opt/opschain");
  });

  it("reports the process's exit status, isolated from the host's network", async () => {
    const id = `steprunner-test-${process.pid}-2`;
    const result = await runInContainer(id, ["/bin/sh", "-c", "ls /sys/class/net; exit 7"]);
    assert.equal(result.code, 7);
    assert.equal(result.stdout.trim(), "lo", "a fresh network namespace has only loopback");
  });
});
