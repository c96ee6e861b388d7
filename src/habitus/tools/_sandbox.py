"""Running a program under limits, in a fresh folder, cut off from the habitat.

:func:`run_sandboxed` starts the program in a new, empty temporary folder (its
working directory and ``HOME``, deleted afterwards) with a clean environment,
under resource limits, and kills its whole process group when its wall-clock
time runs out. How much more it is isolated depends on what the machine allows,
detected once per process:

* **bwrap** (bubblewrap, Debian package ``bubblewrap``, with user namespaces):
  the program sees only the system directories (read-only), its own
  installation, a private ``/tmp``, ``/dev`` and ``/proc``, and its folder;
  it has no network, and lives in its own PID namespace, so it cannot see or
  signal the habitat's processes (nor read their environment).
* **landlock** (Linux ≥ 5.13, no bubblewrap): the same view of the filesystem
  enforced by Landlock (writes only in its folder; reads only of the system
  directories, its installation and its folder), no TCP (ABI ≥ 4), no signals
  to processes outside (ABI ≥ 6); no network at all where user namespaces work.
* **none**: only the limits, the folder and the clean environment. A warning
  is logged once, naming what is missing.

:attr:`SandboxResult.isolation` says what was actually enforced for each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import marshal
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from habitus.errors import InvalidRequestError
from habitus.tools._process import kill_group, supervise

__all__ = ["SANDBOX_PATH", "Isolation", "Limit", "SandboxLimits", "SandboxResult", "run_sandboxed"]

log = logging.getLogger("habitus.tools")

Limit = Literal["cpu", "memory", "wall", "file_size", "output"]
"""Which limit stopped a program."""

Isolation = Literal["rlimits", "clean_env", "filesystem", "network", "network_tcp", "processes", "nproc"]
"""What a sandbox enforced: limits on CPU, memory and file size; a clean environment; a confined
filesystem view; no network at all (or only no TCP); no sight of or signals to the habitat's
processes; and the limit on the number of processes (which the kernel never applies to root)."""

Mechanism = Literal["bwrap", "landlock", "none"]
_ISOLATION: tuple[Isolation, ...] = ("filesystem", "network", "network_tcp", "processes", "nproc")

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/nix/store")
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
_MEMORY_MARKERS = (b"MemoryError", b"Cannot allocate memory", b"out of memory", b"bad_alloc", b"allocation fail")
_TMP_BYTES = 16 * 1024 * 1024  # the private /tmp of bwrap (memory-backed: kept small; TMPDIR is the folder)


class SandboxLimits(BaseModel):
    """The limits a sandboxed program runs under.

    Attributes:
        cpu_seconds: CPU time (``RLIMIT_CPU``, rounded up to whole seconds).
        memory_mb: Address space (``RLIMIT_AS``); allocations past it fail.
        file_mb: Largest file it may write (``RLIMIT_FSIZE``).
        wall_seconds: Wall-clock time before its whole process group is killed.
        max_output_bytes: Most bytes kept of stdout, and of stderr; more stops it.
        processes: Processes and threads it may run at once (``RLIMIT_NPROC``).
        network: Allow network access (off by default; only off is enforced, and only
            where the isolation supports it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_seconds: float = Field(default=2.0, gt=0, le=86_400)
    memory_mb: int = Field(default=256, ge=16, le=1_048_576)
    file_mb: int = Field(default=8, ge=0, le=1_048_576)
    wall_seconds: float = Field(default=10.0, gt=0, le=86_400)
    max_output_bytes: int = Field(default=1024 * 1024, ge=1, le=64 * 1024 * 1024)
    processes: int = Field(default=64, ge=1, le=65_536)
    network: bool = False


class SandboxResult(BaseModel):
    """How a sandboxed program ended.

    Attributes:
        exit_code: Its exit status, or minus the signal that killed it.
        stdout: What it wrote to stdout (at most ``max_output_bytes``).
        stderr: What it wrote to stderr (at most ``max_output_bytes``).
        duration_s: Wall-clock seconds from start to end.
        limit: The limit that stopped it, if one did.
        isolation: What was actually enforced.
        mechanism: ``bwrap``, ``landlock`` or ``none`` (see the module's documentation).
    """

    model_config = ConfigDict(frozen=True)

    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_s: float
    limit: Limit | None = None
    isolation: tuple[Isolation, ...] = ()
    mechanism: Mechanism = "none"

    @property
    def ok(self) -> bool:
        """True if it exited with status 0 and no limit stopped it."""
        return self.exit_code == 0 and self.limit is None


# -- detecting what this machine allows ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Detected:
    mechanism: Mechanism
    bwrap: str | None = None
    missing: str = ""  # why the stronger mechanisms are not used


_BWRAP_NAMESPACES = ("--unshare-all", "--die-with-parent", "--new-session")
# As root, no user namespace: the program runs as nobody instead, so that RLIMIT_NPROC applies to it.
_BWRAP_AS_ROOT = (
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--die-with-parent",
    "--new-session",
)
_NOBODY = (65534, 65534)

_detected: _Detected | None = None
_detect_lock = threading.Lock()
_warned = False
_last_enforced: dict[bool, list[str]] = {}  # by whether network was allowed


def _clean_env(work: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": SANDBOX_PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
    if extra:
        env.update(extra)
    return env


def _detect() -> _Detected:
    """What this process can use, worked out once (a trial run of bubblewrap, a Landlock probe)."""
    global _detected
    with _detect_lock:
        if _detected is not None:
            return _detected
        missing = []
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            missing.append("bubblewrap is not installed (Debian package 'bubblewrap')")
        else:
            namespaces = _BWRAP_AS_ROOT if os.geteuid() == 0 else _BWRAP_NAMESPACES
            trial = [bwrap, *namespaces, "--ro-bind", "/", "/", "--", "true"]
            try:
                done = subprocess.run(trial, env=_clean_env("/"), capture_output=True, timeout=30, check=False)
                if done.returncode == 0:
                    _detected = _Detected("bwrap", bwrap)
                    return _detected
                why = done.stderr.decode(errors="replace").strip().splitlines()
                missing.append(f"bwrap cannot create namespaces here ({why[-1] if why else done.returncode})")
            except (OSError, subprocess.SubprocessError) as exc:
                missing.append(f"bwrap failed to start ({exc})")
        from habitus.tools._confine import landlock_abi

        if landlock_abi() >= 1:
            _detected = _Detected("landlock", None, "; ".join(missing))
        else:
            missing.append("the kernel offers no Landlock")
            _detected = _Detected("none", None, "; ".join(missing))
        return _detected


_confine_source: str | None = None


def _confine() -> str:
    global _confine_source
    if _confine_source is None:
        _confine_source = Path(__file__).with_name("_confine.py").read_text(encoding="utf-8")
    return _confine_source


def _installation(executable: str) -> list[str]:
    """The folders a program needs to read to run: its own, or the prefix above its ``bin``."""
    found = []
    for path in {Path(executable), Path(os.path.realpath(executable))}:
        folder = path.parent
        if folder.name in ("bin", "sbin") and folder.parent != Path("/"):
            folder = folder.parent
        if str(folder) != "/" and not _under_system_dir(str(folder)):
            found.append(str(folder))
    return sorted(set(found))


def _under_system_dir(path: str) -> bool:
    return any(path == d or path.startswith(d + "/") for d in _SYSTEM_DIRS)


def _readable(program: str, argv: Sequence[str], *, helper: bool) -> list[str]:
    """Beyond the system directories: the program's installation (and the helper's, when the helper
    runs inside the sandbox too), and the files named by absolute paths among its arguments."""
    paths = set(_installation(program))
    if helper:
        paths |= set(_installation(os.path.realpath(sys.executable)))
    for arg in argv[1:]:
        if arg.startswith("/") and os.path.isfile(arg) and not _under_system_dir(arg):
            paths.add(arg)
    return sorted(paths)


def _bwrap_argv(bwrap: str, work: str, readable: Sequence[str], env: Mapping[str, str], network: bool) -> list[str]:
    if os.geteuid() == 0:
        args = [bwrap, *(a for a in _BWRAP_AS_ROOT if not (network and a == "--unshare-net"))]
    else:
        args = [bwrap, *_BWRAP_NAMESPACES, *(["--share-net"] if network else [])]
    for folder in _SYSTEM_DIRS:
        if os.path.islink(folder):
            args += ["--symlink", os.readlink(folder), folder]
        elif os.path.isdir(folder):
            args += ["--ro-bind", folder, folder]
    args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(_TMP_BYTES), "--tmpfs", "/tmp"]
    # bwrap makes the folders above a mount point 0700; whoever the program runs as must pass through them.
    above = {str(a) for path in readable for a in Path(path).parents if str(a) not in ("/", "/tmp")}
    for folder in sorted(above, key=lambda a: a.count("/")):
        if not _under_system_dir(folder):
            args += ["--perms", "0755", "--dir", folder]
    for path in readable:
        args += ["--ro-bind-try", path, path]
    args += ["--bind", work, work, "--remount-ro", "/", "--chdir", work, "--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def _plan(
    detected: _Detected, argv: Sequence[str], work: str, env: dict[str, str], limits: SandboxLimits, status_fd: int
) -> list[str]:
    """The command line to start: the helper (:mod:`habitus.tools._confine`), inside bwrap where it is used."""
    in_bwrap = detected.mechanism == "bwrap" and detected.bwrap is not None
    readable = _readable(argv[0], argv, helper=in_bwrap)
    config: dict[str, Any] = {
        "status_fd": status_fd,
        "limits": {
            "cpu": max(1, math.ceil(limits.cpu_seconds)),
            "memory": limits.memory_mb * 1024 * 1024,
            "file_size": limits.file_mb * 1024 * 1024,
            "processes": limits.processes,
        },
    }
    if in_bwrap and os.geteuid() == 0:
        config["user"] = list(_NOBODY)
    if detected.mechanism == "landlock":
        config["landlock"] = {"read": [*_SYSTEM_DIRS, "/dev", *readable], "write": [work], "network": limits.network}
    if not in_bwrap:
        config["unshare_network"] = not limits.network
    helper = [os.path.realpath(sys.executable), "-I", "-S", "-c", _confine(), marshal.dumps(config).hex(), *argv]
    if in_bwrap and detected.bwrap is not None:
        return [*_bwrap_argv(detected.bwrap, work, readable, env, limits.network), "--", *helper]
    return helper


# -- running ------------------------------------------------------------------------------------


def _write_files(work: Path, files: Mapping[str, bytes | str]) -> None:
    for name, data in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or not rel.parts or ".." in rel.parts:
            raise InvalidRequestError(f"sandbox files are named by relative paths inside the folder, not {name!r}")
        target = work.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        body = data.encode() if isinstance(data, str) else bytes(data)
        target.write_bytes(body)
        if body.startswith(b"#!"):
            target.chmod(0o755)


def _give(work: str, uid: int, gid: int) -> None:
    """Hand the folder and what is in it to the user the program runs as."""
    for root, dirs, names in os.walk(work):
        os.chown(root, uid, gid)
        for name in dirs + names:
            os.lchown(os.path.join(root, name), uid, gid)


def _resolve_program(program: str, work: str, path: str) -> str:
    if "/" not in program:
        found = shutil.which(program, path=path)
        if found is None:
            raise InvalidRequestError(
                f"program {program!r} was not found on the sandbox's PATH ({path}); give its absolute path"
            )
        return found
    resolved = program if os.path.isabs(program) else os.path.join(work, program)
    if not os.path.isfile(resolved):
        raise InvalidRequestError(f"program {program!r} does not exist")
    return resolved


def _remove(work: str) -> None:
    def unlock(func: Any, path: str, _exc: Any) -> None:  # a program may have left a folder unwritable
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), stat.S_IRWXU)
            os.chmod(path, stat.S_IRWXU)
            func(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(work, onexc=unlock)
    else:
        shutil.rmtree(work, onerror=unlock)


def _read_report(fd: int) -> dict[str, Any] | None:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65_536):
            data += chunk
    try:
        report = marshal.loads(data) if data else None  # written by the helper, which the program cannot reach
    except (EOFError, ValueError, TypeError):
        return None
    return report if isinstance(report, dict) else None


