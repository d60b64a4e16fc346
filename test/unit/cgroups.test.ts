import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { detectCgroups } from "../../services/step-service/runtime/cgroups.js";
import { ContainerRuntime } from "../../services/step-service/runtime/container.js";
import { createLogger } from "../../services/shared/log.js";

/** The files of a cgroup v2 root as a systemd host shows them (values recorded from such a host). */
const RECORDED_V2_ROOT: Record<string, string> = {
  "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
  "cgroup.subtree_control": "cpu io memory pids\n",
  "cgroup.procs": "",
  "cgroup.max.depth": "max\n",
  "cgroup.stat": "nr_descendants 61\nnr_dying_descendants 0\n",
  "memory.stat": "anon 0\nfile 0\n",
  "cpu.stat": "usage_usec 0\n",
  "system.slice/cgroup.controllers": "cpu io memory pids\n",
  "init.scope/cgroup.controllers": "cpu io memory pids\n",
};

/** memory.events of a cgroup whose process the OOM killer ended, and of one that only hit its limit. */
const OOM_KILLED_EVENTS = "low 0\nhigh 0\nmax 37\noom 1\noom_kill 1\noom_group_kill 0\n";
const LIMIT_HIT_EVENTS = "low 0\nhigh 0\nmax 12\noom 0\noom_kill 0\noom_group_kill 0\n";

async function layout(root: string, files: Record<string, string>): Promise<void> {
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(root, path, ".."), { recursive: true });
    await writeFile(join(root, path), text);
  }
}

describe("the steps' cgroups", () => {
  let work: string;
  before(async () => {
    work = await mkdtemp(join(tmpdir(), "cgroups-test-"));
  });
  after(async () => {
    await rm(work, { recursive: true, force: true });
  });

  describe("on a recorded cgroup v2 layout", () => {
    let root: string;
    before(async () => {
      root = join(work, "v2");
      await layout(root, RECORDED_V2_ROOT);
    });

    it("is detected as v2: the root has cgroup.controllers and no v1 memory controller is mounted under it", async () => {
      assert.equal((await detectCgroups(root)).version, 2);
    });

    it("puts the memory limit in memory.max with no swap, and passes memory, pids and cpu on to runc's cgroup", async () => {
      const cgroups = await detectCgroups(root);
      await cgroups.create("steprunner-abc-limits", 64 * 1024 * 1024);
      const read = (name: string) => readFile(join(root, "steprunner-abc-limits", name), "utf8");
      assert.equal(await read("memory.max"), String(64 * 1024 * 1024));
      assert.equal(await read("memory.swap.max"), "0");
      assert.equal(await read("cgroup.subtree_control"), "+memory +pids +cpu");
      assert.equal(await readFile(join(root, "cgroup.subtree_control"), "utf8"), "+memory +pids +cpu");
    });

    it("tells an OOM kill by memory.events' oom_kill counter, not by the limit having been reached", async () => {
      const cgroups = await detectCgroups(root);
      await cgroups.create("steprunner-abc-oom", 1 << 26);
      await writeFile(join(root, "steprunner-abc-oom", "memory.events"), OOM_KILLED_EVENTS);
      assert.equal(await cgroups.oomKilled("steprunner-abc-oom"), true);
      await cgroups.create("steprunner-abc-own-kill", 1 << 26);
      await writeFile(join(root, "steprunner-abc-own-kill", "memory.events"), LIMIT_HIT_EVENTS);
      assert.equal(await cgroups.oomKilled("steprunner-abc-own-kill"), false, "a step that sent itself SIGKILL");
      assert.equal(await cgroups.oomKilled("steprunner-abc-gone"), false);
    });

    it("lists the cgroups under the root for the reaper, through the runtime's injected root", async () => {
      const runtime = new ContainerRuntime(
        {
          runcPath: "runc",
          runcRoot: join(work, "runc"),
          workDir: join(work, "steps"),
          instanceTag: "abc",
          killGraceMs: 100,
          maxResultBytes: 1024,
          cgroupRoot: root,
        },
        createLogger("test", {}, { quiet: true }),
      );
      const cgroups = await runtime.stepCgroups();
      assert.equal(cgroups.version, 2);
      const names = await cgroups.names();
      assert.ok(names.includes("steprunner-abc-limits") && names.includes("system.slice"), names.join(" "));
    });
  });

  it("is v1 on a hybrid layout, where the root is a tmpfs of controller directories and the unified tree holds none", async () => {
    const root = join(work, "hybrid");
    await layout(root, { "memory/memory.limit_in_bytes": "9223372036854771712\n", "pids/pids.max": "max\n", "unified/cgroup.controllers": "" });
    const cgroups = await detectCgroups(root);
    assert.equal(cgroups.version, 1);
    await cgroups.create("steprunner-abc-v1", 1 << 26);
    assert.equal(await readFile(join(root, "memory/steprunner-abc-v1/memory.limit_in_bytes"), "utf8"), String(1 << 26));
    await writeFile(join(root, "memory/steprunner-abc-v1/memory.max_usage_in_bytes"), String(1 << 26));
    assert.equal(await cgroups.oomKilled("steprunner-abc-v1"), true);
  });
});
