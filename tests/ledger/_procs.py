"""Processes as ``/proc`` shows them (Linux), for the tests that watch the writer process."""

from __future__ import annotations

import os
import time
from pathlib import Path

WRITER_MODULE = b"habitus.storage._sqlite_child"
"""What a writer process's command line contains."""


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first, then the parent's pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not: it can no longer write)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` has stopped running, waiting up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def cmdline(pid: int) -> bytes:
    """The command line of ``pid`` (NUL-separated), or b"" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def writer_children() -> list[int]:
    """Writer processes this process started that still run."""
    me = str(os.getpid())
    pids = (int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat"))
    return [
        pid
        for pid in pids
        if (stat := _stat(pid)) is not None and stat[1] == me and alive(pid) and WRITER_MODULE in cmdline(pid)
    ]
