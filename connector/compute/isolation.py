"""Operating-system confinement of a job's model process: the bubblewrap command line around it,
the seccomp filter it loads on itself once its model is loaded, and which layers held.

The model process runs as another uid (65534, in a user namespace), in its own mount, PID, IPC,
UTS and network namespaces, on an empty root that holds read-only only the Python runtime, the
`connector` package's sources and the system libraries. Once the model is loaded and dry-run, the
seccomp filter refuses (EPERM) every system call that opens, creates or executes something or that
reaches another process, the network or the kernel's configuration.

It must never expose the data directory, the key store, the repository root or a writable host
path to the model process, and never let a missing layer pass silently: `missing_layers` names
what this machine cannot give, and the connector refuses untrusted models unless the settings
accept exactly those layers missing.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Every layer of the confinement, as recorded in a job's audit entry.
LAYERS = ("user", "mount", "pid", "ipc", "uts", "network", "no_new_privs", "seccomp", "rlimits")
# Layers the bubblewrap command line gives (the others come from the model process itself).
BWRAP_LAYERS = ("user", "mount", "pid", "ipc", "uts", "network", "no_new_privs")
SANDBOX_UID = 65534  # "nobody": owns nothing on the host, maps to no host user
SCRATCH = "/scratch"  # the model's HOME and working directory: an empty tmpfs
TMPFS_BYTES = 16 << 20  # the model's scratch space (HOME, working directory), in memory

# Refused once the model is loaded: nothing may open, create or run a file, reach the network or
# another process, or change the kernel's view of the process. Everything else (memory, futexes,
# threads, reads and writes on the pipes and the shared region it already holds) stays allowed.
FORBIDDEN_SYSCALLS = (
    "open", "openat", "openat2", "creat", "open_by_handle_at", "name_to_handle_at",
    "execve", "execveat", "fork", "vfork",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "sendto", "sendmsg",
    "recvfrom", "recvmsg",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "move_mount", "open_tree",
    "fsopen", "fsmount", "fspick", "mount_setattr",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "personality",
    "link", "linkat", "symlink", "symlinkat", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "rmdir", "mknod", "mknodat", "chmod", "fchmod", "fchmodat", "chown", "fchown",
    "fchownat", "lchown", "truncate", "setuid", "setgid", "setreuid", "setregid", "setresuid",
    "setresgid", "setgroups", "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
)  # fmt: skip


# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: clone may make threads, not namespaces.
CLONE_THREAD = 0x00010000
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


@dataclass(frozen=True)
class Confinement:
    """How the model process is started: the command line, and the layers it is to hold."""

    argv: list[str]
    layers: dict[str, bool]


def _python_roots() -> list[str]:
    """The folders the interpreter needs: its installation, the virtual environment, and the real
    paths behind both (a venv's python is a link into the installation)."""
    roots = {sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    return sorted({os.path.realpath(root) for root in roots} | roots)


# The project's own packages the model process imports (connector's settings import catalog).
SOURCE_PACKAGES = ("connector", "catalog")


def source_folders() -> list[str]:
    """The folders of SOURCE_PACKAGES: each package's own sources, bound read-only at its path."""
    folders = []
    for name in SOURCE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folders += [str(Path(folder).resolve()) for folder in spec.submodule_search_locations]
    return folders


def bwrap_argv(bwrap: str, command: list[str], device: str = "cpu") -> list[str]:
    """`command` inside bubblewrap: an empty, read-only root with only what Python and torch need."""
    argv = [
        bwrap,
        "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try",
        "--disable-userns",  # the model cannot make a user namespace of its own to gain capabilities
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--tmpfs", "/",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for top in ("/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    # The dynamic linker's cache; CPU facts torch's cpuinfo reads (without them it falls back to
    # slow kernels). No /proc: the model sees no process, no environment, no mount table.
    for path in ("/etc/ld.so.cache", "/proc/cpuinfo", "/sys/devices/system/cpu"):
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    for root in _python_roots():
        argv += ["--ro-bind", root, root]
    for folder in source_folders():
        argv += ["--ro-bind", folder, folder]
    argv += ["--dev", "/dev"]
    if device != "cpu":
        # CUDA needs its device nodes and the driver's view of the processes (of this namespace only).
        for node in sorted(glob.glob("/dev/nvidia*")):
            argv += ["--dev-bind", node, node]
        argv += ["--proc", "/proc", "--ro-bind", "/sys", "/sys"]
    argv += [
        "--size", str(TMPFS_BYTES), "--tmpfs", SCRATCH,
        "--remount-ro", "/",
        "--chdir", SCRATCH,
        "--clearenv", "--setenv", "HOME", SCRATCH, "--setenv", "TMPDIR", SCRATCH, "--setenv", "USER", "model",
        "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
        "--",
        *command,
    ]  # fmt: skip
    return argv


def child_command() -> list[str]:
    """The model process's own command line: the venv's interpreter, isolated from the environment,
    finding `connector` at the folder bound into the sandbox."""
    parents = sorted({os.path.dirname(folder) for folder in source_folders()})
    bootstrap = (
        f"import sys; sys.path[:0] = {parents!r}; from connector.compute.sandbox_child import run; run()"
    )
    return [sys.executable, "-I", "-c", bootstrap]


@functools.lru_cache(maxsize=8)
def bwrap_problem(bwrap: str) -> str | None:
    """None when `bwrap` confines a process on this machine, else why not (checked once per path)."""
    path = shutil.which(bwrap)
    if path is None:
        return f"bubblewrap ({bwrap}) is not installed"
    try:
        result = subprocess.run(  # noqa: S603 (a fixed command line, no shell)
            bwrap_argv(path, [sys.executable, "-I", "-c", "pass"]),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap ({path}) does not start: {type(exc).__name__}"
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        return f"bubblewrap ({path}) cannot confine a process here ({said[0][:200]})"
    return None


@functools.lru_cache(maxsize=1)
def seccomp_problem() -> str | None:
    """None when libseccomp can build a filter here, else why not."""
    try:
        import pyseccomp

        pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    except Exception as exc:  # a missing libseccomp raises from inside the ctypes binding
        return f"libseccomp is not available ({type(exc).__name__})"
    return None


def confinement(bwrap: str, device: str, accepted: tuple[str, ...]) -> Confinement:
    """The command line of a model process and the layers it is to hold; SandboxError-ready
    `IsolationUnavailable` when a layer this machine lacks is not in `accepted`."""
    problems: dict[str, str] = {}
    trouble = bwrap_problem(bwrap)
    if trouble is None:
        argv = bwrap_argv(shutil.which(bwrap) or bwrap, child_command(), device)
        layers = dict.fromkeys(LAYERS, True)
    else:
        argv = child_command()
        layers = dict.fromkeys(LAYERS, True) | dict.fromkeys(BWRAP_LAYERS, False)
        problems |= dict.fromkeys(BWRAP_LAYERS, trouble)
        # Without bubblewrap the model process still tries a network namespace of its own, and
        # loading the seccomp filter sets no_new_privs: the model process confirms both or not.
        for layer in ("network", "no_new_privs"):
            layers[layer] = True
            problems.pop(layer)
    seccomp_trouble = seccomp_problem()
    if seccomp_trouble is not None:
        layers["seccomp"] = False
        problems["seccomp"] = seccomp_trouble
    refused = sorted(set(problems) - set(accepted))
    if refused:
        reasons = sorted(set(problems[layer] for layer in refused))
        raise IsolationUnavailable(refused, reasons)
    return Confinement(argv, layers)


class IsolationUnavailable(Exception):
    """Layers of the confinement this machine cannot give and the settings do not accept."""

    def __init__(self, layers: list[str], reasons: list[str]) -> None:
        self.layers = layers
        super().__init__(
            f"the model process cannot be isolated here: missing {', '.join(layers)} "
            f"({'; '.join(reasons)}); untrusted models do not run unless the settings' "
            "sandbox_accept_weaker_isolation names these layers"
        )


def install_seccomp() -> None:
    """Load the filter on the calling process (and every thread it starts after): each forbidden
    call fails with EPERM. Threads that already run (torch's pool) are synchronised onto it too."""
    import errno

    import pyseccomp

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in FORBIDDEN_SYSCALLS:
        try:
            flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        except Exception:  # noqa: S112 (a call this architecture does not have: nothing to refuse)
            continue
    # glibc's pthread_create tries clone3 first and falls back to clone on ENOSYS: clone3's flags
    # live in memory seccomp cannot read, so it is refused outright; clone may not make namespaces.
    flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in NAMESPACE_FLAGS:  # several rules for one call: any of them refuses it
        flt.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    # A thread shares the process; a new process (clone without CLONE_THREAD: fork) is refused.
    flt.add_rule(
        pyseccomp.ERRNO(errno.EPERM), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_THREAD, 0)
    )
    flt.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    flt.load()
