import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import {
  CONTAINERS_COMMON_ALLOWED,
  DENIED_SYSCALLS,
  allowedSyscalls,
  seccompArchitectures,
  seccompProfile,
} from "../../services/step-service/runtime/seccomp.js";
import { buildSpec } from "../../services/step-service/runtime/spec.js";

interface Rule {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: { index: number; value: number; valueTwo?: number; op: string }[];
}

describe("the steps' seccomp profile", () => {
  it("denies by default with EPERM, and allows none of the calls a step never needs", () => {
    const profile = seccompProfile("x64") as { defaultAction: string; defaultErrnoRet: number; syscalls: Rule[] };
    assert.equal(profile.defaultAction, "SCMP_ACT_ERRNO");
    assert.equal(profile.defaultErrnoRet, 1);
    const allowed = profile.syscalls.filter((rule) => rule.action === "SCMP_ACT_ALLOW").flatMap((rule) => rule.names);
    for (const name of [
      "mount",
      "umount2",
      "pivot_root",
      "kexec_load",
      "init_module",
      "finit_module",
      "bpf",
      "ptrace",
      "process_vm_readv",
      "keyctl",
      "add_key",
      "unshare",
      "setns",
      "open_by_handle_at",
      "userfaultfd",
      "io_uring_setup",
      "fsmount",
      "reboot",
    ]) {
      assert.ok(DENIED_SYSCALLS.includes(name), `${name} is named as denied`);
      assert.ok(!allowed.includes(name), `${name} is not allowed`);
    }
    for (const name of ["read", "openat", "execve", "futex", "mmap", "rseq", "statx", "faccessat2", "fchmodat2", "arch_prctl", "socket", "wait4"]) {
      assert.ok(allowed.includes(name), `${name} is allowed`);
    }
    assert.ok(!allowedSyscalls("arm64").includes("arch_prctl") && allowedSyscalls("arm64").includes("set_tls"), "calls of one architecture on it alone");
    assert.equal(new Set(DENIED_SYSCALLS).size, DENIED_SYSCALLS.length, "no name twice");
  });

  it("allows personality(2) for the list's values only, the query among them", () => {
    const { syscalls } = seccompProfile("x64") as { syscalls: Rule[] };
    const personas = syscalls
      .filter((rule) => rule.names.includes("personality"))
      .map((rule) => {
        assert.equal(rule.action, "SCMP_ACT_ALLOW");
        assert.equal(rule.args?.[0]?.op, "SCMP_CMP_EQ");
        return rule.args![0]!.value;
      });
    assert.deepEqual(personas, [0x0, 0x8, 0x20000, 0x20008, 0xffffffff]);
  });

  it("allows clone only without namespace flags, and sends clone3 to clone with ENOSYS", () => {
    const { syscalls } = seccompProfile("x64") as { syscalls: Rule[] };
    const clone = syscalls.filter((rule) => rule.names.includes("clone"));
    assert.deepEqual(
      clone,
      [{ names: ["clone"], action: "SCMP_ACT_ALLOW", args: [{ index: 0, value: 0x7e020000, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" }] }],
      "NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET all clear",
    );
    assert.deepEqual(
      syscalls.find((rule) => rule.names.includes("clone3")),
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: 38 },
    );
  });

  const recordedProfile = "/usr/share/containers/seccomp.json";
  it("allows what Debian's containers-common allows unconditionally, less the named denials", {
    skip: !existsSync(recordedProfile) && `${recordedProfile} is not installed`,
  }, () => {
    const recorded = JSON.parse(readFileSync(recordedProfile, "utf8")) as {
      syscalls: { names: string[]; action: string; args?: unknown[]; includes?: object; excludes?: object }[];
    };
    const unconditional = recorded.syscalls
      .filter(
        (rule) =>
          rule.action === "SCMP_ACT_ALLOW" && !rule.args?.length && !Object.keys(rule.includes ?? {}).length && !Object.keys(rule.excludes ?? {}).length,
      )
      .flatMap((rule) => rule.names);
    assert.deepEqual([...CONTAINERS_COMMON_ALLOWED].sort(), [...unconditional].sort());
    const allowed = allowedSyscalls("x64");
    for (const name of unconditional) assert.ok(allowed.includes(name) || DENIED_SYSCALLS.includes(name) || name.startsWith("clone"), name);
  });

  it("lists the native entry point only (others are killed), and refuses an architecture it has no profile for", () => {
    assert.deepEqual(seccompArchitectures("x64"), ["SCMP_ARCH_X86_64"]);
    assert.deepEqual(seccompArchitectures("arm64"), ["SCMP_ARCH_AARCH64"]);
    assert.throws(() => seccompArchitectures("riscv64"), /no seccomp profile for the riscv64 architecture/);
  });

  it("is in every step's spec", () => {
    const spec = buildSpec({
      rootfs: "/rootfs",
      image: { env: [], entrypoint: [], cmd: ["true"], workingDir: "", user: "" },
      user: { uid: 10001, gid: 10001, additionalGids: [], home: "/" },
      args: [],
      env: {},
      hostname: "h",
      limits: { memoryBytes: 1 << 26, cpuMillis: 100, pids: 16 },
      hostNetwork: false,
      cgroupsPath: "/x",
      binds: [],
    }) as { linux: { seccomp: unknown } };
    assert.deepEqual(spec.linux.seccomp, seccompProfile());
  });
});
