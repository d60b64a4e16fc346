/**
 * The seccomp profile of a step's container: everything is allowed but the system calls below, which fail
 * with EPERM. A step runs Ruby, Bundler, git and whatever its Dockerfile adds; none of that mounts file
 * systems, loads kernel code, changes namespaces or inspects other processes. Most of these calls would fail
 * anyway without capabilities, but denying them by name keeps the kernel code behind them out of reach
 * (where a bug is a container escape) and covers those that need no capability at all (user namespaces,
 * keyrings, ptrace of the step's own processes, userfaultfd, io_uring).
 *
 * A deny list rather than an allowlist: an allowlist breaks whatever new system call glibc, Ruby or a
 * custom image's tools start to use, with errors that are hard to trace back to here.
 */

const EPERM = 1;
const ENOSYS = 38;

/** Groups of names denied outright, each with why a step has no use for them. */
const DENIED: { why: string; names: string[] }[] = [
  {
    why: "mounting and changing the root: the runtime sets up the step's file systems, the step never does",
    names: ["mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr"],
  },
  {
    why: "loading kernel code or replacing the kernel",
    names: ["init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms", "kexec_load", "kexec_file_load", "bpf"],
  },
  {
    why: "reading or changing other processes' memory and files; the step's own debugging is not worth the kernel surface",
    names: ["ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"],
  },
  {
    why: "kernel keyrings are not per container: every step runs as the same uid and would share them",
    names: ["keyctl", "add_key", "request_key"],
  },
  {
    why: "new or other namespaces, user namespaces above all, which unprivileged processes may otherwise create",
    names: ["unshare", "setns"],
  },
  {
    why: "file handles bypass the mount's view of the file system (the way out of early Docker containers)",
    names: ["open_by_handle_at", "name_to_handle_at"],
  },
  {
    why: "host-wide state: time, swap, reboot, kernel log, accounting, quotas",
    names: ["settimeofday", "stime", "clock_settime", "clock_settime64", "adjtimex", "clock_adjtime", "clock_adjtime64", "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl", "quotactl_fd", "nfsservctl", "lookup_dcookie", "vhangup"],
  },
  {
    why: "kernel features that mostly serve exploits: port I/O, performance counters, userfaultfd (which stalls the kernel at will), io_uring",
    names: ["iopl", "ioperm", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register"],
  },
  {
    why: "obsolete calls kept for old binaries only",
    names: ["_sysctl", "sysfs", "uselib", "ustat", "vm86", "vm86old"],
  },
];

// clone(2) takes its namespace flags in the first argument, where seccomp can see them; each flag is a rule
// of its own because the conditions of one rule must all hold. (CLONE_NEWTIME is not among them: clone(2)
// reads that bit as part of the exit signal.)
const CLONE_NAMESPACE_FLAGS = {
  CLONE_NEWNS: 0x00020000,
  CLONE_NEWCGROUP: 0x02000000,
  CLONE_NEWUTS: 0x04000000,
  CLONE_NEWIPC: 0x08000000,
  CLONE_NEWUSER: 0x10000000,
  CLONE_NEWPID: 0x20000000,
  CLONE_NEWNET: 0x40000000,
};

// personality(2) is left alone. The flags that weaken a process (no address randomisation, readable
// implies executable, page zero) touch only the step's own processes and are cleared by the kernel on a
// setuid exec, which no_new_privileges rules out anyway. A rule could not refuse odd values while allowing
// the query 0xffffffff either: libseccomp does not AND two comparisons of one argument.

/**
 * Every architecture a step's process can make system calls in must be listed, or the rules would not apply
 * to it: on x86-64 a program may use the 32-bit (int 0x80) and x32 entry points as well.
 */
export function seccompArchitectures(arch: string = process.arch): string[] {
  switch (arch) {
    case "x64":
      return ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];
    case "arm64":
      return ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"];
    default:
      throw new Error(`no seccomp profile for the ${arch} architecture; steps run on x64 or arm64`);
  }
}

/** The names denied outright, for tests and documentation. */
export const DENIED_SYSCALLS: readonly string[] = DENIED.flatMap((group) => group.names);

/** The OCI runtime spec's linux.seccomp for a step. */
export function seccompProfile(arch: string = process.arch): object {
  return {
    defaultAction: "SCMP_ACT_ALLOW",
    architectures: seccompArchitectures(arch),
    syscalls: [
      { names: [...DENIED_SYSCALLS], action: "SCMP_ACT_ERRNO", errnoRet: EPERM },
      ...Object.values(CLONE_NAMESPACE_FLAGS).map((flag) => ({
        names: ["clone"],
        action: "SCMP_ACT_ERRNO",
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: "SCMP_CMP_MASKED_EQ" }],
      })),
      // clone3(2) passes its flags in memory, out of seccomp's sight. ENOSYS makes glibc fall back to
      // clone(2), whose flags the rules above can check.
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS },
    ],
  };
}
