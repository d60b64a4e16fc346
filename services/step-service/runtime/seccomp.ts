/**
 * The seccomp profile of a step's container: an allowlist. A system call is allowed by name, or by name and
 * arguments, and anything else fails with EPERM. The names are those Debian's container tools allow
 * (containers-common 0.50.1, /usr/share/containers/seccomp.json, as podman and buildah use it), less the calls
 * below that a step never needs: Ruby, Bundler, git and whatever a Dockerfile adds do not mount file systems,
 * load kernel code, change namespaces or inspect other processes. Denying those by name as well keeps the
 * kernel code behind them out of reach (where a bug is a container escape), above all for those that need
 * no capability at all (user namespaces, ptrace of the step's own processes, userfaultfd, io_uring).
 */

const EPERM = 1;
const ENOSYS = 38;

/**
 * Groups of names a step may not call, each with why it has no use for them. Some the recorded allowlist
 * allows (mount, ptrace, unshare, keyctl …); some it leaves out too, and are named here so that a later
 * change of the list cannot let them in unnoticed.
 */
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

/** The names containers-common 0.50.1 allows unconditionally, as its seccomp.json lists them. */
export const CONTAINERS_COMMON_ALLOWED: readonly string[] = [
  "_llseek", "_newselect", "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset",
  "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64",
  "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "clone", "clone3", "close",
  "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
  "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd",
  "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64",
  "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl",
  "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsconfig", "fsetxattr",
  "fsmount", "fsopen", "fspick", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
  "ftruncate64", "futex", "futex_time64", "futimesat", "get_mempolicy", "get_robust_list", "get_thread_area",
  "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid",
  "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid",
  "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "getrusage",
  "getsid", "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
  "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "io_destroy",
  "io_getevents", "io_setup", "io_submit", "ioctl", "ioprio_get", "ioprio_set", "ipc", "keyctl", "kill",
  "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr",
  "link", "linkat", "listen", "listxattr", "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64",
  "madvise", "mbind", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod",
  "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mount", "mount_setattr", "move_mount", "mprotect",
  "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
  "mq_timedsend_time64", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
  "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "open", "open_tree", "openat",
  "openat2", "pause", "pidfd_getfd", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pivot_root",
  "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
  "preadv2", "prlimit64", "process_mrelease", "process_vm_readv", "process_vm_writev", "pselect6",
  "pselect6_time64", "ptrace", "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readdir", "readlink",
  "readlinkat", "readv", "reboot", "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg",
  "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq",
  "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
  "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_get_priority_max",
  "sched_get_priority_min", "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_getscheduler",
  "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
  "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
  "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "set_mempolicy",
  "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32",
  "setgid", "setgid32", "setgroups", "setgroups32", "setitimer", "setns", "setpgid", "setpriority", "setregid",
  "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
  "setsid", "setsockopt", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown",
  "sigaction", "sigaltstack", "signal", "signalfd", "signalfd4", "sigpending", "sigprocmask", "sigreturn",
  "sigsuspend", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink",
  "symlinkat", "sync", "sync_file_range", "syncfs", "syscall", "sysinfo", "syslog", "tee", "tgkill", "time",
  "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
  "timer_settime64", "timerfd", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
  "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "umount", "umount2",
  "uname", "unlink", "unlinkat", "unshare", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "wait4",
  "waitid", "waitpid", "write", "writev"
];

/**
 * Calls newer than that list, of the same kind as calls it allows (chmod, futex, mincore, mmap and mprotect).
 * glibc falls back from some of them (fchmodat2 above all) only on ENOSYS, so with EPERM as the default they
 * must be allowed, not left out.
 */
const NEWER_ALLOWED = ["fchmodat2", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue", "cachestat", "map_shadow_stack", "mseal", "set_mempolicy_home_node"];

/** The list's calls of one architecture only, keyed by Node's process.arch. */
const ARCHITECTURE_ALLOWED: Record<string, string[]> = {
  x64: ["arch_prctl", "modify_ldt"],
  arm64: ["arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls", "sync_file_range2"],
};

// The list's rules that hang on a capability are settled here once, for runc's default set that a step has
// (spec.ts): with CAP_AUDIT_WRITE socket(2) is allowed whatever its arguments; without CAP_SYS_ADMIN,
// CAP_SYS_PTRACE, CAP_SYS_TIME … the calls those rules would allow stay denied.
const CAPABILITY_ALLOWED = ["socket"];

// personality(2): the values the list allows, the query 0xffffffff among them. The others (no address
// randomisation, readable implies executable, page zero) only weaken the step's own processes.
const PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

// clone(2) takes its namespace flags in the first argument, where seccomp can see them: it is allowed only
// when none is set. (CLONE_NEWTIME is not among them: clone(2) reads that bit as part of the exit signal.)
const CLONE_NAMESPACE_FLAGS = {
  CLONE_NEWNS: 0x00020000,
  CLONE_NEWCGROUP: 0x02000000,
  CLONE_NEWUTS: 0x04000000,
  CLONE_NEWIPC: 0x08000000,
  CLONE_NEWUSER: 0x10000000,
  CLONE_NEWPID: 0x20000000,
  CLONE_NEWNET: 0x40000000,
};
const CLONE_NAMESPACE_MASK = Object.values(CLONE_NAMESPACE_FLAGS).reduce((all, flag) => all | flag, 0);

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

/** The names allowed whatever their arguments on an architecture. */
export function allowedSyscalls(arch: string = process.arch): string[] {
  const denied = new Set([...DENIED_SYSCALLS, "clone", "clone3"]);
  const names = [...CONTAINERS_COMMON_ALLOWED, ...NEWER_ALLOWED, ...(ARCHITECTURE_ALLOWED[arch] ?? []), ...CAPABILITY_ALLOWED];
  return [...new Set(names)].filter((name) => !denied.has(name)).sort();
}

/** The OCI runtime spec's linux.seccomp for a step. */
export function seccompProfile(arch: string = process.arch): object {
  return {
    defaultAction: "SCMP_ACT_ERRNO",
    defaultErrnoRet: EPERM,
    architectures: seccompArchitectures(arch),
    syscalls: [
      { names: allowedSyscalls(arch), action: "SCMP_ACT_ALLOW" },
      ...PERSONALITIES.map((persona) => ({
        names: ["personality"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: persona, op: "SCMP_CMP_EQ" }],
      })),
      // For SCMP_CMP_MASKED_EQ, value is the mask and valueTwo what the masked argument must equal.
      {
        names: ["clone"],
        action: "SCMP_ACT_ALLOW",
        args: [{ index: 0, value: CLONE_NAMESPACE_MASK, valueTwo: 0, op: "SCMP_CMP_MASKED_EQ" }],
      },
      // clone3(2) passes its flags in memory, out of seccomp's sight. ENOSYS makes glibc fall back to
      // clone(2), whose flags the rule above can check.
      { names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: ENOSYS },
    ],
  };
}