def _classify(
    report: dict[str, Any] | None, returncode: int, stderr: bytes, limits: SandboxLimits
) -> tuple[int, Limit | None]:
    """The exit code (minus the signal, if killed) and which limit, if any, stopped the program."""
    if report is None:
        return returncode, None
    status = int(report["status"])
    cpu = float(report.get("cpu", 0.0))
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = -sig
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= math.ceil(limits.cpu_seconds) - 0.05):
            return code, "cpu"
        if sig == signal.SIGXFSZ:
            return code, "file_size"
        if sig == signal.SIGKILL or any(m in stderr for m in _MEMORY_MARKERS):
            return code, "memory"  # SIGKILL not sent by us nor for CPU: the kernel's OOM killer
        return code, None
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        if b"File too large" in stderr:  # EFBIG: Python and most runtimes ignore SIGXFSZ
            return code, "file_size"
        if any(m in stderr for m in _MEMORY_MARKERS):
            return code, "memory"
    return code, None


async def run_sandboxed(
    argv: Sequence[str],
    *,
    stdin: bytes = b"",
    limits: SandboxLimits | None = None,
    env: Mapping[str, str] | None = None,
    files: Mapping[str, bytes | str] | None = None,
) -> SandboxResult:
    """Run ``argv`` sandboxed in a new, empty temporary folder and return how it ended.

    Args:
        argv: The program (found on a standard ``PATH`` if it has no ``/``; a
            relative path is inside the folder) and its arguments. Absolute
            paths of files among the arguments are readable to it.
        stdin: Bytes given on its standard input.
        limits: Its limits (default :class:`SandboxLimits`).
        env: Variables to add to its clean environment (``PATH``, ``HOME`` and
            ``TMPDIR`` set to its folder, ``LANG``). Nothing is inherited.
        files: Files to put in its folder first, by relative path (a file that
            starts with ``#!`` is made executable).

    Returns:
        Its exit code, output, duration, the limit that stopped it (if one did)
        and what isolation was enforced. A program that fails or is stopped is
        a result, not an exception.

    Raises:
        InvalidRequestError: ``argv`` is empty, the program does not exist, or a
            file name or variable is malformed.
    """
    global _warned
    if not argv or not all(isinstance(a, str) and a and "\0" not in a for a in argv):
        raise InvalidRequestError(f"argv must be a non-empty list of non-empty strings, not {list(argv)!r}")
    limits = limits or SandboxLimits()
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidRequestError(f"environment variable {key!r} is malformed")
    detected = await asyncio.to_thread(_detect)
    work = tempfile.mkdtemp(prefix="habitus-sandbox-")
    read_fd, write_fd = -1, -1
    try:
        _write_files(Path(work), files or {})
        if detected.mechanism == "bwrap" and os.geteuid() == 0:
            _give(work, *_NOBODY)
        clean = _clean_env(work, env)
        program = _resolve_program(argv[0], work, clean["PATH"])
        read_fd, write_fd = os.pipe()
        command = _plan(detected, [program, *argv[1:]], work, clean, limits, write_fd)
        pid_box: list[int] = []
        started = time.monotonic()
        run = functools.partial(
            supervise,
            command,
            env=clean,
            cwd=work,
            stdin=stdin,
            wall_seconds=limits.wall_seconds,
            max_output=limits.max_output_bytes,
            pass_fds=(write_fd,),
            pid_box=pid_box,
        )
        running = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            finished = await asyncio.shield(running)
        except asyncio.CancelledError:
            for pid in pid_box:  # the caller gave up: stop the program, and let the thread see it end
                kill_group(pid)
            with contextlib.suppress(Exception):
                await running
            raise
        os.close(write_fd)
        write_fd = -1
        duration = time.monotonic() - started
        stdout, stderr, stopped = finished.stdout, finished.stderr, finished.stopped
        report = _read_report(read_fd)
        code, limit = _classify(report, finished.returncode, stderr, limits)
        limit = stopped or limit
        enforced: list[Isolation] = ["rlimits", "clean_env"]
        if detected.mechanism == "bwrap":
            enforced += ["filesystem", "processes"] if limits.network else ["filesystem", "network", "processes"]
        # A program killed on the wall clock leaves no report: what was enforced is what was last time.
        reported = _last_enforced.get(limits.network, []) if report is None else report.get("enforced", [])
        if report is not None:
            _last_enforced[limits.network] = list(reported)
        for item in reported:
            if item in _ISOLATION and item not in enforced:
                enforced.append(item)
        if detected.mechanism != "bwrap" and not _warned and report is not None:
            _warned = True
            wanted = {"filesystem", "processes"} | (set() if limits.network else {"network"})
            lacking = sorted(wanted - set(enforced))
            if lacking:
                problems = "; ".join([detected.missing, *report.get("problems", [])]).strip("; ")
                log.warning(
                    "sandboxed programs run without %s isolation: %s", ", ".join(lacking), problems or "unsupported"
                )
        return SandboxResult(
            exit_code=code,
            stdout=stdout,
            stderr=stderr,
            duration_s=duration,
            limit=limit,
            isolation=tuple(enforced),
            mechanism=detected.mechanism,
        )
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        await asyncio.to_thread(_remove, work)


def _reset_detection() -> None:
    """Forget what was detected (for tests that force a mechanism)."""
    global _detected, _warned
    with _detect_lock:
        _detected = None
        _warned = False
        _last_enforced.clear()


def _force(mechanism: Mechanism) -> None:
    """Use ``mechanism`` from now on (tests exercise each one the machine supports)."""
    global _detected
    with _detect_lock:
        _detected = _Detected(mechanism, shutil.which("bwrap") if mechanism == "bwrap" else None, "forced")
        _last_enforced.clear()
