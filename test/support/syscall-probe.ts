/**
 * A Perl script (the base runner has Perl, and Perl can make raw system calls) that tries system calls a step
 * should not make and prints "name errno" for each, 0 when the call succeeded. The arguments are chosen so
 * that, without seccomp, most calls fail with something other than EPERM (or succeed): an EPERM then shows
 * the profile at work, not a missing capability.
 */
export const SYSCALL_PROBE = String.raw`
use strict;
use POSIX ();
$| = 1;
my %nr = (
  x86_64 => { mount => 165, umount2 => 166, chroot => 161, unshare => 272, setns => 308, clone => 56, clone3 => 435,
              keyctl => 250, add_key => 248, ptrace => 101, process_vm_readv => 310, perf_event_open => 298,
              name_to_handle_at => 303, userfaultfd => 323, io_uring_setup => 425,
              settimeofday => 164, clock_settime => 227, adjtimex => 159, open_tree => 428, bpf => 321,
              kexec_load => 246, init_module => 175, reboot => 169, iopl => 172 },
  aarch64 => { mount => 40, umount2 => 39, chroot => 51, unshare => 97, setns => 268, clone => 220, clone3 => 435,
              keyctl => 219, add_key => 217, ptrace => 117, process_vm_readv => 270, perf_event_open => 241,
              name_to_handle_at => 264, userfaultfd => 282, io_uring_setup => 425,
              settimeofday => 170, clock_settime => 112, adjtimex => 171, open_tree => 428, bpf => 280,
              kexec_load => 104, init_module => 105, reboot => 142 },
);
my $arch = (POSIX::uname())[4];
my $n = $nr{$arch} or die "no system call numbers for $arch\n";
sub call { my ($name, @args) = @_; $! = 0; my $r = syscall($n->{$name}, @args); return ($r, $r == -1 ? $! + 0 : 0); }
sub try { my ($name, @args) = @_; my ($r, $errno) = call($name, @args); print "$name $errno\n"; }
sub in_child { my ($code) = @_; my $pid = fork(); if ($pid == 0) { sleep 30; POSIX::_exit(0); } $code->($pid); kill 'KILL', $pid; waitpid($pid, 0); }

my ($none, $dir, $fstype, $empty) = ("none", "/nonexistent", "tmpfs", "");
try("mount", $none, $dir, $fstype, 0, 0);
try("umount2", $dir, 0);
try("chroot", $dir);
try("open_tree", -100, $dir, 0);
# In a child: a process that is in a new user namespace may not make another one.
if (fork() == 0) { try("unshare", 0x10000000); POSIX::_exit(0); } wait;
try("setns", -1, 0);
my ($pid, $errno) = call("clone", 0x10000000 | 17, 0, 0, 0, 0);
POSIX::_exit(0) if $pid == 0;
waitpid($pid, 0) if $pid > 0;
print "clone $errno\n";
try("clone3", 0, 0);
try("keyctl", 0, -3, 0);
my ($type, $desc, $payload) = ("user", "steprunner-probe", "x");
try("add_key", $type, $desc, $payload, 1, -2);
in_child(sub { try("ptrace", 16, $_[0], 0, 0) });
in_child(sub { try("process_vm_readv", $_[0], 0, 0, 0, 0, 0) });
try("perf_event_open", 0, 0, -1, -1, 0);
try("name_to_handle_at", -100, "/", 0, 0, 0);
try("userfaultfd", 1);
try("io_uring_setup", 1, 0);
try("settimeofday", 0, 0);
try("clock_settime", 0, 0);
try("adjtimex", 0);
try("bpf", 0, 0, 0);
try("kexec_load", 0, 0, 0, 0);
try("init_module", 0, 0, $empty);
try("reboot", 0, 0, 0, 0);
try("iopl", 0) if exists $n->{iopl};
`;

/**
 * A Perl script that makes calls the allowlist leaves out though they are none of the named denials:
 * move_pages(2) of no pages and personality(2) with ADDR_NO_RANDOMIZE, besides the personality query it
 * allows. Prints "name errno" for each; without seccomp all three succeed (or move_pages gives ENOSYS
 * without NUMA).
 */
export const OUTSIDE_ALLOWLIST_PROBE = String.raw`
use strict;
use POSIX ();
$| = 1;
my %nr = (x86_64 => { move_pages => 279, personality => 135 }, aarch64 => { move_pages => 239, personality => 92 });
my $n = $nr{(POSIX::uname())[4]} or die "no system call numbers for this architecture\n";
sub try { my ($label, $name, @args) = @_; $! = 0; my $r = syscall($n->{$name}, @args); print "$label ", ($r == -1 ? $! + 0 : 0), "\n"; }
try("move_pages", "move_pages", 0, 0, 0, 0, 0, 0);
try("personality_no_randomize", "personality", 0x0040000);
try("personality_query", "personality", 0xffffffff);
`;
