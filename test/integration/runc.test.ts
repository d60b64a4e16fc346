import assert from "node:assert/strict";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createLogger } from "../../services/shared/log.js";
import { ContainerRuntime, type ContainerRun, type RuntimeSettings } from "../../services/step-service/runtime/container.js";
import { buildSpec } from "../../services/step-service/runtime/spec.js";
import { unpackImage } from "../support/rootfs.js";
import { OUTSIDE_ALLOWLIST_PROBE, SYSCALL_PROBE } from "../support/syscall-probe.js";
import { run, samePassOnEither, stack } from "../support/stack.js";

describe("runc with the base runner's root filesystem", samePassOnEither("no BuildKit"), () => {
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

  describe("with the step-service's spec and seccomp profile", () => {
    const EPERM = 1;
    const ENOSYS = 38;

    /** Runs args in a container of buildSpec's making, with or without its seccomp profile. */
    async function runWithOurSpec(name: string, args: string[], seccomp: boolean): Promise<ReturnType<typeof run>> {
      const ourBundle = join(work, name);
      await mkdir(ourBundle, { recursive: true });
      const id = `steprunner-test-${process.pid}-${name}`;
      const spec = buildSpec({
        rootfs: join(bundle, "rootfs"),
        image: { env: [], entrypoint: [], cmd: [], workingDir: "/opt/opschain", user: "opschain" },
        user: { uid: 10001, gid: 10001, additionalGids: [], home: "/opt/opschain" },
        args,
        env: { LANG: "C.UTF-8" },
        hostname: "probe",
        limits: { memoryBytes: 256 * 1024 * 1024, cpuMillis: 1000, pids: 128 },
        hostNetwork: false,
        cgroupsPath: `/${id}`,
        binds: [],
      }) as { linux: { seccomp?: object } };
      if (!seccomp) delete spec.linux.seccomp;
      await writeFile(join(ourBundle, "config.json"), JSON.stringify(spec));
      containers.push(id);
      return run("runc", ["--root", stateRoot, "run", "--bundle", ourBundle, id], { timeoutMs: 60_000 });
    }

    const probe = async (name: string, seccomp: boolean, script = SYSCALL_PROBE): Promise<Map<string, number>> => {
      const result = await runWithOurSpec(name, ["perl", "-e", script], seccomp);
      assert.equal(result.code, 0, result.stderr);
      return new Map(
        result.stdout
          .trim()
          .split("\n")
          .map((line) => [line.split(" ")[0]!, Number(line.split(" ")[1])]),
      );
    };

    it("refuses mount, namespaces, keyrings, ptrace, bpf and the like with EPERM, and clone3 with ENOSYS", async () => {
      const denied = await probe("probe-seccomp", true);
      const control = await probe("probe-plain", false);
      assert.ok(denied.size >= 20, `probed ${[...denied.keys()].join(" ")}`);
      for (const [name, errno] of denied) assert.equal(errno, name === "clone3" ? ENOSYS : EPERM, `${name} failed with errno ${errno}`);
      // Without the profile these calls succeed or fail otherwise: the EPERMs above are the profile's.
      for (const name of ["mount", "umount2", "chroot", "setns", "clone3", "keyctl", "add_key", "name_to_handle_at", "perf_event_open", "bpf"]) {
        assert.notEqual(control.get(name), denied.get(name), `${name} without the profile gave errno ${control.get(name)}`);
      }
    });

    it("refuses with EPERM a call outside the allowlist that is none of the named denials, and allows the rest", async () => {
      const denied = await probe("probe-outside", true, OUTSIDE_ALLOWLIST_PROBE);
      const control = await probe("probe-outside-plain", false, OUTSIDE_ALLOWLIST_PROBE);
      assert.deepEqual(Object.fromEntries(denied), { move_pages: EPERM, personality_no_randomize: EPERM, personality_query: 0 });
      assert.notEqual(control.get("move_pages"), EPERM);
      assert.equal(control.get("personality_no_randomize"), 0);
    });

    it("kills a process that calls through the 32-bit entry point (int 0x80), which the profile does not list", {
      skip: process.arch !== "x64" && "x86-64 only",
    }, async (t) => {
      const probePath = join(bundle, "rootfs", "tmp", "int80-getpid");
      await writeFile(probePath, int80GetpidElf(), { mode: 0o755 });
      const plain = await runWithOurSpec("int80-plain", ["/tmp/int80-getpid"], false);
      // Some hosts (a paravirtualised kernel, one booted with ia32_emulation=0) run no 32-bit call at all.
      if (plain.code === 128 + 11) return t.skip("this host runs no 32-bit call even without the profile (SIGSEGV): nothing for the profile to refuse");
      const killed = await runWithOurSpec("int80", ["/tmp/int80-getpid"], true);
      assert.equal(plain.code, 1, `without the profile the i386 getpid answers the container's pid 1 as exit status: ${plain.stderr}`);
      assert.equal(killed.code, 128 + 31, `with it the process dies of SIGSYS: ${killed.stderr}`);
    });

    it("still runs Ruby threads, fork and exec, git and Bundler, under seccomp mode 2", async () => {
      const script = [
        "grep '^Seccomp:' /proc/self/status",
        `ruby -e 'p 4.times.map { |i| Thread.new { i * 2 } }.map(&:value); p Process.wait2(fork { exit 5 })[1].exitstatus; puts %x(echo exec)'`,
        "cd /tmp && git init -q repo && cd repo && git -c user.email=a@example.com -c user.name=a commit -q --allow-empty -m first && git log --format=%s",
        "ruby -rbundler -e 'puts Bundler::VERSION'",
        "{ unshare -U true || echo 'no user namespace'; }",
      ].join(" && ");
      const result = await runWithOurSpec("ordinary", ["/bin/sh", "-c", script], true);
      assert.equal(result.code, 0, result.stderr);
      assert.deepEqual(
        result.stdout
          .trim()
          .split("\n")
          .map((line) => line.replace(/\s+/g, " ")),
        ["Seccomp: 2", "[0, 2, 4, 6]", "5", "exec", "first", result.stdout.match(/^\d+\.\d+\.\d+$/m)?.[0] ?? "a Bundler version", "no user namespace"],
      );
    });
  });

  describe("with the step-service's runtime and this host's cgroups", () => {
    function newRuntime(settings: Partial<RuntimeSettings> = {}): ContainerRuntime {
      return new ContainerRuntime(
        {
          runcPath: "runc",
          runcRoot: stateRoot,
          workDir: join(work, "steps"),
          instanceTag: `test${process.pid}`,
          killGraceMs: 1000,
          maxResultBytes: 1024,
          ...settings,
        },
        createLogger("test", {}, { quiet: true }),
      );
    }

    /** A step running a shell script over the rootfs unpacked above, its one lower directory. */
    function shellStep(stepId: string, script: string, extra: Partial<ContainerRun> = {}): ContainerRun & { output: string[] } {
      const output: string[] = [];
      return {
        stepId,
        image: {
          imageId: "unpacked",
          lowerDirs: [join(bundle, "rootfs")],
          config: { env: [], entrypoint: [], cmd: [], workingDir: "/opt/opschain", user: "opschain" },
          release: () => {},
        },
        args: ["/bin/sh", "-c", script],
        env: {},
        limits: { memoryBytes: 64 * 1024 * 1024, cpuMillis: 1000, pids: 128 },
        hostNetwork: false,
        binds: [],
        userDirs: [],
        resultPath: "opt/opschain/none.json",
        timeoutMs: 60_000,
        onOutput: (_stream, text) => output.push(text),
        onStarted: () => {},
        signal: new AbortController().signal,
        output,
        ...extra,
      };
    }

    /** Runs a step through ContainerRuntime and checks that its cgroups went with it. */
    async function runStep(stepId: string, script: string): Promise<Awaited<ReturnType<ContainerRuntime["run"]>>> {
      const runtime = newRuntime();
      const request = shellStep(stepId, script);
      const exit = await runtime.run(request);
      const cgroups = await runtime.stepCgroups();
      assert.ok(!(await cgroups.names()).includes(runtime.containerId(stepId)), "the step's cgroups are removed");
      return { ...exit, result: { text: request.output.join("\n") } };
    }

    it("starts one container at a time with one start slot, and a long one gives its slot up after the start window", async () => {
      const runtime = newRuntime({ startingAtOnce: 1, startWindowMs: 400 });
      const began = performance.now();
      const starts: number[] = [];
      const waits: number[] = [];
      const exits = await Promise.all(
        ["slot-a", "slot-b", "slot-c"].map((stepId) =>
          runtime.run(
            shellStep(stepId, "sleep 1.5", {
              onStarted: () => starts.push(performance.now() - began),
              onPart: (part, ms) => part === "start-wait" && waits.push(ms),
            }),
          ),
        ),
      );
      const took = performance.now() - began;
      assert.deepEqual(
        exits.map((exit) => exit.exitCode),
        [0, 0, 0],
      );
      starts.sort((a, b) => a - b);
      assert.ok(starts[1]! - starts[0]! >= 300 && starts[2]! - starts[1]! >= 300, `each start waited for the one before's window: ${starts.map(Math.round)}`);
      assert.ok(took < 3 * 1500, `the three ran side by side once started (${Math.round(took)} ms)`);
      assert.equal(waits.filter((ms) => ms >= 300).length, 2, `two waited for a slot: ${waits.map(Math.round)}`);
    });

    it("gives a short container's slot to the next when it exits, and a step cancelled while it waits never starts", async () => {
      const runtime = newRuntime({ startingAtOnce: 1, startWindowMs: 60_000 });
      let firstStarted!: () => void;
      const firstRunning = new Promise<void>((resolve) => (firstStarted = resolve));
      const first = runtime.run(shellStep("short-a", "sleep 0.5", { onStarted: () => firstStarted() }));
      await firstRunning;
      const began = performance.now();
      const cancel = new AbortController();
      let cancelledStarted = false;
      const cancelled = runtime.run(shellStep("short-cancelled", "true", { signal: cancel.signal, onStarted: () => (cancelledStarted = true) }));
      const second = runtime.run(shellStep("short-b", "true"));
      setTimeout(() => cancel.abort(new Error("cancelled while waiting")), 150);
      await assert.rejects(cancelled, /cancelled while waiting/);
      assert.equal((await first).exitCode, 0);
      assert.equal((await second).exitCode, 0);
      assert.ok(performance.now() - began >= 400, "the second started after the first had exited, not after the 60 s window");
      assert.ok(performance.now() - began < 10_000);
      assert.equal(cancelledStarted, false);
      const cgroups = await runtime.stepCgroups();
      assert.ok(!(await cgroups.names()).includes(runtime.containerId("short-cancelled")), "nothing of the cancelled step is left");
    });

    it("tells an OOM kill from the step's own SIGKILL through the parent cgroup's memory limit", async () => {
      // Each in a child of the shell, as a step's command runs under its entry script (not as the container's init).
      const oom = await runStep("oom", `ruby -e 'a = []; loop { a << "x" * 1_000_000 }'; exit $?`);
      assert.equal(oom.signal, "SIGKILL", JSON.stringify(oom));
      assert.equal(oom.oomKilled, true);
      const ownKill = await runStep("own-kill", "sh -c 'kill -KILL $$'; exit $?");
      assert.equal(ownKill.signal, "SIGKILL", JSON.stringify(ownKill));
      assert.equal(ownKill.oomKilled, false);
    });
  });
});

