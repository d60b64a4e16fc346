import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { type Launched, LaunchError, Launcher } from "../../services/step-service/runtime/launcher.js";

const ENV = { PATH: process.env.PATH ?? "/usr/bin:/bin" };

async function text(stream: Readable): Promise<string> {
  let all = "";
  for await (const chunk of stream) all += (chunk as Buffer).toString("utf8");
  return all;
}

/** Everything a launched program wrote, and its status. */
async function outcome(launched: Launched): Promise<{ stdout: string; stderr: string; status: number }> {
  const [stdout, stderr, status] = await Promise.all([text(launched.stdout), text(launched.stderr), launched.exited]);
  return { stdout, stderr, status };
}

/** The pids of this process's launcher shells. */
function launcherShells(): number[] {
  const listed = spawnSync("pgrep", ["-P", String(process.pid), "-f", "read -r -d"], { encoding: "utf8" }).stdout;
  return listed.split("\n").filter(Boolean).map(Number);
}

/** Whether a process is alive. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe("the launcher (programs started by a long-lived shell, output on FIFOs)", () => {
  let root: string;
  let count = 0;
  const launcher = new Launcher(ENV);
  /** A fresh directory for one launch's FIFOs. */
  const dir = async () => {
    const path = join(root, `run-${++count}`);
    await mkdir(path);
    return path;
  };
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "launcher-"));
  });
  after(async () => {
    launcher.close();
    await rm(root, { recursive: true, force: true });
  });

  it("gives a program's stdout and stderr apart, and its exit status", async () => {
    const launched = await launcher.launch("sh", ["-c", 'echo "out put"; echo err >&2; exit 3'], await dir());
    assert.ok(launched.pid > 0);
    assert.deepEqual(await outcome(launched), { stdout: "out put\n", stderr: "err\n", status: 3 });
  });

  it("passes arguments as they are (spaces, quotes, newlines, dollars, empty)", async () => {
    const args = ["a b", "'q'", '"d"', "x\ny", "$HOME", "", "*"];
    const launched = await launcher.launch("printf", ["[%s]", ...args], await dir());
    assert.equal((await outcome(launched)).stdout, args.map((arg) => `[${arg}]`).join(""));
  });

  it("streams output while the program runs", async () => {
    const launched = await launcher.launch("sh", ["-c", "echo first; exec sleep 30"], await dir());
    const first = await new Promise<string>((resolve) => launched.stdout.once("data", (chunk: Buffer) => resolve(chunk.toString())));
    assert.equal(first, "first\n");
    assert.ok(alive(launched.pid), "the program still runs after its first line arrived");
    process.kill(launched.pid, "SIGTERM");
    assert.equal((await outcome(launched)).status, 128 + 15);
  });

  it("gives the program /dev/null as stdin, the FIFOs as stdout and stderr, and none of the shell's own", async () => {
    const fifos = await dir();
    const launched = await launcher.launch("sh", ["-c", 'for fd in /proc/$$/fd/*; do echo "${fd##*/} $(readlink "$fd")"; done'], fifos);
    const open = new Map(
      (await outcome(launched)).stdout
        .trim()
        .split("\n")
        .map((line) => line.split(" ") as [string, string]),
    );
    assert.equal(open.get("0"), "/dev/null");
    assert.equal(open.get("1"), join(fifos, "stdout"));
    assert.equal(open.get("2"), join(fifos, "stderr"));
    // Whatever else the test runner's environment passes down is left; the launcher's sockets and FIFOs are not.
    const others = [...open].filter(([fd]) => !["0", "1", "2"].includes(fd)).map(([, target]) => target);
    assert.deepEqual(
      others.filter((target) => target.startsWith("socket:") || target.startsWith(fifos)),
      [],
    );
  });

  it("runs many at once, each with its own output and status", async () => {
    const runs = await Promise.all(
      Array.from({ length: 12 }, async (_, index) =>
        outcome(await launcher.launch("sh", ["-c", `sleep 0.$((${index} % 3)); echo ${index}; exit ${index}`], await dir())),
      ),
    );
    assert.deepEqual(
      runs,
      runs.map((_, index) => ({ stdout: `${index}\n`, stderr: "", status: index })),
    );
  });

  it("carries a large output whole", async () => {
    const launched = await launcher.launch("head", ["-c", String(4 * 1024 * 1024), "/dev/zero"], await dir());
    assert.equal((await outcome(launched)).stdout.length, 4 * 1024 * 1024);
  });

  it("refuses a program that is not there, and starts nothing", async () => {
    await assert.rejects(
      launcher.launch("/nonexistent/runc", ["run"], await dir()),
      (error: Error) => error instanceof LaunchError && /not found/.test(error.message),
    );
  });

  it("refuses a directory that is not there", async () => {
    await assert.rejects(launcher.launch("true", [], join(root, "missing")), LaunchError);
  });

  it("still tells the exit of a program whose shell was killed, and starts a new shell for the next", async () => {
    const own = new Launcher(ENV);
    try {
      const before = launcherShells();
      const first = await own.launch("sh", ["-c", "sleep 0.5; echo done; exit 4"], await dir());
      const shells = launcherShells().filter((pid) => !before.includes(pid));
      assert.equal(shells.length, 1);
      process.kill(shells[0]!, "SIGKILL");
      // Gone once reaped; a launch sent to a shell at the moment it dies fails, as a step would then.
      while (alive(shells[0]!)) await sleep(10);
      const second = await own.launch("sh", ["-c", "echo again"], await dir());
      assert.deepEqual(await outcome(first), { stdout: "done\n", stderr: "", status: 4 });
      assert.deepEqual(await outcome(second), { stdout: "again\n", stderr: "", status: 0 });
    } finally {
      own.close();
    }
  });
});
