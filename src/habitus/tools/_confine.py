"""The first process inside a sandbox: confine, fork the program, report how it ended.

:mod:`habitus.tools._sandbox` runs this file's source with ``python -I -S -c``
(standard library only, no site packages, so it starts in milliseconds and
needs nothing from the habitat's environment), as::

    python -I -S -c <this source> <config as JSON> <program> <args...>

It then, in order:

1. optionally moves into new user and network namespaces (no network at all,
   and a process count of its own for ``RLIMIT_NPROC``) when user namespaces
   are allowed; bubblewrap has already done this when it is the mechanism;
2. optionally applies Landlock (writes only under the work dir; reads only of
   the system directories, the program's installation and the work dir; no TCP;
   no signals to processes outside the sandbox), to itself and so to everything
   it starts;
3. forks; the child resets the signals Python ignores, sets the resource
   limits, asks to be killed if this process dies, and execs the program;
4. waits, and writes one JSON object to the status pipe: the raw wait status,
   the CPU seconds the program used, and what was actually enforced.

Keep it dependency-free: it runs under the sandboxed program's limits, and
before Landlock applies it must already have imported everything it needs. Keep
it quick to start, too: it is paid on every sandboxed call, so it imports no
``json``, ``typing`` or ``platform`` (tens of milliseconds together); the config
and the report travel as :mod:`marshal` data, which is built in.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Landlock (linux/landlock.h). The syscall numbers are the generic ones, the same on x86_64 and aarch64.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_ONLY = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_READ = _EXECUTE | _READ_FILE | _READ_DIR
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    if not _LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _LIBC.append(libc)
    return _LIBC[0]


def _syscall(number: int, *args: int | ctypes.c_void_p | ctypes._Pointer[Any]) -> int:
    """A raw syscall; integers are passed as full machine words (``syscall()`` is variadic)."""
    words = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return int(_libc().syscall(ctypes.c_long(number), *words))


def _prctl(option: int, value: int) -> int:
    return int(_libc().prctl(ctypes.c_int(option), *(ctypes.c_ulong(v) for v in (value, 0, 0, 0))))


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def landlock_abi() -> int:
    """The Landlock ABI version the kernel offers (0: none, or not on this architecture)."""
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"):
        return 0
    return max(0, _syscall(_CREATE_RULESET, ctypes.c_void_p(None), 0, _CREATE_RULESET_VERSION))


def _apply_landlock(read: list[str], write: list[str], *, network: bool) -> int:
    """Restrict this process and its children; returns the ABI version used (0 if unavailable)."""
    abi = landlock_abi()
    if abi < 1:
        return 0
    handled_fs = (1 << 13) - 1
    if abi >= 2:
        handled_fs |= _REFER
    if abi >= 3:
        handled_fs |= _TRUNCATE
    if abi >= 5:
        handled_fs |= _IOCTL_DEV
    attr = _RulesetAttr(
        handled_fs,
        (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 and not network else 0,
        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _syscall(_CREATE_RULESET, ctypes.pointer(attr), size, 0)
    if ruleset < 0:
        raise _errno_error("landlock_create_ruleset")
    try:
        rules = [(p, _READ) for p in read] + [(p, handled_fs) for p in write]
        rules.append(("/dev/null", _READ_FILE | _WRITE_FILE | _TRUNCATE | _IOCTL_DEV))
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not on this machine: nothing to allow
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    access &= _FILE_ONLY
                rule = _PathBeneath(access & handled_fs, fd)
                if _syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.pointer(rule), 0) != 0:
                    raise _errno_error(f"landlock_add_rule({path!r})")
            finally:
                os.close(fd)
        if _prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0:
            raise _errno_error("prctl(PR_SET_NO_NEW_PRIVS)")
        if _syscall(_RESTRICT_SELF, ruleset, 0) != 0:
            raise _errno_error("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _unshare_network() -> None:
    """Enter new user and network namespaces (only a loopback, down), keeping our own uid and gid."""
    uid, gid = os.getuid(), os.getgid()
    if _libc().unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNET)) != 0:
        raise _errno_error("unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _in_user_namespace() -> bool:
    """True unless this is the initial user namespace (whose map is the whole uid range)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False


def _tasks_of(uid: int) -> int:
    """How many tasks (threads included: ``RLIMIT_NPROC`` counts them) ``uid`` runs now."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                continue
    return count


def _real_uid(uid: int) -> int:
    """``uid`` as the initial user namespace sees it (where the kernel decides who is root)."""
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return outside + uid - inside
    except (OSError, ValueError):
        pass
    return uid


def _exec_child(argv: list[str], limits: dict[str, int], nproc: int, parent: int, user: list[int] | None) -> None:
    """In the forked child: limits, then (as root) become ``user``, then the program. Never returns."""
    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the supervisor died before we asked
            os._exit(137)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores some; exec keeps what is ignored
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size"], limits["file_size"]))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if user is not None:
            os.setgroups([])
            os.setgid(user[1])
            os.setuid(user[0])
        os.execvp(argv[0], argv)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape a forked child
        try:
            os.write(2, f"habitus sandbox: cannot run {argv[0]!r}: {exc}\n".encode(errors="replace"))
        finally:
            os._exit(127)


def main(args: list[str]) -> int:
    """Confine, run the program, report; exit as it exited (128 + signal if it was killed)."""
    config: dict[str, Any] = marshal.loads(bytes.fromhex(args[0]))
    argv = args[1:]
    status_fd = int(config["status_fd"])
    os.set_inheritable(status_fd, False)  # the program must not inherit it
    enforced: list[str] = []
    problems: list[str] = []
    if config.get("unshare_network"):
        try:
            _unshare_network()
            enforced.append("network")
        except OSError as exc:
            problems.append(f"no network namespace ({exc})")
    limits: dict[str, int] = config["limits"]
    nproc = limits["processes"]
    if not _in_user_namespace() and os.getuid() != 0:
        # Outside a user namespace the limit counts every task of this uid: allow this many more.
        nproc += _tasks_of(os.getuid())
    landlock = config.get("landlock")
    if landlock is not None:
        try:
            abi = _apply_landlock(landlock["read"], landlock["write"], network=bool(landlock.get("network")))
        except OSError as exc:
            abi = 0
            problems.append(f"Landlock failed ({exc})")
        if abi:
            enforced.append("filesystem")
            if abi >= 4 and "network" not in enforced and not landlock.get("network"):
                enforced.append("network_tcp")
            if abi >= 6:
                enforced.append("processes")
        elif not problems:
            problems.append("the kernel offers no Landlock")
    user: list[int] | None = config.get("user")
    if _real_uid(user[0] if user is not None else os.getuid()) != 0:
        enforced.append("nproc")  # the kernel never applies RLIMIT_NPROC to root
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        _exec_child(argv, limits, nproc, parent, user)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the habitat ends us with SIGKILL; the child follows (PDEATHSIG)
    _, status, usage = os.wait4(pid, 0)
    report = {
        "status": status,
        "cpu": usage.ru_utime + usage.ru_stime,
        "enforced": enforced,
        "problems": problems,
    }
    os.write(status_fd, marshal.dumps(report))
    os.close(status_fd)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
