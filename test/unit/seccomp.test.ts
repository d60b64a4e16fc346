import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DENIED_SYSCALLS, seccompArchitectures, seccompProfile } from "../../services/step-service/runtime/seccomp.js";
import { buildSpec } from "../../services/step-service/runtime/spec.js";

interface Rule {
  names: string[];
  action: string;
  errnoRet: number;
  args?: { index: number; value: number; valueTwo?: number; op: string }[];
}

describe("the steps' seccomp profile", () => {
  it("allows by default and denies the calls a step never needs by name, with EPERM", () => {
    const profile = seccompProfile("x64") as { defaultAction: string; syscalls: Rule[] };
    assert.equal(profile.defaultAction, "SCMP_ACT_ALLOW");
    const denied = profile.syscalls.filter((rule) => !rule.args && rule.errnoRet === 1).flatMap((rule) => rule.names);
    for (const name of ["mount", "umount2", "pivot_root", "kexec_load", "init_module", "finit_module", "bpf", "ptrace", "process_vm_readv", "keyctl", "add_key", "unshare", "setns", "open_by_handle_at", "userfaultfd", "io_uring_setup", "fsmount", "reboot"]) {
      assert.ok(denied.includes(name), `${name} is denied`);
    }
    assert.equal(new Set(DENIED_SYSCALLS).size, DENIED_SYSCALLS.length, "no name twice");
  });

  it("denies clone with any namespace flag, one rule a flag, and sends clone3 to clone with ENOSYS", () => {
    const { syscalls } = seccompProfile("x64") as { syscalls: Rule[] };
    const clone = syscalls.filter((rule) => rule.names.includes("clone"));
    const flags = clone.map((rule) => {
      assert.equal(rule.args?.length, 1);
      const [arg] = rule.args!;
      assert.equal(arg!.op, "SCMP_CMP_MASKED_EQ");
      assert.equal(arg!.value, arg!.valueTwo);
      return arg!.value;
    });
    assert.equal(flags.reduce((all, flag) => all | flag, 0), 0x7e020000, "NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET");
    assert.deepEqual(syscalls.find((rule) => rule.names.includes("clone3")), { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: 38 });
  });

  it("covers every entry point of the architecture, and refuses one it has no profile for", () => {
    assert.deepEqual(seccompArchitectures("x64"), ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
    assert.deepEqual(seccompArchitectures("arm64"), ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]);
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