/**
 * A static x86-64 executable of 136 bytes that calls getpid through the i386 entry point (int 0x80) and exits
 * with what it got: no compiler is needed to make one.
 */
function int80GetpidElf(): Buffer {
  // mov eax, 20 (i386 getpid); int 0x80; mov edi, eax; mov eax, 60 (x86-64 exit); syscall
  const code = Buffer.from("b814000000" + "cd80" + "89c7" + "b83c000000" + "0f05", "hex");
  const base = 0x400000n;
  const headerBytes = 64 + 56;
  const elf = Buffer.alloc(headerBytes + code.length);
  Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]).copy(elf, 0); // ELF, 64-bit, little-endian, version 1
  elf.writeUInt16LE(2, 16); // executable
  elf.writeUInt16LE(0x3e, 18); // x86-64
  elf.writeUInt32LE(1, 20);
  elf.writeBigUInt64LE(base + BigInt(headerBytes), 24); // entry
  elf.writeBigUInt64LE(64n, 32); // program headers right after this header
  elf.writeUInt16LE(64, 52);
  elf.writeUInt16LE(56, 54);
  elf.writeUInt16LE(1, 56);
  elf.writeUInt32LE(1, 64); // PT_LOAD of the whole file
  elf.writeUInt32LE(5, 68); // read and execute
  elf.writeBigUInt64LE(base, 80);
  elf.writeBigUInt64LE(base, 88);
  elf.writeBigUInt64LE(BigInt(elf.length), 96);
  elf.writeBigUInt64LE(BigInt(elf.length), 104);
  elf.writeBigUInt64LE(0x1000n, 112);
  code.copy(elf, headerBytes);
  return elf;
}
